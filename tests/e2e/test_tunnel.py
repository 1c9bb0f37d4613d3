"""Tunnel mode end to end: backends in another subnet behind a router namespace (the lab's
routed topology, no kernel tunnel modules), `xdplb serve` with ipip and gue VIPs in both
families, `xdplb decap` on every backend. Replies go from the backends through the router
straight to the clients.

One lab and one daemon for all four (mode, family) pairs keep it short: downloads from two
clients byte for byte, a 4 MiB upload per pair that needs path MTU discovery (default MTUs:
the encapsulated 1500-byte segments do not fit, the LB answers with ICMP and the client's
stack resends smaller), then a backend drained and another failing its health check while
downloads run."""
from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest
from test_serve import cli_argv, run_dir, serving  # noqa: F401 - run_dir is a fixture

pytestmark = pytest.mark.e2e

UP = 4 * 1024 * 1024

# GET N: "<role>\n" then N bytes of random.Random(N); PUT N + N bytes: "<role> N sha256";
# WHO: "<role>". A second listener on port 9000 is the health check's target.
SERVER = r"""
import hashlib, random, socket, socketserver, sys, threading
role = sys.argv[1]
class H(socketserver.StreamRequestHandler):
    def handle(self):
        words = self.rfile.readline().split()
        if not words:
            return
        if words[0] == b"GET":
            n = int(words[1])
            self.wfile.write(role.encode() + b"\n")
            data = random.Random(n).randbytes(n)
            for i in range(0, n, 65536):
                self.wfile.write(data[i:i + 65536])
        elif words[0] == b"PUT":
            n, got, h = int(words[1]), 0, hashlib.sha256()
            while got < n:
                d = self.rfile.read(min(65536, n - got))
                if not d:
                    break
                h.update(d)
                got += len(d)
            self.wfile.write(f"{role} {got} {h.hexdigest()}\n".encode())
        elif words[0] == b"ECHO":  # a long-lived connection: every line back, named
            for line in self.rfile:
                self.wfile.write(role.encode() + b" " + line)
        else:
            self.wfile.write(role.encode() + b"\n")
class S(socketserver.ThreadingTCPServer):
    address_family, allow_reuse_address, daemon_threads = socket.AF_INET6, True, True
    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()
servers = [S(("::", int(p)), H) for p in sys.argv[2:]]
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
servers[0].serve_forever()
"""

# argv: host port op n [rate]; prints "<role> <bytes> <sha256>" (GET) or the server's line
CLIENT = r"""
import hashlib, random, socket, sys, time
host, port, op, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
rate = float(sys.argv[5]) if len(sys.argv) > 5 else 0
s = socket.create_connection((host, port), timeout=20)
if op == "PUT":
    s.sendall(f"PUT {n}\n".encode())
    s.sendall(random.Random(n).randbytes(n))
    print(s.makefile().readline().strip(), flush=True)
else:
    s.sendall(f"{op} {n}\n".encode())
    if rate:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
    f = s.makefile("rb")
    role = f.readline().strip().decode()
    h, got, t0 = hashlib.sha256(), 0, time.monotonic()
    while True:
        d = f.read1(16384)
        if not d:
            break
        h.update(d)
        got += len(d)
        if rate:
            time.sleep(max(0.0, t0 + got / rate - time.monotonic()))
    print(role, got, h.hexdigest(), flush=True)
"""


def digest(n: int) -> str:
    return hashlib.sha256(random.Random(n).randbytes(n)).hexdigest()


def client(lab, host: str, addr: str, port: int, op: str, n: int, rate: float = 0) -> str:
    r = lab.run(host, [sys.executable, "-c", CLIENT, addr, str(port), op, str(n), str(rate)],
                timeout=60)
    return r.stdout.strip() or f"FAILED {r.stderr.strip()[-200:]}"


def stats(lab) -> dict:
    r = lab.run("lb", [*cli_argv(), "stats", lab.lb.ifname, "--json"], timeout=30)
    return {k: v[0] for k, v in json.loads(r.stdout)["stats"].items()}


def write_config(path, lab, health_port: int = 9000):
    text = (f'[lb]\ninterface = "{lab.lb.ifname}"\nname = "{lab.name}"\n'
            "conntrack_size = 65536\nmax_vips = 16\nmax_backends = 64\n")
    for mode, port in (("gue", 8000), ("ipip", 8001)):
        for fam, vip in ((4, lab.vip), (6, lab.vip6)):
            text += (f'\n[[vip]]\nname = "{mode}{fam}"\naddress = "{vip}"\nport = {port}\n'
                     f'mode = "{mode}"\n')
            for h in lab.backend_hosts:
                text += f'[[vip.backend]]\naddress = "{h.ipv4 if fam == 4 else h.ipv6}"\n'
            text += (f'[vip.health]\nkind = "tcp"\nport = {health_port}\ninterval = 0.3\n'
                     "timeout = 0.25\nrise = 1\nfall = 2\n")
    path.write_text(text)
    return path


