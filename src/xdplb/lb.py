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
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from ._bpf import abi
from .ring import maglev_table

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
PROTOCOLS = {"tcp": 6, "udp": 17}


@dataclass(frozen=True)
class BackendSpec:
    address: IPAddress
    mac: bytes | None = None  # None: next hop from the kernel FIB
    port: int = 0  # NAT mode: backend port, 0 = the VIP's port
    weight: int = 1  # 0 = drain (no new flows)

    @property
    def key(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True)
class VipSpec:
    address: IPAddress
    port: int  # 0 = every port
    protocol: str = "tcp"
    mode: str = "nat"  # nat | dsr
    backends: tuple[BackendSpec, ...] = ()
    snat: IPAddress | None = None  # NAT source address, default = the VIP address
    ring_size: int = 65537
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


def vip_key(address: IPAddress, port: int, protocol: str) -> abi.VipKey:
    addr, family = abi.pack_addr(address)
    return abi.VipKey(addr=addr, port=abi.htons(port), proto=PROTOCOLS[protocol], family=family)


def vip_addr_key(address: IPAddress) -> abi.VipKey:
    addr, family = abi.pack_addr(address)
    return abi.VipKey(addr=addr, family=family)


def backend_value(vip: VipSpec, b: BackendSpec, active: bool = True) -> abi.Backend:
    addr, family = abi.pack_addr(b.address)
    flags = abi.BE_F_ACTIVE if active else 0
    mac = (C.c_uint8 * 6)()
    if b.mac is not None:
        flags |= abi.BE_F_MAC
        mac = (C.c_uint8 * 6).from_buffer_copy(b.mac)
    port = abi.htons(b.port) if vip.mode == "nat" and b.port else 0
    return abi.Backend(addr=addr, mac=mac, port=port, family=family, flags=flags)


class LoadBalancer:
    """Keeps the data plane equal to a list of VipSpec."""

    def __init__(self, dp: DataPlaneWriter, max_vips: int = 4096, max_backends: int = 65536):
        self.dp = dp
        self._vips: dict[tuple, _VipState] = {}
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

    # changes ------------------------------------------------------------------------
    def apply(self, desired: list[VipSpec]) -> list[str]:
        """Make the data plane serve exactly `desired`; returns what changed."""
        want = {v.key: v for v in desired}
        if len(want) != len(desired):
            raise ValueError("duplicate VIP (address, port, protocol)")
        log: list[str] = []
        for key in [k for k in self._vips if k not in want]:
            self._remove_vip(key)
            log.append(f"removed VIP {key[0]}:{key[1]}/{key[2]}")
        self._write_runtime(want.values())
        for key, spec in want.items():
            cur = self._vips.get(key)
            if cur is None:
                self._add_vip(spec)
                log.append(f"added VIP {spec.label} with {len(spec.backends)} backends")
            elif cur.spec != spec:
                log.extend(self._update_vip(cur, spec))
        self._write_addr_counts()
        self._write_runtime([])
        return log

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
        return maglev_table([(st.backend_ids[b.key], b.key, b.weight) for b in spec.backends],
                            spec.ring_size)

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

    def _add_vip(self, spec: VipSpec) -> None:
        st = _VipState(spec, self._vip_ids.take())
        for b in spec.backends:
            st.backend_ids[b.key] = self._be_ids.take()
            self.dp.put_backend(st.backend_ids[b.key], backend_value(spec, b))
        self.dp.swap_ring(st.vip_id, self._table(st, spec))
        self._vips[spec.key] = st
        self._write_addr_counts()
        self.dp.put_vip(vip_key(*spec.key), self._vip_info(st, spec))

    def _update_vip(self, st: _VipState, spec: VipSpec) -> list[str]:
        log = []
        old = {b.key: b for b in st.spec.backends}
        new = {b.key: b for b in spec.backends}
        for k, b in new.items():
            if k not in st.backend_ids:
                st.backend_ids[k] = self._be_ids.take()
                log.append(f"{spec.label}: added backend {k} weight {b.weight}")
            elif old[k] != b:
                log.append(f"{spec.label}: backend {k} weight {old[k].weight} -> {b.weight}")
            self.dp.put_backend(st.backend_ids[k], backend_value(spec, b))
        if [(b.key, b.weight) for b in st.spec.backends] != [(b.key, b.weight) for b in
                                                             spec.backends] \
                or st.spec.ring_size != spec.ring_size:
            self.dp.swap_ring(st.vip_id, self._table(st, spec))
        self.dp.put_vip(vip_key(*spec.key), self._vip_info(st, spec))
        for k in [k for k in st.backend_ids if k not in new]:
            bid = st.backend_ids.pop(k)
            self.dp.put_backend(bid, backend_value(st.spec, old[k], active=False))
            self._be_ids.give(bid)
            log.append(f"{spec.label}: removed backend {k}")
        st.spec = spec
        return log

    def _remove_vip(self, key: tuple) -> None:
        st = self._vips.pop(key)
        self.dp.del_vip(vip_key(*key))
        self.dp.drop_ring(st.vip_id)
        for k, bid in st.backend_ids.items():
            b = next(b for b in st.spec.backends if b.key == k)
            self.dp.put_backend(bid, backend_value(st.spec, b, active=False))
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
        rt.set_filter({s.address for s in specs}, {s.port for s in specs})
        self.dp.set_runtime(rt)

    def _write_addr_counts(self) -> None:
        counts: dict[IPAddress, int] = {}
        for spec in self.vips:
            counts[spec.address] = counts.get(spec.address, 0) + 1
        for addr, n in counts.items():
            self.dp.put_vip_addr(vip_addr_key(addr), n)
        for addr in getattr(self, "_addrs", set()) - set(counts):
            self.dp.put_vip_addr(vip_addr_key(addr), 0)
        self._addrs = set(counts)
