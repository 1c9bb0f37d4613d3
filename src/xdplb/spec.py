"""Desired state as the planner takes it (VipSpec, BackendSpec) and its encoding into the
ABI's structs (the kernel's map keys and values)."""
from __future__ import annotations

import ctypes as C
from dataclasses import dataclass

from ._bpf import abi
from .config import DEFAULTS, IPAddress, L4Proto, Mode, RemovedPolicy, VipKey

PROTOCOLS: dict[str, int] = {"tcp": 6, "udp": 17}  # L4Proto -> IP protocol number


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
    protocol: L4Proto = "tcp"
    mode: Mode = "nat"
    backends: tuple[BackendSpec, ...] = ()
    snat: IPAddress | None = None  # NAT source address, default = the VIP address
    ring_size: int = DEFAULTS.ring_size
    on_backend_removed: RemovedPolicy = "reselect"
    udp_stateless: bool = False
    name: str = ""
    # ipip/gue: outer source addresses, at most one per family (the backend's family picks)
    tunnel_source: tuple[IPAddress, ...] = ()

    @property
    def key(self) -> VipKey:
        return VipKey(self.address, self.port, self.protocol)

    def tunnel_source_for(self, backend: IPAddress) -> IPAddress:
        """The outer source address towards `backend` (ipip/gue)."""
        for a in self.tunnel_source:
            if a.version == backend.version:
                return a
        raise ValueError(f"{self.label}: no IPv{backend.version} tunnel source for backend "
                         f"{backend}")

    @property
    def label(self) -> str:
        return self.name or f"{self.address}:{self.port}/{self.protocol}"


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
    if vip.mode in abi.TUNNEL_MODES:  # the outer source address, the backend's family
        snat, _ = abi.pack_addr(vip.tunnel_source_for(b.address))
    else:
        snat, _ = abi.pack_addr(vip.snat or vip.address)
    return abi.Backend(addr=addr, mac=mac, port=port, family=family, flags=flags,
                       ifindex=b.ifindex, vip_id=vip_id, snat_addr=snat)


def vip_info(vip_id: int, spec: VipSpec, prev: bool = False) -> abi.VipInfo:
    """`prev`: the data plane holds the VIP's table from before its last change, same
    size (gue: second-chance hints)."""
    snat, _ = abi.pack_addr(spec.snat or spec.address)
    flags = 0
    if spec.on_backend_removed == "reset":
        flags |= abi.VIP_F_RESET_REMOVED
    if spec.udp_stateless:
        flags |= abi.VIP_F_UDP_STATELESS
    if spec.mode == "gue" and prev:
        flags |= abi.VIP_F_PREV_RING
    return abi.VipInfo(vip_id=vip_id, ring_size=spec.ring_size, snat_addr=snat,
                       mode=abi.MODES[spec.mode], flags=flags)
