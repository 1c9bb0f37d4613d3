"""Desired state: what should be served. The configuration file's VIPs as LoadBalancer
specs, plus the runtime overrides (drain, weight, backend and VIP add/remove) that control
requests make until the next reload."""
from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from dataclasses import replace

from ..config import (
    Backend,
    Config,
    ConfigError,
    Vip,
    VipKey,
    backend_from_table,
    vip_from_table,
)
from ..errors import XdplbError
from ..health import Target
from ..lb import BackendSpec, VipSpec
from ..tunnel import fill_tunnel_sources

BKey = tuple[VipKey, str]  # (VIP key, backend key): one backend of one VIP


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
                   udp_stateless=v.udp_stateless, name=v.name, tunnel_source=v.tunnel_source)


def specs_from_config(cfg: Config) -> list[VipSpec]:
    """The VIPs of a configuration as LoadBalancer specs. A backend's ring key is its
    config key ('10.0.0.2:8000', '[2001:db8::2]:80'), so every node given the same file
    builds the same Maglev tables."""
    return [vip_spec(v) for v in cfg.vips]


@functools.lru_cache(maxsize=1 << 14)  # (str() of an address is slow; status asks often)
def vip_label(key: VipKey) -> str:
    addr, port, proto = key
    host = f"[{addr}]" if addr.version == 6 else str(addr)
    return f"{host}:{port}/{proto}"


# --- the file plus runtime overrides -----------------------------------------------------


