"""Micro-benchmark: kernel-measured ns/packet with BPF_PROG_TEST_RUN, every program loaded
in the same run and measured on the same frames.

Programs: the floors (an empty XDP_PASS program and a MAC swap + XDP_TX), xdplb (a
DataPlane with the tutorial's VIP 10.0.0.10:8000/tcp in NAT mode and its two backends),
the tutorial's program as printed and in its later revision (bench/progs/tutorial_peer.bpf.c,
without bpf_printk) and, when an object is given, Katran (bench/katran.py).

Method: a program may rewrite the frame, so ``repeat=N`` would re-run
it on its own output. Each call therefore runs once (``repeat=1``) on a fresh copy of the
frame; every case is ``--calls`` calls per program, programs interleaved call by call (their
order rotating), and ``--rounds`` rounds; a round's figure is the median of its calls, the
result the median over rounds. The empty program, measured the same way, is the cost of
the test-run machinery (timer, bh disable/enable) and is subtracted. For the cases where a
program leaves the frame as it found it (the floors, non-VIP pass), a ``repeat=N`` run is
also recorded: no per-call overhead, caches hot.

Writes bench/results/micro.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xdplb import frames as F

ROOT = Path(__file__).resolve().parent.parent
PROGS_DIR = ROOT / "bench" / "progs"
BUILD = ROOT / "build" / "bench"
RESULTS = ROOT / "bench" / "results"

# The tutorial's topology (docs/seed-defects.md).
CLIENT_IP, CLIENT_MAC = "10.0.0.1", "de:ad:be:ef:00:01"
LB_IP, LB_MAC = "10.0.0.10", "de:ad:be:ef:00:10"
VIP_PORT = 8000
BACKENDS = (("10.0.0.2", "de:ad:be:ef:00:02"), ("10.0.0.3", "de:ad:be:ef:00:03"))
OTHER_IP = "10.0.0.99"  # not a VIP
CLIENT_PORT = 40000  # the established flow's client port
NEW_PORT_BASE = 20000  # new flows: 20000, 20001, ... (unique over the whole run)
NAT_PORTS = (10000, 65535)  # wide range, VIP port outside it: new flows rarely collide
BIG = 1514  # a full 1500-byte IP packet in an Ethernet frame
TRIM = 0.1  # a round's figure: the mean of its calls without the lowest and highest 10 %
ACTION = {0: "ABORTED", 1: "DROP", 2: "PASS", 3: "TX", 4: "REDIRECT"}


# --- cases ------------------------------------------------------------------------------


@dataclass
class Case:
    key: str
    label: str
    frame_len: int
    make: Callable[[int, int], list[bytes]]  # (first index, count) -> frames
    note: str = ""


def _client_frame(sport: int, flags: int, frame_len: int | None = None, csum: str = "full",
                  dst: str = LB_IP, dport: int = VIP_PORT) -> bytes:
    return F.tcp_frame(src_mac=CLIENT_MAC, dst_mac=LB_MAC, src=CLIENT_IP, dst=dst, sport=sport,
                       dport=dport, flags=flags, frame_len=frame_len, csum=csum, seq=1000,
                       ack=2000)


def build_cases(reply_from: tuple[str, str], nat_port: int) -> list[Case]:
    """The packet cases; replies come from `reply_from` (ip, mac) to the LB's NAT port."""
    est = {n: _client_frame(CLIENT_PORT, F.TCP_ACK | F.TCP_PSH, n) for n in (F.MIN_FRAME, BIG)}
    est_partial = _client_frame(CLIENT_PORT, F.TCP_ACK | F.TCP_PSH, BIG, csum="partial")
    reply = {n: F.tcp_frame(src_mac=reply_from[1], dst_mac=LB_MAC, src=reply_from[0], dst=LB_IP,
                            sport=VIP_PORT, dport=nat_port, flags=F.TCP_ACK | F.TCP_PSH,
                            frame_len=n, seq=3000, ack=1001)
             for n in (F.MIN_FRAME, BIG)}
    nonvip = _client_frame(CLIENT_PORT, F.TCP_ACK, dst=OTHER_IP, dport=80)

    def same(frame: bytes) -> Callable[[int, int], list[bytes]]:
        return lambda first, n: [frame] * n

    def syns(first: int, n: int) -> list[bytes]:
        span = 65536 - NEW_PORT_BASE  # wraps only after flows were forgotten (reset per round)
        return [_client_frame(NEW_PORT_BASE + (first + i) % span, F.TCP_SYN) for i in range(n)]

    return [
        Case("new", "new flow (TCP SYN, a fresh client port every call)", F.MIN_FRAME, syns),
        Case("est64", "established flow, 64 B frame", F.MIN_FRAME, same(est[F.MIN_FRAME])),
        Case("est1514", "established flow, 1514 B frame", BIG, same(est[BIG])),
        Case("est1514_partial", "established flow, 1514 B, CHECKSUM_PARTIAL-form TCP checksum",
             BIG, same(est_partial),
             "TCP checksum field = folded pseudo-header sum, as veth frames from a local "
             "stack with TX offload carry; xdplb finishes it over the segment"),
        Case("reply64", "reply (backend -> LB NAT port), 64 B frame", F.MIN_FRAME,
             same(reply[F.MIN_FRAME])),
        Case("reply1514", "reply (backend -> LB NAT port), 1514 B frame", BIG, same(reply[BIG])),
        Case("nonvip", "non-VIP (TCP to another address), 64 B frame", F.MIN_FRAME, same(nonvip)),
    ]


