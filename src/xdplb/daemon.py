"""`xdplb serve`: the operator's daemon, and the commands that talk to it.

serve -c FILE
    validate the file, load the data plane sized from [lb], fill the maps, attach to
    lb.interface, pin maps and program under /sys/fs/bpf/xdplb/<instance>/, then run:
    health checks (asyncio), SIGHUP / `xdplb reload` (re-read the file, apply only the
    diff), a control socket /run/xdplb/<instance>.sock (one JSON request per connection:
    status, reload, stop, backend and vip overrides) and a Prometheus exporter.
    Exit on SIGINT/SIGTERM detaches and unpins; with --keep the program stays attached
    and the maps pinned, and the next `serve` takes them over (same conntrack, same ids)
    and swaps its program in atomically.

Log lines go to stderr, one per event, as logfmt: ``time=... level=info event=... k=v``.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import fcntl
import io
import ipaddress
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from ._proc import alive as _alive
from .config import (
    Backend,
    Config,
    ConfigError,
    Vip,
    backend_from_table,
    format_mac,
    load_config,
    parse_listen,
    vip_from_table,
)
from .errors import UsageError, XdplbError
from .health import HealthMonitor, HealthState, Target
from .lb import BackendSpec, LoadBalancer, MapState, VipSpec, read_map_state
from .metrics import MetricsSnapshot

if TYPE_CHECKING:
    from ._bpf.dataplane import DataPlane
    from ._bpf.libbpf import Map
    from .metrics import Exporter

__all__ = [
    "Controller",
    "Daemon",
    "Desired",
    "RequestError",
    "ServeOptions",
    "call",
    "register_cli",
    "specs_from_config",
]

PIN_ROOT = "/sys/fs/bpf/xdplb"
DEFAULT_RUN_DIR = "/run/xdplb"
MAX_REQUEST = 1 << 20

BKey = tuple[tuple, str]  # (VIP key, backend key): one backend of one VIP


def run_dir_default() -> str:
    return os.environ.get("XDPLB_RUN_DIR", DEFAULT_RUN_DIR)


# --- config -> specs --------------------------------------------------------------------


def backend_spec(b: Backend, weight: int | None = None, active: bool = True) -> BackendSpec:
    return BackendSpec(address=b.address, mac=b.mac, port=b.port,
                       weight=b.weight if weight is None else weight, active=active,
                       ring_key=b.key)


def vip_spec(v: Vip, backends: tuple[BackendSpec, ...] | None = None) -> VipSpec:
    return VipSpec(address=v.address, port=v.port, protocol=v.protocol, mode=v.mode,
                   backends=tuple(backend_spec(b) for b in v.backends)
                   if backends is None else backends,
                   snat=v.snat, ring_size=v.ring_size, on_backend_removed=v.on_backend_removed,
                   udp_stateless=v.udp_stateless, name=v.name)


def specs_from_config(cfg: Config) -> list[VipSpec]:
    """The VIPs of a configuration as LoadBalancer specs. A backend's ring key is its
    config key ('10.0.0.2:8000', '[2001:db8::2]:80'), so every node given the same file
    builds the same Maglev tables."""
    return [vip_spec(v) for v in cfg.vips]


def vip_label(key: tuple) -> str:
    addr, port, proto = key
    host = f"[{addr}]" if addr.version == 6 else str(addr)
    return f"{host}:{port}/{proto}"


# --- structured log -------------------------------------------------------------------


def _logfmt_value(v: Any) -> str:
    s = str(v) if not isinstance(v, bool) else str(v).lower()
    if s == "" or any(c in s for c in ' "=\\') or not s.isprintable():
        return json.dumps(s)
    return s


class Log:
    """One line per event on stderr: time=... level=... event=... key=value ..."""

    def __init__(self, stream=None):
        self.stream = stream

    def __call__(self, event: str, level: str = "info", **fields: Any) -> None:
        t = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"
        parts = [f"time={stamp}", f"level={level}", f"event={event}"]
        parts += [f"{k}={_logfmt_value(v)}" for k, v in fields.items() if v is not None]
        stream = self.stream or sys.stderr
        print(" ".join(parts), file=stream, flush=True)


# --- desired state: the file plus runtime overrides -----------------------------------------


class RequestError(XdplbError):
    """A control request that cannot be done (unknown VIP, bad value); `code` is the
    exit status the client reports (2: bad input)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def _parse_backend_ref(ref: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address,
                                          int | None]:
    """'10.0.0.2', '10.0.0.2:8000', 'fd00::2', '[fd00::2]:8000' -> (address, port|None)."""
    try:
        if ref.startswith("["):
            host, _, port = ref[1:].partition("]")
            if not port.startswith(":"):
                raise ValueError
            return ipaddress.ip_address(host), int(port[1:])
        if ref.count(":") == 1:
            host, port = ref.split(":")
            return ipaddress.ip_address(host), int(port)
        return ipaddress.ip_address(ref), None
    except ValueError:
        raise RequestError(f"{ref!r} is not a backend (ADDRESS, ADDRESS:PORT or "
                           "[IPV6]:PORT)") from None