class RequestError(XdplbError):
    """A control request that cannot be done (unknown VIP, bad value); `code` is the
    exit status the client reports (2: bad input)."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def parse_backend_ref(ref: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address,
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
    (drain, weight, backend and VIP add/remove).

    Overrides are kept as `changes`, one entry per target and kind (a later change of
    the same target replaces an earlier one, so they stay bounded), in a form that
    `replay` applies again on top of another file: a reload or a restart keeps them,
    dropping those that no longer apply; `reset` drops them all."""

    def __init__(self, cfg: Config):
        self.lb = cfg.lb
        self._file: tuple[Vip, ...] = tuple(cfg.vips)
        self.vips: dict[VipKey, Vip] = {v.key: v for v in cfg.vips}
        self.drained: set[BKey] = set()
        self.changes: list[dict] = []
        self.tunnel_sources: dict = {}  # family -> the interface's address (tunnel VIPs)

    @property
    def overrides(self) -> list[str]:
        """The overrides in words, one line each."""
        return [describe(c) for c in self.changes]

    def reset(self) -> None:
        """Back to the file as it is."""
        self.vips = {v.key: v for v in self._file}
        self.drained = set()
        self.changes = []

    def replay(self, changes: list[dict]) -> list[str]:
        """Apply `changes` (from another Desired, or the state file) on top of this one;
        those that no longer apply are left out: what was dropped, and why, one line
        each."""
        dropped = []
        for c in changes:
            try:
                _apply(self, c)
            except (RequestError, KeyError, TypeError, ValueError) as e:
                what = describe(c) if _describable(c) else repr(c)
                dropped.append(f"{what}: {e}")
        return dropped

    def copy(self) -> Desired:
        """An independent copy (VIPs and backends are frozen and shared): a deepcopy of
        4,096 VIPs took longer than applying the change."""
        out = Desired.__new__(Desired)
        out.lb, out._file, out.vips = self.lb, self._file, dict(self.vips)
        out.drained, out.changes = set(self.drained), [dict(c) for c in self.changes]
        out.tunnel_sources = dict(self.tunnel_sources)
        return out

    # lookups ---------------------------------------------------------------------------
    def find_vip(self, ref: str) -> VipKey:
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

    def select(self, vip_ref: str | None, backend_ref: str) -> list[tuple[VipKey, Backend]]:
        """Backends matching `backend_ref` in one VIP, or in every VIP without vip_ref."""
        addr, port = parse_backend_ref(backend_ref)
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
    def _record(self, change: dict) -> None:
        """Keep one entry per target and kind: drop what `change` supersedes, then add
        it unless it only undoes an override (an undrain, the removal of an added
        backend or VIP)."""
        op, vip, be = change["op"], change.get("name", change.get("vip")), change.get("backend")
        target = (vip, be if isinstance(be, str) else change.get("key"))
        same = [c for c in self.changes if _target(c) == target]
        if op in ("drain", "undrain"):
            self._drop([c for c in same if c["op"] == "drain"])
            if op == "drain":
                self.changes.append(change)
        elif op == "weight":
            self._drop([c for c in same if c["op"] == "weight"])
            self.changes.append(change)
        elif op == "remove_backend":
            # a backend an override added goes with its override (a file backend removed
            # earlier and added again keeps that earlier removal)
            added = any(c["op"] == "add_backend" for c in same)
            self._drop([c for c in same if c["op"] in ("drain", "weight", "add_backend")])
            if not added:
                self.changes.append(change)
        elif op == "remove_vip":
            mine = [c for c in self.changes if _target(c)[0] == vip]
            added = any(c["op"] == "add_vip" for c in mine)
            self._drop([c for c in mine if c["op"] != "remove_vip"])
            if not added:
                self.changes.append(change)
        else:  # add_backend, add_vip
            self.changes.append(change)

    def _drop(self, gone: list[dict]) -> None:
        ids = {id(c) for c in gone}
        self.changes = [c for c in self.changes if id(c) not in ids]

    def drain(self, vip_ref: str | None, backend_ref: str, on: bool = True) -> None:
        for key, b in self.select(vip_ref, backend_ref):
            (self.drained.add if on else self.drained.discard)((key, b.key))
            self._record({"op": "drain" if on else "undrain", "vip": self.vips[key].name,
                          "backend": b.key})

    def set_weight(self, vip_ref: str | None, backend_ref: str, weight: object) -> None:
        if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 0xFFFF:
            raise RequestError(f"weight {weight!r} is out of range 0..65535")
        for key, b in self.select(vip_ref, backend_ref):
            v = self.vips[key]
            self.vips[key] = replace(v, backends=tuple(
                replace(x, weight=weight) if x is b else x for x in v.backends))
            self._record({"op": "weight", "vip": v.name, "backend": b.key, "weight": weight})

    def _one_vip(self, vip_ref: str | None) -> VipKey:
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
        self._record({"op": "add_backend", "vip": v.name, "backend": dict(table), "key": b.key,
                      "weight": b.weight})

    def remove_backend(self, vip_ref: str | None, backend_ref: str) -> None:
        for key, b in self.select(vip_ref, backend_ref):
            v = self.vips[key]
            self.vips[key] = replace(v, backends=tuple(x for x in v.backends if x is not b))
            self.drained.discard((key, b.key))
            self._record({"op": "remove_backend", "vip": v.name, "backend": b.key})

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
        self._record({"op": "add_vip", "vip": dict(table), "name": v.name,
                      "label": vip_label(v.key), "backends": len(v.backends)})
        return v

    def remove_vip(self, vip_ref: str) -> None:
        key = self.find_vip(vip_ref)
        v = self.vips.pop(key)
        self.drained = {d for d in self.drained if d[0] != key}
        self._record({"op": "remove_vip", "vip": v.name})

    def _n_backends(self) -> int:
        return sum(len(v.backends) for v in self.vips.values())

    # what to serve -------------------------------------------------------------------------
    def effective_weight(self, key: VipKey, b: Backend) -> int:
        return 0 if (key, b.key) in self.drained else b.weight

    def specs(self, health: Callable[[BKey], str | bool] = lambda k: "up") -> list[VipSpec]:
        """VipSpecs for what `health` says of each backend: "up" (or True) serves with its
        weight (0 when drained); "drain" keeps its established flows and gets no new ones
        (weight 0); "pulled" (or False) is inactive: its flows are re-selected or reset by
        the VIP's on_backend_removed."""
        out = []
        for key, v in self.vips.items():
            backends = []
            for b in v.backends:
                h = health((key, b.key))
                h = {True: "up", False: "pulled"}.get(h, h) if isinstance(h, bool) else h
                weight = self.effective_weight(key, b) if h == "up" else 0
                backends.append(backend_spec(b, weight, h != "pulled"))
            out.append(vip_spec(v, tuple(backends)))
        return fill_tunnel_sources(out, self.lb.interface, cache=self.tunnel_sources)

    def health_targets(self) -> dict[BKey, Target]:
        out = {}
        for key, v in self.vips.items():
            if v.health.kind == "none":
                continue
            for b in v.backends:
                out[(key, b.key)] = Target(b.address, v.health.port or b.port, v.health)
        return out


