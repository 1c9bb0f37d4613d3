"""Live benchmark: real traffic in the lab (the tutorial's topology in namespaces).

HTTP with wrk from the client namespace, three ways:
  direct  to one backend (10.0.0.2:8000), no LB on the path;
  xdplb   to the VIP 10.0.0.10:8000 with `xdplb run veth6 <h2> <h3>` in the LB namespace;
  nft     to the VIP with nftables DNAT+SNAT in the LB namespace (an nft table and
          ip_forward there only, removed afterwards);
each with keep-alive and with a new connection per request (`Connection: close`). Backends
run nginx (a config in a temporary directory) or, without nginx, bench/tiny_http.py. Then,
unless --no-iperf, TCP throughput with iperf3 the same three ways (one backend: iperf3's
control and data connections must reach the same server).

Everything runs inside namespaces the Lab creates and removes (also on error, Ctrl-C and
SIGTERM); nothing touches the root namespace. Durations are bounded (--duration, --rounds).
Writes bench/results/live.json.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PORT = 8000
IPERF_PORT = 5201  # nginx holds 8000 on the backends
WRK_THREADS = 2  # in all, whatever the number of wrk processes
BODY = b"x" * 100 + b"\n"  # a small object: the benchmark is about requests, not bytes
PATHS = ("direct", "xdplb", "nft")
MODES = ("keepalive", "close")
NFT_TABLE = "xdplb_bench"


def log(msg: str) -> None:
    print(msg, flush=True)


# --- backends ---------------------------------------------------------------------------


NGINX_CONF = """\
worker_processes 1;
daemon off;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    server {{
        listen {port} backlog=4096;
        listen [::]:{port} backlog=4096;
        location / {{ root {d}/www; index index.html; }}
    }}
}}
"""


def start_backends(lab, tmp: Path, roles: list[str]) -> str:
    """nginx (or tiny_http.py) on PORT in each backend; returns which server runs."""
    nginx = shutil.which("nginx")
    for role in roles:
        d = tmp / role
        (d / "www").mkdir(parents=True)
        (d / "www" / "index.html").write_bytes(BODY)
        if nginx:
            conf = d / "nginx.conf"
            conf.write_text(NGINX_CONF.format(d=d, port=PORT))
            argv = [nginx, "-c", str(conf), "-p", str(d), "-e", str(d / "error.log")]
        else:
            argv = [sys.executable, str(HERE / "tiny_http.py"), str(PORT),
                    str(d / "www" / "index.html")]
        lab.popen(role, argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                  stderr=open(d / "stderr.log", "wb"))  # noqa: SIM115 (closed with the lab)
    for role in roles:
        ip = lab.hosts[role].ipv4
        if not wait_http(lab, f"http://{ip}:{PORT}/", timeout=10):
            err = (tmp / role / "stderr.log").read_text(errors="replace").strip()
            raise RuntimeError(f"HTTP server on {role} did not answer: {err[-300:]}")
    return "nginx" if nginx else "tiny_http.py (asyncio)"


def http_get(lab, url: str, timeout: float = 2.0) -> bytes | None:
    """One GET from the client namespace (curl); the body, or None."""
    p = lab.run("client", ["curl", "-s", "-m", str(timeout), url], text=False,
                timeout=timeout + 10)
    return p.stdout if p.returncode == 0 else None


def wait_http(lab, url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_get(lab, url, 1.0) == BODY:
            return True
        time.sleep(0.2)
    return False


# --- the paths --------------------------------------------------------------------------


@contextlib.contextmanager
def via_direct(lab, backends: list[str], port: int, xdplb_args=()) -> Iterator[dict]:
    """No LB: the client talks to the backends themselves (HTTP: to all of them at once)."""
    hosts = [lab.hosts[r].ipv4 for r in backends]
    yield {"url_host": hosts[0], "hosts": hosts}


@contextlib.contextmanager
def via_xdplb(lab, backends: list[str], port: int, xdplb_args=()) -> Iterator[dict]:
    """`xdplb run veth6 IP MAC ...` in the LB namespace, stopped with SIGINT afterwards;
    its counters (`xdplb stats --json`) are read just before."""
    from xdplb.demo import xdplb_argv

    argv = xdplb_argv() + ["run"] + (["--port", str(port)] if port != PORT else [])
    argv += [*xdplb_args, lab.lb.ifname]
    for role in backends:
        argv += [lab.hosts[role].ipv4, lab.hosts[role].mac]
    p = lab.popen("lb", argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE, text=True)
    info: dict = {"url_host": lab.vip, "argv": ["xdplb", *argv[len(xdplb_argv()):]]}
    try:
        deadline = time.monotonic() + 30
        while True:
            line = p.stdout.readline()
            if not line and p.poll() is not None:
                raise RuntimeError(f"xdplb run exited {p.returncode}: {p.stderr.read().strip()}")
            if "Press Ctrl+C" in line:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("xdplb run did not start within 30 s")
        yield info
    finally:
        if p.poll() is None:
            st = lab.run("lb", xdplb_argv() + ["stats", "--json", lab.lb.ifname], timeout=30)
            with contextlib.suppress(json.JSONDecodeError):
                info["stats"] = json.loads(st.stdout)
            p.send_signal(signal.SIGINT)
            try:
                _, err = p.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                _, err = p.communicate()
            info["summary"] = next((ln for ln in (err or "").splitlines() if "detached" in ln), "")


def _nft_rules(lab, backends: list[str], port: int) -> str:
    ips = [lab.hosts[r].ipv4 for r in backends]
    if len(ips) == 1:
        dnat = f"dnat to {ips[0]}"
    else:
        dnat = ("dnat to numgen inc mod {} map {{ {} }}"
                .format(len(ips), ", ".join(f"{i} : {ip}" for i, ip in enumerate(ips))))
    return f"""