# --- programs ---------------------------------------------------------------------------


@dataclass
class Subject:
    key: str
    label: str
    kind: str  # floor | xdplb | peer
    program: object  # has test_run(frame, repeat) -> (action, out, ns)
    expect: dict[str, str]  # case -> expected action; a case not listed is not run
    repeat_ok: set[str] = field(default_factory=set)  # cases where repeat=N is idempotent
    reset: Callable[[], None] | None = None  # forget flows between rounds
    check: Callable[[str, bytes, bytes], dict] | None = None  # (case, in, out) -> findings
    note: str = ""


def build_progs(verbose: bool) -> None:
    cmd = ["make", "-s", "-C", str(PROGS_DIR), f"OUT={BUILD}"]
    p = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"bench: building bench/progs failed:\n{p.stderr.strip()}")
    if verbose and p.stdout.strip():
        print(p.stdout.strip())


class Rig:
    """Everything loaded for one run; close() releases it all."""

    def __init__(self, katran_obj: str | None):
        from xdplb._bpf.libbpf import BpfObject

        self.closers: list[Callable[[], None]] = []
        self.subjects: list[Subject] = []
        try:
            floors = BpfObject(BUILD / "floors.bpf.o").load(("xdp_empty", "xdp_tx", "xdp_flow",
                                                             "xdp_encap"))
            self.closers.append(floors.close)
            tut = BpfObject(BUILD / "tutorial_peer.bpf.o").load(("tutorial_lb",
                                                                 "tutorial_lb_rev2"))
            self.closers.append(tut.close)
            for i, (ip, m) in enumerate(BACKENDS):
                tut.map("backends").update(i, ipaddress.IPv4Address(ip).packed + F.mac(m)
                                           + b"\0\0")
            self._load_xdplb()
            idem = {"est64", "est1514", "nonvip"}  # repeat=N on the floors: three sizes/kinds
            all_cases = {"new", "est64", "est1514", "est1514_partial", "reply64", "reply1514",
                         "nonvip"}
            self.subjects += [
                Subject("empty", "empty program (XDP_PASS)", "floor",
                        floors.program("xdp_empty"), dict.fromkeys(all_cases, "PASS"),
                        repeat_ok=idem),
                Subject("tx", "MAC swap + XDP_TX", "floor", floors.program("xdp_tx"),
                        dict.fromkeys(all_cases, "TX"), repeat_ok=idem),
                Subject("flow", "MAC swap + XDP_TX + one flow-table access", "floor",
                        floors.program("xdp_flow"), dict.fromkeys(all_cases, "TX"),
                        reset=lambda: _zero_array(floors.map("flow_floor")),
                        note="one 64-byte entry of a 16 MiB array (1<<18 entries, the size of "
                             "xdplb's conntrack region here) at a hash of the 5-tuple, "
                             "written for a new flow: a stateful balancer's least cost"),
                Subject("encap", "MAC swap + XDP_TX + 20 B of headroom and an IPv4 header",
                        "floor", floors.program("xdp_encap"), dict.fromkeys(all_cases, "TX"),
                        note="bpf_xdp_adjust_head(-20) and a 20-byte IPv4 header with its "
                             "checksum: the least an encapsulating forwarder pays"),
                self.xdplb,
                self.xdplb_dsr,
                *self.xdplb_tunnels,
                Subject("tutorial", "tutorial (as printed, no printk)", "peer",
                        tut.program("tutorial_lb"), dict.fromkeys(all_cases, "TX"),
                        check=_check_plain,
                        note="no VIP check: the non-VIP frame is balanced too"),
                Subject("tutorial_rev2", "tutorial (rev2: full TCP checksum loop)", "peer",
                        tut.program("tutorial_lb_rev2"), dict.fromkeys(all_cases, "TX"),
                        check=_check_plain,
                        note="no VIP check: the non-VIP frame is balanced too"),
            ]
            self.katran = None
            if katran_obj:
                self._load_katran(katran_obj)
        except BaseException:
            self.close()
            raise

    def _load_xdplb(self) -> None:
        from xdplb._bpf.dataplane import Knobs, Sizes
        from xdplb._bpf.loader import load
        from xdplb.lb import BackendSpec, LoadBalancer, VipSpec

        # the default sizes (config.DEFAULTS), a wide NAT port range (see NAT_PORTS), and
        # the interface's MAC set, as serve and run do (frames to another MAC are not ours)
        sizes = Sizes()
        # the SYN challenge stays in "auto" but is never engaged by the rate of new flows
        # (tens of thousands a second from one client here): "new" is a flow admitted,
        # the challenge's bookkeeping included
        knobs = Knobs(nat_port_min=NAT_PORTS[0], nat_port_max=NAT_PORTS[1],
                      if_mac=F.mac(LB_MAC), syn_challenge_rate=0xFFFFFFFF)
        dp = load(sizes=sizes, knobs=knobs)
        self.closers.append(dp.close)
        lb = LoadBalancer(dp, max_vips=sizes.max_vips, max_backends=sizes.max_backends)
        lb.apply([VipSpec(address=ipaddress.ip_address(LB_IP), port=VIP_PORT, protocol="tcp",
                          mode="nat",
                          backends=tuple(BackendSpec(ipaddress.ip_address(ip), mac=F.mac(m))
                                         for ip, m in BACKENDS))])
        self.dp = dp

        def reset() -> None:
            dp.clear_flows()

        expect = {"new": "TX", "est64": "TX", "est1514": "TX", "est1514_partial": "TX",
                  "reply64": "TX", "reply1514": "TX", "nonvip": "PASS"}
        self.xdplb = Subject("xdplb", "xdplb (NAT)", "xdplb", dp.program, expect,
                             repeat_ok={"nonvip"}, reset=reset, check=_check_xdplb)

        # the same VIP in DSR mode: like for like with Katran (one flow entry, MACs only;
        # replies do not come back through the LB)
        dsr = load(sizes=sizes, knobs=knobs)
        self.closers.append(dsr.close)
        LoadBalancer(dsr, max_vips=sizes.max_vips, max_backends=sizes.max_backends).apply(
            [VipSpec(address=ipaddress.ip_address(LB_IP), port=VIP_PORT, protocol="tcp",
                     mode="dsr",
                     backends=tuple(BackendSpec(ipaddress.ip_address(ip), mac=F.mac(m))
                                    for ip, m in BACKENDS))])

        def reset_dsr() -> None:
            dsr.clear_flows()

        self.xdplb_dsr = Subject("xdplb_dsr", "xdplb (DSR)", "xdplb", dsr.program,
                                 {"new": "TX", "est64": "TX", "est1514": "TX",
                                  "est1514_partial": "TX", "nonvip": "PASS"},
                                 repeat_ok={"est64", "est1514", "nonvip"}, reset=reset_dsr)

        # the same VIP in the tunnel modes: the backends' MAC stands for the next hop's
        # (like for like with DSR, which also sends to a configured MAC)
        self.xdplb_tunnels = []
        for mode in ("ipip", "gue"):
            t = load(sizes=sizes, knobs=knobs)
            self.closers.append(t.close)
            LoadBalancer(t, max_vips=sizes.max_vips, max_backends=sizes.max_backends).apply(
                [VipSpec(address=ipaddress.ip_address(LB_IP), port=VIP_PORT, protocol="tcp",
                         mode=mode, tunnel_source=(ipaddress.ip_address(LB_IP),),
                         backends=tuple(BackendSpec(ipaddress.ip_address(ip), mac=F.mac(m))
                                        for ip, m in BACKENDS))])
            self.xdplb_tunnels.append(Subject(
                f"xdplb_{mode}", f"xdplb ({mode.upper()})", "xdplb", t.program,
                {"new": "TX", "est64": "TX", "est1514": "TX", "est1514_partial": "TX",
                 "nonvip": "PASS"}, repeat_ok={"nonvip"}, reset=t.clear_flows,
                check=_check_tunnel,
                note=f"{'IPv4 in IPv4' if mode == 'ipip' else 'GUE variant 1 over IPv4'} to "
                     "the backend (its MAC as the next hop's, bpf_check_mtu)"))

    def _load_katran(self, path: str) -> None:
        import katran

        k = katran.Katran(path, LB_IP, VIP_PORT, [ip for ip, _ in BACKENDS], F.mac(CLIENT_MAC))
        self.closers.append(k.close)
        self.katran = k
        expect = {"new": "TX", "est64": "TX", "est1514": "TX", "est1514_partial": "TX",
                  "nonvip": "PASS"}
        self.subjects.append(Subject(
            "katran", "Katran (balancer_ingress)", "peer", k.program, expect,
            repeat_ok={"nonvip"}, reset=k.clear_flows, check=_check_katran,
            note="DSR with IPIP encapsulation: replies bypass it (reply cases not run)"))

    def close(self) -> None:
        while self.closers:
            try:
                self.closers.pop()()
            except (OSError, ValueError) as e:  # keep releasing the rest
                print(f"bench: cleanup: {e}", file=sys.stderr)


