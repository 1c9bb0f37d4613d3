"""The scale-out lab: a BIRD router with ECMP in front of N xdplb nodes (real BGP, real traffic)."""
from __future__ import annotations

import os
import shutil

import pytest

from xdplb.lab import sigterm_as_interrupt
from xdplb.lab.ecmp import EcmpLab

pytestmark = pytest.mark.e2e


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
