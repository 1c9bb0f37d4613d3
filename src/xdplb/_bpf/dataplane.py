"""The loaded xdplb data plane, as the control plane sees it: typed maps, Maglev table
swaps, counters, the flow table, attach and pins.

Loading (and taking over a running instance) is loader.py's and takeover.py's job;
`FakeDataPlane` (fake.py) has the same interface for control-plane unit tests.
"""
from __future__ import annotations

import contextlib
import ctypes as C
import errno
import mmap
import os
import socket
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..config import DEFAULTS
from . import abi, libbpf
from .contract import StatsMap
from .libbpf import F_INNER_MAP, F_MMAPABLE, MAP_ARRAY, BpfObject, Map, Program

PROG_NAME = "xdplb"


@dataclass
class Sizes:
    """Map sizes fixed at load time."""

    max_vips: int = DEFAULTS.max_vips
    max_backends: int = DEFAULTS.max_backends
    conntrack: int = DEFAULTS.conntrack_size  # non-NAT flows (NAT: ports x FLOW_WAYS)
    verified: int = DEFAULTS.verified_size  # client addresses that answered a SYN challenge

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
            "verified": self.verified,
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
    syn_timeout_s: float = DEFAULTS.syn_timeout_s
    refresh_s: float = DEFAULTS.refresh_s
    nonsyn_budget: int = DEFAULTS.nonsyn_budget
    age_shift: int = 0  # victims compare idle times >> this; 31: not at all (tests: no clock)
    # the NAT SYN challenge and RST answers (bpf/guard.h)
    syn_challenge: str = DEFAULTS.syn_challenge  # "auto" | "off" | "always"
    syn_challenge_rate: int = DEFAULTS.syn_challenge_rate
    syn_challenge_hold_s: float = DEFAULTS.syn_challenge_hold_s
    verified_timeout_s: float = DEFAULTS.verified_timeout_s
    rst_rate: int = DEFAULTS.rst_rate
    #: the cookie's time slot is jiffies >> cookie_shift; 0: about 8 s from HZ (tests: 63
    #: freezes the slot, as the model's clock is frozen)
    cookie_shift: int = 0
    #: the cookie's key (16 bytes); None: a random one at load, or the one a takeover keeps
    cookie_secret: bytes | None = None
    ct_sets: int = 0  # conntrack sets; 0: from Sizes.conntrack (a takeover keeps the old)
    #: the interface's MAC: only frames addressed to it are balanced, and it is the source of
    #: what goes back out of the interface; None: every frame is looked at (tests, `run`)
    if_mac: bytes | None = None
    gue_port: int = DEFAULTS.gue_port  # GUE destination port of tunnel-mode VIPs
    pmtu_rate: int = DEFAULTS.pmtu_rate  # ICMP frag-needed / packet-too-big a second, per CPU

    def nat_sets(self) -> int:
        """Sets of the NAT region of `flows`: one per NAT port."""
        return self.nat_port_max - self.nat_port_min + 1

    def ct_sets_for(self, conntrack: int) -> int:
        """Sets of the conntrack region: `ct_sets`, else enough for `conntrack` flows
        (a power of two)."""
        if self.ct_sets:
            if self.ct_sets < 2 or self.ct_sets & (self.ct_sets - 1):
                raise ValueError(f"ct_sets {self.ct_sets}: a power of two >= 2 "
                                 "(conntrack buckets are two sets)")
            return self.ct_sets
        want = max(2, -(-conntrack // abi.FLOW_WAYS))  # (buckets of two sets: at least one)
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
            mac_check=int(self.if_mac is not None),
            gue_port=abi.htons(self.gue_port),
            pmtu_rate=self.pmtu_rate,
        )
        if self.if_mac is not None:
            if len(self.if_mac) != 6:
                raise ValueError(f"if_mac must be 6 bytes, not {len(self.if_mac)}")
            k.if_mac[:] = list(self.if_mac)
        return bytes(k)

    def timeouts(self, rt: abi.LbRuntime, hz: int) -> None:
        rt.hz = hz
        rt.tcp_timeout = int(self.tcp_timeout_s * hz)
        rt.closing_timeout = int(self.closing_timeout_s * hz)
        rt.udp_timeout = int(self.udp_timeout_s * hz)
        rt.syn_timeout = int(self.syn_timeout_s * hz)
        rt.refresh = max(1, int(self.refresh_s * hz))
        rt.nonsyn_budget = min(max(0, self.nonsyn_budget), 0xFFFFFFFF)
        rt.age_shift = self.age_shift & 31
        rt.syn_challenge = abi.CHALLENGE_MODES[self.syn_challenge]
        rt.syn_challenge_rate = min(max(0, self.syn_challenge_rate), 0xFFFFFFFF)
        rt.rst_rate = min(max(0, self.rst_rate), 1 << 24)
        rt.challenge_hold = max(0, int(self.syn_challenge_hold_s * hz))
        rt.verified_timeout = max(0, int(self.verified_timeout_s * hz))
        rt.cookie_shift = (self.cookie_shift & 63) or abi.cookie_shift_for(hz)
        if self.cookie_secret is not None:
            if len(self.cookie_secret) != 16:
                raise ValueError(f"cookie_secret must be 16 bytes, not {len(self.cookie_secret)}")
            rt.cookie_secret[:] = list(struct.unpack("<4I", self.cookie_secret))
        elif not any(rt.cookie_secret):  # (a takeover that kept the run-time state keeps it)
            rt.cookie_secret[:] = list(struct.unpack("<4I", os.urandom(16)))
        for name in ("tcp_timeout", "closing_timeout", "udp_timeout", "syn_timeout"):
            setattr(rt, name, min(getattr(rt, name), 0x7FFFFFFF))  # flow ages are 32-bit


_TYPES = {
    "vips": (abi.VipKey, abi.VipInfo),
    "vip_slots": (C.c_uint32, abi.VipSlot),
    "vip_addrs": (abi.VipKey, C.c_uint32),
    "backends": (C.c_uint32, abi.Backend),
    "flows": (C.c_uint32, abi.FlowEntry),
    "stats": (C.c_uint32, abi.Counter),
    "flood": (C.c_uint32, abi.FloodState),
    "verified": (abi.VerifiedKey, C.c_uint64),
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
        # vip id -> its table mapped into this process (patch_rings writes through it)
        self._ring_mm: dict[int, tuple[mmap.mmap, np.ndarray]] = {}
        self._prev_rings: dict[int, Map] = {}  # the tables prev_rings holds (gue hints)
        self._flows_mm: mmap.mmap | None = None
        self.attached: list[tuple[int, str]] = []
        self.reused: list[str] = []  # maps shared with the instance this one replaced
        self.reuse_notes: list[str] = []  # why some state did not carry over

    # lifetime ------------------------------------------------------------------------
    def close(self, detach: bool = True) -> None:
        """Release everything; `detach=False` leaves the program attached (the kernel
        keeps it and its maps alive: `xdplb serve --keep`)."""
        if detach:
            self.detach_all()
        else:
            self.attached.clear()
        for vip_id in list(self._ring_mm):
            self._unmap_ring(vip_id)
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

    def put_backends(self, entries: dict[int, abi.Backend]) -> None:
        self.maps["backends"].update_batch_raw(list(entries),
                                               b"".join(bytes(v) for v in entries.values()))

    def swap_ring(self, vip_id: int, table: npt.ArrayLike) -> None:
        """Publish a new Maglev table for `vip_id` in one atomic outer-map update."""
        self.swap_rings({vip_id: table})

    def swap_rings(self, tables: Mapping[int, npt.ArrayLike]) -> None:
        """Publish new Maglev tables, each VIP's swap atomic, all in one batch update of
        the outer map (the kernel waits one RCU grace period per map-in-map update
        call, ~10 ms here: per batch, not per VIP)."""
        inners: dict[int, Map] = {}
        mapped: dict[int, tuple[mmap.mmap, np.ndarray]] = {}
        try:
            for vip_id, table in tables.items():
                # laid out one at a time (4,096 tables at once would be 1 GiB more)
                values = np.asarray(table, dtype=np.uint32)
                inner = libbpf.create_map(MAP_ARRAY, 4, 4, len(values), f"ring{vip_id}",
                                          F_INNER_MAP | F_MMAPABLE)
                inners[vip_id] = inner
                # filled with one copy (~0.2 ms for 65,537 slots, where a batch update
                # takes ~40 ms); the mapping is kept for patch_rings
                mapped[vip_id] = _map_table(inner)
                mapped[vip_id][1][:] = values
                del values
            keys = np.array(list(inners), dtype=np.uint32)
            fds = np.array([m.fd for m in inners.values()], dtype=np.uint32)
            self.maps["rings"].update_batch(fds, keys)
        except Exception:
            for vip_id in list(mapped):
                _close_mapping(mapped, vip_id)
            for m in inners.values():
                m.close()
            raise
        prev: dict[int, Map] = {}
        for vip_id, inner in inners.items():
            self._unmap_ring(vip_id)
            self._ring_mm[vip_id] = mapped[vip_id]
            old = self._rings.pop(vip_id, None)
            self._rings[vip_id] = inner
            if old is not None:
                prev[vip_id] = old
        if prev and "prev_rings" in self.maps:
            # the replaced tables become the previous ones (gue hints: encap.h), one batch
            keys = np.array(list(prev), dtype=np.uint32)
            fds = np.array([m.fd for m in prev.values()], dtype=np.uint32)
            self.maps["prev_rings"].update_batch(fds, keys)
        for vip_id, old in prev.items():
            replaced = self._prev_rings.pop(vip_id, None)
            self._prev_rings[vip_id] = old
            if replaced is not None:
                replaced.close()

    def patch_rings(self, patches: dict[int, tuple[np.ndarray, np.ndarray]]) -> None:
        """Write new backend ids into slots of published tables, in place, through
        each table's mapping: a drain across 4,096 VIPs rewrites a quarter of each
        table in ~0.1 ms where a new table costs ~0.5 ms (a new map, zeroed, filled)
        and 512 KiB more until the old one is freed. Each slot is one aligned 8-byte
        store: a program reads the old id or the new one. Then one update of the outer
        map (the same table put back) makes the kernel wait until no program still
        runs with a slot value read before the patch."""
        last = None
        for vip_id, (idx, ids) in patches.items():
            try:
                view = self._ring_view(vip_id)
            except OSError:  # a table made before tables were mmapable: a new one
                table = self.ring_table(vip_id)
                assert table is not None  # (_ring_view said KeyError otherwise)
                table[idx] = ids
                self.swap_rings({vip_id: table})
                continue
            view[idx] = ids
            last = vip_id
        if last is not None:
            self.maps["rings"].update_batch(np.array([self._rings[last].fd], dtype=np.uint32),
                                            np.array([last], dtype=np.uint32))

    def _ring_view(self, vip_id: int) -> np.ndarray:
        """A VIP's published table as a writable array (8-byte stride: each id in the
        low half of a little-endian u64), mapped once and kept."""
        if vip_id not in self._ring_mm:
            if vip_id not in self._rings:  # published by an earlier process: open it
                raw = self.maps["rings"].lookup(vip_id)
                if raw is None:
                    raise KeyError(f"VIP id {vip_id} has no Maglev table to patch")
                inner_id = int.from_bytes(raw[:4], "little")
                self._rings[vip_id] = Map(libbpf.map_fd_by_id(inner_id), f"ring{vip_id}",
                                          owned=True)
            self._ring_mm[vip_id] = _map_table(self._rings[vip_id])
        return self._ring_mm[vip_id][1]

    def _unmap_ring(self, vip_id: int) -> None:
        _close_mapping(self._ring_mm, vip_id)

    def drop_ring(self, vip_id: int) -> None:
        self.drop_rings([vip_id])

    def drop_rings(self, vip_ids: list[int]) -> None:
        for vip_id in vip_ids:
            self.maps["rings"].delete(vip_id)
            self._unmap_ring(vip_id)
            if "prev_rings" in self.maps:
                self.maps["prev_rings"].delete(vip_id)
            for held in (self._rings, self._prev_rings):
                old = held.pop(vip_id, None)
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

    def obj_stats(self, which: StatsMap, idx: int) -> dict[str, int]:
        return self.maps[which].reduce(idx, ("packets", "bytes", "new_flows"))

    def obj_stats_many(self, which: StatsMap, ids: list[int]) -> np.ndarray:
        """One batch read of the whole per-CPU map (a syscall per 64k ids, not one per
        id: a status of 16,384 backends took 16,384 lookups), summed over CPUs."""
        m = self.maps[which]
        stride = _array_stride(m.value_size) // 8
        raw = np.frombuffer(m.read_all(), dtype="<u8").reshape(m.max_entries, -1, stride)
        sums = raw[:, :, :3].sum(axis=1, dtype=np.uint64)  # packets, bytes, new_flows
        idx = np.asarray(ids, dtype=np.intp)
        out = np.zeros((len(idx), 3), dtype=np.uint64)
        ok = (idx >= 0) & (idx < m.max_entries)
        out[ok] = sums[idx[ok]]
        return out

    def reset_obj_stats_many(self, which: StatsMap, ids: list[int]) -> None:
        """Zero many ids' counters in one batch (ids outside the map are skipped)."""
        m = self.maps[which]
        ids = [i for i in ids if 0 <= i < m.max_entries]
        if ids:
            m.update_batch_raw(ids, bytes(m.value_bytes * len(ids)))

    def reset_obj_stats(self, which: StatsMap, idx: int) -> None:
        """Zero one VIP's or backend's counters (an id handed to a new owner)."""
        m = self.maps[which]
        if 0 <= idx < m.max_entries:
            m.update(idx, bytes(m.value_size))

    # reading back (adoption, status) -------------------------------------------------
    def id_limits(self) -> tuple[int, int]:
        """Ids must index every per-id map; a kept instance's maps keep their sizes."""
        return (min(self.maps[n].max_entries for n in ("rings", "vip_stats")),
                min(self.maps[n].max_entries for n in ("backends", "be_stats")))

    def vip_entries(self) -> list[tuple[abi.VipKey, abi.VipInfo]]:
        return list(self.maps["vips"].items())

    def vip_addr_keys(self) -> list[abi.VipKey]:
        return [abi.VipKey.from_buffer_copy(k) for k in self.maps["vip_addrs"]]

    def backend_entries(self) -> dict[int, abi.Backend]:
        """Backend id -> entry, for every id ever written (family set)."""
        m = self.maps["backends"]
        raw = m.read_all()
        size = C.sizeof(abi.Backend)
        fam = abi.Backend.family.offset
        out = {}
        for i in range(m.max_entries):
            if raw[i * size + fam]:
                out[i] = abi.Backend.from_buffer_copy(raw, i * size)
        return out

    def ring_table(self, vip_id: int, outer: str = "rings") -> np.ndarray | None:
        """A VIP's published Maglev table (slot -> backend id), None: no table;
        `outer` "prev_rings": the one before its last change (read, never mapped)."""
        if outer == "rings":
            if vip_id in self._ring_mm:  # mapped already
                return self._ring_mm[vip_id][1].astype(np.uint32)
            try:  # mapped for good: a takeover reads every table, then patches them
                return self._ring_view(vip_id).astype(np.uint32)
            except KeyError:
                return None
            except OSError:  # a table made before tables were mmapable: read below
                pass
        raw = self.maps[outer].lookup(vip_id)
        if raw is None:
            return None
        inner_id = int.from_bytes(raw[:4], "little")
        inner = Map(libbpf.map_fd_by_id(inner_id), f"ring{vip_id}", owned=True)
        try:
            try:  # a mapped read of a mmapable table: no syscall per slot
                n = inner.max_entries
                size = -(-n * _array_stride(4) // mmap.PAGESIZE) * mmap.PAGESIZE
                with mmap.mmap(inner.fd, size, mmap.MAP_SHARED | getattr(
                        mmap, "MAP_POPULATE", 0), mmap.PROT_READ) as mm:
                    return np.frombuffer(mm, dtype="<u8", count=n).astype(np.uint32)
            except OSError:  # a table made before tables were mmapable
                return np.frombuffer(inner.read_all(), dtype=np.uint32).copy()
        finally:
            inner.close()

    def ring_members(self, vip_id: int) -> set[int] | None:
        """Backend ids in a VIP's published Maglev table (None: no table)."""
        table = self.ring_table(vip_id)
        if table is None:
            return None
        return set(np.unique(table).tolist()) - {abi.NO_BACKEND}

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
        if "flood" in self.maps:  # a clean table starts with a full non-SYN budget and
            # the SYN challenge disengaged
            self.maps["flood"].update(0, bytes(C.sizeof(abi.FloodState)))
        if nat and "verified" in self.maps:  # (NAT admission: addresses that answered)
            self.maps["verified"].clear()

    def flow_liveness(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
        """(table, used, live, age in jiffies, NAT region entries): the one reading of
        which entries are live (not idle beyond their timeout), for counts and listings."""
        t = self.flow_table()
        nat = self._nat_entries()
        rt = self.runtime()
        now = jiffies_now(rt.hz or 1000)
        used = (t["family"] != 0) & (t["proto"] != 0)
        age = (np.uint32(now) - t["last_seen"]).astype(np.uint64)
        tmo = np.where((t["flags"] & abi.FLOW_F_EMBRYONIC) != 0, rt.syn_timeout,
                       np.where((t["flags"] & abi.FLOW_F_CLOSING) != 0, rt.closing_timeout,
                                np.where(t["proto"] == 6, rt.tcp_timeout, rt.udp_timeout)))
        live = used & (age <= tmo)
        return t, used, live, age, nat

    def live_flows_by_backend(self) -> dict[int, int]:
        """Backend id -> its live flows in the flow table."""
        t, _, live, _, _ = self.flow_liveness()
        ids, counts = np.unique(t["backend_id"][live], return_counts=True)
        return dict(zip(ids.tolist(), counts.tolist(), strict=True))

    def flow_counts(self) -> dict[str, int]:
        """Entries of the flow table: size, used (ever written) and live (not idle
        beyond their timeout), for the NAT and the conntrack region."""
        t, used, live, _, nat = self.flow_liveness()
        return {"nat_size": nat, "nat_used": int(used[:nat].sum()),
                "nat_live": int(live[:nat].sum()), "ct_size": len(t) - nat,
                "ct_used": int(used[nat:].sum()), "ct_live": int(live[nat:].sum())}

    # pinning -------------------------------------------------------------------------
    def pin(self, directory: str) -> None:
        """Pin every map and the program under `directory` (replacing stale pins)."""
        os.makedirs(directory, mode=0o700, exist_ok=True)
        objs = {n: (m.fd, m.id) for n, m in self.maps.items()}
        assert self.program is not None  # loaded, not from_interface()
        objs[PROG_PIN] = (self.program.fd, libbpf.prog_id_of_fd(self.program.fd))
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
             "vip_stats", "be_stats", "tx_ports", "if_macs", "events", "flood", "verified",
             "runtime", "prev_rings")
PROG_PIN = "prog"
KNOBS_PIN = "knobs"  # the load-time knobs (.rodata), read back by a takeover, never shared


def read_knobs(m: Map) -> abi.LbKnobs | None:
    """The load-time knobs of a running instance, from its .rodata map."""
    raw = m.lookup(0)
    if raw is None or len(raw) < abi.LbKnobs.if_mac.offset:
        return None
    # an older object's knobs end before if_mac (no MAC check): zero-filled
    raw = bytes(raw[: C.sizeof(abi.LbKnobs)]).ljust(C.sizeof(abi.LbKnobs), b"\0")
    return abi.LbKnobs.from_buffer_copy(raw)


def _pinned_id(path: str, name: str) -> int:
    fd = libbpf.get_pinned(path)
    try:
        return libbpf.prog_id_of_fd(fd) if name == PROG_PIN else libbpf.map_info(fd).id
    finally:
        os.close(fd)


# abi.FlowEntry as a numpy record (addresses as 4 words, as the data plane loads them)
FLOW_DTYPE = np.dtype([
    ("src", "<u4", (4,)), ("dst", "<u4", (4,)), ("sport", "<u2"), ("dport", "<u2"),
    ("proto", "u1"), ("family", "u1"), ("flags", "u1"), ("set_flags", "u1"),
    ("last_seen", "<u4"), ("reply_tag", "<u4"), ("backend_id", "<u4"),
    ("client_ifindex", "<u4"), ("client_mac", "u1", (6,)), ("ack_check", "<u2")])
_FIELDS: dict = dict(FLOW_DTYPE.fields or {})
assert FLOW_DTYPE.itemsize == C.sizeof(abi.FlowEntry) and all(
    _FIELDS[name][1] == getattr(abi.FlowEntry, name).offset
    for name, *_ in abi.FlowEntry._fields_), "FLOW_DTYPE does not mirror abi.FlowEntry"


def _array_stride(value_size: int) -> int:
    """Bytes between the values of an array map in memory: the kernel rounds each value
    up to 8 bytes, and that is the layout an mmap shows."""
    return -(-value_size // 8) * 8


def _close_mapping(mapped: dict[int, tuple[mmap.mmap, np.ndarray]], key: int) -> None:
    kept = mapped.pop(key, None)
    if kept is not None:
        mm = kept[0]
        del kept  # (a mapping cannot close while a view of it exists)
        with contextlib.suppress(BufferError):
            mm.close()


def _map_table(m: Map) -> tuple[mmap.mmap, np.ndarray]:
    """A mmapable u32 array map mapped writable, as u64 words (the kernel's 8-byte stride,
    each value in the low half, little endian); populated at once (MAP_POPULATE: one
    call instead of a page fault per 4 KiB)."""
    n = m.max_entries
    size = -(-n * _array_stride(4) // mmap.PAGESIZE) * mmap.PAGESIZE
    mm = mmap.mmap(m.fd, size, mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                   mmap.PROT_READ | mmap.PROT_WRITE)
    return mm, np.frombuffer(mm, dtype="<u8", count=n)


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
