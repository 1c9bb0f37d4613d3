"""The read side of a running xdplb, for other processes (`xdplb stats`, `xdplb trace`):
they find the data plane through the program attached to the interface, so they work on
any instance (`run` or `serve`), with or without pins."""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ._bpf import abi
from ._bpf.dataplane import DataPlane
from ._bpf.libbpf import XDP_ACTIONS, BpfError, RingBuffer, xdp_prog_id
from ._bpf.loader import interface_index, open_attached
from ._proc import alive
from .errors import UsageError, XdplbError


def open_interface(iface: str) -> DataPlane:
    """The data plane attached to `iface` (XdplbError, one line, when there is none)."""
    return _open_attached(iface)


def _open_attached(iface: str) -> DataPlane:
    ifindex = interface_index(iface)
    try:
        return open_attached(ifindex)
    except BpfError as e:
        raise XdplbError(f"{iface}: {e.strerror}") from None


def attached_report(iface: str) -> dict:
    """What `xdplb stats IFACE` reports, read from the maps of the instance attached to
    IFACE. Its VIPs and their backends have the fields (and names) of `xdplb status`'s:
    {"vips": [{"vip", "id", "mode", "packets", "bytes", "new_flows", "dropped",
    "backends": [{"backend", "address", "port", "id", "traffic", "active_flows",
    "packets", "bytes", "new_flows"}]}]}; the top-level "backends" list is kept for
    older readers."""
    from .flows import live_flows_by_backend

    dp = _open_attached(iface)
    try:
        report: dict = {"iface": iface, "prog_id": xdp_prog_id(interface_index(iface)),
                        "stats": dp.stats(), "trace_rate": dp.runtime().trace_rate,
                        "flows": dp.flow_counts(), "vips": [], "backends": []}
        active = live_flows_by_backend(dp)
        entries = dp.backend_entries()
        flat = []
        by_vip: dict[int, list[dict]] = {}
        for i, be in sorted(entries.items()):
            b = {"id": i, "vip_id": be.vip_id,
                 "address": str(abi.unpack_addr(be.addr, be.family)),
                 "port": abi.ntohs(be.port), "active": bool(be.flags & abi.BE_F_ACTIVE),
                 "active_flows": active.get(i, 0), **dp.obj_stats("be_stats", i)}
            flat.append(b)
            by_vip.setdefault(be.vip_id, []).append(b)
        report["backends"] = flat
        for key, info in dp.maps["vips"].items():
            addr = abi.unpack_addr(key.addr, key.family)
            vport = abi.ntohs(key.port)
            proto = {6: "tcp", 17: "udp"}.get(key.proto, str(key.proto))
            members = dp.ring_members(info.vip_id) or set()
            backends = []
            for b in by_vip.get(info.vip_id, []):
                port = b["port"] or vport  # 0: the client's (VIP's) port is kept
                host = f"[{b['address']}]" if key.family == abi.AF_INET6 else b["address"]
                backends.append({
                    "backend": f"{host}:{port}", "address": b["address"], "port": port,
                    "id": b["id"],
                    "traffic": ("none" if not b["active"] else
                                "new" if b["id"] in members else "established"),
                    "active_flows": b["active_flows"], "packets": b["packets"],
                    "bytes": b["bytes"], "new_flows": b["new_flows"]})
            # vip_stats holds what had no backend; forwarded traffic is counted per backend
            dropped = dp.obj_stats("vip_stats", info.vip_id)
            totals = {f: dropped[f] + sum(b[f] for b in backends)
                      for f in ("packets", "bytes", "new_flows")}
            host = f"[{addr}]" if key.family == abi.AF_INET6 else str(addr)
            report["vips"].append({
                "vip": f"{host}:{vport}/{proto}", "id": info.vip_id,
                "mode": abi.MODE_NAMES.get(info.mode, str(info.mode)), **totals,
                "dropped": {"packets": dropped["packets"], "bytes": dropped["bytes"]},
                "backends": backends})
        return report
    finally:
        dp.close()


def _fmt_ep(addr, family, port) -> str:
    a = abi.unpack_addr(addr, family)
    return f"[{a}]:{abi.ntohs(port)}" if family == abi.AF_INET6 else f"{a}:{abi.ntohs(port)}"


