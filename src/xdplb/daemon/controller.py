"""The controller: keeps the data plane equal to the desired state (and health), answers
control requests (reload, overrides, status, stop) and reports status and metrics."""
from __future__ import annotations

import contextlib
import functools
import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from .._bpf import abi
from .._bpf.contract import DataPlaneApi, StatsMap
from ..config import Config, ConfigError, VipKey, format_mac, load_config
from ..errors import XdplbError
from ..health import HealthMonitor, HealthState
from ..lb import LoadBalancer, MapState, VipSpec, backend_value
from ..logfmt import Log
from ..metrics import MetricsSnapshot
from .desired import BKey, Desired, RequestError, config_diff, vip_label, vip_spec


@dataclass(frozen=True)
class BackendView:
    key: str  # its config key, '10.0.0.2:8000'
    address: str
    port: int
    mac: str | None
    id: int | None  # its id in the data plane
    weight: int  # in use: 0 when drained
    config_weight: int
    drained: bool
    up: bool  # passes its health check (or has none)
    state: str  # up, draining or down
    health: dict | None  # HealthState.as_dict() when it is checked
    # what it gets: "new" flows (up, weight > 0), only its "established" ones (drained,
    # or down under on_down = "drain"), or "none" (down under "reset": flows moved away)
    traffic: str = "new"


@dataclass(frozen=True)
class VipView:
    name: str
    label: str  # address:port/proto
    id: int | None
    mode: str
    snat: str | None
    on_backend_removed: str
    health: dict | None  # the check's settings
    backends: tuple[BackendView, ...]
    key: VipKey | None = None  # (address, port, protocol)


