"""Beyond the tutorial's single case: IPv6, UDP, DSR, more backends and clients."""
from __future__ import annotations

import collections
import sys
from pathlib import Path

import pytest
from lbproc import running_lb

pytestmark = pytest.mark.e2e

UDP_ECHO = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", int(sys.argv[2])))
name = sys.argv[1].encode()
while True:
    data, peer = s.recvfrom(65535)
    s.sendto(name + b" " + data, peer)
"""

UDP_CLIENT = r"""
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
for i in range(n):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(2)
    payload = b"x" * (i % 7 + 1) * 101  # odd and even lengths
    s.sendto(payload, (host, port))
    try:
        data, _ = s.recvfrom(65535)
        who, _, echo = data.partition(b" ")
        print(who.decode() if echo == payload else "CORRUPT")
    except socket.timeout:
        print("TIMEOUT")
    s.close()
"""


def serve_http(lab, tmp_path: Path):
    for h in lab.backend_hosts:
        d = tmp_path / h.role
        d.mkdir()
        (d / "whoami").write_text(h.role)
        lab.start_http_servers(d, 8000, hosts=[h.role])


def backends_argv(lab, family: int = 4) -> list[str]:
    argv = []
    for h in lab.backend_hosts:
        argv += [h.ipv4 if family == 4 else h.ipv6, h.mac]
    return argv


def csum_errors(lab) -> dict:
    return {r: lab.tcp_csum_errors(r) for r in lab.hosts}


def test_ipv6_vip_is_balanced_with_nat(lab, tmp_path):
    serve_http(lab, tmp_path)
    argv = ["run", "veth6", *backends_argv(lab, 6), "--vip", lab.lb.ipv6]
    with running_lb(lab, argv=argv):
        got = [lab.run("client", ["curl", "-s", "-m", "5", "-g",
                                  f"http://[{lab.lb.ipv6}]:8000/whoami"]).stdout
               for _ in range(20)]
    assert all(g in ("h2", "h3") for g in got), got
    assert set(got) == {"h2", "h3"}
    assert not any(csum_errors(lab).values()), csum_errors(lab)


@pytest.mark.parametrize("family", [4, 6])
def test_udp_vip_with_nat_answers_every_datagram(lab, family):
    for h in lab.backend_hosts:
        lab.popen(h.role, [sys.executable, "-c", UDP_ECHO, h.role, "5300"])
    vip = lab.lb.ipv4 if family == 4 else lab.lb.ipv6
    argv = ["run", "veth6", *backends_argv(lab, family), "--vip", vip, "--proto", "udp",
            "--port", "5300"]
    with running_lb(lab, argv=argv):
        r = lab.run("client", [sys.executable, "-c", UDP_CLIENT, vip, "5300", "30"], timeout=90)
    answers = r.stdout.split()
    assert len(answers) == 30 and all(a in ("h2", "h3") for a in answers), answers
    assert set(answers) == {"h2", "h3"}
    assert not any(csum_errors(lab).values()), csum_errors(lab)


def _dsr_backends(lab, vip4: str, vip6: str) -> None:
    """Backends hold the VIP on loopback and do not answer ARP/ND for it."""
    for h in lab.backend_hosts:
        for cmd in (["sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1"],
                    ["sysctl", "-qw", "net.ipv4.conf.all.arp_announce=2"],
                    ["ip", "addr", "add", f"{vip4}/32", "dev", "lo"],
                    ["ip", "addr", "add", f"{vip6}/128", "dev", "lo", "nodad"]):
            lab.run(h.role, cmd, check=True)


@pytest.mark.lab(backends=4, clients=3)
def test_dsr_backends_answer_clients_directly(lab, tmp_path):
    _dsr_backends(lab, lab.lb.ipv4, lab.lb.ipv6)
    serve_http(lab, tmp_path)
    with running_lb(lab, "--mode", "dsr"):
        served = collections.Counter()
        for c in lab.client_hosts:
            for _ in range(12):
                r = lab.run(c.role, ["curl", "-s", "-m", "5", "http://10.0.0.10:8000/whoami"])
                served[r.stdout or f"FAIL{r.returncode}"] += 1
        stats = lab.run("lb", [*__import__("xdplb.demo").demo.xdplb_argv(), "stats", "veth6",
                               "--json"]).stdout
    assert sum(served.values()) == 36 and set(served) <= {"h2", "h3", "h4", "h5"}, served
    assert len(served) >= 3, served
    import json

    report = json.loads(stats)
    assert report["vips"][0]["mode"] == "dsr"
    st = report["stats"]
    assert st["reply"][0] == 0, "DSR replies must not pass through the LB"
    assert not any(csum_errors(lab).values()), csum_errors(lab)


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.lab(backends=4, clients=3)
def test_four_backends_three_clients_nat(lab, tmp_path, family):
    serve_http(lab, tmp_path)
    argv = None
    url = "http://10.0.0.10:8000/whoami"
    if family == 6:
        argv = ["run", "veth6", *backends_argv(lab, 6), "--vip", lab.lb.ipv6]
        url = f"http://[{lab.lb.ipv6}]:8000/whoami"
    with running_lb(lab, argv=argv):
        served = collections.Counter()
        for c in lab.client_hosts:
            for _ in range(16):
                r = lab.run(c.role, ["curl", "-s", "-m", "5", "-g", url])
                served[r.stdout or f"FAIL{r.returncode}"] += 1
    assert sum(served[h.role] for h in lab.backend_hosts) == 48, served
    assert len(served) == 4, served
    assert not any(csum_errors(lab).values()), csum_errors(lab)