table ip {NFT_TABLE} {{
    chain pre {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {lab.vip} tcp dport {port} {dnat}
    }}
    chain post {{
        type nat hook postrouting priority srcnat; policy accept;
        ct status dnat ip daddr {{ {", ".join(ips)} }} tcp dport {port} snat to {lab.vip}
    }}
}}
"""


def _sysctl(lab, key: str, value: str) -> None:
    lab.run("lb", ["sysctl", "-q", "-w", f"{key}={value}"], check=True)


@contextlib.contextmanager
def via_nft(lab, backends: list[str], port: int, xdplb_args=()) -> Iterator[dict]:
    """nftables DNAT+SNAT in the LB namespace (and ip_forward there), removed afterwards."""
    rules = _nft_rules(lab, backends, port)
    dev = lab.lb.ifname
    try:
        _sysctl(lab, "net.ipv4.ip_forward", "1")
        # one-armed: forwarded packets leave where they came in; no ICMP redirects
        _sysctl(lab, "net.ipv4.conf.all.send_redirects", "0")
        _sysctl(lab, f"net.ipv4.conf.{dev}.send_redirects", "0")
        p = lab.run("lb", ["nft", "-f", "-"], input=rules)
        if p.returncode != 0:
            raise RuntimeError(f"nft -f failed: {p.stderr.strip()}")
        yield {"url_host": lab.vip, "rules": rules.strip()}
    finally:
        lab.run("lb", ["nft", "delete", "table", "ip", NFT_TABLE])
        lab.run("lb", ["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"])


VIA = {"direct": via_direct, "xdplb": via_xdplb, "nft": via_nft}


# --- load generators ----------------------------------------------------------------------


def _wrk_argv(host: str, mode: str, duration: float, conns: int, threads: int) -> list[str]:
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration:g}s", "--timeout", "2s",
            "-s", str(HERE / "wrk_json.lua")]
    if mode == "close":
        argv += ["-H", "Connection: close"]
    return [*argv, f"http://{host}:{PORT}/"]


def run_wrk(lab, hosts: list[str], mode: str, duration: float, conns: int) -> dict:
    """WRK_THREADS threads and `conns` connections in all, split over `hosts` (one wrk
    process per host, run at the same time); requests/s summed."""
    n = len(hosts)
    procs = [lab.popen("client", _wrk_argv(h, mode, duration, max(1, conns // n),
                                             max(1, WRK_THREADS // n)),
                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True) for h in hosts]
    runs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=duration + 60)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        line = next((ln for ln in reversed(out.splitlines()) if ln.startswith("{")), None)
        if p.returncode != 0 or line is None:
            return {"error": (err or out).strip()[-300:] or f"exit {p.returncode}"}
        runs.append(json.loads(line))
    r = {"requests": sum(x["requests"] for x in runs),
         "rps": sum(x["requests"] / (x["duration_us"] / 1e6) for x in runs if x["duration_us"]),
         "errors": {k: sum(x["errors"][k] for x in runs) for k in runs[0]["errors"]},
         "latency_us": {"mean": statistics.fmean(x["latency_us"]["mean"] for x in runs),
                        "p99": max(x["latency_us"]["p99"] for x in runs)},
         "processes": len(runs)}
    return r


def run_iperf(lab, host: str, duration: float) -> dict:
    p = lab.run("client", ["iperf3", "-c", host, "-p", str(IPERF_PORT), "-t", f"{duration:g}",
                           "-J"],
                timeout=duration + 60)
    try:
        j = json.loads(p.stdout)
    except json.JSONDecodeError:
        return {"error": (p.stderr or p.stdout).strip()[-300:] or f"exit {p.returncode}"}
    if "error" in j:
        return {"error": j["error"]}
    end = j["end"]
    return {"gbps": end["sum_received"]["bits_per_second"] / 1e9,
            "retransmits": end["sum_sent"].get("retransmits", 0)}


# --- main ---------------------------------------------------------------------------------


def machine() -> dict:
    cpu = ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        cpu = m.group(1) if m else ""
    return {"kernel": platform.release(), "nproc": os.cpu_count(), "cpu": cpu,
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}


def _tool_version(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (p.stdout + p.stderr).strip().splitlines()[0] if (p.stdout + p.stderr).strip() else ""


def http_bench(lab, args, out: dict) -> None:
    backends = [h.role for h in lab.backend_hosts]
    http = out["http"]
    for rnd in range(args.rounds):
        order = args.paths[rnd % len(args.paths):] + args.paths[:rnd % len(args.paths)]
        for path in order:
            try:
                with VIA[path](lab, backends, PORT, args.xdplb_arg) as info:
                    url = f"http://{info['url_host']}:{PORT}/"
                    if not wait_http(lab, url, 5):
                        raise RuntimeError(f"no answer from {url} before measuring")
                    for mode in MODES:
                        r = run_wrk(lab, info.get("hosts", [info["url_host"]]), mode,
                                    args.duration, args.conns)
                        http.setdefault(path, {}).setdefault(mode, []).append(r)
                        log(f"  http {path:<6} {mode:<9} round {rnd + 1}: "
                            + (f"{r['rps']:9.0f} req/s" if "rps" in r else r["error"]))
                out["setup"].setdefault(path, {k: v for k, v in info.items()
                                               if k not in ("summary", "stats")})
                if path == "xdplb":
                    out["xdplb_runs"].append({"test": "http", "round": rnd + 1,
                                              "summary": info.get("summary", ""),
                                              "stats": info.get("stats")})
            except RuntimeError as e:
                log(f"  http {path}: {e}")
                http.setdefault(path, {}).setdefault("error", []).append(str(e))


def iperf_bench(lab, args, out: dict) -> None:
    role = lab.backend_hosts[0].role
    srv = lab.popen(role, ["iperf3", "-s", "-p", str(IPERF_PORT)], stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        for rnd in range(args.rounds):
            order = args.paths[rnd % len(args.paths):] + args.paths[:rnd % len(args.paths)]
            for path in order:
                try:
                    with VIA[path](lab, [role], IPERF_PORT, args.xdplb_arg) as info:
                        r = run_iperf(lab, info["url_host"], args.iperf_duration)
                    if path == "xdplb":
                        out["xdplb_runs"].append({"test": "iperf", "round": rnd + 1,
                                                  "summary": info.get("summary", ""),
                                                  "stats": info.get("stats")})
                except RuntimeError as e:
                    r = {"error": str(e)}
                out["iperf"].setdefault(path, []).append(r)
                log(f"  iperf {path:<6} round {rnd + 1}: "
                    + (f"{r['gbps']:.2f} Gbit/s" if "gbps" in r else r["error"]))
    finally:
        srv.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            srv.wait(5)


def summarize(out: dict) -> None:
    """Medians over rounds, and ratios vs direct and vs nftables."""
    s: dict = {"http": {}, "iperf": {}}
    for path, modes in out["http"].items():
        for mode, runs in modes.items():
            if mode == "error":
                continue
            ok = [r["rps"] for r in runs if "rps" in r]
            if ok:
                s["http"].setdefault(path, {})[mode] = statistics.median(ok)
    for path, runs in out["iperf"].items():
        ok = [r["gbps"] for r in runs if "gbps" in r]
        if ok:
            s["iperf"][path] = statistics.median(ok)
    out["summary"] = s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=32, help="wrk connections")
    ap.add_argument("--iperf-duration", type=float, default=4.0)
    ap.add_argument("--no-iperf", action="store_true")
    ap.add_argument("--xdplb-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for `xdplb run` (repeatable), e.g. "
                         "--xdplb-arg=--nat-ports=10000-65535")
    ap.add_argument("--paths", default=",".join(PATHS),
                    help=f"comma-separated subset of {','.join(PATHS)}")
    ap.add_argument("--out", type=Path, default=RESULTS / "live.json")
    args = ap.parse_args(argv)
    args.paths = tuple(p for p in args.paths.split(",") if p)
    if not set(args.paths) <= set(PATHS) or not args.paths:
        ap.error(f"--paths: choose from {', '.join(PATHS)}")
    if not 1 <= args.duration <= 30 or not 1 <= args.rounds <= 5:
        ap.error("--duration must be 1-30 s and --rounds 1-5 (the lab is shared)")
    if os.geteuid() != 0:
        log("bench: the live benchmark needs root (network namespaces)")
        return 1
    missing = [t for t in ("wrk", "curl", "nft", "ip") + (() if args.no_iperf else ("iperf3",))
               if not shutil.which(t)]
    if missing:
        log(f"bench: live benchmark skipped: missing {', '.join(missing)} "
            "(scripts/install-deps.sh)")
        return 1

    from xdplb.lab import Lab, sigterm_as_interrupt

    t0 = time.monotonic()
    out: dict = {"machine": machine(), "http": {}, "iperf": {}, "setup": {},
                 "xdplb_runs": [],
                 "method": {"duration_s": args.duration, "rounds": args.rounds,
                            "conns": args.conns, "wrk_threads": WRK_THREADS,
                            "iperf_duration_s": None if args.no_iperf else args.iperf_duration,
                            "body_bytes": len(BODY), "offloads": "default",
                            "xdplb_args": args.xdplb_arg,
                            "cpus": sorted(os.sched_getaffinity(0))},
                 "tools": {"wrk": _tool_version(["wrk", "-v"]),
                           "nginx": _tool_version(["nginx", "-v"]) if shutil.which("nginx")
                           else None,
                           "nft": _tool_version(["nft", "--version"]),
                           "iperf3": _tool_version(["iperf3", "--version"])}}
    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="xdplb-bench-") as tmp:
        lab = Lab(name=f"xb{os.getpid()}")
        try:
            lab.up()
            roles = [h.role for h in lab.backend_hosts]
            out["method"]["server"] = start_backends(lab, Path(tmp), roles)
            log(f"live: lab {lab.name} up, {out['method']['server']} on {', '.join(roles)}; "
                f"wrk -t{WRK_THREADS} -c{args.conns} {args.duration:g} s x {args.rounds} rounds")
            http_bench(lab, args, out)
            if not args.no_iperf:
                iperf_bench(lab, args, out)
        finally:
            lab.down()
    out["method"]["seconds"] = round(time.monotonic() - t0, 1)
    summarize(out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    log(f"live: wrote {args.out} ({out['method']['seconds']} s)")
    for path, modes in out["summary"]["http"].items():
        log(f"  {path:<6} " + "  ".join(f"{m} {v:8.0f} req/s" for m, v in modes.items()))
    for path, v in out["summary"]["iperf"].items():
        log(f"  {path:<6} iperf3 {v:.2f} Gbit/s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench: interrupted (everything created was removed)", file=sys.stderr)
        sys.exit(130)