class Desired:
    """What should be served: the configuration file's VIPs plus runtime overrides
    (drain, weight, backend and VIP add/remove). Overrides live in memory only: the
    next reload from the file replaces them all."""

    def __init__(self, cfg: Config):
        self.lb = cfg.lb
        self.vips: dict[tuple, Vip] = {v.key: v for v in cfg.vips}
        self.drained: set[BKey] = set()
        self.overrides: list[str] = []

    # lookups ---------------------------------------------------------------------------
    def find_vip(self, ref: str) -> tuple:
        for key, v in self.vips.items():
            if ref in (v.name, vip_label(key)):
                return key
        found = []
        for key in self.vips:
            label = vip_label(key)
            host_port = label.rsplit("/", 1)[0]
            host = host_port.rsplit(":", 1)[0].strip("[]")
            if ref in (host_port, host):
                found.append(key)
        if len(found) == 1:
            return found[0]
        names = ", ".join(v.name for v in self.vips.values()) or "none"
        if found:
            raise RequestError(f"VIP {ref!r} is ambiguous: "
                               + ", ".join(self.vips[k].name for k in found))
        raise RequestError(f"no VIP {ref!r} (VIPs: {names})")

    def select(self, vip_ref: str | None, backend_ref: str) -> list[tuple[tuple, Backend]]:
        """Backends matching `backend_ref` in one VIP, or in every VIP without vip_ref."""
        addr, port = _parse_backend_ref(backend_ref)
        keys = [self.find_vip(vip_ref)] if vip_ref else list(self.vips)
        out = []
        for key in keys:
            hits = [b for b in self.vips[key].backends
                    if b.address == addr and (port is None or b.port == port)]
            if len(hits) > 1:
                raise RequestError(f"{backend_ref!r} matches {len(hits)} backends of "
                                   f"{self.vips[key].name}; give ADDRESS:PORT")
            out += [(key, b) for b in hits]
        if not out:
            where = f"VIP {self.vips[keys[0]].name}" if vip_ref else "any VIP"
            raise RequestError(f"no backend {backend_ref!r} in {where}")
        return out

    # overrides -------------------------------------------------------------------------
    def _record(self, what: str) -> None:
        self.overrides.append(what)

    def drain(self, vip_ref: str | None, backend_ref: str, on: bool = True) -> None:
        for key, b in self.select(vip_ref, backend_ref):
            (self.drained.add if on else self.drained.discard)((key, b.key))
            self._record(f"{'drain' if on else 'undrain'} {self.vips[key].name} {b.key}")

    def set_weight(self, vip_ref: str | None, backend_ref: str, weight: object) -> None:
        if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 0xFFFF:
            raise RequestError(f"weight {weight!r} is out of range 0..65535")
        for key, b in self.select(vip_ref, backend_ref):
            v = self.vips[key]
            self.vips[key] = replace(v, backends=tuple(
                replace(x, weight=weight) if x is b else x for x in v.backends))
            self._record(f"weight {v.name} {b.key} {weight}")

    def _one_vip(self, vip_ref: str | None) -> tuple:
        if vip_ref:
            return self.find_vip(vip_ref)
        if len(self.vips) == 1:
            return next(iter(self.vips))
        raise RequestError("name the VIP (--vip): there are "
                           f"{len(self.vips)}")

    def add_backend(self, vip_ref: str | None, table: dict) -> None:
        key = self._one_vip(vip_ref)
        v = self.vips[key]
        try:
            b = backend_from_table(table, v, source="request", key="backend")
        except ConfigError as e:
            raise RequestError(str(e)) from None
        if any((x.address, x.port) == (b.address, b.port) for x in v.backends):
            raise RequestError(f"{v.name} already has backend {b.key}")
        if self._n_backends() + 1 > self.lb.max_backends:
            raise RequestError(f"max_backends ({self.lb.max_backends}) reached")
        self.vips[key] = replace(v, backends=(*v.backends, b))
        self._record(f"add backend {v.name} {b.key} weight {b.weight}")

    def remove_backend(self, vip_ref: str | None, backend_ref: str) -> None:
        for key, b in self.select(vip_ref, backend_ref):
            v = self.vips[key]
            self.vips[key] = replace(v, backends=tuple(x for x in v.backends if x is not b))
            self.drained.discard((key, b.key))
            self._record(f"remove backend {v.name} {b.key}")

    def add_vip(self, table: dict) -> Vip:
        try:
            v = vip_from_table(table, source="request", key="vip")
        except ConfigError as e:
            raise RequestError(str(e)) from None
        if v.key in self.vips:
            raise RequestError(f"VIP {vip_label(v.key)} exists ({self.vips[v.key].name})")
        if any(x.name == v.name for x in self.vips.values()):
            raise RequestError(f"VIP name {v.name!r} is already used")
        if len(self.vips) + 1 > self.lb.max_vips:
            raise RequestError(f"max_vips ({self.lb.max_vips}) reached")
        if self._n_backends() + len(v.backends) > self.lb.max_backends:
            raise RequestError(f"max_backends ({self.lb.max_backends}) reached")
        self.vips[v.key] = v
        self._record(f"add VIP {v.name} {vip_label(v.key)} with {len(v.backends)} backends")
        return v

    def remove_vip(self, vip_ref: str) -> None:
        key = self.find_vip(vip_ref)
        v = self.vips.pop(key)
        self.drained = {d for d in self.drained if d[0] != key}
        self._record(f"remove VIP {v.name}")

    def _n_backends(self) -> int:
        return sum(len(v.backends) for v in self.vips.values())

    # what to serve -------------------------------------------------------------------------
    def effective_weight(self, key: tuple, b: Backend) -> int:
        return 0 if (key, b.key) in self.drained else b.weight

    def specs(self, is_up: Callable[[BKey], bool] = lambda k: True) -> list[VipSpec]:
        """VipSpecs with drains as weight 0 and failed health checks as inactive."""
        return [vip_spec(v, tuple(backend_spec(b, self.effective_weight(key, b),
                                               is_up((key, b.key))) for b in v.backends))
                for key, v in self.vips.items()]

    def health_targets(self) -> dict[BKey, Target]:
        out = {}
        for key, v in self.vips.items():
            if v.health.kind == "none":
                continue
            for b in v.backends:
                out[(key, b.key)] = Target(b.address, v.health.port or b.port, v.health)
        return out


# --- the controller: desired state -> data plane, requests, status ---------------------------