def _zero_array(m) -> None:
    """Forget the flow floor's flows (between rounds, like the balancers')."""
    import mmap

    size = -(-m.max_entries * m.value_size // mmap.PAGESIZE) * mmap.PAGESIZE
    try:
        with mmap.mmap(m.fd, size, mmap.MAP_SHARED, mmap.PROT_WRITE) as mm:
            mm.write(bytes(size))
    except OSError:  # not mmapable: one update per entry
        zero = bytes(m.value_size)
        for i in range(m.max_entries):
            m.update(i, zero)


def _check_plain(case: str, fin: bytes, fout: bytes) -> dict:
    p = F.parse(fout)
    return {"ip_csum_ok": p.ip_csum_ok, "tcp_csum_ok": p.l4_csum_ok} if p else {}


def _check_xdplb(case: str, fin: bytes, fout: bytes) -> dict:
    p = F.parse(fout)
    if p is None:
        return {}
    out = {"ip_csum_ok": p.ip_csum_ok, "tcp_csum_ok": p.l4_csum_ok, "dst": p.dst}
    if case == "nonvip":
        out["untouched"] = fin == fout
    return out


def _check_tunnel(case: str, fin: bytes, fout: bytes) -> dict:
    p = F.parse(fout)
    if p is None:
        return {}
    out = {"outer_ip_csum_ok": p.ip_csum_ok, "dst": p.dst,
           "inner_intact": fout.endswith(fin[14:]) if case != "nonvip" else None}
    if case == "nonvip":
        out["untouched"] = fin == fout
    return out


def _check_katran(case: str, fin: bytes, fout: bytes) -> dict:
    p = F.parse(fout)
    if p is None:
        return {}
    out = {"outer_ip_csum_ok": p.ip_csum_ok, "encap": p.proto == F.PROTO_IPIP}
    out["dst"] = p.dst
    if case == "nonvip":
        out["untouched"] = fin == fout
    return out


# --- measuring --------------------------------------------------------------------------


def trimmed_mean(ns: np.ndarray, cut: float = TRIM) -> float:
    """Mean of the calls between the `cut` and 1 - `cut` quantiles."""
    s = np.sort(ns)
    k = int(len(s) * cut)
    return float(s[k:len(s) - k].mean())


def _summary(ns: np.ndarray) -> dict:
    return {"tmean": trimmed_mean(ns), "median": float(np.median(ns)), "mean": float(ns.mean()),
            "p10": float(np.percentile(ns, 10)), "p90": float(np.percentile(ns, 90)),
            "n": int(ns.size)}


def establish(rig: Rig) -> tuple[tuple[str, str], int]:
    """Create the established flow in every stateful program; returns the backend the flow
    went to (ip, mac) and its NAT port, read back from xdplb's output frame."""
    est = _client_frame(CLIENT_PORT, F.TCP_ACK | F.TCP_PSH, F.MIN_FRAME)
    # the handshake: only a SYN opens a flow, the client's ACK of the backend's SYN-ACK
    # (seq 1999: the est frames acknowledge 2000) confirms it
    action, out, _ = rig.xdplb.program.test_run(_client_frame(CLIENT_PORT, F.TCP_SYN))
    p = F.parse(out)
    if ACTION.get(action) != "TX" or p is None or p.src != LB_IP:
        raise SystemExit(f"bench: xdplb did not forward the established flow's SYN "
                         f"(action {ACTION.get(action, action)}, {p})")
    backend = next(b for b in BACKENDS if b[0] == p.dst)
    synack = F.tcp_frame(src_mac=backend[1], dst_mac=LB_MAC, src=backend[0], dst=LB_IP,
                         sport=VIP_PORT, dport=p.sport, flags=F.TCP_SYN | F.TCP_ACK, seq=1999,
                         ack=1001)
    rig.xdplb.program.test_run(synack)
    action, out, _ = rig.xdplb.program.test_run(est)
    if ACTION.get(action) != "TX":
        raise SystemExit(f"bench: xdplb did not forward the established flow "
                         f"(action {ACTION.get(action, action)})")
    if rig.xdplb_dsr is not None:
        rig.xdplb_dsr.program.test_run(_client_frame(CLIENT_PORT, F.TCP_SYN))
        rig.xdplb_dsr.program.test_run(est)
    if rig.katran:
        rig.katran.program.test_run(est)
    return backend, p.sport


def run_single(rig: Rig, cases: list[Case], rounds: int, calls: int, warmup: int,
               log: Callable[[str], None]) -> dict:
    res: dict = {s.key: {} for s in rig.subjects}
    stats: dict = {}
    clock: dict = {}
    first_index: dict[str, int] = {}
    nat_port = None
    for r in range(-1, rounds):  # round -1 warms up and is discarded
        n = warmup if r < 0 else calls
        for s in rig.subjects:
            if s.reset:
                s.reset()
        _, port = establish(rig)
        if nat_port is not None and port != nat_port:
            raise SystemExit(f"bench: the established flow's NAT port moved ({nat_port} -> "
                             f"{port}); replies would miss")
        nat_port = port
        t0 = time.monotonic()
        for case in cases:
            frames = case.make(first_index.get(case.key, 0), n)
            first_index[case.key] = first_index.get(case.key, 0) + n
            subs = [s for s in rig.subjects if case.key in s.expect]
            ns = {s.key: np.empty(n, dtype=np.int64) for s in subs}
            before = rig.dp.stats() if r >= 0 else None
            for i, frame in enumerate(frames):
                k = i % len(subs)
                for s in subs[k:] + subs[:k]:
                    action, out, t = s.program.test_run(frame)
                    ns[s.key][i] = t
                    if i == 0 and r == 0:
                        _record_check(res[s.key], s, case, action, frame, out)
            if before is not None:
                after = rig.dp.stats()
                delta = {k: after[k][0] - before[k][0] for k in after
                         if after[k][0] != before[k][0]}
                stats.setdefault(case.key, []).append(delta)
            if r == 0 and "empty" in ns and case.key == "est64":
                # the raw readings show the clock's step (about 10 ns here)
                vals, counts = np.unique(ns["empty"], return_counts=True)
                top = sorted(zip(vals.tolist(), counts.tolist()), key=lambda x: -x[1])[:12]
                clock = {"empty_est64_readings": {str(v): c for v, c in sorted(top)}}
            if r >= 0:
                for s in subs:
                    res[s.key].setdefault(case.key, {"rounds": []})["rounds"].append(
                        _summary(ns[s.key]))
        if r >= 0:
            log(f"  round {r + 1}/{rounds}: {time.monotonic() - t0:.1f} s")
    for s in rig.subjects:
        for ck, d in res[s.key].items():
            d["ns"] = statistics.median(x["tmean"] for x in d["rounds"])
            d["median_ns"] = statistics.median(x["median"] for x in d["rounds"])
    for s in rig.subjects:  # minus the empty program, round by round
        for ck, d in res[s.key].items():
            empty = res["empty"][ck]["rounds"]
            d["net_ns"] = statistics.median(a["tmean"] - e["tmean"]
                                            for a, e in zip(d["rounds"], empty))
    return {"results": res, "xdplb_stats": stats, "nat_port": nat_port, "clock": clock}


def _record_check(d: dict, s: Subject, case: Case, action: int, fin: bytes, fout: bytes):
    want = s.expect[case.key]
    got = ACTION.get(action, str(action))
    entry = d.setdefault(case.key, {"rounds": []})
    entry["action"] = got
    entry["action_ok"] = got == want
    if s.check:
        entry["checks"] = s.check(case.key, fin, fout)
    if got != want:
        print(f"bench: WARNING {s.key} / {case.key}: action {got}, expected {want}",
              file=sys.stderr)


def run_repeat(rig: Rig, cases: list[Case], rounds: int, repeat: int) -> dict:
    res: dict = {}
    by_key = {c.key: c for c in cases}
    for s in rig.subjects:
        for ck in sorted(s.repeat_ok):
            frame = by_key[ck].make(0, 1)[0]
            _, out, _ = s.program.test_run(frame)
            if s.kind != "floor" and out != frame:
                print(f"bench: {s.key} / {ck} changes the frame: no repeat=N run",
                      file=sys.stderr)
                continue
            vals = [s.program.test_run(frame, repeat)[2] for _ in range(rounds)]
            res.setdefault(s.key, {})[ck] = {"repeat": repeat, "rounds": vals,
                                              "ns": statistics.median(vals)}
    for d in res.values():
        for ck, e in d.items():
            base = res.get("empty", {}).get(ck)
            if base:
                e["net_ns"] = e["ns"] - base["ns"]
    return res


# --- the backends' decapsulator ---------------------------------------------------------
# Measured apart, in a network namespace of its own: whether an inner destination is local is
# the kernel FIB's answer for the ingress device (lo under a test run), so the namespace
# holds the VIP on its loopback and sets forwarding as each variant needs; the empty program
# is measured in the same namespace, call for call, as the floor.

DECAP_VARIANTS = {"fwd_off": 0, "fwd_on": 1}  # net.ipv4/ipv6 forwarding in the namespace


def decap_frames() -> dict[str, tuple[str, bytes]]:
    """case -> (label, frame): IPIP and GUE as xdplb sends them, to a backend."""
    lb, be, vip6 = F.ip4(LB_IP), F.ip4("10.0.1.2"), ipaddress.IPv6Address("fd00::a").packed
    be6 = ipaddress.IPv6Address("fd00:1::2").packed

    def inner(frame_len: int) -> bytes:
        return _client_frame(CLIENT_PORT, F.TCP_ACK | F.TCP_PSH, frame_len)[14:]

    def outer4(proto: int, body: bytes) -> bytes:
        h = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0x4000, 64,
                                  proto, 0, lb, be))
        h[10:12] = struct.pack("!H", 0xFFFF & ~F.sum16(bytes(h)))
        return bytes(h) + body

    def outer6(body: bytes) -> bytes:
        return struct.pack("!IHBB", 0x60000000, len(body), 17, 64) + vip6 + be6 + body

    def eth(et: int, pkt: bytes) -> bytes:
        return F.mac(BACKENDS[0][1]) + F.mac(LB_MAC) + struct.pack("!H", et) + pkt

    def udp(body: bytes) -> bytes:
        return struct.pack("!HHHH", 50000, 6080, 8 + len(body), 0) + body

    return {
        "decap_ipip64": ("IPIP, 64 B inner frame", eth(0x0800, outer4(4, inner(F.MIN_FRAME)))),
        "decap_ipip1514": ("IPIP, 1514 B inner frame", eth(0x0800, outer4(4, inner(BIG)))),
        "decap_gue1514": ("GUE over IPv4, 1514 B inner frame",
                          eth(0x0800, outer4(17, udp(inner(BIG))))),
        "decap_gue6_1514": ("GUE over IPv6 (IPv4 inside), 1514 B inner frame",
                            eth(0x86DD, outer6(udp(inner(BIG))))),
    }


