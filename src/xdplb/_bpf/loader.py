"""The one loader. `xdplb run` and `xdplb serve` both come here to open the data plane for
an interface: take over the xdplb already attached there (takeover.py), load the object
sized and tuned from the defaults table or the config, and, once the control plane has
filled the maps, attach it (atomically replacing a taken-over program) and pin it.

    inst = open_instance(LoadRequest(interface="eth0", ...), log)
    ... fill inst.dp's maps ...
    inst.attach(); inst.pin()
"""
from __future__ import annotations

import copy
import errno
import os
from dataclasses import dataclass, field

from ..errors import XdplbError
from . import libbpf, takeover
from .dataplane import (
    KNOBS_PIN,
    MAP_NAMES,
    PROG_NAME,
    DataPlane,
    Knobs,
    Sizes,
    ensure_bpffs,
    ifindex_of,
    kernel_hz,
)
from .libbpf import AttachError, BpfError, BpfObject, VerifierError
from .netlink import interface_mac, mac_bytes
from .takeover import Found, LogFn, UpgradeError, reuse_plan


def load(path=None, sizes: Sizes | None = None, knobs: Knobs | None = None,
         reuse: dict[str, libbpf.Map] | None = None) -> DataPlane:
    """Load the object (not attached). `reuse` (name -> Map of a running instance, see
    `takeover.existing_maps`) makes the new program share those maps: checked first by
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
                    rodata=lambda compiled: knobs.pack(ct_sets, takeover.flow_format(compiled)),
                    reuse_maps={(".bss" if n == "runtime" else n): fd for n, fd in fds.items()})
    try:
        obj.load((PROG_NAME,))
        maps = {n: obj.map(n) for n in MAP_NAMES if n != "runtime"}
        maps["runtime"] = obj.map(".bss")
        maps[KNOBS_PIN] = obj.map(".rodata")
        dp = DataPlane(maps, obj.program(PROG_NAME), obj)
        dp.reused = sorted(fds)
        dp.reuse_notes = notes
        rt = dp.runtime()
        knobs.timeouts(rt, kernel_hz(obj.program("xdplb_clock")))
        dp.set_runtime(rt)
        return dp
    except Exception:
        obj.close()
        raise


def open_attached(ifindex: int) -> DataPlane:
    """The data plane attached to `ifindex` (by another process): maps by program id, for
    reading and run-time switches (`xdplb stats`, `trace`, `doctor`)."""
    pid = libbpf.xdp_prog_id(ifindex)
    if not pid:
        raise BpfError(errno.ENOENT, "no XDP program attached to that interface")
    if libbpf.prog_name(pid) != PROG_NAME:
        raise BpfError(errno.EINVAL, f"the XDP program on that interface is not {PROG_NAME}")
    return DataPlane(takeover.existing_maps(pid))


def interface_index(name: str) -> int:
    try:
        return ifindex_of(name)
    except OSError:
        raise XdplbError(f"unknown interface {name!r} (in this network namespace)") from None


@dataclass
class LoadRequest:
    """What to load where; every default is the defaults table's (config.DEFAULTS)."""

    interface: str
    sizes: Sizes = field(default_factory=Sizes)
    knobs: Knobs = field(default_factory=Knobs)
    xdp_mode: str = "auto"
    egress: str | None = None  # two-armed: backends are reached through this interface
    pins: str | None = None  # pin directory; None: no pins (and none looked for)
    object_path: str | None = None  # the .bpf.o (default: the built one)
    trace_rate: int = 0  # sample one packet in N to the trace ring (0: off)
    takeover: bool = True  # take over an xdplb no process serves (else refuse it)


