"""The scale-out lab: a BIRD router with ECMP in front of N xdplb nodes announcing the VIP
through their own BIRD (real BGP and BFD, real TCP through namespaces)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xdplb.lab import sigterm_as_interrupt
from xdplb.lab.ecmp import VIP4, VIP6, EcmpLab

pytestmark = pytest.mark.e2e

XDPLB = str(Path(sys.executable).with_name("xdplb"))


@pytest.fixture
def ecmp_factory():
    if os.geteuid() != 0:
        pytest.skip("e2e lab tests need root (network namespaces)")
    if shutil.which("bird") is None:
        pytest.skip("BIRD 2 not installed (scripts/install-deps.sh)")
    made: list[EcmpLab] = []

    def make(**kw) -> EcmpLab:
        lab = EcmpLab(f"xe{os.getpid()}_{len(made)}", **kw)
        made.append(lab)
        lab.up()
        return lab

    with sigterm_as_interrupt():
        try:
            yield make
        finally:
            for lab in reversed(made):
                lab.down()


def serve(lab: EcmpLab, role: str, **kw) -> subprocess.Popen:
    lab.write_node_config(role, **kw)
    log = open(lab.run_dir / f"{role}.log", "ab")  # noqa: SIM115 - closed with the lab
    p = lab.popen(role, lab.serve_argv(role, XDPLB), stdin=subprocess.DEVNULL, stdout=log,
                  stderr=subprocess.STDOUT)
    p.xdplb_log = log  # type: ignore[attr-defined]
    return p


def status(lab: EcmpLab, role: str) -> dict:
    p = lab.run(role, lab.ctl_argv(role, XDPLB, "status", "--json"), timeout=20)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def new_flows(lab: EcmpLab, role: str) -> int:
    return status(lab, role)["stats"].get("fwd_new", {}).get("packets", 0)


def flows(lab: EcmpLab, n: int, seconds: float) -> subprocess.Popen:
    return lab.popen("client", lab.flows_argv(VIP4, 80, n, seconds), stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)


def why(r: dict, lab: EcmpLab | None = None) -> str:
    """What a failed survival assertion should show in full (pytest elides long dicts):
    the counts, the errors and when the flows broke, and the tail of each node's log."""
    at = sorted(r.get("broken_at", []))
    out = (f"opened {r.get('opened')}, survived {r.get('survived')}, broken {r.get('broken')} "
           f"({r.get('errors')}) at {at[:3]}..{at[-3:]}, longest stall {r.get('stall_max')} s "
           f"at {r.get('stall_max_at')} s")
    if lab is not None:
        for f in sorted(lab.run_dir.glob("n*.log")):
            tail = f.read_text(errors="replace").splitlines()[-6:]
            out += f"\n{f.stem}: " + "\n    ".join(tail)
    return out


def result(p: subprocess.Popen, timeout: float = 60) -> dict:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err
    return json.loads(out)


def test_ecmp_lab_routes_clients_to_nodes_and_cleans_up(ecmp_factory):
    lab = ecmp_factory(nodes=2, backends=1)
    for host in ("n1", "n2", "b1"):
        addr = lab.hosts[host].ipv4
        assert lab.ping("client", addr, count=3, timeout=1).returncode == 0, addr
    assert "clear_hash" in lab.run("rtr", ["tc", "filter", "show", "dev", "cli1", "ingress"]).stdout
    protos = lab.birdc("show", "protocols")
    assert "n1_4" in protos and "n2_4" in protos
    assert lab.run("rtr", ["sysctl", "-n", "net.ipv4.fib_multipath_hash_policy"]).stdout.strip() \
        == "1"
    names = list(lab.namespaces)
    lab.down()
    assert not any(os.path.exists(f"/run/netns/{ns}") for ns in names)
    assert not lab.run_dir.exists()


def test_router_learns_the_vip_from_three_nodes_and_traffic_spreads(ecmp_factory):
    lab = ecmp_factory(nodes=3, backends=2)
    lab.start_echo_servers()
    for n in ("n1", "n2", "n3"):
        serve(lab, n)
    assert lab.wait_nexthops(3) == ["10.2.0.11", "10.2.0.12", "10.2.0.13"]
    assert len(lab.wait_nexthops(3, f"{VIP6}/128")) == 3
    st = status(lab, "n1")["bgp"]
    assert st["running"] and st["offered"] == [f"{VIP4}/32", f"{VIP6}/128"]
    assert {s["peer"]: s["announced"] for s in st["sessions"]} == {
        "10.2.0.254": [f"{VIP4}/32"], "fd02::fe": [f"{VIP6}/128"]}
    r = result(flows(lab, 120, 2.0))
    assert r["opened"] == 120 and r["survived"] == 120, why(r, lab)
    spread = [new_flows(lab, n) for n in ("n1", "n2", "n3")]
    assert all(s > 0 for s in spread), spread  # the router's hash follows the 5-tuple


def test_vip_withdrawn_without_healthy_backend_and_announced_again(ecmp_factory):
    lab = ecmp_factory(nodes=1, backends=1, ipv6=False)
    servers = lab.start_echo_servers()
    serve(lab, "n1")
    lab.wait_nexthops(1)
    servers[0].terminate()
    servers[0].wait(5)
    t0 = time.monotonic()
    lab.wait_nexthops(0, timeout=10)  # fall 2 x 0.5 s, then withdrawn
    assert status(lab, "n1")["bgp"]["offered"] == []
    lab.start_echo_servers()
    lab.wait_nexthops(1, timeout=10)
    assert time.monotonic() - t0 < 15