def decap_child(args: argparse.Namespace) -> int:
    """In the namespace (`ip netns exec`): empty vs decap, interleaved, JSON on stdout."""
    from xdplb._bpf import object_path
    from xdplb._bpf.libbpf import BpfObject

    floors = BpfObject(BUILD / "floors.bpf.o").load(("xdp_empty",))
    decap = BpfObject(object_path("decap")).load(("xdplb_decap",))
    progs = {"empty": floors.program("xdp_empty"), "decap": decap.program("xdplb_decap")}
    res: dict = {}
    try:
        for ck, (label, frame) in decap_frames().items():
            act, out, _ = progs["decap"].test_run(frame)
            rounds: dict[str, list] = {"empty": [], "decap": []}
            for r in range(-1, args.rounds):
                n = args.warmup if r < 0 else args.calls
                ns = {k: np.empty(n, dtype=np.int64) for k in progs}
                for i in range(n):
                    order = list(progs) if i % 2 else list(progs)[::-1]
                    for k in order:
                        ns[k][i] = progs[k].test_run(frame)[2]
                if r >= 0:
                    for k in progs:
                        rounds[k].append(_summary(ns[k]))
            res[ck] = {"label": label, "frame_len": len(frame), "action": ACTION.get(act, act),
                       "stripped": len(out) < len(frame) and out[:12] == frame[:12]
                       and out[14:] == frame[len(frame) - len(out) + 14:],
                       "ns": {k: statistics.median(x["tmean"] for x in v)
                              for k, v in rounds.items()},
                       "net_ns": statistics.median(d["tmean"] - e["tmean"] for d, e in
                                                   zip(rounds["decap"], rounds["empty"]))}
    finally:
        decap.close()
        floors.close()
    print(json.dumps(res))
    return 0