class Controller:
    """Keeps the data plane equal to Desired (+ health); answers control requests.

    Works on a DataPlane or a FakeDataPlane; health checks need a running event loop
    (`sync_health`)."""

    def __init__(self, dp, cfg: Config, config_path: str | None = None,
                 log: Log | None = None, monitor: HealthMonitor[BKey] | None = None,
                 info: dict | None = None):
        self.dp = dp
        self.cfg = cfg
        self.config_path = config_path or cfg.source
        self.log = log or Log()
        self.desired = Desired(cfg)
        self.monitor = monitor or HealthMonitor(self._on_health_change)
        self.monitor.on_change = self._on_health_change
        self.monitor.on_result = self._on_health_result
        max_vips, max_backends = _id_limits(dp, cfg)
        self.lb = LoadBalancer(dp, max_vips, max_backends)
        self.neighbour_macs: dict = {}  # backend address -> MAC from the neighbour table
        self.info = dict(info or {})
        self.started = time.time()
        self.reloads = {"ok": 0, "error": 0}
        self.checks: dict[tuple[str, str, str], int] = {}
        self.on_stop: Callable[[bool], None] | None = None  # stop(keep) from a request
        self._live = False
        self._view: tuple = ()

    # state changes -----------------------------------------------------------------------
    def start(self, existing: MapState | None = None) -> list[str]:
        """First write: fill empty maps, or adopt those of a kept instance. Backends found
        inactive in kept maps (pulled by the previous daemon) start down."""
        if existing is not None:
            for (key, bkey) in _inactive_in(existing, self.desired):
                check = self.desired.vips[key].health
                if check.kind != "none":
                    self.monitor.seed((key, bkey), check, up=False)
            changes = self.lb.adopt(self.desired.specs(self.monitor.is_up), existing)
        else:
            changes = self.lb.apply(self.desired.specs(self.monitor.is_up))
        self._after(changes, "start")
        return changes

    def apply(self, why: str) -> list[str]:
        specs = self.desired.specs(self.monitor.is_up)
        if self.neighbour_macs:  # MAC-less backends: the neighbour table's answer
            specs = [replace(v, backends=tuple(
                replace(b, mac=self.neighbour_macs[b.address])
                if b.mac is None and b.address in self.neighbour_macs else b
                for b in v.backends)) for v in specs]
        changes = self.lb.apply(specs)
        self._after(changes, why)
        return changes

    def _after(self, changes: list[str], why: str) -> None:
        for c in changes:
            self.log("change", cause=why, what=c)
        self._refresh_view()
        if self._live:
            self.sync_health()

    def sync_health(self) -> None:
        """(Re)start health checks for the current desired state (in the event loop)."""
        self._live = True
        self.monitor.update(self.desired.health_targets())

    def _change(self, fn: Callable[[Desired], Any], why: str) -> list[str]:
        """Run one override on a copy of Desired, apply it, keep it only if that worked."""
        before = self.desired
        trial = copy.deepcopy(before)
        n = len(trial.overrides)
        fn(trial)
        self.desired = trial
        try:
            changes = self.apply(why)
        except Exception:
            self.desired = before
            self.lb.apply(before.specs(self.monitor.is_up))
            raise
        for o in trial.overrides[n:]:
            self.log("override", what=o)
        return changes

    def reload(self, cfg: Config | None = None) -> dict:
        """Re-read the file (or take `cfg`) and apply only the diff. Runtime overrides
        are dropped: the file is the truth again."""
        try:
            cfg = cfg or load_config(self.config_path)
            if cfg.lb.interface != self.cfg.lb.interface or \
                    cfg.lb.instance != self.cfg.lb.instance:
                raise ConfigError(cfg.source, "lb.interface", "cannot change while serving "
                                  "(stop and start again)")
        except ConfigError as e:
            self.reloads["error"] += 1
            self.log("reload_failed", level="error", error=str(e))
            raise RequestError(str(e)) from None
        ignored = [k for k in ("hash_seed", "nat_ports", "conntrack_size", "max_vips",
                               "max_backends", "frag_policy", "metrics")
                   if getattr(cfg.lb, k) != getattr(self.cfg.lb, k)]
        dropped = list(self.desired.overrides)
        before = self.desired
        self.desired = Desired(cfg)
        try:
            changes = self.apply("reload")
        except Exception as e:
            self.desired = before
            self.reloads["error"] += 1
            self.log("reload_failed", level="error", error=str(e))
            raise
        self.cfg = cfg
        self.reloads["ok"] += 1
        self.log("reloaded", config=self.config_path, changes=len(changes),
                 dropped_overrides=len(dropped) or None,
                 needs_restart=",".join(f"lb.{k}" for k in ignored) or None)
        return {"changes": changes, "dropped_overrides": dropped,
                "needs_restart": [f"lb.{k}" for k in ignored]}

    def _on_health_change(self, key: BKey, st: HealthState) -> None:
        """A backend flipped: apply first, then say so (the event means it is done)."""
        vkey, bkey = key
        v = self.desired.vips.get(vkey)
        name = v.name if v else vip_label(vkey)
        try:
            self.apply("health")
        except Exception as e:  # noqa: BLE001 - keep checking; the next flip retries
            self.log("apply_failed", level="error", cause="health", error=str(e))
            return
        if st.up:
            self.log("backend_up", vip=name, backend=bkey, successes=st.rise)
        else:
            self.log("backend_down", level="warning", vip=name, backend=bkey,
                     failures=st.fall, reason=st.last_detail)
        if v and not st.up and not any(
                self.monitor.is_up((vkey, b.key)) and self.desired.effective_weight(vkey, b)
                for b in v.backends):
            self.log("vip_without_backend", level="error", vip=name)

    def _on_health_result(self, key: BKey, ok: bool, detail: str) -> None:
        v = self.desired.vips.get(key[0])
        k = (v.name if v else vip_label(key[0]), key[1], "ok" if ok else "fail")
        self.checks[k] = self.checks.get(k, 0) + 1

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
            return self.reload()
        if cmd == "stop":
            if self.on_stop is None:
                raise RequestError("this daemon cannot be stopped by request", 1)
            self.on_stop(bool(req.get("keep", False)))
            return {"stopping": True, "keep": bool(req.get("keep", False))}
        if cmd == "backend":
            return {"changes": self._backend(req)}
        if cmd == "vip":
            return {"changes": self._vip(req)}
        raise RequestError(f"unknown command {cmd!r}")

    def _backend(self, req: dict) -> list[str]:
        op, vip = req.get("op"), req.get("vip")
        ref = req.get("backend")
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
    def _refresh_view(self) -> None:
        """An immutable copy of names and ids for the exporter's thread."""
        view = []
        for key, v in self.desired.vips.items():
            try:
                vid = self.lb.vip_id(key)
                ids = self.lb.backend_ids(key)
            except KeyError:
                continue
            view.append((v.name, vip_label(key), vid, tuple(
                (b.key, ids.get(b.key), self.desired.effective_weight(key, b),
                 self.monitor.is_up((key, b.key))) for b in v.backends)))
        self._view = tuple(view)

    def _counters(self, which: str, idx: int | None) -> dict[str, int]:
        read = getattr(self.dp, "obj_stats", None)
        if read is None or idx is None:
            return {"packets": 0, "bytes": 0, "new_flows": 0}
        return read(which, idx)

    def _vip_counters(self, vid: int | None, backends: Sequence[Mapping[str, Any]]
                      ) -> tuple[dict[str, int], dict[str, int]]:
        """(totals, dropped) of a VIP: the data plane counts forwarded traffic per backend
        and only what found no backend per VIP, so a VIP's totals are the sum of its
        current backends plus its drops."""
        dropped = self._counters("vip_stats", vid)
        total = {k: dropped[k] + sum(b[k] for b in backends)
                 for k in ("packets", "bytes", "new_flows")}
        return total, dropped

    def _reasons(self) -> dict[str, tuple[int, int]]:
        read = getattr(self.dp, "stats", None)
        return read() if read else {}

    def metrics_snapshot(self) -> MetricsSnapshot:
        snap = MetricsSnapshot(info={k: str(v) for k, v in self.info.items()},
                               reasons=self._reasons(), checks=dict(self.checks),
                               reloads=dict(self.reloads), flows=self._flow_counts())
        for name, label, vid, backends in self._view:
            counts = [self._counters("be_stats", bid) for _, bid, _, _ in backends]
            total, dropped = self._vip_counters(vid, counts)
            snap.vips.append((name, label, {**total, "dropped_packets": dropped["packets"],
                                            "dropped_bytes": dropped["bytes"]}))
            for (bkey, _, weight, up), c in zip(backends, counts):
                snap.backends.append((name, bkey, c, up, weight))
        return snap

    def _flow_counts(self) -> dict[str, int]:
        read = getattr(self.dp, "flow_counts", None)  # like _reasons: fakes have no readers
        try:
            return read() if read else {}
        except (OSError, ValueError, KeyError):  # a scrape never fails for it
            return {}

    def status(self) -> dict:
        vips = []
        for key, v in self.desired.vips.items():
            try:
                vid, ids = self.lb.vip_id(key), self.lb.backend_ids(key)
            except KeyError:
                vid, ids = None, {}
            backends = []
            for b in v.backends:
                st = self.monitor.states.get((key, b.key))
                up = self.monitor.is_up((key, b.key))
                weight = self.desired.effective_weight(key, b)
                drained = (key, b.key) in self.desired.drained
                state = "down" if not up else "draining" if weight == 0 else "up"
                backends.append({
                    "backend": b.key, "address": str(b.address), "port": b.port,
                    "mac": format_mac(b.mac) if b.mac else None, "id": ids.get(b.key),
                    "weight": weight, "config_weight": b.weight, "drained": drained,
                    "state": state, "health": st.as_dict() if st else None,
                    **self._counters("be_stats", ids.get(b.key))})
            h = v.health
            total, dropped = self._vip_counters(vid, backends)
            vips.append({
                "name": v.name, "vip": vip_label(key), "mode": v.mode, "id": vid,
                "snat": str(v.snat) if v.snat else None,
                "on_backend_removed": v.on_backend_removed,
                "health": None if h.kind == "none" else {
                    "kind": h.kind, "port": h.port, "path": h.path if h.kind == "http" else None,
                    "interval": h.interval, "timeout": h.timeout, "rise": h.rise,
                    "fall": h.fall},
                **total, "dropped": {"packets": dropped["packets"], "bytes": dropped["bytes"]},
                "backends": backends})
        return {**self.info, "config": self.config_path, "pid": os.getpid(),
                "uptime": round(time.time() - self.started, 1), "reloads": dict(self.reloads),
                "overrides": list(self.desired.overrides), "vips": vips,
                "stats": {k: {"packets": p, "bytes": b} for k, (p, b) in self._reasons().items()}}


