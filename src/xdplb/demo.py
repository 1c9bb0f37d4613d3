"""`xdplb demo`: the tutorial end to end, in namespaces, cleaned up afterwards.

lab up -> http.server on each backend -> `xdplb run veth6 <ip> <mac> ...` in the LB
namespace (the tutorial's command line) -> curl the VIP from the client -> which
backend answered, the LB's counters, checksum errors on every host -> Ctrl-C the LB
-> lab down.
"""
from __future__ import annotations

import collections
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .errors import XdplbError
from .lab import ContainerLab, Lab


def xdplb_argv() -> list[str]:
    """How to start this same xdplb in another namespace."""
    exe = Path(sys.executable).parent / "xdplb"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "xdplb.cli"]


def _wait_for_line(p: subprocess.Popen, needle: str, timeout: float) -> list[str]:
    assert p.stdout is not None and p.stderr is not None  # started with both piped
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            if p.poll() is not None:
                break
            continue
        lines.append(line.rstrip("\n"))
        if needle in line:
            return lines
    err = p.stderr.read() if p.poll() is not None else ""
    raise XdplbError(f"xdplb run did not start: {(err or ' '.join(lines)).strip()}")


def run_demo(requests: int = 20, backends: int = 2, containers: bool = False,
             image: str | None = None) -> int:
    """The demo; with ``containers`` every host is a container of the xdplb image (``image``,
    default xdplb:VERSION) in the same namespaces, and the LB is ``xdplb run`` in a container
    with CAP_NET_ADMIN and CAP_SYS_ADMIN."""
    lab: Lab
    if containers:
        lab = ContainerLab(backends=backends, image=image)
        print(f"== lab: the tutorial's topology in namespaces ({backends} backends), every host "
              f"a container of {lab.image}")
        prog = ["xdplb"]  # the image's
    else:
        lab = Lab(backends=backends)
        print(f"== lab: the tutorial's topology in namespaces ({backends} backends)")
        prog = xdplb_argv()
    with lab, tempfile.TemporaryDirectory() as tmp:
        for h in lab.backend_hosts:
            d = Path(tmp) / h.role
            d.mkdir()
            (d / "whoami").write_text(f"{h.role} {h.ipv4}\n")
            lab.start_http_servers(d, 8000, hosts=[h.role])
        for role, h in lab.hosts.items():
            print(f"   {role:<7} {lab.ns(role):<18} {h.ifname:<6} {h.ipv4:<10} {h.mac}")
        argv = prog + lab.run_argv()[1:]
        where = (f"podman run --cap-add NET_ADMIN,SYS_ADMIN --network ns:/run/netns/"
                 f"{lab.ns('lb')} {lab.image}"
                 if isinstance(lab, ContainerLab) else f"ip netns exec {lab.ns('lb')} xdplb")
        print(f"== LB: {where} {' '.join(lab.run_argv()[1:])}")
        lb = lab.popen("lb", argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in _wait_for_line(lb, "Press Ctrl+C", 30):
            print(f"   | {line}")
        print(f"== client: {requests} x curl 10.0.0.10:8000/whoami")
        served: collections.Counter[str] = collections.Counter()
        failed = 0
        for i in range(requests):
            r = lab.run("client", ["curl", "-s", "-m", "3", "http://10.0.0.10:8000/whoami"],
                        timeout=10)
            who = r.stdout.strip() if r.returncode == 0 else f"FAILED (curl exit {r.returncode})"
            failed += r.returncode != 0
            served[who.split()[0]] += 1
            print(f"   request {i + 1:>2}: {who}")
        print("== summary")
        for who, n in sorted(served.items()):
            print(f"   {who:<8} {n:>3} requests")
        stats = lab.run("lb", prog + ["stats", lab.lb.ifname], timeout=30)
        print("== LB counters (xdplb stats veth6)")
        for line in (stats.stdout or stats.stderr).splitlines():
            print(f"   {line}")
        errors = {role: lab.tcp_csum_errors(role) for role in lab.hosts}
        print("== checksum errors (TcpInCsumErrors+UdpInCsumErrors) per host: "
              + ", ".join(f"{r}={n}" for r, n in errors.items()))
        lb.send_signal(signal.SIGINT)
        try:
            out, err = lb.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            lb.kill()
            out, err = "", ""
        for line in (out + err).splitlines():  # its notes and exit summary are on stderr
            print(f"   | {line}")
        print(f"== LB exit status {lb.returncode}; lab down")
        ok = failed == 0 and lb.returncode == 0 and not any(errors.values())
    print(f"== {'OK' if ok else 'FAILED'}: {requests - failed}/{requests} requests answered, "
          f"{len([k for k in served if not k.startswith('FAILED')])} backends used")
    return 0 if ok else 1
