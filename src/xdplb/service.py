"""A running xdplb on one interface: load, fill maps, attach; stop detaches.

Also the read side used by other processes (`xdplb stats`, `xdplb trace`), which
find the data plane through the program attached to the interface.
"""
from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

from ._bpf import abi
from ._bpf.dataplane import DataPlane, Knobs, Sizes, ifindex_of
from ._bpf.libbpf import XDP_ACTIONS, AttachError, BpfError, RingBuffer, VerifierError
from ._bpf.netlink import interface_addresses, interface_kind, interface_mac
from .config import DEFAULTS
from .errors import UsageError, XdplbError
from .lb import LoadBalancer, VipSpec


def _ifindex(iface: str) -> int:
    try:
        return ifindex_of(iface)
    except OSError:
        raise XdplbError(f"unknown interface {iface!r} (in this network namespace)") from None


def _busy_hint(ifindex: int, name: str | None) -> str:
    """What to do when another program holds the interface."""
    from ._bpf.libbpf import prog_name, xdp_prog_id

    try:
        pid = xdp_prog_id(ifindex)
        owner = prog_name(pid) if pid else ""
    except BpfError:
        return ""
    if owner == "xdplb":
        return (f" (an xdplb is already attached, program id {pid}: stop it, or if its process "
                f"was killed, `xdplb stop --iface {name}`)")
    return f" (program id {pid} '{owner}' is attached: detach it first)" if pid else ""


def parse_port_range(text: str) -> tuple[int, int]:
    try:
        lo_s, hi_s = text.split("-")
        lo, hi = int(lo_s), int(hi_s)
    except ValueError:
        raise UsageError(f"NAT port range {text!r}: expected LOW-HIGH, e.g. 10000-32767") from None
    if not 1024 <= lo <= hi <= 65535:
        raise UsageError(f"NAT port range {text!r}: need 1024 <= LOW <= HIGH <= 65535")
    return lo, hi


@dataclass
class ServiceOptions:
    xdp_mode: str = DEFAULTS.xdp_mode
    conntrack: int = DEFAULTS.conntrack_size
    nat_ports: str = "{}-{}".format(*DEFAULTS.nat_ports)
    max_vips: int = DEFAULTS.max_vips
    max_backends: int = DEFAULTS.max_backends
    hash_seed: int = DEFAULTS.hash_seed
    frag_drop: bool = DEFAULTS.frag_policy == "drop"
    egress: str | None = None  # two-armed: backends are reached through this interface


class Service:
    def __init__(self, iface: str, ifindex: int, opts: ServiceOptions):
        self.iface = iface
        self.ifindex = ifindex
        self.opts = opts
        self.dp: DataPlane | None = None
        self.lb: LoadBalancer | None = None
        self.started = False
        self.egress_ifindex = 0

    @classmethod
    def for_interface(cls, iface: str, opts: ServiceOptions | None = None) -> Service:
        opts = opts or ServiceOptions()
        svc = cls(iface, _ifindex(iface), opts)
        svc.egress_ifindex = _ifindex(opts.egress) if opts.egress else 0
        if svc.egress_ifindex == svc.ifindex:
            svc.egress_ifindex = 0
        return svc

    def interface_kind(self) -> str | None:
        return interface_kind(self.ifindex)

    def egress_ipv4(self) -> str | None:
        if not self.egress_ifindex:
            return None
        addrs = interface_addresses(self.egress_ifindex, socket.AF_INET)
        return str(addrs[0]) if addrs else None

    def interface_ipv4(self) -> str:
        addrs = interface_addresses(self.ifindex, socket.AF_INET)
        if not addrs:
            raise XdplbError(f"interface {self.iface} has no IPv4 address; give --vip")
        return str(addrs[0])

    def start(self, specs: list[VipSpec], trace_rate: int = 0) -> None:
        lo, hi = parse_port_range(self.opts.nat_ports)
        for s in specs:
            if s.mode == "nat" and s.port and lo <= s.port <= hi:
                raise UsageError(f"VIP port {s.port} lies in the NAT port range {lo}-{hi}")
        knobs = Knobs(hash_seed=self.opts.hash_seed, nat_port_min=lo, nat_port_max=hi,
                      frag_drop=self.opts.frag_drop)
        sizes = Sizes(max_vips=self.opts.max_vips, max_backends=self.opts.max_backends,
                      conntrack=self.opts.conntrack)
        try:
            self.dp = DataPlane.load(sizes=sizes, knobs=knobs)
        except VerifierError as e:
            raise XdplbError(f"the kernel's verifier rejected the data plane: {e}") from None
        except BpfError as e:
            raise XdplbError(f"cannot load the data plane: {e}") from None
        try:
            self.lb = LoadBalancer(self.dp, sizes.max_vips, sizes.max_backends)
            self.lb.apply(specs)
            if trace_rate:
                rt = self.dp.runtime()
                rt.trace_rate = trace_rate
                self.dp.set_runtime(rt)
            ifaces: list[tuple[str | None, int]] = [(self.iface, self.ifindex)]
            if self.egress_ifindex:
                ifaces.append((self.opts.egress, self.egress_ifindex))
                for _, idx in ifaces:
                    mac = interface_mac(idx)
                    assert mac is not None  # an interface we found by name has a MAC
                    self.dp.add_tx_port(idx, bytes.fromhex(mac.replace(":", "")))
            for name, idx in ifaces:
                try:
                    self.dp.attach(idx, self.opts.xdp_mode)
                except AttachError as e:
                    raise XdplbError(f"cannot attach XDP to {name}: {e}{_busy_hint(idx, name)}"
                                     ) from None
            self.started = True
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.dp:
            self.dp.close()
            self.dp = None
        self.started = False

    def summary_line(self) -> str:
        if not self.dp:
            return ""
        st = self.dp.stats()
        dropped = sum(v[0] for k, v in st.items() if k.startswith("drop"))
        passed = sum(v[0] for k, v in st.items() if k.startswith("pass"))
        return (f"flows {st['fwd_new'][0]}, to backends {st['fwd_new'][0] + st['fwd_est'][0]} "
                f"pkts, replies {st['reply'][0]} pkts, to host {passed}, dropped {dropped}")


# --- the read side (other processes) ----------------------------------------------------


def _open_attached(iface: str) -> DataPlane:
    try:
        ifindex = ifindex_of(iface)
    except OSError:
        raise XdplbError(f"unknown interface {iface!r} (in this network namespace)") from None
    try:
        return DataPlane.from_interface(ifindex)
    except BpfError as e:
        raise XdplbError(f"{iface}: {e.strerror}") from None


def attached_report(iface: str) -> dict:
    dp = _open_attached(iface)
    try:
        ifindex = ifindex_of(iface)
        from ._bpf.libbpf import xdp_prog_id

        report = {"iface": iface, "prog_id": xdp_prog_id(ifindex), "stats": dp.stats(),
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


__all__ = ["Service", "ServiceOptions", "attached_report", "trace_events"]
