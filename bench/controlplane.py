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
writes bench/results/controlplane.json, prints a markdown table and rewrites the marked
control-plane section of docs/BENCHMARKS.md (bench/report.py keeps that section when
`make bench` regenerates the rest of the page). --profile DIR writes each phase's
cProfile.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from xdplb.daemon.control import call

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
    """Peak resident set: includes the mapped Maglev tables, which are the kernel's
    memory (counted in ring_mib), not this process's."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_anon_mib() -> float:
    """This process's own memory now (RssAnon: not the mapped tables)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Phases:
    """Times each phase; with a directory, also writes its cProfile there (PHASE.prof)."""

    def __init__(self, profile_dir: str | None, pool: str):
        self.dir, self.pool = profile_dir, pool

    @contextlib.contextmanager
    def __call__(self, name: str, out: dict):
        prof = cProfile.Profile() if self.dir else None
        t = time.perf_counter()
        if prof:
            prof.enable()
        try:
            yield
        finally:
            if prof:
                prof.disable()
            out[name] = time.perf_counter() - t
            if prof and self.dir:
                Path(self.dir).mkdir(parents=True, exist_ok=True)
                prof.dump_stats(str(Path(self.dir) / f"{self.pool}-{name}.prof"))


def run(n_vips: int, n_backends: int, pool: str, profile_dir: str | None = None) -> dict:
    from xdplb._bpf.dataplane import DataPlane, Knobs, Sizes
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
    phase = Phases(profile_dir, pool)
    r: dict = {}
    kept = None
    try:
        with phase("start_s", r):
            ctl = Controller(dp, cfg, "bench.toml", log)
            ctl.start()
        with phase("status_s", r):
            st = ctl.handle({"cmd": "status"})
        assert st["ok"] and len(st["status"]["vips"]) == n_vips
        # a restart: a new process opens the same maps with nothing of this one's
        # (no table mapped, no state), reads them back and adopts them
        kept = DataPlane(dict(dp.maps), dp.program)
        with phase("takeover_s", r):
            again = Controller(kept, cfg, "bench.toml", log)
            again.start(read_map_state(kept))
        first = cfg.vips[0].backends[0].address
        with phase("drain_s", r):
            reply = again.handle({"cmd": "backend", "op": "drain", "backend": str(first)})
        assert reply["ok"], reply
        drained = len(reply["changes"])
        r["rss_anon_mib"] = rss_anon_mib()
    finally:
        if kept is not None:  # its own table mappings only: the maps are dp's
            for vip_id in list(kept._ring_mm):
                kept._unmap_ring(vip_id)
            for m in kept._rings.values():
                m.close()
        dp.close()
    ring_bytes = n_vips * cfg.vips[0].ring_size * 8  # the kernel's 8-byte stride
    return {"vips": n_vips, "backends": n_backends, "pool": pool, "parse_s": parse_s,
            "load_s": load_s, **r, "drained_vips": drained,
            "ring_mib": ring_bytes / (1 << 20), "peak_rss_mib": peak_rss_mib()}