class Instance:
    """A loaded data plane for one interface: its maps are to be filled, then `attach`."""

    def __init__(self, req: LoadRequest, dp: DataPlane, ifindex: int, egress_ifindex: int,
                 found: Found | None):
        self.req = req
        self.dp = dp
        self.ifindex = ifindex
        self.egress_ifindex = egress_ifindex
        self.old_id = found.prog_id if found else 0
        self.old_mode = found.mode if found else ""
        self.source = found.source if found else None  # where the kept maps came from
        self.attached = False
        self.prog_id = 0

    @property
    def took_over(self) -> bool:
        return bool(self.old_id)

    def attach(self) -> int:
        """Attach to the interface (and the egress interface), atomically replacing a
        taken-over program so that no packet sees the interface without one; the new
        program's id."""
        req, dp = self.req, self.dp
        ifaces = [(req.interface, self.ifindex)]
        if self.egress_ifindex:
            ifaces.append((req.egress or "", self.egress_ifindex))
            for _, idx in ifaces:
                mac = interface_mac(idx)
                assert mac is not None  # an interface we found by name has a MAC
                dp.add_tx_port(idx, bytes.fromhex(mac.replace(":", "")))
        for name, idx in ifaces:
            old_id, old_mode = libbpf.xdp_attachment(idx) if self.old_id else (0, "")
            try:
                if old_id == self.old_id and old_id:
                    old_fd = libbpf.prog_fd_by_id(old_id)
                    try:
                        dp.replace_attached(idx, old_fd, old_mode)
                    finally:
                        os.close(old_fd)
                else:
                    dp.attach(idx, req.xdp_mode)
            except AttachError as e:
                raise XdplbError(f"cannot attach XDP to {name}: {e}") from None
        self.attached = True
        assert dp.program is not None  # loaded, not opened from an interface
        self.prog_id = libbpf.prog_id_of_fd(dp.program.fd)
        return self.prog_id

    def pin(self) -> None:
        if self.req.pins:
            try:
                self.dp.pin(self.req.pins)
            except OSError as e:
                raise XdplbError(f"cannot pin state under {self.req.pins}: {e}") from None


def open_instance(req: LoadRequest, log: LogFn) -> Instance:
    """Load the data plane for `req.interface`, taking over the xdplb attached there
    (kept by `serve --keep` or left by a process that died) with its flows and ids.
    Refuses another XDP program and an xdplb that a live process serves."""
    ifindex = interface_index(req.interface)
    egress_ifindex = interface_index(req.egress) if req.egress else 0
    if egress_ifindex == ifindex:
        egress_ifindex = 0
    if req.pins:
        try:
            ensure_bpffs()
        except OSError as e:
            raise XdplbError(f"{e.strerror or e}: pinned state needs bpffs") from None
    if not req.takeover:
        old_id = takeover.attached(req.interface, ifindex)[0]
        if old_id:
            raise XdplbError(f"cannot attach XDP to {req.interface}: an xdplb is already "
                             f"attached (program id {old_id}): stop it, or if its process "
                             f"was killed, `xdplb stop --iface {req.interface}`")
    found = takeover.find(req.interface, ifindex, req.pins) if req.takeover else None
    if egress_ifindex:
        eid = takeover.attached(req.egress or "", egress_ifindex)[0]
        if eid and (found is None or eid != found.prog_id):
            if found:
                found.close()
            raise XdplbError(f"cannot attach XDP to {req.egress}: it has an xdplb (program id "
                             f"{eid}) other than {req.interface}'s; `xdplb stop` it first")
    if found is None and req.pins and os.path.isdir(req.pins):
        DataPlane.unpin(req.pins)
        log("stale_pins_removed", level="warning", path=req.pins,
            why="no program attached to the interface")
    knobs = copy.copy(req.knobs)
    if knobs.if_mac is None and not egress_ifindex:
        # one-armed: only frames to the interface's MAC are ours; two-armed, one program
        # serves two interfaces with two MACs and the knob holds one: no check there
        knobs.if_mac = mac_bytes(interface_mac(ifindex))
    path = req.object_path
    if path is None:
        from . import object_path

        path = str(object_path("xdplb"))
    try:
        if found is not None:
            found.fit(knobs, path, req.interface, log)
            if req.xdp_mode not in ("auto", found.mode):
                log("xdp_mode_kept", level="warning", wanted=req.xdp_mode,
                    attached=found.mode, why="an atomic replace keeps the attach mode")
        dp = load(path, req.sizes, knobs, reuse=(found.maps or None) if found else None)
    except UpgradeError as e:
        raise XdplbError(f"cannot take over the xdplb on {req.interface} (program id "
                         f"{found.prog_id if found else 0}): {e}; `xdplb stop` it first "
                         "(its flows are dropped)") from None
    except VerifierError as e:
        raise XdplbError(f"the kernel's verifier rejected the data plane: {e}") from None
    except BpfError as e:
        raise XdplbError(f"cannot load the data plane: {e}") from None
    finally:
        if found is not None:
            found.close()
    for note in dp.reuse_notes:
        log("takeover_note", level="warning", what=note)
    if req.trace_rate:
        rt = dp.runtime()
        rt.trace_rate = req.trace_rate
        dp.set_runtime(rt)
    return Instance(req, dp, ifindex, egress_ifindex, found)
