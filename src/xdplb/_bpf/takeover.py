"""Taking over a running xdplb: the program attached to the interface, kept by a `serve
--keep` (or left by a process that died), hands its maps to the new instance, so flows,
NAT ports and ids survive a restart or an upgrade.

`find` says what is attached and refuses what must not be replaced; `Found.fit` adapts
the new instance's knobs to the kept flow table (same format, same geometry, same NAT
range); `reuse_plan` says which maps the new object can share.
"""
from __future__ import annotations

import ctypes as C
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import XdplbError
from . import abi, libbpf
from .dataplane import KNOBS_PIN, MAP_NAMES, PROG_NAME, PROG_PIN, DataPlane, Knobs, read_knobs
from .libbpf import BpfError, BpfObject, Map, MapDef

LogFn = Callable[..., None]  # log(event, level="info", **fields)

# State that must carry over for an in-place restart or upgrade: flows and the ids they
# name. The rest (counters, trace ring, run-time switches) starts fresh if its layout
# changed.
STATE_MAPS = ("flows", "vips", "vip_addrs", "backends", "rings")
# Derived state the control plane rebuilds on adopt(): never shared, so no stale entry of a
# VIP removed while the daemon was down can survive an upgrade.
FRESH_MAPS = ("vip_slots", "prev_rings")  # prev_rings: a new LoadBalancer has no history

_DEVMAP_TYPES = (14, 25)  # BPF_MAP_TYPE_DEVMAP, BPF_MAP_TYPE_DEVMAP_HASH
_F_RDONLY_PROG = 1 << 7


class UpgradeError(BpfError):
    """The running instance's state cannot be shared with the new object."""


@dataclass
class Found:
    """The xdplb attached to an interface, to be taken over."""

    prog_id: int
    mode: str  # "native" | "generic": a replace keeps it
    maps: dict[str, Map] = field(default_factory=dict)  # owned until close()
    source: str = "attached program"  # or "pins"

    def fit(self, knobs: Knobs, object_path, interface: str, log: LogFn) -> None:
        """Adapt `knobs` to the kept flow table: its geometry and NAT port range stay
        (live flows hold those ports); refuse a table of another format."""
        old_map = self.maps.pop(KNOBS_PIN, None)
        if old_map is None:
            return
        old = read_knobs(old_map)
        old_map.close()
        if old is None:
            return
        new_format = object_flow_format(object_path)
        if old.flow_format != new_format:
            raise XdplbError(
                f"cannot take over the xdplb on {interface} (program id {self.prog_id}): its "
                f"flow table has format {old.flow_format}, this xdplb uses {new_format} "
                "(another flow hash or layout); `xdplb stop` it first (its flows are dropped)")
        if old.ct_sets:  # the kept flow table's geometry
            knobs.ct_sets = old.ct_sets
        old_range = (old.nat_port_min, old.nat_port_max)
        if old_range != (knobs.nat_port_min, knobs.nat_port_max):
            # live flows hold NAT ports of the old range: their replies must still be
            # recognised
            log("takeover_note", level="warning",
                what=f"lb.nat_ports stays {old_range[0]}-{old_range[1]} (configured "
                f"{knobs.nat_port_min}-{knobs.nat_port_max}: takes effect after a full stop)")
            knobs.nat_port_min, knobs.nat_port_max = old_range

    def close(self) -> None:
        for m in self.maps.values():
            m.close()
        self.maps.clear()


def attached(interface: str, ifindex: int) -> tuple[int, str]:
    """(program id, mode) of an xdplb on `ifindex` that may be taken over, (0, "") when
    nothing is attached. Refuses another program and an xdplb a live process serves."""
    old_id, old_mode = libbpf.xdp_attachment(ifindex)
    if not old_id:
        return 0, ""
    name = libbpf.prog_name(old_id)
    if name != PROG_NAME:
        raise XdplbError(f"cannot attach XDP to {interface}: it has another XDP program "
                         f"({name!r}, id {old_id}); xdplb will not replace it (detach it "
                         "first)")
    holders = prog_holders(old_id)
    if holders:
        raise XdplbError(f"cannot attach XDP to {interface}: another xdplb process (pid "
                         f"{', '.join(map(str, holders))}) serves it; stop that first")
    return old_id, old_mode


def find(interface: str, ifindex: int, pins: str | None) -> Found | None:
    """The xdplb attached to `ifindex` that a new instance takes over (its maps from the
    pins in `pins` when they belong to it, else from the program), None when nothing is
    attached."""
    old_id, old_mode = attached(interface, ifindex)
    if not old_id:
        return None
    pinned: dict[str, Map] = {}
    pinned_prog = 0
    if pins and os.path.isdir(pins):
        pinned, pinned_prog = open_pinned(pins)
    if pinned and pinned_prog == old_id:
        return Found(old_id, old_mode, pinned, "pins")
    for m in pinned.values():
        m.close()
    return Found(old_id, old_mode, existing_maps(old_id), "attached program")


def release(interface: str | None, ifindex: int, pins: str) -> list[str]:
    """Detach a kept xdplb (no process owns it) from `ifindex` and remove its pins; what
    was done (empty: nothing was there)."""
    done = []
    if interface:
        prog_id, mode = libbpf.xdp_attachment(ifindex)
        if prog_id:
            if libbpf.prog_name(prog_id) != PROG_NAME:
                raise XdplbError(f"the XDP program on {interface} (id {prog_id}) is not "
                                 "xdplb's")
            holders = prog_holders(prog_id)
            if holders:
                raise XdplbError(f"the xdplb on {interface} belongs to a running process (pid "
                                 f"{', '.join(map(str, holders))}): stop that instead")
            fd = libbpf.prog_fd_by_id(prog_id)
            try:
                libbpf.xdp_detach(ifindex, fd, mode)
            finally:
                os.close(fd)
            done.append(f"detached program id {prog_id} from {interface}")
    if DataPlane.unpin(pins):
        done.append(f"removed {pins}")
    return done


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


def object_map_defs(path, max_entries: dict[str, int] | None = None) -> dict[str, MapDef]:
    """The maps an object would create (opened, not loaded), by DataPlane name."""
    with BpfObject(path, max_entries=max_entries) as obj:
        return {name: obj.map_def(".bss" if name == "runtime" else name)
                for name in MAP_NAMES}


def object_flow_format(path) -> int:
    """The FLOW_FORMAT an object was built with (its .rodata knobs as compiled): what its
    flows table means. A takeover keeps a table of the same format only."""
    with BpfObject(path) as obj:
        return flow_format(obj.initial_value(".rodata"))


def flow_format(rodata: bytes) -> int:
    return abi.LbKnobs.from_buffer_copy(rodata[:C.sizeof(abi.LbKnobs)]).flow_format


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
            prog_id = libbpf.prog_id_of_fd(fd)
        finally:
            os.close(fd)
    return maps, prog_id


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