# --- overrides as data ------------------------------------------------------------------


def _target(c: dict) -> tuple[str | None, str | None]:
    """(VIP name, backend key) an override is about (backend None: the VIP itself)."""
    if c["op"] == "add_vip":
        return c["name"], None
    if c["op"] == "remove_vip":
        return c["vip"], None
    return c["vip"], c["key"] if c["op"] == "add_backend" else c["backend"]


def _describable(c: object) -> bool:
    return isinstance(c, dict) and c.get("op") in _WORDS


_WORDS = {
    "drain": lambda c: f"drain {c['vip']} {c['backend']}",
    "weight": lambda c: f"weight {c['vip']} {c['backend']} {c['weight']}",
    "add_backend": lambda c: f"add backend {c['vip']} {c['key']} weight {c['weight']}",
    "remove_backend": lambda c: f"remove backend {c['vip']} {c['backend']}",
    "add_vip": lambda c: f"add VIP {c['name']} {c['label']} with {c['backends']} backends",
    "remove_vip": lambda c: f"remove VIP {c['vip']}",
}


def describe(c: dict) -> str:
    return str(_WORDS[c["op"]](c))


def _apply(d: Desired, c: dict) -> None:
    """One override again (from `Desired.changes` or the state file)."""
    if not _describable(c):
        raise ValueError("not an override")
    op = c["op"]
    if op == "drain":
        d.drain(c["vip"], c["backend"])
    elif op == "weight":
        d.set_weight(c["vip"], c["backend"], c["weight"])
    elif op == "add_backend":
        d.add_backend(c["vip"], dict(c["backend"]))
    elif op == "remove_backend":
        d.remove_backend(c["vip"], c["backend"])
    elif op == "add_vip":
        d.add_vip(dict(c["vip"]))
    else:
        d.remove_vip(c["vip"])


# --- what a new file would change --------------------------------------------------------

RESTART_KEYS = ("hash_seed", "nat_ports", "conntrack_size", "max_vips", "max_backends",
                "frag_policy", "metrics")


def config_diff(old: Config, new: Config) -> list[str]:
    """What serving `new` instead of `old` changes, one line each, in the words of the
    file: VIPs and backends added or removed, settings and weights changed, checks
    changed, [lb] keys that need a restart."""
    out: list[str] = []
    for k in RESTART_KEYS:
        if getattr(old.lb, k) != getattr(new.lb, k):
            out.append(f"lb.{k}: {getattr(old.lb, k)!r} -> {getattr(new.lb, k)!r} "
                       "(takes effect after a restart)")
    before = {v.key: v for v in old.vips}
    after = {v.key: v for v in new.vips}
    for key in before.keys() - after.keys():
        out.append(f"remove VIP {before[key].name} ({vip_label(key)})")
    for key, v in after.items():
        if key not in before:
            out.append(f"add VIP {v.name} ({vip_label(key)}) with {len(v.backends)} backends")
            continue
        o = before[key]
        for f in ("name", "mode", "snat", "ring_size", "on_backend_removed", "udp_stateless"):
            if getattr(o, f) != getattr(v, f):
                out.append(f"VIP {v.name}: {f} {getattr(o, f)} -> {getattr(v, f)}")
        if o.health != v.health:
            out.append(f"VIP {v.name}: health check {_check_words(o)} -> {_check_words(v)}")
        ob = {b.key: b for b in o.backends}
        nb = {b.key: b for b in v.backends}
        out += [f"VIP {v.name}: remove backend {k}" for k in ob if k not in nb]
        for k, b in nb.items():
            if k not in ob:
                out.append(f"VIP {v.name}: add backend {k} weight {b.weight}")
            elif ob[k] != b:
                changed = [f"{f} {getattr(ob[k], f)!s} -> {getattr(b, f)!s}"
                           for f in ("weight", "mac") if getattr(ob[k], f) != getattr(b, f)]
                out.append(f"VIP {v.name}: backend {k} " + ", ".join(changed))
    return out


def _check_words(v: Vip) -> str:
    h = v.health
    return "none" if h.kind == "none" else f"{h.kind} every {h.interval:g}s on_down={h.on_down}"