def _id_limits(dp, cfg: Config) -> tuple[int, int]:
    """Ids must index every per-id map; a kept instance's maps keep their sizes."""
    maps = getattr(dp, "maps", None)
    if not maps:
        return cfg.lb.max_vips, cfg.lb.max_backends
    return (min(maps[n].max_entries for n in ("rings", "vip_stats")),
            min(maps[n].max_entries for n in ("backends", "be_stats")))


def _inactive_in(state: MapState, desired: Desired) -> list[BKey]:
    """Backends of `desired` whose entries for their VIP in kept maps are all inactive:
    the previous daemon had pulled them (health). A backend it had removed and the file
    now lists again also starts down, and rises after `rise` good checks."""
    from ._bpf import abi
    from .lb import backend_value

    out = []
    for key, v in desired.vips.items():
        if key not in state.vips:
            continue
        vip_id = state.vips[key].vip_id
        spec = vip_spec(v)
        for b, bs in zip(v.backends, spec.backends):
            want = backend_value(spec, bs)
            entries = [be for be in state.backends.values()
                       if be.family == want.family and bytes(be.addr) == bytes(want.addr)
                       and be.port == want.port and getattr(be, "vip_id", vip_id) == vip_id]
            if entries and not any(be.flags & abi.BE_F_ACTIVE for be in entries):
                out.append((key, b.key))
    return out


# --- the daemon: kernel side, event loop, sockets ---------------------------------------------


@dataclass
class ServeOptions:
    keep: bool = False  # exit leaves the program attached and the maps pinned
    metrics: tuple[str, int] | None = None  # overrides [lb] metrics
    xdp_mode: str = "auto"
    run_dir: str = DEFAULT_RUN_DIR
    pin_root: str = PIN_ROOT
    object_path: str | None = None  # the .bpf.o to load (default: the built one)


class _Stop(Exception):
    pass


class Paths:
    def __init__(self, run_dir: str, instance: str):
        self.run_dir = Path(run_dir)
        self.instance = instance
        self.sock = self.run_dir / f"{instance}.sock"
        self.pid = self.run_dir / f"{instance}.pid"


def pin_dir(pin_root: str, instance: str) -> str:
    return os.path.join(pin_root, instance)