def run_decap(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    out: dict = {}
    for variant, fwd in DECAP_VARIANTS.items():
        ns = f"xdb{os.getpid()}"
        subprocess.run(["ip", "netns", "add", ns], check=True)
        try:
            sh = ["ip", "netns", "exec", ns]
            subprocess.run([*sh, "ip", "link", "set", "lo", "up"], check=True)
            subprocess.run([*sh, "ip", "addr", "add", f"{LB_IP}/32", "dev", "lo"], check=True)
            subprocess.run([*sh, "sysctl", "-qw", f"net.ipv4.conf.all.forwarding={fwd}",
               f"net.ipv4.conf.lo.forwarding={fwd}", f"net.ipv6.conf.all.forwarding={fwd}"],
                           check=True)
            p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__,
                                "--decap-child", "--rounds", str(args.rounds), "--calls",
                                str(args.calls), "--warmup", str(args.warmup)],
                               check=True, capture_output=True, text=True)
            out[variant] = {"forwarding": fwd, "cases": json.loads(p.stdout)}
            log(f"  decap ({variant}): " + ", ".join(
                f"{k} {v['net_ns']:+.0f} ns" for k, v in out[variant]["cases"].items()))
        finally:
            subprocess.run(["ip", "netns", "del", ns], check=False)
    return out