# --- tracing with a lease ------------------------------------------------------------------
#
# `xdplb trace` switches sampling on and holds a lease on it: a file named after the
# instance's runtime map (its id is unique on the host, across network namespaces) that
# it renews every second. The instance's own process (serve or run) puts sampling back to
# its configured rate when no live lease holds it on, so a trace killed by SIGKILL or a
# dropped ssh session leaves sampling on for LEASE_SECONDS at most.

LEASE_DIR = Path("/run/xdplb/trace")
LEASE_SECONDS = 3.0


@dataclass(frozen=True)
class Lease:
    expires: float  # time.monotonic() (the system-wide boot clock)
    base: int  # the rate to put back when it ends
    pid: int  # the trace process


def lease_path(dp: DataPlane) -> Path:
    return LEASE_DIR / str(dp.maps["runtime"].id)


def read_lease(path: Path) -> Lease | None:
    try:
        expires, base, pid = path.read_text().split()
        return Lease(float(expires), int(base), int(pid))
    except (OSError, ValueError):
        return None


def _write_lease(path: Path, lease: Lease) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{lease.expires:.3f} {lease.base} {lease.pid}\n")
    tmp.replace(path)  # atomic: a reader never sees half a lease


def expire_trace(dp: DataPlane, base: int) -> bool:
    """Put sampling back to `base` unless a live lease holds it on; True when it did."""
    rt = dp.runtime()
    path = lease_path(dp)
    lease = read_lease(path)
    if lease and lease.expires > time.monotonic():
        return False
    if lease:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    if rt.trace_rate == base:
        return False
    rt.trace_rate = base
    dp.set_runtime(rt)
    return True


def trace_events(iface: str, rate: int = 1, count: int = 0, duration: float = 0
                 ) -> Iterator[str]:
    """Turn tracing on (one packet in `rate`) under a lease renewed every second, yield
    formatted events, turn it off."""
    if rate < 1:
        raise UsageError("--rate must be >= 1")
    dp = _open_attached(iface)
    lines: list[str] = []
    names = {s.value: s.name.lower() for s in abi.Stat}

    def on_event(raw: bytes) -> None:
        e = abi.TraceEvent.from_buffer_copy(raw)
        proto = {6: "tcp", 17: "udp"}.get(e.proto, str(e.proto))
        be = "-" if e.backend_id == abi.NO_BACKEND else f"#{e.backend_id}"
        src = _fmt_ep(e.src, e.family, e.sport)
        dst = _fmt_ep(e.dst, e.family, e.dport)
        out = _fmt_ep(e.out_dst, e.family, e.out_dport)
        if e.stat == abi.Stat.REPLY:  # backend -> SNAT port, back to the client
            what = f"reply backend {src} -> {dst} => client {out}"
        else:
            what = f"client {src} -> {dst} => {out} backend {be}"
        lines.append(f"{e.ts_ns / 1e9:.6f} {proto} {what} "
                     f"{XDP_ACTIONS.get(e.verdict, e.verdict)} {names.get(e.stat, e.stat)} "
                     f"len {e.pkt_len}")

    path = lease_path(dp)
    held = read_lease(path)
    if held and held.expires > time.monotonic() and held.pid != os.getpid() and alive(held.pid):
        dp.close()
        raise XdplbError(f"{iface}: another xdplb trace (pid {held.pid}) is sampling; one at "
                         "a time")
    rt = dp.runtime()
    base = held.base if held else rt.trace_rate  # a killed trace's rate is not the base
    lease = Lease(time.monotonic() + LEASE_SECONDS, base, os.getpid())
    try:
        _write_lease(path, lease)
    except OSError as e:
        dp.close()
        raise XdplbError(f"cannot hold the trace lease {path}: {e.strerror}") from None
    rb = RingBuffer(dp.maps["events"].fd, on_event)
    rt.trace_rate = rate
    dp.set_runtime(rt)
    seen = 0
    end = time.monotonic() + duration if duration else None
    try:
        while True:
            rb.poll(100)
            if lease.expires - time.monotonic() < LEASE_SECONDS - 1:
                lease = Lease(time.monotonic() + LEASE_SECONDS, base, os.getpid())
                _write_lease(path, lease)
            for ln in lines:
                yield ln
                seen += 1
                if count and seen >= count:
                    return
            lines.clear()
            if end and time.monotonic() >= end:
                return
    finally:
        rt = dp.runtime()
        rt.trace_rate = base
        dp.set_runtime(rt)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        rb.close()
        dp.close()


__all__ = [
    "Lease",
    "attached_report",
    "expire_trace",
    "lease_path",
    "open_interface",
    "read_lease",
    "trace_events",
]
