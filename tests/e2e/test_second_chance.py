"""Second chance (GUE, GitHub GLB's idea) end to end: a backend is added to a GUE VIP while
long-lived connections run through it, and the LB's flow table is then cleared (as on an LB
node that never saw those flows): packets of the connections whose Maglev slot moved reach
the new backend with the old backend as a hint, and its decapsulator sends them on there.
No connection is lost. Without the hint the new backend's stack would answer with resets."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest
from test_serve import cli_argv, run_dir, serving  # noqa: F401 - run_dir is a fixture
from test_tunnel import SERVER, stats

pytestmark = pytest.mark.e2e

# argv: host port connections seconds; each connection says ECHO, then a line every 0.2 s;
# prints "ok N lost L switched S" (switched: answered by more than one backend)
ECHO_CLIENT = r"""
import socket, sys, time
host, port, n, dur = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
socks = []
for i in range(n):
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(b"ECHO\n")
    socks.append(s)
print("connected", flush=True)
roles = [set() for _ in socks]
lost, k, end = set(), 0, time.monotonic() + dur
while time.monotonic() < end:
    for i, s in enumerate(socks):
        if i in lost:
            continue
        try:
            s.sendall(f"ping {k}\n".encode())
            data = b""
            while not data.endswith(b"\n"):
                d = s.recv(4096)
                if not d:
                    raise OSError("closed by the peer")
                data += d
            who, _, rest = data.decode().partition(" ")
            if rest != f"ping {k}\n":
                raise OSError(f"bad echo {data!r}")
            roles[i].add(who)
        except OSError:
            lost.add(i)
    k += 1
    time.sleep(0.2)
print("ok", n - len(lost), "lost", len(lost), "switched", sum(len(r) > 1 for r in roles),
      "rounds", k, flush=True)
"""

CLEAR_FLOWS = r"""
import sys
from xdplb._bpf.loader import interface_index, open_attached
dp = open_attached(interface_index(sys.argv[1]))
dp.clear_flows()
print("cleared", flush=True)
"""


@pytest.mark.lab(topology="routed", backends=3, clients=2)
def test_a_backend_added_and_flow_tables_cleared_lose_no_connection(lab, tmp_path,
                                                                     run_dir):  # noqa: F811
    for h in lab.backend_hosts:
        lab.popen(h.role, [sys.executable, "-c", SERVER, h.role, "8002"],
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r = lab.run(h.role, [*cli_argv(), "decap", h.ifname])
        assert r.returncode == 0, r.stderr
    h2, h3, h4 = (lab.hosts[r] for r in ("h2", "h3", "h4"))
    config = tmp_path / "lb.toml"
    config.write_text(f'[lb]\ninterface = "{lab.lb.ifname}"\nname = "{lab.name}"\n'
                      "conntrack_size = 65536\nmax_vips = 16\nmax_backends = 64\n\n"
                      f'[[vip]]\nname = "sc"\naddress = "{lab.vip}"\nport = 8002\n'
                      'mode = "gue"\n'
                      f'[[vip.backend]]\naddress = "{h2.ipv4}"\n'
                      f'[[vip.backend]]\naddress = "{h3.ipv4}"\n')
    n = 100  # per client
    with serving(lab, config, run_dir) as lb:
        for _ in range(100):  # the router's neighbour entry on the LB, the servers up
            r = lab.run("client", [sys.executable, "-c", ECHO_CLIENT, lab.vip, "8002", "1",
                                   "0.1"])
            if "ok 1 lost 0" in r.stdout:
                break
            time.sleep(0.1)
        clients = [lab.popen(c, [sys.executable, "-c", ECHO_CLIENT, lab.vip, "8002", str(n),
                                 "4"], stdout=subprocess.PIPE, text=True)
                   for c in ("client", "c2")]
        for c in clients:
            assert c.stdout.readline().strip() == "connected"
        time.sleep(0.5)
        lb.ctl("backend", "add", h4.ipv4, "--vip", "sc")
        r = lab.run("lb", [sys.executable, "-c", CLEAR_FLOWS, lab.lb.ifname])
        assert r.stdout.strip() == "cleared", r.stderr
        outs = [c.communicate(timeout=30)[0].split() for c in clients]
        st = stats(lab)
    for out in outs:
        assert out[:6] == ["ok", str(n), "lost", "0", "switched", "0"], outs
    assert st.get("gue_hint", 0) > 0, st
    moved = lab.run("h4", [*cli_argv(), "decap", h4.ifname, "--status", "--json"])
    import json
    assert json.loads(moved.stdout)["counters"]["second_chance"][0] > 0, moved.stdout
