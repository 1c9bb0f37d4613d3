"""The loaded xdplb data plane: typed maps, Maglev table swaps, counters, attach.

`DataPlane` is the real thing; `FakeDataPlane` (fake.py) has the same interface
for control-plane unit tests.
"""
from __future__ import annotations

import ctypes as C
import errno
import os
import socket
import time
from dataclasses import dataclass

import numpy as np

from . import abi, libbpf
from .libbpf import BPF_ANY, F_INNER_MAP, MAP_ARRAY, BpfError, BpfObject, Map, Program

PROG_NAME = "xdplb"


@dataclass
class Sizes:
    """Map sizes fixed at load time."""

    max_vips: int = 4096
    max_backends: int = 65536
    conntrack: int = 1 << 20

    def as_max_entries(self) -> dict[str, int]:
        return {
            "vips": self.max_vips,
            "vip_addrs": self.max_vips,
            "rings": self.max_vips,
            "vip_stats": self.max_vips,
            "backends": self.max_backends,
            "be_stats": self.max_backends,
            "conntrack": self.conntrack,
            "nat_rev": self.conntrack,
        }


@dataclass
class Knobs:
    """Load-time knobs (`const volatile struct lb_knobs knobs`) and the timeouts the
    loader writes into the run-time state (in jiffies) right after loading."""

    hash_seed: int = 0x5EED1B0B
    nat_port_min: int = 61000
    nat_port_max: int = 65535
    frag_drop: bool = False
    csum_fixup: bool = True
    tcp_timeout_s: float = 300.0
    closing_timeout_s: float = 10.0
    udp_timeout_s: float = 30.0
    refresh_s: float = 1.0

    def pack(self) -> bytes:
        k = abi.LbKnobs(
            hash_seed=self.hash_seed & 0xFFFFFFFF,
            nat_port_min=self.nat_port_min,
            nat_port_max=self.nat_port_max,
            frag_drop=int(self.frag_drop),
            csum_fixup=int(self.csum_fixup),
        )
        return bytes(k)

    def timeouts(self, rt: abi.LbRuntime, hz: int) -> None:
        rt.hz = hz
        rt.tcp_timeout = int(self.tcp_timeout_s * hz)
        rt.closing_timeout = int(self.closing_timeout_s * hz)
        rt.udp_timeout = int(self.udp_timeout_s * hz)
        rt.refresh = max(1, int(self.refresh_s * hz))


_TYPES = {
    "vips": (abi.VipKey, abi.VipInfo),
    "vip_addrs": (abi.VipKey, C.c_uint32),
    "backends": (C.c_uint32, abi.Backend),
    "conntrack": (abi.FlowKey, abi.FlowState),
    "nat_rev": (abi.FlowKey, abi.NatState),
    "stats": (C.c_uint32, abi.Counter),
    "vip_stats": (C.c_uint32, abi.ObjStats),
    "be_stats": (C.c_uint32, abi.ObjStats),
}