def under_apply(n_vips: int, n_backends: int, pool: str, rounds: int = 3) -> dict:
    """The control socket of a real `xdplb serve` (its own network namespace, on its
    loopback) answering `status` while a `backend drain` of one address across every
    VIP is applied: each round sends the drain (then the undrain) from a thread and
    asks for status, one request after the other, until it is answered."""
    pid = os.getpid()
    ns, name = f"xdplbcp{pid}", f"cp{pid}"
    tmp = Path(tempfile.mkdtemp(prefix="xdplb-cp-"))
    cfg = tmp / "cp.toml"
    cfg.write_text(config_text(n_vips, n_backends, pool).replace(
        '[lb]\ninterface = "lo"\n', f'[lb]\ninterface = "lo"\nname = "{name}"\n', 1))
    sock = tmp / f"{name}.sock"
    xdplb = str(Path(sys.executable).with_name("xdplb"))
    log = open(tmp / "serve.log", "wb")  # noqa: SIM115 - closed below
    subprocess.run(["ip", "netns", "add", ns], check=True)
    proc = None
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen(["ip", "netns", "exec", ns, xdplb, "serve", "-c", str(cfg)],
                                env={**os.environ, "XDPLB_RUN_DIR": str(tmp)},
                                stdout=log, stderr=log)
        while True:
            if proc.poll() is not None or time.perf_counter() - t0 > 300:
                raise RuntimeError("serve did not start: "
                                   + (tmp / "serve.log").read_text()[-2000:])
            try:
                if call(sock, {"cmd": "status"}, 60).get("ok"):
                    break
            except OSError:
                time.sleep(0.2)
        ready_s = time.perf_counter() - t0

        def status_s() -> float:
            t = time.perf_counter()
            reply = call(sock, {"cmd": "status"}, 60)
            assert reply["ok"] and len(reply["status"]["vips"]) == n_vips, reply.get("error")
            return time.perf_counter() - t

        idle = [status_s() for _ in range(5)]
        during: list[float] = []
        applies: list[float] = []
        first = "10.0.0.2" if pool == "shared" else "10.200.0.1"
        for _ in range(rounds):
            for op in ("drain", "undrain"):
                done = threading.Event()
                took: list[float] = []

                def change(op: str = op, took: list[float] = took,
                           done: threading.Event = done) -> None:
                    t = time.perf_counter()
                    reply = call(sock, {"cmd": "backend", "op": op, "backend": first}, 120)
                    took.append(time.perf_counter() - t)
                    done.set()
                    assert reply["ok"], reply

                th = threading.Thread(target=change)
                th.start()
                time.sleep(0.02)  # the change is under way
                while not done.is_set():
                    d = status_s()
                    if not done.is_set():  # answered while the change ran
                        during.append(d)
                th.join()
                applies += took
        rss = float("nan")
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):  # (ip netns exec execs serve: same pid)
                rss = int(line.split()[1]) / 1024
        return {"serve_ready_s": ready_s, "status_idle_s": statistics.median(idle),
                "status_during_apply_max_s": max(during) if during else None,
                "status_during_apply_median_s": statistics.median(during) if during else None,
                "statuses_during_apply": len(during), "serve_rss_anon_mib": rss,
                "apply_over_socket_s": statistics.median(applies)}
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


TARGETS = {"start_s": 3.0, "takeover_s": 3.0, "drain_s": 0.5, "status_s": 0.2}


