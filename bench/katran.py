"""Drive a prebuilt Katran balancer object (balancer_ingress) through its maps.

Katran is not part of this repository and nothing here builds it: pass the path of a
``balancer.bpf.o`` you built yourself from upstream Katran (facebookincubator/katran,
``katran/lib/bpf/balancer.bpf.c``) with ``--katran-obj`` or ``$XDPLB_BENCH_KATRAN_OBJ``.
Without one, the report says Katran was not measured.

Configuration mirrors what Katran's control plane writes for one IPv4 VIP with two reals:
``vip_map`` (VIP -> vip_num, flags), ``reals`` (index -> address; index 0 is reserved),
``ch_rings`` (vip_num * 65537 + slot -> real index), ``ctl_array[0]`` (the default
router's MAC, the encapsulated frames' destination) and one LRU per CPU in ``lru_mapping``
(as Katran does in production; the fallback LRU is for its unit tests). Katran is DSR with
IPIP encapsulation: a forwarded frame grows by 20 bytes, and replies never pass through it.
"""
from __future__ import annotations

import ctypes as C
import ipaddress
import socket

import numpy as np

from xdplb._bpf import libbpf
from xdplb._bpf.libbpf import BpfObject

PROG = "balancer_ingress"
RING_SIZE = 65537  # balancer_consts.h
MAP_LRU_HASH = 9
MAC_ADDR_POS = 0


class VipDefinition(C.Structure):
    _fields_ = [("vip", C.c_uint32 * 4), ("port", C.c_uint16), ("proto", C.c_uint8)]


class VipMeta(C.Structure):
    _fields_ = [("flags", C.c_uint32), ("vip_num", C.c_uint32)]


class RealDefinition(C.Structure):
    _fields_ = [("dst", C.c_uint32 * 4), ("flags", C.c_uint8)]


class FlowKey(C.Structure):
    _fields_ = [("src", C.c_uint32 * 4), ("dst", C.c_uint32 * 4), ("ports", C.c_uint32),
                ("proto", C.c_uint8)]


class RealPosLru(C.Structure):
    _fields_ = [("pos", C.c_uint32), ("atime", C.c_uint64)]


def _addr(text: str):
    raw = ipaddress.IPv4Address(text).packed.ljust(16, b"\0")
    return (C.c_uint32 * 4).from_buffer_copy(raw)


class Katran:
    """A loaded Katran with one VIP; ``program.test_run`` as for any other program."""

    def __init__(self, path: str, vip: str, port: int, reals: list[str], router_mac: bytes,
                 lru_size: int = 1 << 18):
        self.obj = BpfObject(path)
        self.lrus: list[libbpf.Map] = []
        try:
            self.obj.load((PROG,))
            self.program = self.obj.program(PROG)
            self._configure(vip, port, reals, router_mac, lru_size)
        except BaseException:
            self.close()
            raise

    def _configure(self, vip, port, reals, router_mac, lru_size) -> None:
        o = self.obj
        for i, r in enumerate(reals, start=1):  # real index 0 means "no real"
            o.map("reals").update(i, RealDefinition(dst=_addr(r), flags=0))
        ring = np.array([1 + (i % len(reals)) for i in range(RING_SIZE)], dtype=np.uint32)
        rings = o.map("ch_rings")
        _array_fill(rings, ring)
        o.map("ctl_array").update(MAC_ADDR_POS, router_mac.ljust(8, b"\0"))
        key = VipDefinition(vip=_addr(vip), port=socket.htons(port), proto=socket.IPPROTO_TCP)
        o.map("vip_map").update(bytes(key), VipMeta(flags=0, vip_num=0))
        lru_mapping = o.map("lru_mapping")
        for cpu in range(libbpf.NCPUS):
            m = libbpf.create_map(MAP_LRU_HASH, C.sizeof(FlowKey), C.sizeof(RealPosLru),
                                  lru_size, f"katran_lru{cpu}")
            self.lrus.append(m)
            lru_mapping.update(cpu, C.c_uint32(m.fd))

    def clear_flows(self) -> None:
        for m in self.lrus:
            m.clear()

    def close(self) -> None:
        for m in self.lrus:
            m.close()
        self.lrus.clear()
        self.obj.close()


def _array_fill(m: libbpf.Map, values: np.ndarray) -> None:
    """Array map slots 0..len-1 = values (one batch call per 64k entries)."""
    m.update_batch(values)
