"""Bit-exact Python reference of the data plane's decisions.

hash_flow mirrors bpf/hash.h, nat_port_candidates mirrors flow.h::alloc_nat_port,
select_slot mirrors select.h. Words are read as the BPF program reads them:
network-order bytes loaded little-endian.
"""
from __future__ import annotations

import ipaddress
import struct

H_P1 = 0x9E3779B1
H_P2 = 0x85EBCA77
H_P3 = 0xC2B2AE3D
M32 = 0xFFFFFFFF
NAT_TRIES = 8


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & M32


def _round(h: int, w: int) -> int:
    return (_rotl((h + w * H_P2) & M32, 13) * H_P1) & M32


def _words(addr) -> tuple[int, int, int, int]:
    raw = ipaddress.ip_address(addr).packed.ljust(16, b"\0")
    return struct.unpack("<4I", raw)


def hash_flow(src, dst, sport: int, dport: int, proto: int, seed: int) -> int:
    """hash.h::hash_flow for a flow (addresses as strings/ip objects, ports host order)."""
    h = (seed + H_P3) & M32
    for w in _words(src) + _words(dst):
        h = _round(h, w)
    sp = struct.unpack("<H", struct.pack(">H", sport))[0]
    dp = struct.unpack("<H", struct.pack(">H", dport))[0]
    h = _round(h, sp | (dp << 16))
    h = _round(h, proto)
    h ^= h >> 15
    h = (h * H_P2) & M32
    h ^= h >> 13
    h = (h * H_P3) & M32
    h ^= h >> 16
    return h


def select_slot(flow_hash: int, ring_size: int) -> int:
    return flow_hash % ring_size


def nat_port_candidates(flow_hash: int, lo: int, hi: int) -> list[int]:
    """The NAT ports (host order) a new flow tries, in order."""
    rng = hi - lo + 1
    return [lo + ((flow_hash + i * H_P1) & M32) % rng for i in range(NAT_TRIES)]
