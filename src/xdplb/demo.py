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


def run_ecmp_demo(nodes: int = 3, conns: int = 300) -> int:
    """`xdplb demo --nodes N`: N nodes announce one VIP to a BGP router with ECMP; long-lived
    connections spread over them; one node is drained without breaking any."""
    import json

    from .lab import EcmpLab
    from .lab.ecmp import VIP4

    xdplb = xdplb_argv()
    seconds = 10.0
    print(f"== lab: client -> router (BIRD, ECMP) -> {nodes} xdplb nodes -> 2 backends")
    with EcmpLab(nodes=nodes, backends=2, ipv6=False) as lab:
        for role, h in lab.hosts.items():
            print(f"   {role:<7} {lab.ns(role):<18} {h.ifname:<5} {h.ipv4}")
        lab.start_echo_servers()
        for h in lab.node_hosts:
            lab.write_node_config(h.role)
            log = open(lab.run_dir / f"{h.role}.log", "ab")  # noqa: SIM115 - closed by down()
            p = lab.popen(h.role, xdplb + lab.serve_argv(h.role, "xdplb")[1:],
                          stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            p.xdplb_log = log  # type: ignore[attr-defined]
        n1 = lab.node_hosts[0].role
        print(f"== each node: xdplb serve -c {lab.node_config_path(n1)} (its [bgp] table "
              "starts BIRD as its child)")
        for line in lab.node_config(n1).splitlines()[:16]:
            print(f"   | {line}")
        hops = lab.wait_nexthops(nodes, timeout=30)
        print(f"== router: {VIP4} via {', '.join(hops)} (ECMP, one next hop per node)")
        for line in lab.birdc("show", "route", f"{VIP4}/32").splitlines()[1:]:
            print(f"   | {line}")

        def ctl(role: str, *cmd: str) -> subprocess.CompletedProcess:
            return lab.run(role, xdplb + lab.ctl_argv(role, "xdplb", *cmd)[1:], timeout=30)

        print(f"== client: {conns} long-lived connections to {VIP4}:80 for {seconds:g} s "
              "(one byte echoed on each every 0.1 s)")
        client = lab.popen("client", lab.flows_argv(VIP4, 80, conns, seconds),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(3)
        spread = {}
        for h in lab.node_hosts:
            st = json.loads(ctl(h.role, "status", "--json").stdout or "{}")
            spread[h.role] = st.get("stats", {}).get("fwd_new", {}).get("packets", 0)
        print("== new flows per node: " + ", ".join(f"{k} {v}" for k, v in spread.items()))
        print(f"== xdplb node drain on {n1}: withdraw its routes, keep forwarding")
        r = ctl(n1, "node", "drain")
        for line in (r.stdout + r.stderr).splitlines():
            print(f"   | {line}")
        hops = lab.wait_nexthops(nodes - 1, timeout=30)
        print(f"== router: {VIP4} via {', '.join(hops)}")
        for line in ctl(n1, "status").stdout.splitlines():
            if line.startswith(("BGP", "  peer")):
                print(f"   | {line}")
        out, _err = client.communicate(timeout=seconds + 60)
        res = json.loads(out) if out.strip() else {"opened": 0, "survived": 0}
        print(f"== connections: {res['survived']}/{res['opened']} survived the drain")
        ok = (res["opened"] == conns and res["survived"] == res["opened"]
              and all(spread.values()))
        print("== lab down")
    print(f"== {'OK' if ok else 'FAILED'}: {nodes} nodes announced the VIP, new flows on "
          f"{sum(1 for v in spread.values() if v)} of them, {res['survived']}/{res['opened']} "
          "connections kept through the drain")
    return 0 if ok else 1
