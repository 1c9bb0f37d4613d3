"""Conntrack capacity: fill the conntrack region (DSR flows) with BPF_PROG_TEST_RUN and
count the live flows evicted to make room (ct_full), at several fill levels.

    .venv/bin/python bench/fill.py [--conntrack 1048576] [--fill 0.5 0.75 0.9]

Each level starts from an empty table and opens `fill x conntrack` distinct UDP flows
(a DSR VIP; UDP flows are confirmed from their first datagram, so every eviction is a
live flow's: ct_full; timeouts far longer than the run, so none goes stale). Then it
re-sends a sample of the flows (an established packet
each) and records the kernel's ns per packet for both passes, beside an empty XDP
program measured on the same frames. Writes bench/results/fill.json.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import statistics
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
VIP, VIP_PORT = "10.0.0.10", 5353
BACKENDS = (("10.0.0.2", "de:ad:be:ef:00:02"), ("10.0.0.3", "de:ad:be:ef:00:03"))


def _frame_template() -> bytearray:
    eth = bytes.fromhex("deadbeef0010" "deadbeef0001") + b"\x08\x00"
    payload = b"x" * 18
    udp = struct.pack("!HHHH", 0, VIP_PORT, 8 + len(payload), 0) + payload  # csum 0: none
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     bytes(4), ipaddress.ip_address(VIP).packed)
    return bytearray(eth + ip + udp)


def frame(tpl: bytearray, i: int) -> bytes:
    """Flow i: client 10.64.0.0/10 + i // 32768, source port 1024 + i % 32768."""
    f = bytearray(tpl)
    f[26:30] = struct.pack("!I", (10 << 24 | 64 << 16) + i // 32768)
    f[34:36] = struct.pack("!H", 1024 + i % 32768)
    return bytes(f)


def run_level(dp, empty, n: int, sample: int) -> dict:
    tpl = _frame_template()
    dp.clear_flows()
    before = dp.stats()
    ns_new = []
    t0 = time.monotonic()
    for i in range(n):
        action, _, ns = dp.program.test_run(frame(tpl, i))
        if action != 3:  # XDP_TX
            raise SystemExit(f"fill: flow {i} not forwarded (action {action})")
        if i % max(1, n // sample) == 0:
            ns_new.append(ns)
    fill_s = time.monotonic() - t0
    after = dp.stats()
    evicted = after["ct_full"][0] - before["ct_full"][0]
    counts = dp.flow_counts()
    step = max(1, n // sample)
    ns_est, ns_empty = [], []
    b = dp.stats()["fwd_est"][0]
    for i in range(0, n, step):
        f = frame(tpl, i)
        ns_est.append(dp.program.test_run(f)[2])
        ns_empty.append(empty.test_run(f)[2])
    found = dp.stats()["fwd_est"][0] - b
    return {"flows": n, "evicted": evicted, "evicted_pct": 100.0 * evicted / n,
            "ct_live": counts["ct_live"], "ct_size": counts["ct_size"],
            "sample_found_pct": 100.0 * found / len(ns_est),
            "new_ns_median": statistics.median(ns_new),
            "est_ns_median": statistics.median(ns_est),
            "empty_ns_median": statistics.median(ns_empty), "fill_seconds": fill_s}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conntrack", type=int, default=1 << 20)
    ap.add_argument("--fill", type=float, nargs="+", default=[0.5, 0.75, 0.9])
    ap.add_argument("--sample", type=int, default=20000)
    ap.add_argument("--out", type=Path, default=RESULTS / "fill.json")
    ap.add_argument("--object", help="the xdplb object (default: the installed one)")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT / "bench"))
    from micro import BUILD, build_progs  # the empty program of the micro-benchmark

    from xdplb._bpf.dataplane import Knobs, Sizes
    from xdplb._bpf.libbpf import BpfObject
    from xdplb._bpf.loader import load
    from xdplb.lb import BackendSpec, LoadBalancer, VipSpec

    build_progs(False)
    empty_obj = BpfObject(BUILD / "floors.bpf.o").load(("xdp_empty",))
    empty = empty_obj.program("xdp_empty")
    sizes = Sizes(max_vips=16, max_backends=64, conntrack=args.conntrack)
    # timeouts far longer than the run: a flow must not go stale (and free its way
    # without counting) while the table fills
    dp = load(args.object, sizes=sizes, knobs=Knobs(udp_timeout_s=1e6, tcp_timeout_s=1e6))
    try:
        LoadBalancer(dp, max_vips=16, max_backends=64).apply([VipSpec(
            ipaddress.ip_address(VIP), VIP_PORT, "udp", mode="dsr",
            backends=tuple(BackendSpec(ipaddress.ip_address(a), bytes.fromhex(m.replace(":", "")))
                           for a, m in BACKENDS))])
        ct_size = dp.flow_counts()["ct_size"]
        levels = {}
        for f in args.fill:
            n = int(ct_size * f)
            r = run_level(dp, empty, n, args.sample)
            levels[f"{f:g}"] = r
            print(f"fill {f:>5.0%}: {n:>9} flows, {r['evicted']:>7} live flows evicted "
                  f"({r['evicted_pct']:.4f} %), ns/packet new {r['new_ns_median']:.0f}, "
                  f"established {r['est_ns_median']:.0f}, empty program "
                  f"{r['empty_ns_median']:.0f} ({r['fill_seconds']:.0f} s)", flush=True)
    finally:
        dp.close()
        empty_obj.close()
    out = {"conntrack_entries": ct_size, "ways": "2 buckets x 8", "levels": levels}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"fill: wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