class Controller:
    """Keeps the data plane equal to Desired (+ health); answers control requests.

    Works on a DataPlane or a FakeDataPlane; health checks need a running event loop
    (`sync_health`)."""

    def __init__(self, dp: DataPlaneApi, cfg: Config, config_path: str | None = None,
                 log: Log | None = None, monitor: HealthMonitor[BKey] | None = None,
                 info: dict | None = None, egress_ifindex: int = 0):
        self.dp = dp
        self.egress_ifindex = egress_ifindex  # two-armed: backends are reached through it
        self.cfg = cfg
        self.config_path = config_path or cfg.source
        self.log = log or Log()
        self.desired = Desired(cfg)
        self.monitor = monitor or HealthMonitor(self._on_health_change)
        self.monitor.on_change = self._on_health_change
        self.monitor.on_result = self._on_health_result
        max_vips, max_backends = _id_limits(dp, cfg)
        #: with [sync], the top backend ids are the peers' NAT flows' (sync.FOREIGN_IDS)
        self.foreign_base = 0
        if cfg.sync is not None:
            from ..sync import FOREIGN_IDS

            if max_backends > 2 * FOREIGN_IDS:
                max_backends -= FOREIGN_IDS
                self.foreign_base = max_backends
        self.lb = LoadBalancer(dp, max_vips, max_backends)
        self.neighbour_macs: dict = {}  # backend address -> MAC from the neighbour table
        self.info = dict(info or {})
        self.started = time.time()
        self.reloads = {"ok": 0, "error": 0}
        self.last_load_ok = time.time()  # the start loaded the file: a success
        self.last_load_succeeded = True
        self.checks: dict[tuple[str, str, str], int] = {}
        self.on_stop: Callable[[bool], None] | None = None  # stop(keep) from a request
        self._live = False
        self._view: tuple[VipView, ...] = ()
        self._view_fresh = False  # _view shows what is served (rebuilt when asked)
        self._view_built = False
        #: the thread running a change (the daemon's worker), None: none: other threads
        #: see the last view built, so `status` answers at once instead of waiting
        self.applying: int | None = None
        #: the daemon's worker: runs a change off the event loop, one at a time (None:
        #: at once, in the caller's thread)
        self.submit: Callable[[Callable[[], Any]], None] | None = None
        self._expired: set[BKey] = set()  # down longer than max_drain_time: pulled
        self._serving: set[VipKey] = set()  # VIPs with a backend taking new flows
        self._serving_once: set[VipKey] = set()  # VIPs that ever had one (start is quiet)
        self._settled: set[VipKey] = set()  # VIPs whose backends all had a verdict once
        self.vips_without_backend: dict[str, int] = {}  # VIP name -> times it lost the last
        #: announce.Announcer when [bgp] is configured and the data plane is attached
        self.announcer: Any = None
        #: l2.L2Announcer when [l2] announce = true and the data plane is attached
        self.l2: Any = None
        #: `xdplb node drain`: nothing is announced (BGP, L2) and `node check` fails
        self.drained = False
        #: sync.FlowSync when [sync] is configured (its counters go to status)
        self.flow_sync: Any = None
        #: where runtime overrides are kept (serve: beside the control socket), None: not
        self.overrides_path: str | None = None

    # state changes -----------------------------------------------------------------------
    def start(self, existing: MapState | None = None,
              overrides: list[dict] | None = None) -> list[str]:
        """First write: fill empty maps, or adopt those of a kept instance. Backends found
        inactive in kept maps (pulled by the previous daemon) start down. `overrides`
        (from the state file) are applied on top of the file first."""
        if overrides:
            for why in self.desired.replay(overrides):
                self.log("override_dropped", level="warning", what=why)
            if self.desired.changes:
                self.log("overrides_kept", count=len(self.desired.changes),
                         what="; ".join(self.desired.overrides))
        if existing is not None:
            # a restart keeps what the previous daemon served: backends it had pulled
            # start down (pulled), the others up whatever the check's `initial`
            inactive = set(_inactive_in(existing, self.desired))
            for key, v in self.desired.vips.items():
                if v.health.kind == "none" or key not in existing.vips:
                    continue
                for b in v.backends:
                    down = (key, b.key) in inactive
                    self.monitor.seed((key, b.key), v.health, up=not down)
                    if down:
                        self._expired.add((key, b.key))
            self.monitor.update(self.desired.health_targets())
            changes = self.lb.adopt(self._specs(self.desired), existing)
        else:
            self.monitor.update(self.desired.health_targets())
            changes = self.lb.apply(self._specs(self.desired))
        self._after(changes, "start")
        self.current_view()  # built before any request can ask
        return changes

    def health_of(self, key: BKey) -> str:
        """What a backend's health means for traffic: "up", "drain" (down: no new
        flows, established ones kept) or "pulled" (down under on_down = "reset", or
        draining longer than max_drain_time: its flows move or end)."""
        st = self.monitor.states.get(key)
        if st is None or st.up:
            return "up"
        v = self.desired.vips.get(key[0])
        if key in self._expired or v is None or v.health.on_down == "reset":
            return "pulled"
        return "drain"

    def _specs(self, desired: Desired) -> list[VipSpec]:
        """What to write for `desired`: health as weights and active flags, MAC-less
        backends with the neighbour table's answer, the egress interface of a two-armed
        LB."""
        specs = desired.specs(self.health_of)
        if self.neighbour_macs or self.egress_ifindex:
            specs = [replace(v, backends=tuple(
                replace(b, mac=self.neighbour_macs.get(b.address, b.mac) if b.mac is None
                        else b.mac, ifindex=self.egress_ifindex or b.ifindex)
                for b in v.backends)) for v in specs]
        return specs

    def apply(self, why: str) -> list[str]:
        # health states first: a check added, changed or removed by this change decides
        # what is served now (a removed check's pulled backends come back in this apply)
        self.monitor.update(self.desired.health_targets())
        self._expired &= set(self.monitor.states)
        changes = self.lb.apply(self._specs(self.desired))
        self._after(changes, why)
        return changes

    def _after(self, changes: list[str], why: str) -> None:
        for c in changes:
            self.log("change", cause=why, what=c)
        self._view_fresh = False
        self._note_serving(why)
        self.announce()
        if self._live:
            self.sync_health()

    def _note_serving(self, why: str) -> None:
        """Say (and count) when a VIP loses its last backend taking new flows, whatever
        the cause (health, drain, weight, removal), and when it gets one back."""
        serving = {key for key, v in self.desired.vips.items()
                   if any(self.health_of((key, b.key)) == "up"
                          and self.desired.effective_weight(key, b) for b in v.backends)}
        for key in self.desired.vips.keys() & (self._serving - serving):
            name = self.desired.vips[key].name
            self.vips_without_backend[name] = self.vips_without_backend.get(name, 0) + 1
            self.log("vip_without_backend", level="error", vip=name, cause=why,
                     what="no backend takes new flows: new connections are dropped")
        for key in serving - self._serving:
            if key in self._serving_once:
                self.log("vip_serving", vip=self.desired.vips[key].name, cause=why)
        self._serving_once |= serving
        self._serving = serving

    def vip_health(self) -> list:
        """Each VIP with the number of its backends that take new flows (up, weight > 0);
        0 until every backend of the VIP has had its first verdict (see `_verdicts_in`)."""
        from ..announce import VipHealth

        states = {v.name: sum(b.state == "up" for b in v.backends)
                  for v in self.current_view()}
        out = []
        self._settled &= self.desired.vips.keys()
        for key, v in self.desired.vips.items():
            if key not in self._settled and self._verdicts_in(key):
                self._settled.add(key)
            out.append(VipHealth(v, states.get(v.name, 0) if key in self._settled else 0))
        return out

    def _verdicts_in(self, key: VipKey) -> bool:
        """Have all the VIP's backends had their first verdict? A node that starts (or
        restarts) must not attract traffic while only some of its backends have passed
        their first checks: behind ECMP, flows moved to it would all be balanced over
        those few, and every flow of the others reset (its Maglev table differs from its
        peers'). A verdict: max(rise, fall) probes, i.e. a backend that did not rise by
        then is really down. Only the first announcement waits: a backend added later
        starts down without withdrawing a VIP that is served."""
        v = self.desired.vips.get(key)
        if v is None:
            return False
        for b in v.backends:
            st = self.monitor.states.get((key, b.key))
            if st is not None and st.checks < max(st.rise, st.fall):
                return False
        return True

    def announce(self) -> list[str]:
        """Tell the routing daemon (and the L2 announcer) what to announce now (no-op
        without [bgp] or [l2])."""
        out: list[str] = []
        for a in (self.announcer, self.l2):
            if a is None:
                continue
            try:
                out += a.update(self.vip_health())
            except XdplbError as e:  # keep serving; the next change retries
                self.log("announce_failed", level="error", error=str(e))
        return out

    def sync_health(self) -> None:
        """(Re)start health checks for the current desired state (in the event loop)."""
        self._live = True
        self.monitor.update(self.desired.health_targets())

    def _change(self, fn: Callable[[Desired], Any], why: str) -> list[str]:
        """Run one override on a copy of Desired, apply it, keep it only if that worked."""
        before = self.desired
        trial = before.copy()
        fn(trial)
        self.desired = trial
        try:
            changes = self.apply(why)
        except Exception:
            self.desired = before
            self.lb.apply(self._specs(before))
            raise
        old = set(before.overrides)
        for o in trial.overrides:
            if o not in old:
                self.log("override", what=o)
        self.save_overrides()
        return changes

    def save_overrides(self) -> None:
        """Write the runtime overrides to the state file (removed when there are none),
        so that a reload keeps them and a restart finds them."""
        if self.overrides_path is None:
            return
        path = self.overrides_path
        try:
            if not self.desired.changes:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                return
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                json.dump({"config": self.config_path, "overrides": self.desired.changes}, f,
                          indent=1)
            os.replace(tmp, path)  # whole or not at all
        except OSError as e:  # serving goes on; the next change tries again
            self.log("overrides_not_saved", level="error", path=path, error=str(e))

    def reload(self, cfg: Config | None = None) -> dict:
        """Re-read the file (or take `cfg`) and apply only the diff. Runtime overrides
        are applied again on top of it; those that no longer apply are dropped."""
        try:
            cfg = cfg or load_config(self.config_path)
            if cfg.lb.interface != self.cfg.lb.interface or \
                    cfg.lb.instance != self.cfg.lb.instance:
                raise ConfigError(cfg.source, "lb.interface", "cannot change while serving "
                                  "(stop and start again)")
        except ConfigError as e:
            self.reloads["error"] += 1
            self.last_load_succeeded = False
            self.log("reload_failed", level="error", error=str(e))
            raise RequestError(str(e)) from None
        ignored = [k for k in ("hash_seed", "nat_ports", "conntrack_size", "max_vips",
                               "max_backends", "frag_policy", "metrics", "syn_timeout",
                               "tcp_timeout", "closing_timeout", "udp_timeout",
                               "nonsyn_budget", "syn_challenge", "syn_challenge_rate",
                               "verified_size", "verified_timeout", "rst_rate")
                   if getattr(cfg.lb, k) != getattr(self.cfg.lb, k)]
        # what the L2 announcer does (addresses, track file) is fixed at its start: a
        # change of it takes a restart; the announcements' count and pace apply now
        new_l2 = (cfg.l2.announce, cfg.l2.track_file) if cfg.l2 is not None else (False, None)
        old_l2 = ((self.l2.settings.announce, self.l2.settings.track_file)
                  if self.l2 is not None else (False, None))
        if new_l2 != old_l2:
            ignored.append("l2")
        elif cfg.l2 is not None and self.l2 is not None:
            self.l2.settings = cfg.l2
        if (cfg.bgp is None) != (self.cfg.bgp is None):
            ignored.append("bgp")  # starting or stopping the routing daemon: a restart
        elif cfg.bgp is not None and self.announcer is not None:
            self.announcer.bgp = cfg.bgp  # peers, timers: rewritten with the next update
        before = self.desired
        self.desired = Desired(cfg)
        dropped = self.desired.replay(before.changes)
        try:
            changes = self.apply("reload")
        except Exception as e:
            self.desired = before
            self.reloads["error"] += 1
            self.last_load_succeeded = False
            self.log("reload_failed", level="error", error=str(e))
            raise
        self.cfg = cfg
        self.reloads["ok"] += 1
        self.last_load_ok, self.last_load_succeeded = time.time(), True
        for why in dropped:
            self.log("override_dropped", level="warning", what=why)
        self.save_overrides()
        self.log("reloaded", config=self.config_path, changes=len(changes),
                 kept_overrides=len(self.desired.changes) or None,
                 dropped_overrides=len(dropped) or None,
                 needs_restart=",".join(_key(k) for k in ignored) or None)
        return {"changes": changes, "kept_overrides": self.desired.overrides,
                "dropped_overrides": dropped, "needs_restart": [_key(k) for k in ignored]}

    def check(self, path: object) -> dict:
        """What a reload from `path` would change (nothing is applied)."""
        if not isinstance(path, str):
            raise RequestError("check needs the config file's path")
        try:
            cfg = load_config(path)
        except ConfigError as e:
            raise RequestError(str(e)) from None
        diff = config_diff(self.cfg, cfg)
        if cfg.lb.interface != self.cfg.lb.interface:
            diff.insert(0, f"lb.interface: {self.cfg.lb.interface!r} -> {cfg.lb.interface!r} "
                        "(another instance: stop this one and serve the new file)")
        trial = Desired(cfg)
        dropped = trial.replay(self.desired.changes)
        return {"changes": diff, "serving": self.config_path,
                "kept_overrides": trial.overrides, "dropped_overrides": dropped}

    def _on_health_change(self, key: BKey, st: HealthState) -> None:
        """A backend flipped: apply first, then say so (the event means it is done)."""
        self.run_change(lambda: self._health_changed(key, st, st.up))

    def _health_changed(self, key: BKey, st: HealthState, up: bool) -> None:
        vkey, bkey = key
        v = self.desired.vips.get(vkey)
        name = v.name if v else vip_label(vkey)
        try:
            self.apply("health")
        except Exception as e:  # noqa: BLE001 - keep checking; the next flip retries
            self.log("apply_failed", level="error", cause="health", error=str(e))
            return
        if up:
            self._expired.discard(key)
            self.log("backend_up", vip=name, backend=bkey, successes=st.rise)
        else:
            action = self.health_of(key)
            self.log("backend_down", level="warning", vip=name, backend=bkey,
                     failures=st.fall, reason=st.last_detail,
                     action="drain: established flows kept" if action == "drain"
                     else "reset: its flows are re-selected or dropped")

    def _on_health_result(self, key: BKey, ok: bool, detail: str) -> None:
        v = self.desired.vips.get(key[0])
        k = (v.name if v else vip_label(key[0]), key[1], "ok" if ok else "fail")
        self.checks[k] = self.checks.get(k, 0) + 1
        if v is not None and key[0] not in self._settled and self._verdicts_in(key[0]):
            self.announce()  # its last first verdict: the VIP may be announced now
        st = self.monitor.states.get(key)
        if v is None or st is None or st.up or key in self._expired:
            return
        limit = v.health.max_drain_time
        if limit and v.health.on_down == "drain" and time.time() - st.since >= limit:
            self._expired.add(key)  # checked at every probe: no timer of its own
            self.run_change(lambda: self._drain_expired(key, v.name, limit))

    def _drain_expired(self, key: BKey, name: str, limit: float) -> None:
        try:
            self.apply("max_drain_time")
        except Exception as e:  # noqa: BLE001 - retried at the next probe
            self._expired.discard(key)
            self.log("apply_failed", level="error", cause="max_drain_time", error=str(e))
            return
        self.log("drain_expired", level="warning", vip=name, backend=key[1],
                 after=f"{limit:g}s", what="its remaining flows are re-selected or reset")

    # requests --------------------------------------------------------------------------------
    def handle(self, req: Any) -> dict:
        """One control request (a dict from JSON) -> a JSON-able reply."""
        try:
            if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                raise RequestError("a request is a JSON object with a \"cmd\"")
            result = self._dispatch(req)
            return {"ok": True, **result}
        except RequestError as e:
            return {"ok": False, "error": str(e), "code": e.code}
        except Exception as e:  # noqa: BLE001 - answer, log, keep serving
            self.log("request_failed", level="error", cmd=req.get("cmd"), error=str(e))
            return {"ok": False, "error": str(e) or type(e).__name__, "code": 1}

    def _dispatch(self, req: dict) -> dict:
        cmd = req["cmd"]
        if cmd == "status":
            return {"status": self.status()}
        if cmd == "reload":
            other = req.get("config")
            if other is not None and other != self.config_path:
                raise RequestError(f"this instance serves {self.config_path}, not {other}: "
                                   "a reload re-reads the file it serves (to serve another, "
                                   "`xdplb check -c` it, then restart serve with it)")
            return self.reload()
        if cmd == "check":
            return self.check(req.get("config"))
        if cmd == "stop":
            if self.on_stop is None:
                raise RequestError("this daemon cannot be stopped by request", 1)
            self.on_stop(bool(req.get("keep", False)))
            return {"stopping": True, "keep": bool(req.get("keep", False))}
        if cmd == "backend":
            return {"changes": self._backend(req)}
        if cmd == "vip":
            return {"changes": self._vip(req)}
        if cmd == "node":
            return {"changes": self._node(req)}
        raise RequestError(f"unknown command {cmd!r}")

    def _node(self, req: dict) -> list[str]:
        """drain: withdraw every route and L2 answer (established flows keep being
        forwarded: the data plane stays attached); resume: announce again. Without [bgp]
        or [l2] only `node check` sees it (a VRRP pair's track script)."""
        op = req.get("op")
        if op == "check":
            return self.node_check()
        if op not in ("drain", "resume"):
            raise RequestError(f"unknown node operation {op!r}")
        was, self.drained = self.drained, op == "drain"
        changes: list[str] = []
        for a in (self.announcer, self.l2):
            if a is not None:
                changes += a.drain() if op == "drain" else a.resume()
        self.log("node_" + ("drained" if op == "drain" else "resumed"),
                 routes=len(self.announcer.routes) if self.announcer else None,
                 l2=len(self.l2.announced) if self.l2 else None)
        if was == self.drained:
            return changes or [f"node already {'drained' if op == 'drain' else 'resumed'}"]
        what = "drained" if op == "drain" else "resumed"
        check = "fails" if op == "drain" else "passes"
        return changes or [(f"node {what} (xdplb announces nothing itself: "
                           f"`xdplb node check` {check} now)")]

    def node_check(self) -> list[str]:
        """Can this node take the VIPs (l2.unready: not drained, one VIP with announce =
        true has min_healthy backends up)? RequestError (exit 1) says why not."""
        from ..l2 import unready

        why = unready(self.vip_health(), drained=self.drained)
        if why:
            raise RequestError("; ".join(why), 1)
        return ["node ok: serving, not drained, a VIP to serve"]

    def _backend(self, req: dict) -> list[str]:
        op, vip = req.get("op"), req.get("vip")
        ref = req.get("backend")
        if op == "reset-overrides":
            gone = self.desired.overrides
            changes = self._change(lambda d: d.reset(), "reset-overrides")
            self.log("overrides_reset", dropped=len(gone))
            return changes or ["no changes in the data plane"] if gone else \
                ["no runtime overrides"]
        if op == "add":
            if not isinstance(ref, dict):
                raise RequestError("backend add needs a backend table")
            return self._change(lambda d: d.add_backend(vip, ref), "request")
        if not isinstance(ref, str):
            raise RequestError("name the backend (ADDRESS or ADDRESS:PORT)")
        if op in ("drain", "undrain"):
            return self._change(lambda d: d.drain(vip, ref, op == "drain"), "request")
        if op == "weight":
            return self._change(lambda d: d.set_weight(vip, ref, req.get("weight")), "request")
        if op == "remove":
            return self._change(lambda d: d.remove_backend(vip, ref), "request")
        raise RequestError(f"unknown backend operation {op!r}")

    def _vip(self, req: dict) -> list[str]:
        op, vip = req.get("op"), req.get("vip")
        if op == "add":
            if not isinstance(vip, dict):
                raise RequestError("vip add needs a VIP table")
            return self._change(lambda d: d.add_vip(vip), "request")
        if op == "remove":
            if not isinstance(vip, str):
                raise RequestError("name the VIP to remove")
            return self._change(lambda d: d.remove_vip(vip), "request")
        raise RequestError(f"unknown vip operation {op!r}")

    # reporting ----------------------------------------------------------------------------
    def view(self) -> tuple[VipView, ...]:
        """What is served now, by name and id: the one view behind `status` and the
        metrics (which keep a copy made at each change, for the exporter's thread).
        Built for thousands of VIPs: no health lookups for unchecked VIPs, no drain
        lookups without drains, addresses and MACs formatted once."""
        vips = []
        desired, served = self.desired, self.lb.state.vips  # (replaced, not changed, by
        drained = desired.drained                          # a change: one consistent pair)
        states = self.monitor.states
        for key, v in desired.vips.items():
            vst = served.get(key)
            vid, ids = (vst.vip_id, vst.backend_ids) if vst is not None else (None, {})
            checked = v.health.kind != "none"
            backends = []
            for b in v.backends:
                bkey = b.key
                is_drained = bool(drained) and (key, bkey) in drained
                weight = 0 if is_drained else b.weight
                st = states.get((key, bkey)) if checked else None
                up = st is None or st.up
                action = self.health_of((key, bkey)) if not up else "up"
                traffic = ("none" if action == "pulled" else "established"
                           if action == "drain" or weight == 0 else "new")
                backends.append(BackendView(
                    key=bkey, address=_host_of(bkey), port=b.port,
                    mac=_mac_text(b.mac) if b.mac else None, id=ids.get(bkey),
                    weight=weight, config_weight=b.weight, drained=is_drained, up=up,
                    state="down" if not up else "draining" if weight == 0 else "up",
                    health=st.as_dict() if st else None, traffic=traffic))
            h = v.health
            vips.append(VipView(
                name=v.name, label=vip_label(key), id=vid, mode=v.mode,
                snat=str(v.snat) if v.snat else None, on_backend_removed=v.on_backend_removed,
                health=None if not checked else {
                    "kind": h.kind, "port": h.port, "path": h.path if h.kind == "http" else None,
                    "interval": h.interval, "timeout": h.timeout, "rise": h.rise,
                    "fall": h.fall, "on_down": h.on_down, "max_drain_time": h.max_drain_time,
                    "initial": h.initial},
                backends=tuple(backends), key=key))
        return tuple(vips)

    def current_view(self) -> tuple[VipView, ...]:
        """The view, rebuilt if a change made it stale, unless another thread is applying
        a change (then the last one: consistent, and at once); the applying thread itself
        (announcing what it changed) sees the new one."""
        if not self._view_fresh and (self.applying in (None, threading.get_ident())
                                     or not self._view_built):
            self._view_fresh = self._view_built = True  # (a change meanwhile clears it)
            self._view = self.view()
        return self._view

    def run_change(self, fn: Callable[[], Any]) -> None:
        """A change the controller starts itself (health, max_drain_time): in the
        daemon's worker when there is one."""
        if self.submit is None:
            fn()
        else:
            self.submit(fn)

    def _reasons(self) -> dict[str, tuple[int, int]]:
        return self.dp.stats()

    def metrics_snapshot(self) -> MetricsSnapshot:
        snap = MetricsSnapshot(info={k: str(v) for k, v in self.info.items()},
                               reasons=self._reasons(), checks=dict(self.checks),
                               reloads=dict(self.reloads), flows=self._flow_counts(),
                               last_reload=(self.last_load_ok, self.last_load_succeeded),
                               lost_last_backend={v.name: self.vips_without_backend.get(
                                   v.name, 0) for v in self.current_view()})
        active = self._live_flows()
        view = [v for v in self.current_view() if v.id is not None]  # (not in the data plane yet)
        be_counts = iter(self._counts("be_stats", [b.id for v in view for b in v.backends]))
        for v, dropped in zip(view, self._counts("vip_stats", [v.id for v in view])):
            counts = [{**next(be_counts), "active_flows": active.get(b.id, 0)}
                      for b in v.backends]
            total = {k: dropped[k] + sum(c[k] for c in counts) for k in _COUNTERS}
            snap.vips.append((v.name, v.label, {**total, "dropped_packets": dropped["packets"],
                                                "dropped_bytes": dropped["bytes"]}))
            for b, c in zip(v.backends, counts):
                snap.backends.append((v.name, b.key, c, b.up, b.weight))
        return snap

    def _flow_counts(self) -> dict[str, int]:
        try:
            return self.dp.flow_counts()
        except (OSError, ValueError, KeyError):  # a scrape never fails for it
            return {}

    def _live_flows(self) -> Mapping[int | None, int]:
        """Backend id -> live flows in the flow table."""
        try:
            return {k: n for k, n in self.dp.live_flows_by_backend().items()}
        except (OSError, ValueError, KeyError):  # a status never fails for it
            return {}

    def _counts(self, which: StatsMap, ids: Sequence[int | None]) -> list[dict[str, int]]:
        """Counters of many ids in one read (None: not in the data plane yet: zeros)."""
        known = [i for i in ids if i is not None]
        rows = iter(self.dp.obj_stats_many(which, known).tolist() if known else [])
        return [dict(zip(_COUNTERS, next(rows))) if i is not None else dict.fromkeys(
            _COUNTERS, 0) for i in ids]

    def status(self) -> dict:
        """The view as of the last change (an apply running meanwhile does not hold it
        up), with the counters, live flows and health checks of now."""
        view = self.current_view()
        active = self._live_flows()
        be_counts = iter(self._counts("be_stats", [b.id for v in view for b in v.backends]))
        vip_counts = self._counts("vip_stats", [v.id for v in view])
        states = self.monitor.states
        vips = []
        for v, dropped in zip(view, vip_counts):
            backends: list[dict[str, Any]] = []
            for b in v.backends:
                st = states.get((v.key, b.key)) if v.key is not None else None
                backends.append({
                    "active_flows": active.get(b.id, 0),
                    "backend": b.key, "address": b.address, "port": b.port, "mac": b.mac,
                    "id": b.id, "weight": b.weight, "config_weight": b.config_weight,
                    "drained": b.drained, "state": b.state, "traffic": b.traffic,
                    "health": st.as_dict() if st is not None else b.health,
                    **next(be_counts)})
            total = {k: dropped[k] + sum(int(b[k]) for b in backends) for k in _COUNTERS}
            vips.append({
                "name": v.name, "vip": v.label, "mode": v.mode, "id": v.id, "snat": v.snat,
                "on_backend_removed": v.on_backend_removed, "health": v.health,
                "lost_last_backend": self.vips_without_backend.get(v.name, 0),
                **total, "dropped": {"packets": dropped["packets"], "bytes": dropped["bytes"]},
                "backends": backends})
        return {**self.info, "config": self.config_path, "pid": os.getpid(),
                "uptime": round(time.time() - self.started, 1), "reloads": dict(self.reloads),
                "overrides": list(self.desired.overrides), "vips": vips,
                "flows": self._flow_counts(),
                "stats": {k: {"packets": p, "bytes": b} for k, (p, b) in self._reasons().items()},
                "bgp": None if self.announcer is None else self.announcer.status(),
                "l2": None if self.l2 is None else self.l2.status(), "drained": self.drained,
                "sync": None if self.flow_sync is None else asdict(self.flow_sync.stats)}