class Daemon:
    """`xdplb serve`: set up (or take over) the data plane, run until stopped."""

    def __init__(self, config_path: str, cfg: Config, opts: ServeOptions, log: Log | None = None):
        self.config_path = config_path
        self.cfg = cfg
        self.opts = opts
        self.log = log or Log()
        self.instance = cfg.lb.instance
        self.paths = Paths(opts.run_dir, self.instance)
        self.pins = pin_dir(opts.pin_root, self.instance)
        self.dp: DataPlane | None = None
        self.ctl: Controller | None = None
        self.keep = opts.keep
        self._pidfile: IO[str] | None = None
        self._owns_socket = False
        self._attached = False
        self._took_over = False
        self._pending_stop: bool | None = None  # keep flag of a stop asked during setup
        self._pending_reload = False
        self._stop_event: asyncio.Event | None = None
        self._exporter: Exporter | None = None

    # lifecycle -------------------------------------------------------------------------------
    def run(self) -> int:
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

        def raise_stop(signum, frame):
            raise _Stop(signal.Signals(signum).name)

        signal.signal(signal.SIGINT, raise_stop)
        signal.signal(signal.SIGTERM, raise_stop)
        signal.signal(signal.SIGHUP, lambda s, f: setattr(self, "_pending_reload", True))
        ok = False
        try:
            try:
                self._lock()
                self._setup()
            except _Stop as e:
                self.log("interrupted", level="warning", signal=str(e), during="setup")
                return 1
            signal.signal(signal.SIGINT, lambda s, f: setattr(self, "_pending_stop", self.keep))
            signal.signal(signal.SIGTERM, lambda s, f: setattr(self, "_pending_stop", self.keep))
            asyncio.run(self._main())
            ok = True
            return 0
        finally:
            with _signals_deferred():
                self._teardown(ok)
            for s, h in old.items():
                signal.signal(s, h)

    def _lock(self) -> None:
        """One daemon per instance: a lock on the pid file, held until exit."""
        try:
            self.paths.run_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        except OSError as e:
            raise XdplbError(f"cannot create {self.paths.run_dir}: {e.strerror}") from None
        f = open(self.paths.pid, "a+")  # noqa: SIM115 - held for the daemon's life
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "?"
            f.close()
            raise XdplbError(f"instance {self.instance} is already served (pid {pid}, "
                             f"{self.paths.pid})") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._pidfile = f

    def _setup(self) -> None:
        from ._bpf import dataplane as dpm
        from ._bpf import object_path as default_object
        from ._bpf.libbpf import AttachError, BpfError, VerifierError, prog_name

        lb = self.cfg.lb
        try:
            ifindex = dpm.ifindex_of(lb.interface)
        except OSError:
            raise XdplbError(f"unknown interface {lb.interface!r} (in this network "
                             "namespace)") from None
        self.ifindex = ifindex
        try:
            dpm.ensure_bpffs()
        except OSError as e:
            raise XdplbError(f"{e.strerror or e}: pinned state needs bpffs") from None

        old_id, old_mode = dpm.xdp_attachment(ifindex)
        existing: dict = {}
        source = None
        if old_id:
            name = prog_name(old_id)
            if name != dpm.PROG_NAME:
                raise XdplbError(f"{lb.interface} already has an XDP program ({name!r}, id "
                                 f"{old_id}); xdplb will not replace it")
            holders = dpm.prog_holders(old_id)
            if holders:
                raise XdplbError(f"{lb.interface} is served by another xdplb process (pid "
                                 f"{', '.join(map(str, holders))}); stop it first")
            pinned: dict[str, Map]
            pinned, pinned_prog = ({}, 0)
            if os.path.isdir(self.pins):
                pinned, pinned_prog = dpm.open_pinned(self.pins)
            if pinned and pinned_prog == old_id:
                existing, source = pinned, "pins"
            else:
                for m in pinned.values():
                    m.close()
                existing, source = dpm.existing_maps(old_id), "attached program"
            if self.opts.xdp_mode not in ("auto", old_mode):
                self.log("xdp_mode_kept", level="warning", wanted=self.opts.xdp_mode,
                         attached=old_mode, why="an atomic replace keeps the attach mode")
        elif os.path.isdir(self.pins):
            dpm.DataPlane.unpin(self.pins)
            self.log("stale_pins_removed", level="warning", path=self.pins,
                     why="no program attached to the interface")

        sizes = dpm.Sizes(max_vips=lb.max_vips, max_backends=lb.max_backends,
                          conntrack=lb.conntrack_size)
        knobs = dpm.Knobs(hash_seed=lb.hash_seed, nat_port_min=lb.nat_ports[0],
                          nat_port_max=lb.nat_ports[1], frag_drop=lb.frag_policy == "drop")
        old_knobs_map = existing.pop(dpm.KNOBS_PIN, None)
        if old_knobs_map is not None:
            old_knobs = dpm.read_knobs(old_knobs_map)
            old_knobs_map.close()
            old_range = old_knobs and (old_knobs.nat_port_min, old_knobs.nat_port_max)
            new_format = dpm.object_flow_format(self.opts.object_path or default_object())
            if old_knobs and old_knobs.flow_format != new_format:
                for m in existing.values():
                    m.close()
                raise XdplbError(
                    f"cannot take over the xdplb on {lb.interface} (program id {old_id}): its "
                    f"flow table has format {old_knobs.flow_format}, this xdplb uses "
                    f"{new_format} (another flow hash or layout); `xdplb stop` it "
                    "first (its flows are dropped)")
            if old_knobs and old_knobs.ct_sets:  # the kept flow table's geometry
                knobs.ct_sets = old_knobs.ct_sets
            if old_range and old_range != lb.nat_ports:
                # live flows hold NAT ports of the old range: their replies must still
                # be recognised
                knobs.nat_port_min, knobs.nat_port_max = old_range
                self.log("takeover_note", level="warning",
                         what=f"lb.nat_ports stays {old_range[0]}-{old_range[1]} (configured "
                         f"{lb.nat_ports[0]}-{lb.nat_ports[1]}: takes effect after a full "
                         "stop)")
        try:
            self.dp = dpm.DataPlane.load(self.opts.object_path, sizes, knobs,
                                         reuse=existing or None)
        except dpm.UpgradeError as e:
            raise XdplbError(f"cannot take over the xdplb on {lb.interface} (program id "
                             f"{old_id}): {e}; `xdplb stop` it first (its flows are "
                             "dropped)") from None
        except VerifierError as e:
            raise XdplbError(f"the kernel's verifier rejected the data plane: {e}") from None
        except BpfError as e:
            raise XdplbError(f"cannot load the data plane: {e}") from None
        finally:
            for m in existing.values():
                m.close()
        self._took_over = bool(existing)
        for note in self.dp.reuse_notes:
            self.log("takeover_note", level="warning", what=note)

        info = {"instance": self.instance, "interface": lb.interface}
        self.ctl = Controller(self.dp, self.cfg, self.config_path, self.log, info=info)
        self.ctl.on_stop = self._request_stop
        if existing:
            self.ctl.start(read_map_state(self.dp))
        else:
            self.ctl.start()
        try:
            if old_id:
                old_fd = dpm.prog_fd_by_id(old_id)
                try:
                    self.dp.replace_attached(ifindex, old_fd, old_mode)
                finally:
                    os.close(old_fd)
            else:
                self.dp.attach(ifindex, self.opts.xdp_mode)
        except AttachError as e:
            raise XdplbError(f"cannot attach XDP to {lb.interface}: {e}") from None
        self._attached = True
        assert self.dp.program is not None  # loaded above
        prog_id = dpm.prog_id_of_fd(self.dp.program.fd)
        self.ctl.info["program_id"] = prog_id
        try:
            self.dp.pin(self.pins)
        except OSError as e:
            raise XdplbError(f"cannot pin state under {self.pins}: {e}") from None
        if old_id:
            self.log("took_over", interface=lb.interface, old_program=old_id,
                     program=prog_id, maps_from=source, reused=",".join(self.dp.reused))
        else:
            self.log("attached", interface=lb.interface, program=prog_id,
                     mode=self.opts.xdp_mode)

    def _teardown(self, clean: bool) -> None:
        """Keep (program attached, pins left) or detach and unpin; either way release the
        socket and pid file. An instance that was kept before we started is kept again if
        we fail after taking it over: traffic never loses its program because of us."""
        from ._bpf.dataplane import DataPlane

        keep = self._attached and (self.keep or (not clean and self._took_over))
        if self.dp is not None:
            try:
                self.dp.close(detach=not keep)
            except OSError as e:
                self.log("detach_failed", level="error", error=str(e))
            if keep:
                self.log("kept", interface=self.cfg.lb.interface, pins=self.pins,
                         program=self.ctl.info.get("program_id") if self.ctl else None)
            elif self._attached:  # (pins are made after attaching; a failed takeover
                DataPlane.unpin(self.pins)  # leaves the kept instance's pins alone)
                self.log("detached", interface=self.cfg.lb.interface)
            self.dp = None
        with contextlib.suppress(FileNotFoundError):
            if self._owns_socket:
                self.paths.sock.unlink()
        if self._pidfile is not None:
            with contextlib.suppress(FileNotFoundError):
                self.paths.pid.unlink()
            self._pidfile.close()
            self._pidfile = None

    def _request_stop(self, keep: bool) -> None:
        self.keep = keep
        if self._stop_event is not None:
            self._stop_event.set()

    def _on_signal_stop(self, signum: int) -> None:
        self.log("signal", signal=signal.Signals(signum).name,
                 action="keep attached and exit" if self.opts.keep else "detach and exit")
        self._request_stop(self.opts.keep)

    def _on_hup(self) -> None:
        self.log("signal", signal="SIGHUP", action="reload")
        try:
            assert self.ctl is not None  # set up before the event loop runs
            self.ctl.reload()
        except RequestError:
            pass  # logged by reload()
        except Exception as e:  # noqa: BLE001 - the daemon keeps serving the old state
            self.log("reload_failed", level="error", error=str(e))

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        sock = self.paths.sock
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()  # stale: the pid file lock says no daemon owns it
        old_umask = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(self._client, path=str(sock),
                                                     limit=MAX_REQUEST)
        finally:
            os.umask(old_umask)
        self._owns_socket = True
        assert self.ctl is not None  # set up before the event loop runs
        self.ctl.sync_health()
        metrics = self.opts.metrics or self.cfg.lb.metrics
        if metrics:
            from .metrics import start_exporter

            try:
                self._exporter = start_exporter(metrics[0], metrics[1],
                                                self.ctl.metrics_snapshot)
            except OSError as e:
                self.log("metrics_failed", level="error", listen=f"{metrics[0]}:{metrics[1]}",
                         error=e.strerror or str(e))
            except ImportError:
                self.log("metrics_failed", level="error",
                         error="prometheus-client is not installed (pip install "
                         "'xdplb[metrics]')")
            else:
                self.log("metrics", listen=f"{metrics[0]}:{metrics[1]}")
        self._neigh_task = asyncio.ensure_future(self._resolve_neighbours())
        n_be = sum(len(v.backends) for v in self.cfg.vips)
        self.log("ready", instance=self.instance, interface=self.cfg.lb.interface,
                 vips=len(self.cfg.vips), backends=n_be, socket=str(sock),
                 pid=os.getpid(), keep=self.opts.keep)
        if self._pending_reload:
            self._on_hup()
        if self._pending_stop is not None:
            self._request_stop(self._pending_stop)
        try:
            await self._stop_event.wait()
        finally:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()
            self._neigh_task.cancel()
            await self.ctl.monitor.close()
            if self._exporter:
                self._exporter.close()

    async def _resolve_neighbours(self, every: float = 1.0) -> None:
        """Backends configured without a MAC get the one the kernel's neighbour table
        knows (written into the backend entry: no per-packet FIB lookup, and no need for
        forwarding on the interface). A datagram to the discard port makes the kernel
        resolve and refresh the entry (ARP/ND); a changed MAC is applied at once."""
        from ._bpf.netlink import neighbour_macs

        while True:
            try:
                await self._refresh_neighbours(neighbour_macs)
            except (OSError, RuntimeError, ValueError) as e:  # keep resolving; say why
                self.log("neighbour_error", level="error", error=repr(e))
            await asyncio.sleep(every)

    async def _refresh_neighbours(self, neighbour_macs) -> None:
        """One round: poke each MAC-less backend, apply what the table now knows (an
        entry resolved by this round's poke shows up in the next round)."""
        assert self.ctl is not None  # set up before the event loop runs
        wanted = {b.address for spec in self.ctl.desired.specs() for b in spec.backends
                  if b.mac is None}
        for addr in wanted:
            fam = socket.AF_INET if addr.version == 4 else socket.AF_INET6
            with contextlib.suppress(OSError), socket.socket(fam, socket.SOCK_DGRAM) as s:
                s.setblocking(False)
                s.sendto(b"", (str(addr), 9))
        if wanted:  # pyroute2's sync API cannot run inside this event loop: a thread
            known = await asyncio.to_thread(neighbour_macs, wanted)
            if known != self.ctl.neighbour_macs:
                self.ctl.neighbour_macs = known
                self.ctl.apply("neighbour")

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), 10)
                req = json.loads(line or b"null")
            except (ValueError, TimeoutError, asyncio.LimitOverrunError) as e:
                reply = {"ok": False, "error": f"bad request: {e}", "code": 2}
            else:
                assert self.ctl is not None  # set up before the event loop runs
                reply = self.ctl.handle(req)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@contextlib.contextmanager
