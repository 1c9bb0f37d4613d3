"""`xdplb doctor [IFACE]`: the checks that explain "it does not forward".

Each check prints one line: `ok`, `warn` or `FAIL`, what was looked at, and what to do.
Read-only: it changes nothing anywhere.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ._bpf import object_path
from ._bpf.dataplane import ifindex_of
from ._bpf.libbpf import BpfError, BpfObject, prog_name, xdp_prog_id
from ._bpf.loader import open_attached

XDP_MAX_MTU_VETH = 3520  # a veth runs XDP on single pages: larger MTUs need xdp.frags


@dataclass
class Finding:
    level: str  # ok | warn | FAIL
    what: str

    def __str__(self) -> str:
        return f"{self.level:<4} {self.what}"


def _link(ifindex: int):
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return ipr.get_links(ifindex)[0]


def check_kernel() -> list[Finding]:
    out = []
    try:
        with BpfObject(object_path("stub")) as obj:
            obj.load()
        out.append(Finding("ok", "BPF programs load (bpf syscall, verifier)"))
    except (BpfError, FileNotFoundError) as e:
        out.append(Finding("FAIL", f"cannot load a trivial XDP program: {e} (root? CAP_BPF?)"))
    if os.path.exists("/sys/kernel/btf/vmlinux"):
        out.append(Finding("ok", "kernel BTF present"))
    else:
        out.append(Finding("warn", "no /sys/kernel/btf/vmlinux (fine for xdplb: no CO-RE needed)"))
    try:
        with open("/proc/sys/net/core/bpf_jit_enable") as f:
            jit = f.read().strip()
        out.append(Finding("ok" if jit != "0" else "warn",
                           f"BPF JIT {'on' if jit != '0' else 'off: programs are interpreted, slow'}"))
    except OSError:
        pass
    return out


def check_interface(iface: str) -> list[Finding]:
    out: list[Finding] = []
    try:
        ifindex = ifindex_of(iface)
    except OSError:
        return [Finding("FAIL", f"no interface {iface!r} in this network namespace")]
    link = _link(ifindex)
    info = link.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info else None
    mtu = link.get_attr("IFLA_MTU")
    state = link.get_attr("IFLA_OPERSTATE")
    out.append(Finding("ok" if state in ("UP", "UNKNOWN") else "warn",
                       f"{iface}: index {ifindex}, {kind or 'physical'}, mtu {mtu}, {state}"))
    pid = xdp_prog_id(ifindex)
    if not pid:
        out.append(Finding("warn", f"{iface}: no XDP program attached (start `xdplb run` or "
                           "`xdplb serve`)"))
    else:
        name = prog_name(pid)
        out.append(Finding("ok" if name == "xdplb" else "warn",
                           f"{iface}: XDP program id {pid} ({name})"))
    if kind == "veth":
        out += _check_veth(iface, link, mtu)
    if pid and prog_name(pid) == "xdplb":
        out += _check_counters(ifindex)
    return out


def _check_veth(iface: str, link, mtu: int) -> list[Finding]:
    out = []
    if mtu and mtu > XDP_MAX_MTU_VETH:
        out.append(Finding("FAIL", f"{iface}: mtu {mtu} > {XDP_MAX_MTU_VETH}: XDP on a veth "
                           "needs single-page frames; lower the MTU"))
    peer = link.get_attr("IFLA_LINK")
    if link.get_attr("IFLA_LINK_NETNSID") is not None:
        out.append(Finding("warn", f"{iface}: its veth peer (index {peer}) is in another "
                           "namespace: XDP_TX frames reach it only if the peer has an XDP "
                           "program, e.g. `ip link set dev PEER xdp obj "
                           f"{object_path('stub')} sec xdp` (the lab does this for veth7)"))
    elif peer:
        pid = xdp_prog_id(peer)
        out.append(Finding("ok" if pid else "FAIL",
                           f"{iface}: veth peer index {peer} "
                           + ("has an XDP program" if pid else "has no XDP program: XDP_TX "
                              "frames are dropped")))
    out.append(Finding("ok", f"{iface}: frames from a local stack on a veth carry "
                       "CHECKSUM_PARTIAL checksums; xdplb finishes them (counter csum_full)"))
    return out


def _check_counters(ifindex: int) -> list[Finding]:
    out = []
    dp = open_attached(ifindex)
    try:
        st = dp.stats()
        rt = dp.runtime()
    finally:
        dp.close()
    hints = {
        "drop_no_backend": "a VIP without usable backends (all drained, pulled or removed)",
        "drop_nat_full": "NAT ports exhausted (4 flows per port, one per backend tuple): widen --nat-ports / nat_ports",
        "drop_fib": "bpf_fib_lookup failed: give backend MACs, or enable forwarding",
        "drop_no_neigh": "backend neighbour unresolved",
        "tx_error": "redirect target missing from tx_ports (two-armed setup)",
        "pass_too_long": "partial checksums on segments too long to finish",
        "ct_full": "conntrack sets full: live flows evicted (raise --conntrack / conntrack_size)",
    }
    for name, why in hints.items():
        n = st.get(name, (0, 0))[0]
        if n:
            out.append(Finding("warn", f"counter {name} = {n}: {why}"))
    moved = st["fwd_new"][0] + st["fwd_est"][0]
    out.append(Finding("ok" if moved else "warn",
                       f"{moved} packets forwarded to backends, {st['reply'][0]} replies"
                       + ("" if moved else ": nothing reached a VIP yet")))
    if rt.trace_rate:
        out.append(Finding("warn", f"tracing is on (1 in {rt.trace_rate}): `xdplb trace` "
                           "left running?"))
    return out


def run_doctor(iface: str | None) -> int:
    findings = check_kernel()
    if iface:
        findings += check_interface(iface)
    for f in findings:
        print(f)
    return 1 if any(f.level == "FAIL" for f in findings) else 0


__all__ = ["Finding", "run_doctor"]