_COUNTERS = ("packets", "bytes", "new_flows")


def _host_of(backend_key: str) -> str:
    """'10.0.0.2:80' -> '10.0.0.2', '[fd00::2]:80' -> 'fd00::2' (str() of an address
    object is slow, and the key has it formatted already)."""
    return backend_key.rpartition(":")[0].strip("[]")


@functools.lru_cache(maxsize=4096)
def _mac_text(mac: bytes) -> str:
    return format_mac(mac)


def _key(k: str) -> str:
    return k if k in ("bgp", "l2") else f"lb.{k}"


def _id_limits(dp: DataPlaneApi, cfg: Config) -> tuple[int, int]:
    """Ids must index every per-id map (a kept instance's maps keep their sizes) and stay
    within the configured limits."""
    vips, backends = dp.id_limits()
    return min(vips, cfg.lb.max_vips), min(backends, cfg.lb.max_backends)


def _inactive_in(state: MapState, desired: Desired) -> list[BKey]:
    """Backends of `desired` whose entries for their VIP in kept maps are all inactive:
    the previous daemon had pulled them (health). A backend it had removed and the file
    now lists again also starts down, and rises after `rise` good checks."""
    out: list[BKey] = []
    by_endpoint: dict[tuple, list] = {}  # (family, address, port, vip id) -> entries (an
    for be in state.backends.values():  # index: thousands of VIPs x backends, not quadratic)
        by_endpoint.setdefault((be.family, bytes(be.addr), be.port, be.vip_id), []).append(be)
    for key, v in desired.vips.items():
        if key not in state.vips:
            continue
        vip_id = state.vips[key].vip_id
        spec = vip_spec(v)
        for b, bs in zip(v.backends, spec.backends):
            want = backend_value(spec, bs)
            entries = by_endpoint.get((want.family, bytes(want.addr), want.port, vip_id), [])
            if entries and not any(be.flags & abi.BE_F_ACTIVE for be in entries):
                out.append((key, b.key))
    return out