def test_node_drain_and_add_keep_long_lived_connections(ecmp_factory):
    lab = ecmp_factory(nodes=3, backends=2, ipv6=False)
    lab.start_echo_servers()
    serve(lab, "n1")
    serve(lab, "n2")
    lab.wait_nexthops(2)
    t0 = time.monotonic()
    client = flows(lab, 300, 20.0)  # long enough for a slow serve start on a loaded machine
    time.sleep(2.5)
    p = lab.run("n1", lab.ctl_argv("n1", XDPLB, "node", "drain"), timeout=20)
    assert p.returncode == 0 and "withdraw 10.9.0.1/32" in p.stdout, p.stdout + p.stderr
    assert lab.wait_nexthops(1) == ["10.2.0.12"]
    assert status(lab, "n1")["bgp"]["drained"]
    time.sleep(1.5)
    serve(lab, "n3")  # a node added while the connections run
    assert lab.wait_nexthops(2) == ["10.2.0.12", "10.2.0.13"]
    assert time.monotonic() - t0 < 18, "the add must happen while the connections run"
    r = result(client)
    assert r["opened"] == 300, r
    assert r["survived"] >= 0.999 * r["opened"], why(r, lab)
    p = lab.run("n1", lab.ctl_argv("n1", XDPLB, "node", "resume"), timeout=20)
    assert p.returncode == 0, p.stderr
    lab.wait_nexthops(3)


def test_node_crash_with_bfd_is_detected_fast_and_flows_move(ecmp_factory):
    lab = ecmp_factory(nodes=2, backends=2, ipv6=False, bfd=True)
    lab.start_echo_servers()
    serve(lab, "n1")
    serve(lab, "n2")
    lab.wait_nexthops(2)
    time.sleep(1.0)  # BFD sessions up
    client = flows(lab, 200, 6.0)
    time.sleep(2.0)
    # n1 silently stops answering: its switch port goes away (no Cease, no withdrawal)
    t0 = time.monotonic()
    lab.fail_node("n1")
    lab.wait_nexthops(1, timeout=5)
    detected = time.monotonic() - t0
    assert detected < 1.5, f"router dropped the failed node after {detected:.2f} s"
    r = result(client)
    assert r["opened"] == 200, r
    assert r["survived"] >= 0.999 * r["opened"], why(r, lab)  # DSR: same Maglev table on n2


def test_a_killed_serve_leaves_nothing_announced(ecmp_factory):
    lab = ecmp_factory(nodes=1, backends=1, ipv6=False, bfd=False)
    lab.start_echo_servers()
    p = serve(lab, "n1")
    lab.wait_nexthops(1)
    p.kill()
    t0 = time.monotonic()
    lab.wait_nexthops(0, timeout=5)
    assert time.monotonic() - t0 < 2.0
    deadline = time.monotonic() + 5  # BIRD closes its sessions, then exits
    while lab.ns_pids(lab.hosts["n1"].ns) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not lab.ns_pids(lab.hosts["n1"].ns), "BIRD outlived serve"


def test_synced_flows_survive_a_backend_change_then_a_drain(ecmp_factory):
    """Without sync, the flows that the drain moves and whose Maglev slot the new backend took
    would break (the bench measures it); with sync, the other nodes have their entries."""
    lab = ecmp_factory(nodes=3, backends=3, ipv6=False)
    lab.start_echo_servers()
    for n in ("n1", "n2", "n3"):
        serve(lab, n, backends=["b1", "b2"], sync=True, min_age=0.5)
    lab.wait_nexthops(3)
    t0 = time.monotonic()
    client = flows(lab, 200, 16.0)
    time.sleep(1.5)
    adds = [lab.popen(n, lab.ctl_argv(n, XDPLB, "backend", "add", "10.2.0.103", "--vip",
                                      "web4"), stdout=subprocess.DEVNULL)
            for n in ("n1", "n2", "n3")]  # a third backend: some flows' Maglev slot moves
    assert [p.wait(30) for p in adds] == [0, 0, 0]
    time.sleep(2.5)  # older than min_age, synced (every 0.5 s)
    p = lab.run("n1", lab.ctl_argv("n1", XDPLB, "node", "drain"), timeout=20)
    assert p.returncode == 0, p.stderr
    lab.wait_nexthops(2)
    assert time.monotonic() - t0 < 14, "the drain must happen while the connections run"
    r = result(client)
    assert r["opened"] == 200, r
    assert r["survived"] >= 0.999 * r["opened"], why(r, lab)
    sync = status(lab, "n2")["sync"]
    assert sync["sent_entries"] > 0 and sync["written"] > 0, sync


def test_synced_nat_flows_survive_a_drain_and_an_add(ecmp_factory):
    """NAT, each node its own SNAT address: a moved flow leaves its new node with the SNAT
    address and port of the node that has it (replies keep going there)."""
    lab = ecmp_factory(nodes=3, backends=2, ipv6=False)
    lab.start_echo_servers()
    for n in ("n1", "n2"):
        serve(lab, n, mode="nat", sync=True, min_age=0.5)
    lab.wait_nexthops(2, timeout=20)  # announced once sync has run a resend
    t0 = time.monotonic()
    client = flows(lab, 200, 22.0)
    time.sleep(2.5)
    p = lab.run("n1", lab.ctl_argv("n1", XDPLB, "node", "drain"), timeout=20)
    assert p.returncode == 0, p.stderr
    lab.wait_nexthops(1)
    time.sleep(1.0)
    serve(lab, "n3", mode="nat", sync=True, min_age=0.5)
    lab.wait_nexthops(2, timeout=20)
    assert time.monotonic() - t0 < 20, "the add must happen while the connections run"
    r = result(client)
    assert r["opened"] == 200, r
    assert r["survived"] >= 0.999 * r["opened"], why(r, lab)
