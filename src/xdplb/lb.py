"""Desired state -> map writes, ordered so the data plane never sees a half-made VIP.

A VIP becomes visible last (backends, Maglev table, address set and switches
first) and disappears first. Backend set changes swap the VIP's whole Maglev
table in one map update; removed backends are marked inactive afterwards, so
their flows are re-selected or reset by the VIP's policy.
"""
from __future__ import annotations

import ctypes as C
import ipaddress
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from ._bpf import abi
from .config import DEFAULTS
from .ring import maglev_table

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
PROTOCOLS = {"tcp": 6, "udp": 17}


@dataclass(frozen=True)
class BackendSpec:
    address: IPAddress
    mac: bytes | None = None  # None: next hop from the kernel FIB
    port: int = 0  # NAT mode: backend port, 0 = the VIP's port
    weight: int = 1  # 0 = drain (no new flows)
    ifindex: int = 0  # two-armed: leave through this interface (XDP_REDIRECT)
    # False: pulled (health check): keeps its id, leaves the Maglev table, its flows are
    # re-selected or reset by the VIP's on_backend_removed policy
    active: bool = True
    # stable identity for the Maglev table and ids ("" = "ADDRESS:PORT"); xdplb serve uses
    # config.Backend.key so that every node builds the same table from the same file
    ring_key: str = ""

    @property
    def key(self) -> str:
        return self.ring_key or f"{self.address}:{self.port}"


@dataclass(frozen=True)
class VipSpec:
    address: IPAddress
    port: int  # 0 = every port
    protocol: str = "tcp"
    mode: str = "nat"  # nat | dsr
    backends: tuple[BackendSpec, ...] = ()
    snat: IPAddress | None = None  # NAT source address, default = the VIP address
    ring_size: int = DEFAULTS.ring_size
    on_backend_removed: str = "reselect"  # reselect | reset
    udp_stateless: bool = False
    name: str = ""

    @property
    def key(self) -> tuple[IPAddress, int, str]:
        return (self.address, self.port, self.protocol)

    @property
    def label(self) -> str:
        return self.name or f"{self.address}:{self.port}/{self.protocol}"


class DataPlaneWriter(Protocol):
    """What LoadBalancer needs from a data plane (DataPlane or FakeDataPlane)."""

    def put_vip(self, key: abi.VipKey, info: abi.VipInfo) -> None: ...
    def del_vip(self, key: abi.VipKey) -> None: ...
    def put_vip_slot(self, idx: int, slot: abi.VipSlot | None) -> None: ...
    def put_vip_addr(self, key: abi.VipKey, count: int) -> None: ...
    def put_backend(self, backend_id: int, be: abi.Backend) -> None: ...
    def swap_ring(self, vip_id: int, table: np.ndarray) -> None: ...
    def drop_ring(self, vip_id: int) -> None: ...
    def set_runtime(self, rt: abi.LbRuntime) -> None: ...
    def runtime(self) -> abi.LbRuntime: ...


@dataclass
class _VipState:
    spec: VipSpec
    vip_id: int
    backend_ids: dict[str, int] = field(default_factory=dict)  # BackendSpec.key -> id


class IdPool:
    """Ids handed out in order; released ids are reused last (oldest first), so a
    stale conntrack entry is unlikely to find its id given to another backend."""

    def __init__(self, size: int):
        self.size = size
        self._next = 0
        self._free: deque[int] = deque()

    def take(self) -> int:
        if self._next < self.size:
            self._next += 1
            return self._next - 1
        if self._free:
            return self._free.popleft()
        raise RuntimeError(f"all {self.size} ids are in use")

    def give(self, i: int) -> None:
        self._free.append(i)

    def reserve(self, used: set[int], stale: Sequence[int] = ()) -> None:
        """Start from ids already in the maps (adoption): `used` stay taken; ids never
        used below the highest seen are free first, `stale` ones (inactive entries
        that old flows may still name) are reused last."""
        seen = set(used) | set(stale)
        self._next = min(self.size, max(seen) + 1) if seen else 0
        gaps = [i for i in range(self._next) if i not in seen]
        self._free = deque(gaps + [i for i in stale if i not in used])


