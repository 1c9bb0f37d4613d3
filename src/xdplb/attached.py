"""The read side of a running xdplb, for other processes (`xdplb stats`, `xdplb trace`):
they find the data plane through the program attached to the interface, so they work on
any instance (`run` or `serve`), with or without pins."""
from __future__ import annotations

import time
from collections.abc import Iterator

from ._bpf import abi
from ._bpf.dataplane import DataPlane
from ._bpf.libbpf import XDP_ACTIONS, BpfError, RingBuffer, xdp_prog_id
from ._bpf.loader import interface_index, open_attached
from .errors import UsageError, XdplbError


def _open_attached(iface: str) -> DataPlane:
    ifindex = interface_index(iface)
    try:
        return open_attached(ifindex)
    except BpfError as e:
        raise XdplbError(f"{iface}: {e.strerror}") from None


def attached_report(iface: str) -> dict:
    dp = _open_attached(iface)
    try:
        report = {"iface": iface, "prog_id": xdp_prog_id(interface_index(iface)), "stats": dp.stats(),
                  "trace_rate": dp.runtime().trace_rate, "flows": dp.flow_counts(),
                  "vips": [], "backends": []}
        backends = []
        for i in range(dp.maps["backends"].max_entries):
            be = dp.maps["backends"].get(i)
            if be is None or not be.family:
                continue
            backends.append({"id": i, "vip_id": be.vip_id,
                             "address": str(abi.unpack_addr(be.addr, be.family)),
                             "active": bool(be.flags & abi.BE_F_ACTIVE),
                             **dp.obj_stats("be_stats", i)})
        report["backends"] = backends
        for key, info in dp.maps["vips"].items():
            addr = abi.unpack_addr(key.addr, key.family)
            proto = {6: "tcp", 17: "udp"}.get(key.proto, str(key.proto))
            # vip_stats holds what had no backend; forwarded traffic is counted per backend
            s = dp.obj_stats("vip_stats", info.vip_id)
            for b in backends:
                if b["vip_id"] == info.vip_id:
                    for f in ("packets", "bytes", "new_flows"):
                        s[f] += b[f]
            report["vips"].append({"vip": f"{addr}:{abi.ntohs(key.port)}/{proto}",
                                   "id": info.vip_id,
                                   "mode": "nat" if info.mode == abi.MODE_NAT else "dsr", **s})
        return report
    finally:
        dp.close()


def _fmt_ep(addr, family, port) -> str:
    a = abi.unpack_addr(addr, family)
    return f"[{a}]:{abi.ntohs(port)}" if family == abi.AF_INET6 else f"{a}:{abi.ntohs(port)}"


def trace_events(iface: str, rate: int = 1, count: int = 0, duration: float = 0
                 ) -> Iterator[str]:
    """Turn tracing on (one packet in `rate`), yield formatted events, turn it off."""
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

    rb = RingBuffer(dp.maps["events"].fd, on_event)
    rt = dp.runtime()
    old = rt.trace_rate
    rt.trace_rate = rate
    dp.set_runtime(rt)
    seen = 0
    end = time.monotonic() + duration if duration else None
    try:
        while True:
            rb.poll(100)
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
        rt.trace_rate = old
        dp.set_runtime(rt)
        rb.close()
        dp.close()


__all__ = ["attached_report", "trace_events"]
