"""The loaded xdplb data plane: typed maps, Maglev table swaps, counters, attach.

`DataPlane` is the real thing; `FakeDataPlane` (fake.py) has the same interface
for control-plane unit tests.
"""
from __future__ import annotations

import contextlib
import ctypes as C
import errno
import mmap
import os
import socket
import time
from dataclasses import dataclass

import numpy as np

from ..config import DEFAULTS
from . import abi, libbpf
from .libbpf import F_INNER_MAP, MAP_ARRAY, BpfError, BpfObject, Map, Program

PROG_NAME = "xdplb"


@dataclass
class Sizes:
    """Map sizes fixed at load time."""

    max_vips: int = DEFAULTS.max_vips
    max_backends: int = DEFAULTS.max_backends
    conntrack: int = DEFAULTS.conntrack_size  # non-NAT flows (NAT: ports x FLOW_WAYS)

    def as_max_entries(self, knobs: Knobs | None = None) -> dict[str, int]:
        k = knobs or Knobs()
        return {
            "flows": (k.nat_sets() + k.ct_sets_for(self.conntrack)) * abi.FLOW_WAYS,
            "vips": self.max_vips,
            "vip_addrs": self.max_vips,
            "rings": self.max_vips,
            "vip_stats": self.max_vips,
            "backends": self.max_backends,
            "be_stats": self.max_backends,
        }