def vip_key(address: IPAddress, port: int, protocol: str) -> abi.VipKey:
    addr, family = abi.pack_addr(address)
    return abi.VipKey(addr=addr, port=abi.htons(port), proto=PROTOCOLS[protocol], family=family)


def vip_addr_key(address: IPAddress) -> abi.VipKey:
    addr, family = abi.pack_addr(address)
    return abi.VipKey(addr=addr, family=family)


def backend_value(vip: VipSpec, b: BackendSpec, active: bool = True, vip_id: int = 0
                  ) -> abi.Backend:
    addr, family = abi.pack_addr(b.address)
    flags = abi.BE_F_ACTIVE if active and b.active else 0
    mac = (C.c_uint8 * 6)()
    if b.mac is not None:
        flags |= abi.BE_F_MAC
        mac = (C.c_uint8 * 6).from_buffer_copy(b.mac)
    if b.ifindex:
        flags |= abi.BE_F_REDIRECT
    port = abi.htons(b.port) if vip.mode == "nat" and b.port else 0
    snat, _ = abi.pack_addr(vip.snat or vip.address)
    return abi.Backend(addr=addr, mac=mac, port=port, family=family, flags=flags,
                       ifindex=b.ifindex, vip_id=vip_id, snat_addr=snat)


class LoadBalancer:
    """Keeps the data plane equal to a list of VipSpec."""

    def __init__(self, dp: DataPlaneWriter, max_vips: int = DEFAULTS.max_vips,
                 max_backends: int = DEFAULTS.max_backends):
        self.dp = dp
        self._vips: dict[tuple, _VipState] = {}
        self._slot_owner: dict[int, tuple] = {}  # vip_slots index -> VIP key
        self._vip_ids = IdPool(max_vips)
        self._be_ids = IdPool(max_backends)

    # queries ------------------------------------------------------------------------
    @property
    def vips(self) -> list[VipSpec]:
        return [s.spec for s in self._vips.values()]

    def vip_id(self, key: tuple) -> int:
        return self._vips[key].vip_id

    def backend_ids(self, key: tuple) -> dict[str, int]:
        return dict(self._vips[key].backend_ids)

    # the VIP entries: hash map + direct-mapped cache ----------------------------------
    def _put_vip(self, key: tuple, info: abi.VipInfo) -> None:
        """Publish a VIP: in `vips`, and in its vip_slots entry unless another VIP has it
        (then it is found through the hash map: runtime.vip_spill > 0)."""
        k = vip_key(*key)
        self.dp.put_vip(k, info)
        idx = abi.vip_slot(k)
        owner = self._slot_owner.setdefault(idx, key)
        if owner == key:
            self.dp.put_vip_slot(idx, abi.VipSlot(key=k, info=info))

    def _del_vip(self, key: tuple) -> None:
        k = vip_key(*key)
        idx = abi.vip_slot(k)
        if self._slot_owner.get(idx) == key:
            del self._slot_owner[idx]
            self.dp.put_vip_slot(idx, None)
        self.dp.del_vip(k)

    def _promote_spilled(self) -> None:
        """Give free slots to VIPs that had spilled into the hash map."""
        for key, st in self._vips.items():
            idx = abi.vip_slot(vip_key(*key))
            if idx not in self._slot_owner:
                self._slot_owner[idx] = key
                self.dp.put_vip_slot(idx, abi.VipSlot(key=vip_key(*key),
                                                      info=self._vip_info(st, st.spec)))

    def _spill_count(self, keys) -> int:
        owners: dict[int, tuple] = dict(self._slot_owner)
        spilled = 0
        for key in keys:
            idx = abi.vip_slot(vip_key(*key))
            if owners.setdefault(idx, key) != key:
                spilled += 1
        return spilled

    # changes ------------------------------------------------------------------------
    def apply(self, desired: list[VipSpec]) -> list[str]:
        """Make the data plane serve exactly `desired`; returns what changed.

        In phases, so the data plane never sees a half-made VIP: removed VIPs disappear
        first; then backends are written, all new Maglev tables are published in one
        batch (a map-in-map update waits for an RCU grace period: once per apply, not
        once per VIP), then the VIP entries, then what became unusable is marked so."""
        want = {v.key: v for v in desired}
        if len(want) != len(desired):
            raise ValueError("duplicate VIP (address, port, protocol)")
        log: list[str] = []
        gone = [k for k in self._vips if k not in want]
        for key in gone:
            self._del_vip(key)
        self._drop_rings([self._vips[k].vip_id for k in gone])
        for key in gone:
            self._remove_vip(key)
            log.append(f"removed VIP {key[0]}:{key[1]}/{key[2]}")
        self._write_runtime(want.values())
        self._staged_rings: dict[int, np.ndarray] | None = {}
        publish = []
        try:
            for key, spec in want.items():
                cur = self._vips.get(key)
                if cur is None:
                    publish.append(self._add_vip(spec))
                    log.append(f"added VIP {spec.label} with {len(spec.backends)} backends")
                elif cur.spec != spec:
                    changes, then = self._update_vip(cur, spec)
                    log.extend(changes)
                    publish.append(then)
            self._flush_rings()
        finally:
            self._staged_rings = None  # later single changes (adopt) publish at once
        for then in publish:
            then()
        self._write_addr_counts()
        self._promote_spilled()
        self._write_runtime([])
        return log

    def _stage_ring(self, vip_id: int, table: np.ndarray) -> None:
        staged = getattr(self, "_staged_rings", None)
        if staged is None:
            self.dp.swap_ring(vip_id, table)
        else:
            staged[vip_id] = table

    def _flush_rings(self) -> None:
        staged, self._staged_rings = self._staged_rings, None
        if not staged:
            return
        many = getattr(self.dp, "swap_rings", None)
        if many is not None:
            many(staged)
        else:
            for vip_id, table in staged.items():
                self.dp.swap_ring(vip_id, table)

    def _drop_rings(self, vip_ids: list[int]) -> None:
        many = getattr(self.dp, "drop_rings", None)
        if many is not None:
            many(vip_ids)
        else:
            for vip_id in vip_ids:
                self.dp.drop_ring(vip_id)

    def set_backend(self, key: tuple, address: IPAddress, **changes) -> list[str]:
        """Change one backend of a VIP (weight=..., or remove=True)."""
        spec = self._vips[key].spec
        remove = changes.pop("remove", False)
        backends = []
        found = False
        for b in spec.backends:
            if b.address == address:
                found = True
                if not remove:
                    backends.append(replace(b, **changes))
            else:
                backends.append(b)
        if not found:
            raise KeyError(f"{address} is not a backend of {spec.label}")
        return self.apply([replace(s, backends=tuple(backends)) if s.key == key else s
                           for s in self.vips])

    def _table(self, st: _VipState, spec: VipSpec) -> np.ndarray:
        return maglev_table([(st.backend_ids[b.key], b.key, b.weight) for b in spec.backends
                             if b.active], spec.ring_size)

    def _vip_info(self, st: _VipState, spec: VipSpec) -> abi.VipInfo:
        snat, _ = abi.pack_addr(spec.snat or spec.address)
        flags = 0
        if spec.on_backend_removed == "reset":
            flags |= abi.VIP_F_RESET_REMOVED
        if spec.udp_stateless:
            flags |= abi.VIP_F_UDP_STATELESS
        return abi.VipInfo(vip_id=st.vip_id, ring_size=spec.ring_size, snat_addr=snat,
                           mode=abi.MODE_NAT if spec.mode == "nat" else abi.MODE_DSR,
                           flags=flags)

    def _add_vip(self, spec: VipSpec):
        """Write the backends and stage the table; returns what publishes the VIP."""
        st = _VipState(spec, self._take_vip_id())
        for b in spec.backends:
            st.backend_ids[b.key] = self._take_backend_id()
            self.dp.put_backend(st.backend_ids[b.key], backend_value(spec, b, vip_id=st.vip_id))
        self._stage_ring(st.vip_id, self._table(st, spec))
        self._vips[spec.key] = st

        def publish() -> None:
            written = getattr(self, "_addr_written", {})
            if spec.address not in written:  # the address must be known before the VIP
                self.dp.put_vip_addr(vip_addr_key(spec.address), 1)
                written[spec.address] = 1
                self._addr_written = written
            self._put_vip(spec.key, self._vip_info(st, spec))

        return publish

    def _take_vip_id(self) -> int:
        i = self._vip_ids.take()
        self._reset_stats("vip_stats", i)
        return i

    def _take_backend_id(self) -> int:
        i = self._be_ids.take()
        self._reset_stats("be_stats", i)
        return i

    def _reset_stats(self, which: str, i: int) -> None:
        """A fresh id starts its counters at zero (ids are reused)."""
        reset = getattr(self.dp, "reset_obj_stats", None)
        if reset is not None:
            reset(which, i)

    def _update_vip(self, st: _VipState, spec: VipSpec):
        """Backends that become usable are written before the new table is published,
        backends that stop being usable (pulled, removed) after it: new flows never
        pick an inactive backend. Returns (log, what publishes the change)."""
        log = []
        old = {b.key: b for b in st.spec.backends}
        new = {b.key: b for b in spec.backends}
        later: list[tuple[int, abi.Backend]] = []
        for k, b in new.items():
            if k not in st.backend_ids:
                st.backend_ids[k] = self._take_backend_id()
                log.append(f"{spec.label}: added backend {k} weight {b.weight}")
            elif old[k] != b:
                if old[k].weight != b.weight:
                    log.append(f"{spec.label}: backend {k} weight {old[k].weight} -> {b.weight}")
                if old[k].active != b.active:
                    log.append(f"{spec.label}: backend {k} "
                               + ("back in service" if b.active else "pulled (inactive)"))
            value = backend_value(spec, b, vip_id=st.vip_id)
            if k in old and old[k].active and not b.active:
                later.append((st.backend_ids[k], value))
            else:
                self.dp.put_backend(st.backend_ids[k], value)
        if [(b.key, b.weight, b.active) for b in st.spec.backends] != \
                [(b.key, b.weight, b.active) for b in spec.backends] \
                or st.spec.ring_size != spec.ring_size:
            self._stage_ring(st.vip_id, self._table(st, spec))
        old_spec = st.spec
        st.spec = spec

        def publish() -> None:
            self._put_vip(spec.key, self._vip_info(st, spec))
            for bid, value in later:
                self.dp.put_backend(bid, value)
            for k in [k for k in st.backend_ids if k not in new]:
                bid = st.backend_ids.pop(k)
                self.dp.put_backend(bid, backend_value(old_spec, old[k], active=False,
                                                       vip_id=st.vip_id))
                self._be_ids.give(bid)

        log.extend(f"{spec.label}: removed backend {k}" for k in st.backend_ids if k not in new)
        return log, publish

    def _remove_vip(self, key: tuple) -> None:
        """After its entry and table are gone: mark its backends inactive, free ids."""
        st = self._vips.pop(key)
        for k, bid in st.backend_ids.items():
            b = next(b for b in st.spec.backends if b.key == k)
            self.dp.put_backend(bid, backend_value(st.spec, b, active=False, vip_id=st.vip_id))
            self._be_ids.give(bid)
        self._vip_ids.give(st.vip_id)

    def _write_runtime(self, specs) -> None:
        """Switches that let the data plane skip lookups (must be on before a VIP needing
        them is visible): counts over the union of current and `specs`."""
        union = {s.key: s for s in self.vips}
        union.update({s.key: s for s in specs})
        specs = list(union.values())
        rt = self.dp.runtime()
        rt.wildcard_vips = sum(1 for s in specs if s.port == 0)
        rt.nat_vips = sum(1 for s in specs if s.mode == "nat")
        rt.vip_spill = self._spill_count([s.key for s in specs])
        rt.set_filter({s.address for s in specs} | {s.snat for s in specs if s.snat},
                      {s.port for s in specs})
        self.dp.set_runtime(rt)

    def _write_addr_counts(self) -> None:
        """vip_addrs = number of VIPs per address; writes only what changed."""
        counts: dict[IPAddress, int] = {}
        for spec in self.vips:
            counts[spec.address] = counts.get(spec.address, 0) + 1
        written = getattr(self, "_addr_written", {})
        for addr, n in counts.items():
            if written.get(addr) != n:
                self.dp.put_vip_addr(vip_addr_key(addr), n)
        for addr in getattr(self, "_addrs", set()) - set(counts):
            self.dp.put_vip_addr(vip_addr_key(addr), 0)
        self._addrs = set(counts)
        self._addr_written = counts

    # adoption (restart / upgrade with the data plane kept) ---------------------------
    def adopt(self, desired: list[VipSpec], state: MapState) -> list[str]:
        """Take over maps an earlier LoadBalancer wrote (a restart or an upgrade that kept
        the data plane attached) and make them serve `desired`.

        VIPs keep their ids (matched by address, port and protocol) and backends keep
        theirs (matched by address and port, preferring ids found in the VIP's Maglev
        table, then active ones), so established flows keep their backend. Everything is
        then rewritten from `desired`: identical where nothing changed, the diff where
        the configuration changed meanwhile. Returns what happened, like apply().
        """
        if self._vips:
            raise RuntimeError("adopt() needs a LoadBalancer without state")
        want = {v.key: v for v in desired}
        if len(want) != len(desired):
            raise ValueError("duplicate VIP (address, port, protocol)")
        log: list[str] = []
        used: set[int] = set()
        adopted: dict[tuple, _VipState] = {}
        for key, info in sorted(state.vips.items(), key=lambda kv: kv[1].vip_id):
            spec = want.get(key)
            if spec is None:
                continue
            st = _VipState(spec, info.vip_id)
            members = state.rings.get(info.vip_id, set())
            for b in spec.backends:
                value = backend_value(spec, b, vip_id=st.vip_id)
                found = [i for i, be in state.backends.items()
                         if i not in used and _same_backend(be, value)]
                if found:
                    found.sort(key=lambda i: (
                        getattr(state.backends[i], "vip_id", info.vip_id) != info.vip_id,
                        i not in members, not state.backends[i].flags & abi.BE_F_ACTIVE, i))
                    st.backend_ids[b.key] = found[0]
                    used.add(found[0])
            adopted[key] = st
        self._vip_ids.reserve({info.vip_id for info in state.vips.values()})
        stale = sorted(i for i in state.backends if i not in used)
        self._be_ids.reserve(used, stale)
        self._addrs = set(state.vip_addrs)

        # VIPs no longer wanted disappear first
        for key, info in state.vips.items():
            if key not in want:
                self._del_vip(key)
                self.dp.drop_ring(info.vip_id)
                self._vip_ids.give(info.vip_id)
                log.append(f"removed VIP {key[0]}:{key[1]}/{key[2]}")
        self._write_runtime(desired)
        for key, st in adopted.items():
            spec = st.spec
            kept = len(st.backend_ids)
            later = []
            for b in spec.backends:
                if b.key not in st.backend_ids:
                    st.backend_ids[b.key] = self._take_backend_id()
                    log.append(f"{spec.label}: added backend {b.key} weight {b.weight}")
                value = backend_value(spec, b, vip_id=st.vip_id)
                if b.active:
                    self.dp.put_backend(st.backend_ids[b.key], value)
                else:
                    later.append((st.backend_ids[b.key], value))
            self.dp.swap_ring(st.vip_id, self._table(st, spec))
            self._put_vip(spec.key, self._vip_info(st, spec))
            for bid, value in later:
                self.dp.put_backend(bid, value)
            self._vips[key] = st
            log.append(f"adopted VIP {spec.label} (id {st.vip_id}): {kept} of "
                       f"{len(spec.backends)} backends kept their ids")
        for key, spec in want.items():
            if key not in self._vips:
                self._add_vip(spec)()
                log.append(f"added VIP {spec.label} with {len(spec.backends)} backends")
        # entries nobody adopted: inactive, so flows still naming them re-select or reset
        taken = {i for st in self._vips.values() for i in st.backend_ids.values()}
        for i in stale:
            be = state.backends[i]
            if i not in taken and be.flags & abi.BE_F_ACTIVE:
                gone = abi.Backend.from_buffer_copy(bytes(be))
                gone.flags &= ~abi.BE_F_ACTIVE
                self.dp.put_backend(i, gone)
                log.append(f"backend id {i} ({abi.unpack_addr(be.addr, be.family)}) is not "
                           "configured any more: inactive")
        self._write_addr_counts()
        self._promote_spilled()
        self._write_runtime([])
        return log