def _signals_deferred():
    """Hold SIGINT/SIGTERM while cleaning up (a second Ctrl-C must not half-detach)."""
    sigs = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.signal(s, signal.SIG_IGN) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# --- client side ----------------------------------------------------------------------------


def call(sock_path: str | os.PathLike, req: dict, timeout: float = 30) -> dict:
    """Send one request to a daemon's control socket; its reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock_path))
        s.sendall(json.dumps(req).encode() + b"\n")
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    data = b"".join(chunks)
    if not data:
        raise XdplbError(f"{sock_path}: the daemon closed the connection without a reply")
    return json.loads(data)


def _config_or_usage(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as e:
        raise UsageError(str(e)) from None


def _target(args) -> tuple[Paths, Config | None]:
    """Which instance a client command talks to: -c FILE, --instance, --iface, or the
    only socket in the run directory."""
    run_dir = args.run_dir or run_dir_default()
    cfg = None
    if getattr(args, "config", None):
        cfg = _config_or_usage(args.config)
        instance = cfg.lb.instance
    elif getattr(args, "instance", None):
        instance = args.instance
    elif getattr(args, "iface", None):
        instance = args.iface
    else:
        socks = sorted(Path(run_dir).glob("*.sock")) if Path(run_dir).is_dir() else []
        if len(socks) != 1:
            which = ", ".join(p.stem for p in socks) if socks else "none running"
            raise UsageError(f"which instance? ({which} in {run_dir}): give -c FILE or "
                             "--instance NAME")
        instance = socks[0].stem
    if getattr(args, "instance", None):
        instance = args.instance
    return Paths(run_dir, instance), cfg


def _request(paths: Paths, req: dict, timeout: float = 60) -> dict:
    try:
        reply = call(paths.sock, req, timeout)
    except (FileNotFoundError, ConnectionRefusedError):
        raise XdplbError(f"no xdplb serve is running for instance {paths.instance} "
                         f"(no answer on {paths.sock})") from None
    except TimeoutError:
        raise XdplbError(f"{paths.sock}: no reply within {timeout:g} s") from None
    if not reply.get("ok"):
        err = reply.get("error", "failed")
        if reply.get("code", 1) == 2:
            raise UsageError(err)
        raise XdplbError(err)
    return reply


def _print_changes(changes: list[str], none: str = "no changes") -> None:
    if not changes:
        print(none)
    for c in changes:
        print(c)


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise XdplbError(f"{what} needs root (CAP_BPF and CAP_NET_ADMIN); run it with sudo")


def cmd_serve(args) -> int:
    cfg = _config_or_usage(args.config)
    metrics = None
    if args.metrics:
        try:
            metrics = parse_listen(args.metrics)
        except (ValueError, TypeError) as e:
            raise UsageError(f"--metrics: {e}") from None
    _require_root("xdplb serve")
    opts = ServeOptions(keep=args.keep, metrics=metrics, xdp_mode=args.xdp_mode,
                        run_dir=args.run_dir or run_dir_default(), object_path=args.object)
    return Daemon(os.path.abspath(args.config), cfg, opts).run()


def cmd_reload(args) -> int:
    paths, _ = _target(args)
    if paths.sock.exists():
        reply = _request(paths, {"cmd": "reload"})
        _print_changes(reply["changes"])
        if reply.get("dropped_overrides"):
            print(f"dropped {len(reply['dropped_overrides'])} runtime override(s): "
                  + "; ".join(reply["dropped_overrides"]))
        for k in reply.get("needs_restart", []):
            print(f"{k} changed: takes effect after `xdplb stop` and a new `xdplb serve`")
        return 0
    try:
        pid = int(paths.pid.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError):
        raise XdplbError(f"no xdplb serve is running for instance {paths.instance}") from None
    print(f"sent SIGHUP to pid {pid}")
    return 0


def cmd_status(args) -> int:
    paths, _ = _target(args)
    st = _request(paths, {"cmd": "status"})["status"]
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    print(f"xdplb instance {st['instance']} on {st['interface']} (pid {st['pid']}, program id "
          f"{st.get('program_id', '?')}, up {st['uptime']:.0f} s), config {st['config']}")
    for v in st["vips"]:
        h = v["health"]
        check = "no health check" if not h else (
            f"{h['kind']}{' ' + h['path'] if h.get('path') else ''} every {h['interval']:g} s, "
            f"rise {h['rise']} fall {h['fall']}")
        print(f"VIP {v['name']} {v['vip']} {v['mode']}: {v['packets']} pkts, "
              f"{v['new_flows']} flows; {check}")
        for b in v["backends"]:
            extra = ""
            if b["health"] and b["health"]["last_error"]:
                extra = f"  last check: {b['health']['last_error']}"
            print(f"  {b['backend']:<24} {b['state']:<9} weight {b['weight']:<5} "
                  f"{b['packets']:>10} pkts {b['new_flows']:>8} flows{extra}")
    if st["overrides"]:
        print("runtime overrides (replaced by the next reload from the file):")
        for o in st["overrides"]:
            print(f"  {o}")
    return 0


def cmd_stop(args) -> int:
    """Stop a running daemon (detaching), or detach and unpin a kept instance."""
    paths, cfg = _target(args)
    iface = cfg.lb.interface if cfg else args.iface
    pid = None
    with contextlib.suppress(OSError, ValueError):
        pid = int(paths.pid.read_text().strip())
    if paths.sock.exists():
        try:
            reply = call(paths.sock, {"cmd": "stop", "keep": False}, 10)
        except (FileNotFoundError, ConnectionRefusedError):
            reply = None
        if reply is not None:
            if not reply.get("ok"):
                raise XdplbError(reply.get("error", "stop refused"))
            deadline = time.monotonic() + 15
            while pid and _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid and _alive(pid):
                raise XdplbError(f"pid {pid} did not exit within 15 s")
            print(f"stopped xdplb serve (pid {pid}) of instance {paths.instance}: detached")
            return 0
    _require_root("xdplb stop")
    return _stop_kept(paths.instance, iface, args.pin_root)


def _stop_kept(instance: str, iface: str | None, pin_root: str) -> int:
    from ._bpf import dataplane as dpm
    from ._bpf.libbpf import prog_name, xdp_detach

    dpm.ensure_bpffs()
    pins = pin_dir(pin_root, instance)
    done = []
    if iface:
        try:
            ifindex = dpm.ifindex_of(iface)
        except OSError:
            raise XdplbError(f"unknown interface {iface!r} (in this network namespace)") from None
        prog_id, mode = dpm.xdp_attachment(ifindex)
        if prog_id:
            if prog_name(prog_id) != dpm.PROG_NAME:
                raise XdplbError(f"the XDP program on {iface} (id {prog_id}) is not xdplb's")
            holders = dpm.prog_holders(prog_id)
            if holders:
                raise XdplbError(f"the xdplb on {iface} belongs to a running process (pid "
                                 f"{', '.join(map(str, holders))}): stop that instead")
            fd = dpm.prog_fd_by_id(prog_id)
            try:
                xdp_detach(ifindex, fd, mode)
            finally:
                os.close(fd)
            done.append(f"detached program id {prog_id} from {iface}")
    elif not os.path.isdir(pins):
        raise UsageError("give -c FILE or --iface IFACE to detach a kept instance")
    if dpm.DataPlane.unpin(pins):
        done.append(f"removed {pins}")
    if not done:
        raise XdplbError(f"nothing to stop: no xdplb attached{' to ' + iface if iface else ''} "
                         f"and no pins under {pins}")
    print(f"stopped instance {instance}: " + ", ".join(done))
    return 0


def _backend_table(args) -> dict:
    addr, port = _parse_backend_ref(args.backend)
    t: dict[str, Any] = {"address": str(addr)}
    if port is not None:
        t["port"] = port
    if args.mac:
        t["mac"] = args.mac
    if args.weight is not None:
        t["weight"] = args.weight
    return t


def cmd_backend(args) -> int:
    paths, _ = _target(args)
    req: dict[str, Any] = {"cmd": "backend", "op": args.op, "vip": args.vip}
    if args.op == "add":
        try:
            req["backend"] = _backend_table(args)
        except RequestError as e:
            raise UsageError(str(e)) from None
    else:
        req["backend"] = args.backend
    if args.op == "weight":
        req["weight"] = args.weight_value
    _print_changes(_request(paths, req)["changes"])
    return 0


def cmd_vip(args) -> int:
    paths, _ = _target(args)
    if args.op == "remove":
        _print_changes(_request(paths, {"cmd": "vip", "op": "remove", "vip": args.vip})
                       ["changes"])
        return 0
    host, sep, port = args.vip.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"{args.vip!r}: give the VIP as ADDRESS:PORT ([IPV6]:PORT)")
    t: dict[str, Any] = {"address": host.strip("[]"), "port": int(port),
                         "protocol": args.proto, "mode": args.mode}
    for k in ("name", "snat", "ring_size", "on_backend_removed"):
        if getattr(args, k) is not None:
            t[k] = getattr(args, k)
    backends = []
    for ref in args.backend or []:
        spec, _, mac = ref.partition("@")
        addr, bport = _parse_backend_ref(spec)
        b: dict[str, Any] = {"address": str(addr)}
        if bport is not None:
            b["port"] = bport
        if mac:
            b["mac"] = mac
        backends.append(b)
    t["backend"] = backends
    _print_changes(_request(paths, {"cmd": "vip", "op": "add", "vip": t})["changes"])
    return 0


# --- command line ------------------------------------------------------------------------------


def _add_target(p: argparse.ArgumentParser, iface: bool = False) -> None:
    g = p.add_argument_group("which instance (default: the only one running)")
    g.add_argument("-c", "--config", metavar="FILE", help="the instance of this config file")
    g.add_argument("--instance", metavar="NAME", help="[lb] name, else the interface name")
    if iface:
        g.add_argument("--iface", metavar="IFACE", help="the instance on this interface")
    g.add_argument("--run-dir", metavar="DIR", default=None,
                   help=f"pid files and control sockets (default $XDPLB_RUN_DIR or "
                   f"{DEFAULT_RUN_DIR})")


def register_cli(sub) -> None:
    """Add serve, reload, stop, status, backend and vip to the xdplb command line."""
    s = sub.add_parser(
        "serve", help="run the load balancer from a config file (the operator's daemon)",
        description="Validate FILE, load and attach the data plane (or take over a kept "
        "one without dropping flows), then run health checks, reloads (SIGHUP or `xdplb "
        "reload`), the control socket and the Prometheus exporter until SIGINT/SIGTERM.")
    s.add_argument("-c", "--config", required=True, metavar="FILE")
    s.add_argument("--keep", action="store_true",
                   help="on exit leave the program attached and the maps pinned, for a "
                   "restart or upgrade that keeps every connection")
    s.add_argument("--metrics", metavar="ADDR:PORT",
                   help="serve Prometheus metrics (overrides [lb] metrics)")
    s.add_argument("--xdp-mode", choices=("auto", "native", "generic"), default="auto")
    s.add_argument("--run-dir", metavar="DIR", default=None,
                   help=f"pid file and control socket (default $XDPLB_RUN_DIR or "
                   f"{DEFAULT_RUN_DIR})")
    s.add_argument("--object", metavar="PATH", default=None, help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_serve)

    r = sub.add_parser("reload", help="re-read the config file of a running serve and apply "
                       "the difference")
    _add_target(r)
    r.set_defaults(func=cmd_reload)

    st = sub.add_parser("status", help="VIPs, backends (health, weight) and counters of a "
                        "running serve")
    _add_target(st)
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    sp = sub.add_parser("stop", help="stop a running serve, or detach and unpin a kept one")
    _add_target(sp, iface=True)
    sp.add_argument("--pin-root", default=PIN_ROOT, help=argparse.SUPPRESS)
    sp.set_defaults(func=cmd_stop)

    b = sub.add_parser("backend", help="runtime backend changes on a running serve "
                       "(until the next reload)")
    bsub = b.add_subparsers(dest="op", required=True)
    for op, hlp in (("drain", "no new flows (weight 0); established flows stay"),
                    ("undrain", "back to its weight"),
                    ("remove", "remove; its flows re-select or reset (VIP policy)"),
                    ("weight", "set the Maglev weight"),
                    ("add", "add a backend to a VIP")):
        p = bsub.add_parser(op, help=hlp)
        p.add_argument("backend", metavar="BACKEND", help="ADDRESS, ADDRESS:PORT or [IPV6]:PORT")
        p.add_argument("--vip", help="VIP name or ADDRESS:PORT[/PROTO] (default: every VIP "
                       "with that backend" + ("; required with several VIPs)" if op == "add"
                                              else ")"))
        if op == "weight":
            p.add_argument("weight_value", metavar="WEIGHT", type=int)
        if op == "add":
            p.add_argument("--mac", help="next-hop MAC (default: from the kernel's FIB)")
            p.add_argument("--weight", type=int, default=None)
        _add_target(p)
        p.set_defaults(func=cmd_backend)

    v = sub.add_parser("vip", help="runtime VIP changes on a running serve (until the next "
                       "reload)")
    vsub = v.add_subparsers(dest="op", required=True)
    a = vsub.add_parser("add", help="add a VIP")
    a.add_argument("vip", metavar="ADDRESS:PORT")
    a.add_argument("--proto", choices=("tcp", "udp"), default="tcp")
    a.add_argument("--mode", choices=("nat", "dsr"), default="nat")
    a.add_argument("--name")
    a.add_argument("--snat")
    a.add_argument("--ring-size", type=int)
    a.add_argument("--on-backend-removed", choices=("reselect", "reset"))
    a.add_argument("--backend", action="append", metavar="IP[:PORT][@MAC]")
    _add_target(a)
    a.set_defaults(func=cmd_vip)
    rm = vsub.add_parser("remove", help="remove a VIP")
    rm.add_argument("vip", metavar="VIP", help="name or ADDRESS:PORT[/PROTO]")
    _add_target(rm)
    rm.set_defaults(func=cmd_vip)


def main(argv: list[str] | None = None) -> int:
    """`python -m xdplb.daemon ...`: the xdplb command line with these commands, also
    before cli.py registers them."""
    from . import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "serve" not in sub.choices:
        register_cli(sub)
    return _run(parser, argv)


def _run(parser: argparse.ArgumentParser, argv: list[str] | None) -> int:
    cast(io.TextIOWrapper, sys.stdout).reconfigure(line_buffering=True)
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except UsageError as e:
        print(f"xdplb: {e}", file=sys.stderr, flush=True)
        return 2
    except (XdplbError, OSError) as e:
        print(f"xdplb: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("xdplb: interrupted", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