@dataclass
class Knobs:
    """Load-time knobs (`const volatile struct lb_knobs knobs`) and the timeouts the
    loader writes into the run-time state (in jiffies) right after loading."""

    hash_seed: int = DEFAULTS.hash_seed
    nat_port_min: int = DEFAULTS.nat_ports[0]
    nat_port_max: int = DEFAULTS.nat_ports[1]
    frag_drop: bool = DEFAULTS.frag_policy == "drop"
    csum_fixup: bool = True
    tcp_timeout_s: float = DEFAULTS.tcp_timeout_s
    closing_timeout_s: float = DEFAULTS.closing_timeout_s
    udp_timeout_s: float = DEFAULTS.udp_timeout_s
    refresh_s: float = DEFAULTS.refresh_s
    ct_sets: int = 0  # conntrack sets; 0: from Sizes.conntrack (a takeover keeps the old)

    def nat_sets(self) -> int:
        """Sets of the NAT region of `flows`: one per NAT port."""
        return self.nat_port_max - self.nat_port_min + 1

    def ct_sets_for(self, conntrack: int) -> int:
        """Sets of the conntrack region: `ct_sets`, else enough for `conntrack` flows
        (a power of two)."""
        if self.ct_sets:
            return self.ct_sets
        want = max(1, -(-conntrack // abi.FLOW_WAYS))
        return 1 << (want - 1).bit_length()

    def pack(self, ct_sets: int | None = None, flow_format: int = abi.FLOW_FORMAT) -> bytes:
        k = abi.LbKnobs(
            hash_seed=self.hash_seed & 0xFFFFFFFF,
            nat_port_min=self.nat_port_min,
            nat_port_max=self.nat_port_max,
            frag_drop=int(self.frag_drop),
            csum_fixup=int(self.csum_fixup),
            flow_format=flow_format,
            ct_sets=ct_sets or self.ct_sets_for(Sizes().conntrack),
        )
        return bytes(k)

    def timeouts(self, rt: abi.LbRuntime, hz: int) -> None:
        rt.hz = hz
        rt.tcp_timeout = int(self.tcp_timeout_s * hz)
        rt.closing_timeout = int(self.closing_timeout_s * hz)
        rt.udp_timeout = int(self.udp_timeout_s * hz)
        rt.refresh = max(1, int(self.refresh_s * hz))
        for name in ("tcp_timeout", "closing_timeout", "udp_timeout"):
            setattr(rt, name, min(getattr(rt, name), 0x7FFFFFFF))  # flow ages are 32-bit


_TYPES = {
    "vips": (abi.VipKey, abi.VipInfo),
    "vip_slots": (C.c_uint32, abi.VipSlot),
    "vip_addrs": (abi.VipKey, C.c_uint32),
    "backends": (C.c_uint32, abi.Backend),
    "flows": (C.c_uint32, abi.FlowEntry),
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
        self._flows_mm: mmap.mmap | None = None
        self.attached: list[tuple[int, str]] = []
        self.reused: list[str] = []  # maps shared with the instance this one replaced
        self.reuse_notes: list[str] = []  # why some state did not carry over

    # construction --------------------------------------------------------------------
    @classmethod
    def load(cls, path=None, sizes: Sizes | None = None, knobs: Knobs | None = None,
             reuse: dict[str, Map] | None = None) -> DataPlane:
        """Load the object. `reuse` (name -> Map of a running instance, see
        `existing_maps`) makes the new program share those maps: checked first by
        `reuse_plan`, which raises UpgradeError when state cannot carry over."""
        from . import object_path

        path = path or object_path("xdplb")
        sizes, knobs = sizes or Sizes(), knobs or Knobs()
        ct_sets = knobs.ct_sets_for(sizes.conntrack)
        max_entries = sizes.as_max_entries(knobs)
        fds: dict[str, int] = {}
        notes: list[str] = []
        if reuse:
            fds, notes = reuse_plan(path, max_entries, reuse)
        obj = BpfObject(path, max_entries=max_entries,
                        rodata=lambda compiled: knobs.pack(ct_sets, _flow_format(compiled)),
                        reuse_maps={(".bss" if n == "runtime" else n): fd
                                    for n, fd in fds.items()})
        try:
            obj.load((PROG_NAME,))
            maps = {n: obj.map(n) for n in MAP_NAMES if n != "runtime"}
            maps["runtime"] = obj.map(".bss")
            maps[KNOBS_PIN] = obj.map(".rodata")
            dp = cls(maps, obj.program(PROG_NAME), obj)
            dp.reused = sorted(fds)
            dp.reuse_notes = notes
            rt = dp.runtime()
            knobs.timeouts(rt, kernel_hz(obj.program("xdplb_clock")))
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
            elif name.endswith(".rodata"):
                maps[KNOBS_PIN] = maps.pop(name)
        return cls(maps)

    def close(self, detach: bool = True) -> None:
        """Release everything; `detach=False` leaves the program attached (the kernel
        keeps it and its maps alive: `xdplb serve --keep`)."""
        if detach:
            self.detach_all()
        else:
            self.attached.clear()
        for m in self._rings.values():
            m.close()
        self._rings.clear()
        if self._flows_mm is not None:
            with contextlib.suppress(BufferError):  # a caller still holds a view
                self._flows_mm.close()
            self._flows_mm = None
        if self._obj:
            self._obj.close()
            self._obj = None
        else:
            for m in self.maps.values():
                m.close()

    # attach --------------------------------------------------------------------------
    def attach(self, ifindex: int, mode: str = "auto") -> None:
        assert self.program is not None  # loaded, not from_interface()
        libbpf.xdp_attach(ifindex, self.program.fd, mode)
        self.attached.append((ifindex, mode))

    def replace_attached(self, ifindex: int, old_prog_fd: int, mode: str) -> None:
        """Atomically swap the program attached to `ifindex` (old_prog_fd) for ours:
        no packet sees the interface without a program."""
        assert self.program is not None  # loaded, not from_interface()
        libbpf.xdp_attach(ifindex, self.program.fd, mode, replace_fd=old_prog_fd)
        self.attached.append((ifindex, mode))

    def detach_all(self) -> None:
        while self.attached:
            ifindex, mode = self.attached.pop()
            assert self.program is not None  # only attach() fills self.attached
            libbpf.xdp_detach(ifindex, self.program.fd, mode)

    # configuration writes ------------------------------------------------------------
    def put_vip(self, key: abi.VipKey, info: abi.VipInfo) -> None:
        self.maps["vips"][key] = info

    def del_vip(self, key: abi.VipKey) -> None:
        self.maps["vips"].delete(key)

    def put_vip_slot(self, idx: int, slot: abi.VipSlot | None) -> None:
        """Write (or empty, with None) one entry of the direct-mapped VIP cache."""
        self.maps["vip_slots"][idx] = slot if slot is not None else abi.VipSlot()

    def put_vip_addr(self, key: abi.VipKey, count: int) -> None:
        if count:
            self.maps["vip_addrs"][key] = C.c_uint32(count)
        else:
            self.maps["vip_addrs"].delete(key)

    def put_backend(self, backend_id: int, be: abi.Backend) -> None:
        self.maps["backends"][backend_id] = be

    def swap_ring(self, vip_id: int, table: np.ndarray) -> None:
        """Publish a new Maglev table for `vip_id` in one atomic outer-map update."""
        self.swap_rings({vip_id: table})

    def swap_rings(self, tables: dict[int, np.ndarray]) -> None:
        """Publish new Maglev tables, each VIP's swap atomic, all in one batch update of
        the outer map (the kernel waits one RCU grace period per map-in-map update
        call, ~10 ms here: per batch, not per VIP)."""
        inners: dict[int, Map] = {}
        try:
            for vip_id, table in tables.items():
                table = np.ascontiguousarray(table, dtype=np.uint32)
                inner = libbpf.create_map(MAP_ARRAY, 4, 4, len(table), f"ring{vip_id}",
                                          F_INNER_MAP)
                inners[vip_id] = inner
                _update_batch(inner, table)
            keys = np.array(list(inners), dtype=np.uint32)
            fds = np.array([m.fd for m in inners.values()], dtype=np.uint32)
            _update_batch(self.maps["rings"], fds, keys)
        except Exception:
            for m in inners.values():
                m.close()
            raise
        for vip_id, inner in inners.items():
            old = self._rings.pop(vip_id, None)
            self._rings[vip_id] = inner
            if old is not None:
                old.close()

    def drop_ring(self, vip_id: int) -> None:
        self.drop_rings([vip_id])

    def drop_rings(self, vip_ids: list[int]) -> None:
        for vip_id in vip_ids:
            self.maps["rings"].delete(vip_id)
            old = self._rings.pop(vip_id, None)
            if old is not None:
                old.close()

    def set_runtime(self, rt: abi.LbRuntime) -> None:
        self.maps["runtime"][0] = rt

    def runtime(self) -> abi.LbRuntime:
        raw = self.maps["runtime"].lookup(0)
        assert raw is not None  # an array map: key 0 always exists
        return abi.LbRuntime.from_buffer_copy(raw)

    def add_tx_port(self, ifindex: int, mac: bytes) -> None:
        """Let frames be redirected out of `ifindex` (two-armed), with `mac` as source."""
        self.maps["tx_ports"][ifindex] = C.c_uint32(ifindex)
        self.maps["if_macs"][ifindex] = abi.IfMac(mac=(C.c_uint8 * 6).from_buffer_copy(mac))

    # counters ------------------------------------------------------------------------
    def stats(self) -> dict[str, tuple[int, int]]:
        out = {}
        for st in abi.Stat:
            r = self.maps["stats"].reduce(st.value, ("packets", "bytes"))
            out[st.name.lower()] = (r["packets"], r["bytes"])
        return out

    def obj_stats(self, which: str, idx: int) -> dict[str, int]:
        return self.maps[which].reduce(idx, ("packets", "bytes", "new_flows"))

    def reset_obj_stats(self, which: str, idx: int) -> None:
        """Zero one VIP's or backend's counters (an id handed to a new owner)."""
        m = self.maps[which]
        if 0 <= idx < m.max_entries:
            m.update(idx, bytes(m.value_size))

    # reading back (adoption, status) -------------------------------------------------
    def backend_entries(self) -> dict[int, abi.Backend]:
        """Backend id -> entry, for every id ever written (family set)."""
        m = self.maps["backends"]
        raw = _read_array(m)
        size = C.sizeof(abi.Backend)
        fam = abi.Backend.family.offset
        out = {}
        for i in range(m.max_entries):
            if raw[i * size + fam]:
                out[i] = abi.Backend.from_buffer_copy(raw, i * size)
        return out

    def ring_members(self, vip_id: int) -> set[int] | None:
        """Backend ids in a VIP's published Maglev table (None: no table)."""
        raw = self.maps["rings"].lookup(vip_id)
        if raw is None:
            return None
        inner_id = int.from_bytes(raw[:4], "little")
        fd = libbpf._check(libbpf._map_by_id(inner_id), f"opening ring map id {inner_id}")
        inner = Map(fd, f"ring{vip_id}", owned=True)
        try:
            ids = np.frombuffer(_read_array(inner), dtype=np.uint32)
            return set(np.unique(ids).tolist()) - {abi.NO_BACKEND}
        finally:
            inner.close()

    # flow table ----------------------------------------------------------------------
    def flow_table(self) -> np.ndarray:
        """The `flows` map as a writable numpy record array (FLOW_DTYPE), mapped
        into this process: reading it costs no syscall, writing to it is seen by
        the data plane at once."""
        m = self.maps["flows"]
        if self._flows_mm is None:
            size = m.max_entries * m.value_size
            size = -(-size // mmap.PAGESIZE) * mmap.PAGESIZE
            self._flows_mm = mmap.mmap(m.fd, size, mmap.MAP_SHARED,
                                       mmap.PROT_READ | mmap.PROT_WRITE)
        return np.frombuffer(self._flows_mm, dtype=FLOW_DTYPE, count=m.max_entries)

    def _nat_entries(self) -> int:
        """Entries of the NAT region (it comes first), from the loaded knobs."""
        k = read_knobs(self.maps[KNOBS_PIN]) if KNOBS_PIN in self.maps else None
        return (k.nat_port_max - k.nat_port_min + 1) * abi.FLOW_WAYS if k else 0

    def clear_flows(self, nat: bool = True, conntrack: bool = True) -> None:
        """Forget the flows of the NAT region, of the conntrack region, or both."""
        t = self.flow_table()
        split = self._nat_entries()
        zero = np.zeros(1, dtype=FLOW_DTYPE)
        if nat:
            t[:split] = zero
        if conntrack:
            t[split:] = zero

    def flow_counts(self) -> dict[str, int]:
        """Entries of the flow table: size, used (ever written) and live (not idle
        beyond their timeout), for the NAT and the conntrack region."""
        t = self.flow_table()
        nat = self._nat_entries()
        rt = self.runtime()
        now = jiffies_now(rt.hz or 1000)
        used = (t["family"] != 0) & (t["proto"] != 0)
        age = (np.uint32(now) - t["last_seen"]).astype(np.uint64)
        tmo = np.where((t["flags"] & abi.FLOW_F_CLOSING) != 0, rt.closing_timeout,
                       np.where(t["proto"] == 6, rt.tcp_timeout, rt.udp_timeout))
        live = used & (age <= tmo)
        return {"nat_size": nat, "nat_used": int(used[:nat].sum()),
                "nat_live": int(live[:nat].sum()), "ct_size": len(t) - nat,
                "ct_used": int(used[nat:].sum()), "ct_live": int(live[nat:].sum())}

    # pinning -------------------------------------------------------------------------
    def pin(self, directory: str) -> None:
        """Pin every map and the program under `directory` (replacing stale pins)."""
        os.makedirs(directory, mode=0o700, exist_ok=True)
        objs = {n: (m.fd, m.id) for n, m in self.maps.items()}
        assert self.program is not None  # loaded, not from_interface()
        objs[PROG_PIN] = (self.program.fd, prog_id_of_fd(self.program.fd))
        for name, (fd, oid) in objs.items():
            path = os.path.join(directory, name)
            if os.path.exists(path):
                if _pinned_id(path, name) == oid:
                    continue
                os.unlink(path)
            libbpf.pin(fd, path)

    @staticmethod
    def unpin(directory: str) -> bool:
        """Remove our pins (and the directory if then empty); False if there were none."""
        if not os.path.isdir(directory):
            return False
        for name in (*MAP_NAMES, KNOBS_PIN, PROG_PIN):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))
        with contextlib.suppress(OSError):
            os.rmdir(directory)
        return True


MAP_NAMES = ("vips", "vip_slots", "vip_addrs", "backends", "rings", "flows", "stats",
             "vip_stats", "be_stats", "tx_ports", "if_macs", "events", "runtime")
PROG_PIN = "prog"
KNOBS_PIN = "knobs"  # the load-time knobs (.rodata), read back by a takeover, never shared
# State that must carry over for an in-place restart or upgrade: flows and the ids they
# name. The rest (counters, trace ring, run-time switches) starts fresh if its layout
# changed.
STATE_MAPS = ("flows", "vips", "vip_addrs", "backends", "rings")
# Derived state the control plane rebuilds on adopt(): never shared, so no stale entry of a
# VIP removed while the daemon was down can survive an upgrade.
FRESH_MAPS = ("vip_slots",)


_DEVMAP_TYPES = (14, 25)  # BPF_MAP_TYPE_DEVMAP, BPF_MAP_TYPE_DEVMAP_HASH
_F_RDONLY_PROG = 1 << 7


class UpgradeError(BpfError):
    """The running instance's state cannot be shared with the new object."""


@dataclass(frozen=True)
class MapDef:
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


def object_map_defs(path, max_entries: dict[str, int] | None = None) -> dict[str, MapDef]:
    """The maps an object would create (opened, not loaded), by DataPlane name."""
    fn = {n: libbpf._proto(f"bpf_map__{n}", C.c_uint32, C.c_void_p)
          for n in ("type", "key_size", "value_size", "max_entries", "map_flags")}
    out = {}
    with BpfObject(path, max_entries=max_entries) as obj:
        for name in MAP_NAMES:
            ptr = obj._mapptr_suffix(".bss") if name == "runtime" else obj._mapptr(name)
            out[name] = MapDef(fn["type"](ptr), fn["key_size"](ptr), fn["value_size"](ptr),
                               fn["max_entries"](ptr), fn["map_flags"](ptr))
    return out


def object_flow_format(path) -> int:
    """The FLOW_FORMAT an object was built with (its .rodata knobs as compiled): what its
    flows table means. A takeover keeps a table of the same format only."""
    with BpfObject(path) as obj:
        return _flow_format(obj.initial_value(".rodata"))


def _flow_format(rodata: bytes) -> int:
    return abi.LbKnobs.from_buffer_copy(rodata[:C.sizeof(abi.LbKnobs)]).flow_format


def reuse_plan(path, max_entries: dict[str, int], existing: dict[str, Map]
               ) -> tuple[dict[str, int], list[str]]:
    """Which maps of a running instance the new object can share: (name -> fd, notes).
    State maps must have the same type, key, value and flags (their size stays what it
    was); other maps are shared only when identical, else they start fresh."""
    want = object_map_defs(path, max_entries)
    fds: dict[str, int] = {}
    notes: list[str] = []
    for name, new in want.items():
        old = existing.get(name)
        if old is None:
            if name in STATE_MAPS:
                raise UpgradeError(errno.ENOENT, f"the running instance has no map {name!r}")
            notes.append(f"{name}: new map")
            continue
        flags = old.flags
        if old.type in _DEVMAP_TYPES:  # the kernel adds BPF_F_RDONLY_PROG to devmaps
            flags &= ~_F_RDONLY_PROG
        got = MapDef(old.type, old.key_size, old.value_size, old.max_entries, flags)
        same_layout = (got.type, got.key_size, got.value_size, got.flags) == \
            (new.type, new.key_size, new.value_size, new.flags)
        if name in STATE_MAPS:
            if not same_layout:
                raise UpgradeError(errno.EINVAL, f"map {name} changed layout ({_diff(got, new)}); "
                                   "its state cannot carry over")
            if got.max_entries != new.max_entries and name == "flows":
                raise UpgradeError(errno.EINVAL, f"map flows has {got.max_entries} entries, "
                                   f"the new instance's NAT range and conntrack size make "
                                   f"{new.max_entries}; its state cannot carry over")
            if got.max_entries != new.max_entries:
                notes.append(f"{name}: keeps {got.max_entries} entries (configured "
                             f"{new.max_entries}: takes effect after a full stop)")
            fds[name] = old.fd
        elif name not in FRESH_MAPS and same_layout and got.max_entries == new.max_entries:
            fds[name] = old.fd
        else:
            notes.append(f"{name}: starts fresh ({_diff(got, new)})")
    return fds, notes


def _diff(a: MapDef, b: MapDef) -> str:
    return ", ".join(f"{f} {getattr(a, f)} -> {getattr(b, f)}"
                     for f in ("type", "key_size", "value_size", "max_entries", "flags")
                     if getattr(a, f) != getattr(b, f)) or "same"


def existing_maps(prog_id: int) -> dict[str, Map]:
    """The maps of a loaded xdplb program, by DataPlane name (owned: close them)."""
    maps = libbpf.prog_maps(prog_id)
    out = {}
    for name, m in maps.items():
        if name.endswith(".bss"):
            out["runtime"] = m
        elif name.endswith(".rodata"):
            out[KNOBS_PIN] = m
        elif name in MAP_NAMES:
            out[name] = m
        else:
            m.close()
    return out


def open_pinned(directory: str) -> tuple[dict[str, Map], int]:
    """Maps pinned by a kept instance (owned: close them) and its pinned program id
    (0 if none)."""
    maps: dict[str, Map] = {}
    for name in (*MAP_NAMES, KNOBS_PIN):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            maps[name] = Map(libbpf.get_pinned(path), name, owned=True)
    prog_id = 0
    path = os.path.join(directory, PROG_PIN)
    if os.path.exists(path):
        fd = libbpf.get_pinned(path)
        try:
            prog_id = prog_id_of_fd(fd)
        finally:
            os.close(fd)
    return maps, prog_id


def read_knobs(m: Map) -> abi.LbKnobs | None:
    """The load-time knobs of a running instance, from its .rodata map."""
    raw = m.lookup(0)
    if raw is None or len(raw) < C.sizeof(abi.LbKnobs):
        return None
    return abi.LbKnobs.from_buffer_copy(raw[: C.sizeof(abi.LbKnobs)])


def _pinned_id(path: str, name: str) -> int:
    fd = libbpf.get_pinned(path)
    try:
        return prog_id_of_fd(fd) if name == PROG_PIN else libbpf.map_info(fd).id
    finally:
        os.close(fd)


def prog_id_of_fd(fd: int) -> int:
    info = libbpf._ProgInfo()
    n = C.c_uint32(C.sizeof(info))
    libbpf._check(libbpf._info_by_fd(fd, C.byref(info), C.byref(n)), "program info")
    return info.id


def xdp_attachment(ifindex: int) -> tuple[int, str]:
    """(program id, mode) of the XDP program on `ifindex`: mode "native" or "generic"
    (what replace/detach must name), (0, "") when nothing is attached."""
    for mode, flag in (("native", libbpf.XDP_FLAGS_DRV_MODE),
                       ("generic", libbpf.XDP_FLAGS_SKB_MODE)):
        pid = C.c_uint32(0)
        libbpf._check(libbpf._xdp_query_id(ifindex, flag, C.byref(pid)), "XDP query")
        if pid.value:
            return pid.value, mode
    return 0, ""


def prog_fd_by_id(prog_id: int) -> int:
    return libbpf._check(libbpf._prog_by_id(prog_id), f"opening program id {prog_id}")


def prog_holders(prog_id: int) -> list[int]:
    """Pids (other than ours) holding a file descriptor of program `prog_id`: a live
    process that owns the attached program (`xdplb run`, a running `serve`)."""
    me = os.getpid()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            fds = os.listdir(f"/proc/{d}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{d}/fd/{fd}") != "anon_inode:bpf-prog":
                    continue
                with open(f"/proc/{d}/fdinfo/{fd}") as f:
                    if any(ln.split() == ["prog_id:", str(prog_id)] for ln in f):
                        out.append(int(d))
                        break
            except OSError:
                continue
    return out


# abi.FlowEntry as a numpy record (addresses as 4 words, as the data plane loads them)
FLOW_DTYPE = np.dtype([
    ("src", "<u4", (4,)), ("dst", "<u4", (4,)), ("sport", "<u2"), ("dport", "<u2"),
    ("proto", "u1"), ("family", "u1"), ("flags", "u1"), ("set_flags", "u1"),
    ("last_seen", "<u4"), ("reply_tag", "<u4"), ("backend_id", "<u4"),
    ("client_ifindex", "<u4"), ("client_mac", "u1", (6,)), ("pad", "<u2")])
_FIELDS: dict = dict(FLOW_DTYPE.fields or {})
assert FLOW_DTYPE.itemsize == C.sizeof(abi.FlowEntry) and all(
    _FIELDS[name][1] == getattr(abi.FlowEntry, name).offset
    for name, *_ in abi.FlowEntry._fields_), "FLOW_DTYPE does not mirror abi.FlowEntry"


def _read_array(m: Map) -> bytes:
    """All values of an array map, with bpf_map_lookup_batch (one call per 64k)."""

    class _BatchOpts(C.Structure):
        _fields_ = [("sz", C.c_size_t), ("elem_flags", C.c_uint64), ("flags", C.c_uint64)]

    fn = libbpf._lib.bpf_map_lookup_batch
    fn.restype = C.c_int
    fn.argtypes = [C.c_int, C.c_void_p, C.c_void_p, C.c_void_p, C.c_void_p,
                   C.POINTER(C.c_uint32), C.c_void_p]
    n_all = m.max_entries
    keys = (C.c_uint32 * n_all)()
    vals = C.create_string_buffer(n_all * m.value_size)
    opts = _BatchOpts(sz=C.sizeof(_BatchOpts))
    out_batch = C.c_uint32(0)
    in_batch = C.c_uint32(0)
    done = 0
    first = True
    while done < n_all:
        count = C.c_uint32(min(65536, n_all - done))
        rc = fn(m.fd, None if first else C.byref(in_batch), C.byref(out_batch),
                C.byref(keys, done * 4), C.byref(vals, done * m.value_size), C.byref(count),
                C.byref(opts))
        done += count.value
        if rc < 0:
            err = C.get_errno() or -rc
            if err == errno.ENOENT:
                break
            raise BpfError(err, f"batch lookup of {m.name}")
        first = False
        in_batch.value = out_batch.value
    return vals.raw


_HZ: int | None = None


def jiffies_now(hz: int) -> int:
    """The kernel's jiffies (low 32 bits), from CLOCK_MONOTONIC: both count from boot,
    jiffies from -300 s (INITIAL_JIFFIES); a few jiffies off at most."""
    return int((time.clock_gettime(time.CLOCK_MONOTONIC) - 300) * hz) & 0xFFFFFFFF


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


def _update_batch(m: Map, values: np.ndarray, keys: np.ndarray | None = None) -> None:
    """bpf_map_update_batch: `values` at `keys` (default 0..n-1), u32 each, 64k a call."""

    class _BatchOpts(C.Structure):
        _fields_ = [("sz", C.c_size_t), ("elem_flags", C.c_uint64), ("flags", C.c_uint64)]

    fn = libbpf._lib.bpf_map_update_batch
    fn.restype = C.c_int
    fn.argtypes = [C.c_int, C.c_void_p, C.c_void_p, C.POINTER(C.c_uint32), C.c_void_p]
    if keys is None:
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