@pytest.mark.lab(topology="routed", backends=3, clients=2)
def test_ipip_and_gue_in_both_families_through_a_router(lab, tmp_path, run_dir):  # noqa: F811
    servers = {h.role: lab.popen(h.role, [sys.executable, "-c", SERVER, h.role, "8000", "8001"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
               for h in lab.backend_hosts}
    health = {h.role: lab.popen(h.role, [sys.executable, "-c", SERVER, h.role, "9000"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
              for h in lab.backend_hosts}
    for h in lab.backend_hosts:
        r = lab.run(h.role, [*cli_argv(), "decap", h.ifname])
        assert r.returncode == 0 and "attached" in r.stdout, r.stdout + r.stderr
    assert all(p.poll() is None for p in [*servers.values(), *health.values()])
    config = write_config(tmp_path / "lb.toml", lab)
    vips = {("gue", 4): (lab.vip, 8000), ("gue", 6): (lab.vip6, 8000),
            ("ipip", 4): (lab.vip, 8001), ("ipip", 6): (lab.vip6, 8001)}
    with serving(lab, config, run_dir) as lb:
        deadline = time.monotonic() + 10  # health checks up, router neighbour resolved
        while time.monotonic() < deadline:
            states = [b["state"] for v in lb.status()["vips"] for b in v["backends"]]
            if states == ["up"] * 12:
                break
            time.sleep(0.1)
        assert states == ["up"] * 12, states

        # downloads from two clients at once, byte for byte; several backends answer
        for (mode, fam), (addr, port) in vips.items():
            hosts = ["client", "c2"] * 4
            with ThreadPoolExecutor(len(hosts)) as ex:
                got = list(ex.map(partial(client, lab), hosts, [addr] * 8, [port] * 8,
                                  ["GET"] * 8, [300_001] * 8))
            assert all(g.split()[1:] == [str(300_001), digest(300_001)] for g in got), \
                (mode, fam, got)
            assert len({g.split()[0] for g in got}) >= 2, (mode, fam, got)

        # 4 MiB uploads: each needs path MTU discovery (the client forgets its PMTU first)
        for (mode, fam), (addr, port) in vips.items():
            lab.run("client", ["ip", f"-{fam}", "route", "flush", "cache"], check=True)
            before = stats(lab)
            res = client(lab, "client", addr, port, "PUT", UP)
            after = stats(lab)
            assert res.split()[1:] == [str(UP), digest(UP)], (mode, fam, res)
            assert after.get("pmtu_icmp", 0) > before.get("pmtu_icmp", 0), (mode, fam)
        st = stats(lab)
        assert st.get("tunnel_no_route", 0) == 0 and st.get("pmtu_drop", 0) == 0, st

        # while slow downloads run: h2 drained, h3 fails its health check
        addr, port = vips[("gue", 4)]
        ex = ThreadPoolExecutor(8)
        slow_jobs = [ex.submit(client, lab, "client", addr, port, "GET", 1_000_000, 600_000)
                     for _ in range(8)]
        time.sleep(0.5)
        lb.ctl("backend", "drain", lab.hosts["h2"].ipv4, "--vip", "gue4")
        health["h3"].terminate()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            b = {x["address"]: x for v in lb.status()["vips"] if v["name"] == "gue4"
                 for x in v["backends"]}
            if b[lab.hosts["h3"].ipv4]["state"] != "up":
                break
            time.sleep(0.1)
        assert b[lab.hosts["h3"].ipv4]["state"] != "up", b
        new = [client(lab, "c2", addr, port, "WHO", 0).split()[0] for _ in range(12)]
        assert set(new) == {"h4"}, new
        slow = [j.result() for j in slow_jobs]
        ex.shutdown()
        # flows of the drained backend and of the healthy one finish intact (a pulled
        # backend's flows are re-selected, as in DSR mode)
        kept = [s for s in slow if s.split()[0] in ("h2", "h4")]
        assert kept and all(s.split()[1:] == ["1000000", digest(1_000_000)] for s in kept), slow

    # the decapsulator saw both encapsulations; run again replaces it; remove detaches it
    h = lab.hosts["h4"]
    r = lab.run("h4", [*cli_argv(), "decap", h.ifname, "--status", "--json"])
    counters = json.loads(r.stdout)["counters"]
    assert counters["ipip"][0] > 0 and counters["gue"][0] > 0, counters
    r = lab.run("h4", [*cli_argv(), "decap", h.ifname, "--gue-port", "7000"])
    assert "replaced its decapsulator" in r.stdout, r.stdout + r.stderr
    r = lab.run("h4", [*cli_argv(), "decap", h.ifname, "--remove"])
    assert r.returncode == 0 and "removed" in r.stdout
    r = lab.run("h4", [*cli_argv(), "decap", h.ifname, "--status"])
    assert r.returncode == 3 and "no decapsulator" in r.stdout
    # another program is never replaced: the LB peer's XDP stub in the switch namespace
    r = lab.run("sw", [*cli_argv(), "decap", lab.lb_peer_ifname()])
    assert r.returncode == 1 and "replaces only its own" in r.stderr, r.stderr