def _same_backend(be: abi.Backend, want: abi.Backend) -> bool:
    return (be.family == want.family and bytes(be.addr) == bytes(want.addr)
            and be.port == want.port)


@dataclass
class MapState:
    """What the data plane's maps hold, as read back for LoadBalancer.adopt()."""

    vips: dict[tuple, abi.VipInfo] = field(default_factory=dict)  # VipSpec.key -> info
    vip_addrs: set = field(default_factory=set)  # addresses with a vip_addrs entry
    backends: dict[int, abi.Backend] = field(default_factory=dict)  # id -> entry in use
    rings: dict[int, set[int]] = field(default_factory=dict)  # vip id -> ids in its table


_PROTO_NAMES = {v: k for k, v in PROTOCOLS.items()}


def _vip_key_tuple(k: abi.VipKey) -> tuple:
    return (abi.unpack_addr(k.addr, k.family), abi.ntohs(k.port),
            _PROTO_NAMES.get(k.proto, str(k.proto)))


def read_map_state(dp) -> MapState:
    """Read the maps of a DataPlane (or a FakeDataPlane) for adopt()."""
    st = MapState()
    if hasattr(dp, "maps"):  # the kernel's maps
        vip_items = list(dp.maps["vips"].items())
        addr_keys = [abi.VipKey.from_buffer_copy(k) for k in dp.maps["vip_addrs"]]
        backends = dp.backend_entries()
        ring_of = dp.ring_members
    else:  # FakeDataPlane
        vip_items = [(abi.VipKey.from_buffer_copy(k), v) for k, v in dp.vips.items()]
        addr_keys = [abi.VipKey.from_buffer_copy(k) for k in dp.vip_addrs]
        backends = {i: b for i, b in dp.backends.items() if b.family}

        def ring_of(vip_id):
            t = dp.rings.get(vip_id)
            return None if t is None else set(np.unique(t).tolist()) - {abi.NO_BACKEND}
    for k, info in vip_items:
        st.vips[_vip_key_tuple(k)] = info
        members = ring_of(info.vip_id)
        if members is not None:
            st.rings[info.vip_id] = members
    st.vip_addrs = {abi.unpack_addr(k.addr, k.family) for k in addr_keys}
    st.backends = backends
    return st