class DataPlane:
    """One loaded instance of bpf/xdplb.bpf.o."""

    def __init__(self, maps: dict[str, Map], program: Program | None = None,
                 obj: BpfObject | None = None, ring_value_size: int = 4):
        self._obj = obj
        self.program = program
        self.maps = maps
        for name, (kt, vt) in _TYPES.items():
            if name in maps:
                maps[name].key_type, maps[name].value_type = kt, vt
        self._rings: dict[int, Map] = {}
        self.attached: list[tuple[int, str]] = []

    # construction --------------------------------------------------------------------
    @classmethod
    def load(cls, path=None, sizes: Sizes | None = None, knobs: Knobs | None = None) -> DataPlane:
        from . import object_path

        obj = BpfObject(path or object_path("xdplb"),
                        max_entries=(sizes or Sizes()).as_max_entries(),
                        rodata=(knobs or Knobs()).pack())
        try:
            obj.load((PROG_NAME,))
            names = list(_TYPES) + ["rings", "tx_ports", "events"]
            maps = {n: obj.map(n) for n in names}
            maps["runtime"] = obj.map(".bss")
            dp = cls(maps, obj.program(PROG_NAME), obj)
            rt = dp.runtime()
            (knobs or Knobs()).timeouts(rt, kernel_hz(obj.program("xdplb_clock")))
            dp.set_runtime(rt)
            return dp
        except Exception:
            obj.close()
            raise

    @classmethod
    def from_interface(cls, ifindex: int) -> DataPlane:
        """The data plane attached to `ifindex` (by another process): maps by program id."""
        pid = libbpf.xdp_prog_id(ifindex)
        if not pid:
            raise BpfError(errno.ENOENT, "no XDP program attached to that interface")
        if libbpf.prog_name(pid) != PROG_NAME:
            raise BpfError(errno.EINVAL, f"the XDP program on that interface is not {PROG_NAME}")
        maps = libbpf.prog_maps(pid)
        # kernel map names are truncated to 15 chars; .bss shows as "<obj>.bss"
        for name in list(maps):
            if name.endswith(".bss"):
                maps["runtime"] = maps.pop(name)
        return cls(maps)

    def close(self) -> None:
        self.detach_all()
        for m in self._rings.values():
            m.close()
        self._rings.clear()
        if self._obj:
            self._obj.close()
            self._obj = None
        else:
            for m in self.maps.values():
                m.close()

    # attach --------------------------------------------------------------------------
    def attach(self, ifindex: int, mode: str = "auto") -> None:
        libbpf.xdp_attach(ifindex, self.program.fd, mode)
        self.attached.append((ifindex, mode))

    def detach_all(self) -> None:
        while self.attached:
            ifindex, mode = self.attached.pop()
            libbpf.xdp_detach(ifindex, self.program.fd, mode)

    # configuration writes ------------------------------------------------------------
    def put_vip(self, key: abi.VipKey, info: abi.VipInfo) -> None:
        self.maps["vips"][key] = info

    def del_vip(self, key: abi.VipKey) -> None:
        self.maps["vips"].delete(key)

    def put_vip_addr(self, key: abi.VipKey, count: int) -> None:
        if count:
            self.maps["vip_addrs"][key] = C.c_uint32(count)
        else:
            self.maps["vip_addrs"].delete(key)

    def put_backend(self, backend_id: int, be: abi.Backend) -> None:
        self.maps["backends"][backend_id] = be

    def swap_ring(self, vip_id: int, table: np.ndarray) -> None:
        """Publish a new Maglev table for `vip_id` in one atomic outer-map update."""
        table = np.ascontiguousarray(table, dtype=np.uint32)
        inner = libbpf.create_map(MAP_ARRAY, 4, 4, len(table), f"ring{vip_id}", F_INNER_MAP)
        try:
            _update_batch(inner, table)
            self.maps["rings"].update(vip_id, C.c_uint32(inner.fd), BPF_ANY)
        except Exception:
            inner.close()
            raise
        old = self._rings.pop(vip_id, None)
        self._rings[vip_id] = inner
        if old:
            old.close()

    def drop_ring(self, vip_id: int) -> None:
        self.maps["rings"].delete(vip_id)
        old = self._rings.pop(vip_id, None)
        if old:
            old.close()

    def set_runtime(self, rt: abi.LbRuntime) -> None:
        self.maps["runtime"][0] = rt

    def runtime(self) -> abi.LbRuntime:
        return abi.LbRuntime.from_buffer_copy(self.maps["runtime"].lookup(0))

    def add_tx_port(self, ifindex: int) -> None:
        self.maps["tx_ports"][ifindex] = C.c_uint32(ifindex)

    # counters ------------------------------------------------------------------------
    def stats(self) -> dict[str, tuple[int, int]]:
        out = {}
        for st in abi.Stat:
            r = self.maps["stats"].reduce(st.value, ("packets", "bytes"))
            out[st.name.lower()] = (r["packets"], r["bytes"])
        return out

    def obj_stats(self, which: str, idx: int) -> dict[str, int]:
        return self.maps[which].reduce(idx, ("packets", "bytes", "new_flows"))


_HZ: int | None = None


def kernel_hz(clock: Program) -> int:
    """The kernel's HZ, from bpf_jiffies64() read twice by the xdplb_clock program."""
    global _HZ
    if _HZ is None:
        frame = bytes(64)
        t0 = time.monotonic()
        j0 = int.from_bytes(clock.test_run(frame)[1][:8], "little")
        time.sleep(0.05)
        j1 = int.from_bytes(clock.test_run(frame)[1][:8], "little")
        rate = (j1 - j0) / (time.monotonic() - t0)
        _HZ = min((100, 250, 300, 1000), key=lambda hz: abs(hz - rate))
    return _HZ


def _update_batch(m: Map, values: np.ndarray) -> None:
    """Fill an array map with bpf_map_update_batch (one syscall per 64k entries)."""

    class _BatchOpts(C.Structure):
        _fields_ = [("sz", C.c_size_t), ("elem_flags", C.c_uint64), ("flags", C.c_uint64)]

    fn = libbpf._lib.bpf_map_update_batch
    fn.restype = C.c_int
    fn.argtypes = [C.c_int, C.c_void_p, C.c_void_p, C.POINTER(C.c_uint32), C.c_void_p]
    keys = np.arange(len(values), dtype=np.uint32)
    opts = _BatchOpts(sz=C.sizeof(_BatchOpts))
    done = 0
    while done < len(values):
        n = C.c_uint32(min(65536, len(values) - done))
        rc = fn(m.fd, keys[done:].ctypes.data, values[done:].ctypes.data, C.byref(n),
                C.byref(opts))
        if rc < 0:
            raise BpfError(-rc, f"batch update of {m.name}")
        done += n.value


def ifindex_of(name: str) -> int:
    """Interface index in the current network namespace; OSError if unknown."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise OSError(errno.ENODEV, f"no interface named {name!r}") from None


def ensure_bpffs(path: str = "/sys/fs/bpf") -> None:
    """Mount bpffs where `ip netns exec` hid it (a fresh /sys without it)."""
    if os.path.ismount(path):
        with open("/proc/self/mounts") as f:
            if any(ln.split()[1] == path and ln.split()[2] == "bpf" for ln in f):
                return
    libc = C.CDLL(None, use_errno=True)
    if libc.mount(b"bpf", path.encode(), b"bpf", 0, None) != 0:
        raise OSError(C.get_errno(), f"cannot mount bpffs on {path}")
