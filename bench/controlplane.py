#!/usr/bin/env python3
"""Control-plane scale: N VIPs x B backends through the real data plane (loaded, not
attached: the maps are the kernel's) and the daemon's controller.

Measured, each from a fresh load:
  start     Controller.start(): every VIP, backend and Maglev table written (the first
            apply of `serve`)
  takeover  a second controller adopting the filled maps (read_map_state + adopt), as a
            restart with --keep does
  drain     `backend drain ADDRESS` across every VIP holding it (one request)
  status    the control socket's `status` answer (the whole view with counters)
  memory    the kernel's memory for the Maglev tables (N x ring_size x 8 bytes) and this
            process's peak RSS
Two pools: "shared" (every VIP has the same B backends: one Maglev computation serves all)
and "distinct" (every VIP its own backends: the worst case).

    sudo .venv/bin/python bench/controlplane.py [--vips 4096] [--backends 4] [--json FILE]
writes bench/results/controlplane.json and prints a markdown table (docs/BENCHMARKS.md's
control-plane section is generated from it by bench/report.py when present).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def config_text(n_vips: int, n_backends: int, pool: str) -> str:
    out = ['[lb]\ninterface = "lo"\n', f"max_vips = {n_vips}\n",
           f"max_backends = {max(1024, n_vips * n_backends)}\n", "conntrack_size = 65536\n"]
    for v in range(n_vips):
        a, b = divmod(v, 250)
        out.append(f'[[vip]]\naddress = "10.{100 + a // 250}.{a % 250}.{b + 1}"\nport = 80\n')
        for i in range(n_backends):
            if pool == "shared":
                addr = f"10.0.0.{i + 2}"
            else:
                k = v * n_backends + i
                addr = f"10.{200 + k // 62500}.{k // 250 % 250}.{k % 250 + 1}"
            out.append(f'[[vip.backend]]\naddress = "{addr}"\nmac = "de:ad:be:ef:00:02"\n')
    return "".join(out)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(n_vips: int, n_backends: int, pool: str) -> dict:
    from xdplb._bpf.dataplane import Knobs, Sizes
    from xdplb._bpf.loader import load
    from xdplb.config import parse_config
    from xdplb.daemon import Controller
    from xdplb.lb import read_map_state
    from xdplb.logfmt import Log
    from xdplb.ring import _slots

    _slots.cache_clear()
    t = time.perf_counter()
    cfg = parse_config(config_text(n_vips, n_backends, pool), "bench.toml")
    parse_s = time.perf_counter() - t
    sizes = Sizes(max_vips=cfg.lb.max_vips, max_backends=cfg.lb.max_backends,
                  conntrack=cfg.lb.conntrack_size)
    t = time.perf_counter()
    dp = load(sizes=sizes, knobs=Knobs())
    load_s = time.perf_counter() - t
    log = Log(io.StringIO())
    try:
        t = time.perf_counter()
        ctl = Controller(dp, cfg, "bench.toml", log)
        ctl.start()
        start_s = time.perf_counter() - t

        t = time.perf_counter()
        st = ctl.handle({"cmd": "status"})
        status_s = time.perf_counter() - t
        assert st["ok"] and len(st["status"]["vips"]) == n_vips

        t = time.perf_counter()
        again = Controller(dp, cfg, "bench.toml", log)
        again.start(read_map_state(dp))
        takeover_s = time.perf_counter() - t

        first = cfg.vips[0].backends[0].address
        t = time.perf_counter()
        r = again.handle({"cmd": "backend", "op": "drain", "backend": str(first)})
        drain_s = time.perf_counter() - t
        assert r["ok"], r
        drained = len(r["changes"])
    finally:
        dp.close()
    ring_bytes = n_vips * cfg.vips[0].ring_size * 8  # the kernel's 8-byte stride
    return {"vips": n_vips, "backends": n_backends, "pool": pool, "parse_s": parse_s,
            "load_s": load_s, "start_s": start_s, "takeover_s": takeover_s,
            "drain_s": drain_s, "drained_vips": drained, "status_s": status_s,
            "ring_mib": ring_bytes / (1 << 20), "peak_rss_mib": peak_rss_mib()}


TARGETS = {"start_s": 3.0, "takeover_s": 3.0, "drain_s": 0.5, "status_s": 0.2}


def table(rows: list[dict]) -> str:
    out = [("| VIPs x backends | pool | start | takeover | drain one address | status | "
           "Maglev tables (kernel) | peak RSS |"), "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['vips']} x {r['backends']} | {r['pool']} | {r['start_s']:.2f} s | "
                   f"{r['takeover_s']:.2f} s | {r['drain_s']:.2f} s ({r['drained_vips']} "
                   f"VIPs) | {r['status_s']:.2f} s | {r['ring_mib']:.0f} MiB | "
                   f"{r['peak_rss_mib']:.0f} MiB |")
    out.append(f"| target (issue 17) | | <= {TARGETS['start_s']:g} s | "
               f"<= {TARGETS['takeover_s']:g} s | <= {TARGETS['drain_s']:g} s | "
               f"<= {TARGETS['status_s']:g} s | | |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vips", type=int, default=4096)
    ap.add_argument("--backends", type=int, default=4)
    ap.add_argument("--pools", default="shared,distinct")
    ap.add_argument("--json", default=str(RESULTS / "controlplane.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("controlplane: needs root (it loads the data plane)", file=sys.stderr)
        return 1
    rows = []
    for pool in args.pools.split(","):
        r = run(args.vips, args.backends, pool)
        print(json.dumps(r), flush=True)
        rows.append(r)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"rows": rows, "machine": os.uname().release,
                                           "cpus": os.cpu_count(),
                                           "when": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                 time.gmtime())}, indent=2))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