# --- machine ----------------------------------------------------------------------------


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cc = shutil.which("clang-19") or shutil.which("clang")
    clang = subprocess.run([cc, "--version"], check=False, capture_output=True,
                           text=True).stdout.splitlines()[:1] if cc else []
    return {"kernel": platform.release(), "nproc": os.cpu_count(), "cpu": cpu,
            "python": platform.python_version(), "clang": "".join(clang),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}


def _katran_info(path: str | None) -> dict | None:
    if not path:
        return None
    info = {"object": str(path)}
    rev = Path(str(path) + ".revision")
    if rev.exists():  # written by whoever built it: upstream commit, flags
        info["revision"] = rev.read_text().strip()
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=5000, help="calls per case, program, round")
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=100_000, help="N of the repeat=N runs")
    ap.add_argument("--cpu", type=int, default=None,
                    help="CPU to pin to (default: the last one)")
    ap.add_argument("--katran-obj", default=os.environ.get("XDPLB_BENCH_KATRAN_OBJ"),
                    help="a prebuilt Katran balancer.bpf.o (default: $XDPLB_BENCH_KATRAN_OBJ)")
    ap.add_argument("--out", type=Path, default=RESULTS / "micro.json")
    ap.add_argument("--quick", action="store_true", help="2 rounds x 500 calls (smoke test)")
    ap.add_argument("--decap-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.decap_child:
        return decap_child(args)
    if args.quick:
        args.rounds, args.calls, args.warmup, args.repeat = 2, 500, 50, 10_000
    if os.geteuid() != 0:
        print("bench: the micro-benchmark needs root (BPF_PROG_TEST_RUN)", file=sys.stderr)
        return 1
    if args.katran_obj and not Path(args.katran_obj).exists():
        print(f"bench: --katran-obj {args.katran_obj}: no such file", file=sys.stderr)
        return 1
    cpu = args.cpu if args.cpu is not None else (os.cpu_count() or 1) - 1
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        return _run(args, cpu)
    finally:  # bench/run.py goes on in this process: the live benchmark needs every CPU
        os.sched_setaffinity(0, affinity)


def _run(args: argparse.Namespace, cpu: int) -> int:
    def log(msg: str) -> None:
        print(msg, flush=True)

    build_progs(verbose=False)
    t0 = time.monotonic()
    rig = Rig(args.katran_obj)
    try:
        backend, nat_port = establish(rig)
        cases = build_cases(backend, nat_port)
        log(f"micro: {len(rig.subjects)} programs x {len(cases)} cases, {args.rounds} rounds x "
            f"{args.calls} calls, pinned to CPU {cpu}")
        single = run_single(rig, cases, args.rounds, args.calls, args.warmup, log)
        repeat = run_repeat(rig, cases, args.rounds, args.repeat)
    finally:
        rig.close()
    decap = run_decap(args, log)
    from xdplb.config import DEFAULTS

    out = {
        "machine": machine(),
        "method": {"rounds": args.rounds, "calls": args.calls, "warmup": args.warmup,
                   "repeat": args.repeat, "cpu": cpu, "nat_ports": list(NAT_PORTS),
                   "conntrack": DEFAULTS.conntrack_size, "seconds": round(time.monotonic() - t0, 1)},
        "katran": _katran_info(args.katran_obj),
        "programs": {s.key: {"label": s.label, "kind": s.kind, "note": s.note}
                     for s in rig.subjects},
        "cases": {c.key: {"label": c.label, "frame_len": c.frame_len, "note": c.note}
                  for c in cases},
        "single": single["results"],
        "xdplb_stats": single["xdplb_stats"],
        "clock": single["clock"],
        "repeat": repeat,
        "decap": decap,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    log(f"micro: wrote {args.out} ({out['method']['seconds']} s)")
    _print_table(out)
    return 0


def _print_table(out: dict) -> None:
    subs = list(out["programs"])
    print(f"{'case':<17}" + "".join(f"{k:>15}" for k in subs))
    for ck in out["cases"]:
        row = f"{ck:<17}"
        for k in subs:
            d = out["single"].get(k, {}).get(ck)
            row += f"{'-':>15}" if d is None else f"{d['ns']:>8.0f} ({d['net_ns']:+5.0f})"
        print(row)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench: interrupted (everything created was removed)", file=sys.stderr)
        sys.exit(130)
