"""`xdplb decap IFACE`: the backends' decapsulator for tunnel-mode VIPs (bpf/decap.bpf.c).

It strips IPIP and GUE (on the GUE port) in XDP on the backend's interface and hands the
inner packet to the stack, for inner destinations of the host only. Attached through
netlink, it stays attached after the command returns; running it again replaces its own
program (never another one), `--remove` detaches it, `--status` reports it. Nothing but
this package is needed on the backend: no kernel tunnel modules, no compiler.
"""
from __future__ import annotations

import ctypes as C
import os
import socket
from dataclasses import dataclass, field

from ._bpf import abi, libbpf, object_path
from .config import DEFAULTS
from .errors import UsageError, XdplbError

__all__ = ["PROG_NAME", "STAT_NAMES", "DecapStatus", "attach", "decap_status", "remove"]

PROG_NAME = "xdplb_decap"
DEFAULT_GUE_PORT = DEFAULTS.gue_port
STAT_NAMES = ("ipip", "gue", "pass_not_tunnel", "pass_not_local", "pass_malformed",
              "pass_gue_other", "second_chance")


class DecapKnobs(C.Structure):
    """bpf/abi.h struct decap_knobs."""

    _fields_ = [("gue_port", C.c_uint16), ("pad", C.c_uint16)]


class DecapLocal(C.Structure):
    """bpf/abi.h struct decap_local: one cached FIB answer."""

    _fields_ = [("addr", C.c_uint8 * 16), ("stamp", C.c_uint64), ("local", C.c_uint32),
                ("pad", C.c_uint32)]


class DecapState(C.Structure):
    """bpf/abi.h struct decap_state: a CPU's counters and cache."""

    _fields_ = [("stats", abi.Counter * len(STAT_NAMES)), ("cache", DecapLocal * abi.DECAP_CACHE)]


@dataclass
class DecapStatus:
    iface: str
    attached: bool
    prog_id: int = 0
    mode: str = ""
    gue_port: int | None = None
    counters: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (pkts, bytes)
    other: str = ""  # another XDP program's name, when one holds the interface


def _ifindex(iface: str) -> int:
    try:
        return socket.if_nametoindex(iface)
    except OSError:
        raise XdplbError(f"no interface {iface!r} in this network namespace") from None


def _current(ifindex: int) -> tuple[int, str, str]:
    """(program id, attach mode, program name) on the interface; (0, "", "") if none."""
    pid, mode = libbpf.xdp_attachment(ifindex)
    return pid, mode, libbpf.prog_name(pid) if pid else ""


def _check_port(port: int) -> int:
    if not 1 <= port <= 65535:
        raise UsageError(f"--gue-port {port} is out of range 1..65535")
    return port


def attach(iface: str, gue_port: int = DEFAULT_GUE_PORT, xdp_mode: str = "auto") -> str:
    """Attach (or replace our own) decapsulator on `iface`; returns what was done."""
    _check_port(gue_port)
    ifindex = _ifindex(iface)
    old_id, old_mode, old_name = _current(ifindex)
    if old_id and old_name != PROG_NAME:
        raise XdplbError(f"{iface} already runs XDP program {old_name!r} (id {old_id}); "
                         "xdplb decap replaces only its own")
    knobs = bytes(DecapKnobs(gue_port=abi.htons(gue_port)))
    obj = libbpf.BpfObject(object_path("decap"), rodata=lambda init: knobs + init[len(knobs):])
    try:
        obj.load((PROG_NAME,))
        prog = obj.program(PROG_NAME)
        if old_id:
            old_fd = libbpf.prog_fd_by_id(old_id)
            try:
                libbpf.xdp_attach(ifindex, prog.fd, old_mode if xdp_mode == "auto" else xdp_mode,
                                  replace_fd=old_fd)
            finally:
                os.close(old_fd)
        else:
            libbpf.xdp_attach(ifindex, prog.fd, xdp_mode)
    finally:
        obj.close()  # the attachment keeps the program alive
    new_id, mode = libbpf.xdp_attachment(ifindex)
    what = f"replaced its decapsulator (was program id {old_id})" if old_id else "attached"
    return (f"{iface}: {what}: IPIP and GUE on UDP port {gue_port} to local addresses "
            f"(program id {new_id}, {mode} XDP)")


def remove(iface: str) -> str:
    """Detach our decapsulator from `iface`."""
    ifindex = _ifindex(iface)
    pid, mode, name = _current(ifindex)
    if not pid:
        return f"{iface}: no decapsulator attached"
    if name != PROG_NAME:
        raise XdplbError(f"{iface} runs XDP program {name!r} (id {pid}), not xdplb's "
                         "decapsulator; left alone")
    fd = libbpf.prog_fd_by_id(pid)
    try:
        libbpf.xdp_detach(ifindex, fd, mode)
    finally:
        os.close(fd)
    return f"{iface}: decapsulator removed (program id {pid})"


def decap_status(iface: str) -> DecapStatus:
    ifindex = _ifindex(iface)
    pid, mode, name = _current(ifindex)
    if not pid or name != PROG_NAME:
        return DecapStatus(iface, False, other=name)
    st = DecapStatus(iface, True, pid, mode)
    maps = libbpf.prog_maps(pid)
    try:
        state = maps.get("decap_state")
        if state is not None:
            state.value_type = DecapState
            cpus = state[0]
            for i, n in enumerate(STAT_NAMES):
                st.counters[n] = (sum(c.stats[i].packets for c in cpus),
                                  sum(c.stats[i].bytes for c in cpus))
        ro = next((m for n, m in maps.items() if n.endswith(".rodata")), None)
        raw = ro.lookup(0) if ro is not None else None
        if raw and len(raw) >= C.sizeof(DecapKnobs):
            st.gue_port = abi.ntohs(DecapKnobs.from_buffer_copy(raw[:4]).gue_port)
    finally:
        for m in maps.values():
            m.close()
    return st