def table(rows: list[dict]) -> str:
    out = [("| VIPs x backends | pool | start | takeover | drain one address | status | "
            "status over the socket, idle | status over the socket during an apply | "
            "Maglev tables (kernel) | daemon's own memory |"),
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        during = r.get("status_during_apply_max_s")
        during_s = (f"{during:.2f} s max, {r['status_during_apply_median_s']:.2f} s median "
                    f"of {r['statuses_during_apply']}" if during is not None else "-")
        idle = f"{r['status_idle_s']:.2f} s" if "status_idle_s" in r else "-"
        out.append(f"| {r['vips']} x {r['backends']} | {r['pool']} | {r['start_s']:.2f} s | "
                   f"{r['takeover_s']:.2f} s | {r['drain_s']:.2f} s ({r['drained_vips']} "
                   f"VIPs) | {r['status_s']:.2f} s | {idle} | {during_s} | "
                   f"{r['ring_mib']:.0f} MiB | "
                   f"{r.get('serve_rss_anon_mib', r['rss_anon_mib']):.0f} MiB |")
    out.append(f"| target (issue 17) | | <= {TARGETS['start_s']:g} s | "
               f"<= {TARGETS['takeover_s']:g} s | <= {TARGETS['drain_s']:g} s | | | "
               f"<= {TARGETS['status_s']:g} s | | |")
    return "\n".join(out)


BEGIN = "<!-- controlplane: generated by bench/controlplane.py, do not edit -->"
END = "<!-- /controlplane -->"


def section(res: dict) -> str:
    rows = res["rows"]
    lines = [BEGIN, "## Control plane at scale", "",
             (f"`sudo .venv/bin/python bench/controlplane.py --vips {rows[0]['vips']} "
              f"--backends {rows[0]['backends']}` on {res['when']} ({res['cpus']} CPUs, "
              f"kernel {res['machine']}); `make bench` keeps this section as it is."), "",
             table(rows), "",
             ("- The targets are issue 17's. Python on shared CPUs: status over the socket "
              "includes encoding and decoding the JSON of every backend, and during an apply "
              "the event loop shares the interpreter lock with the worker thread that "
              "applies. A distinct pool builds every VIP's Maglev table one by one (a "
              "sequential walk in Python" + "".join(
                  f", {r['start_s'] / r['vips'] * 1000:.0f} ms a VIP at start" for r in rows
                  if r["pool"] == "distinct") + ")."),
             ("- start: `Controller.start()` on freshly loaded maps (every VIP, backend and "
              "Maglev table written: the first apply of `serve`). takeover: a second "
              "controller on a new handle to the same maps (as a restart with `--keep`): "
              "reads them back, adopts them, rewrites only what differs. drain: `backend "
              "drain ADDRESS` across every VIP holding it, one request. status: the whole "
              "status view with counters, in process. status during an apply: a real "
              "`xdplb serve` in its own namespace, asked over its control socket while a "
              "drain or undrain of that address runs (the worst answer)."),
             ("- shared pool: every VIP has the same backends and weights, so one Maglev "
              "computation (slot owners) serves every VIP and a drain's slot difference is "
              "computed once; each VIP then maps it to its own backend ids. distinct: every "
              "VIP its own backends, a table computed per VIP (the worst case)."),
             ("- Maglev tables (kernel): one 65,537-slot table per VIP at the kernel's 8-byte "
              "stride. They are not shared in the kernel: a table holds backend ids, and a "
              "backend id is one VIP's (its entry carries the VIP's id and SNAT address, and "
              "its counters are that VIP's), so two VIPs' tables differ even over the same "
              "backends. Sharing needs the data plane to map a table's slot to a position "
              "in the VIP's own backend list (a base id in the VIP entry), a change to "
              "`bpf/` not made here. daemon's own memory: the serve's anonymous resident "
              "memory after the drains (RssAnon: the tables it maps are the kernel's, "
              "counted left)."),
             "", END]
    return "\n".join(lines)


def write_section(doc: Path, text: str) -> None:
    """Replace (or append) the generated section of docs/BENCHMARKS.md."""
    page = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if BEGIN in page and END in page:
        head, rest = page.split(BEGIN, 1)
        page = head + text + rest.split(END, 1)[1]
    else:
        page = page.rstrip("\n") + "\n\n" + text + "\n"
    doc.write_text(page)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vips", type=int, default=4096)
    ap.add_argument("--backends", type=int, default=4)
    ap.add_argument("--pools", default="shared,distinct")
    ap.add_argument("--json", default=str(RESULTS / "controlplane.json"))
    ap.add_argument("--profile", metavar="DIR", help="write each phase's cProfile to DIR")
    ap.add_argument("--no-serve", action="store_true",
                    help="skip the status-during-apply phase (a real serve in a namespace)")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "BENCHMARKS.md",
                    help="write the control-plane section of this page (--doc '' : none)")
    ap.add_argument("--render", action="store_true",
                    help="only rewrite the section from the --json results of a run")
    args = ap.parse_args()
    if args.render:
        write_section(args.doc, section(json.loads(Path(args.json).read_text())))
        return 0
    if os.geteuid() != 0:
        print("controlplane: needs root (it loads the data plane)", file=sys.stderr)
        return 1
    rows = []
    for pool in args.pools.split(","):
        r = run(args.vips, args.backends, pool, args.profile)
        if not args.no_serve:
            r.update(under_apply(args.vips, args.backends, pool))
        print(json.dumps(r), flush=True)
        rows.append(r)
    res = {"rows": rows, "machine": os.uname().release, "cpus": os.cpu_count(),
           "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=2))
    print(table(rows))
    if str(args.doc) not in ("", "."):
        write_section(args.doc, section(res))
        print(f"controlplane: wrote its section of {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
