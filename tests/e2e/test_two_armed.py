"""Two-armed: clients on br0 reach the VIP on veth6; backends sit on a second bridge br1
behind the LB's eth1. Frames cross interfaces with XDP_REDIRECT through the devmap."""
from __future__ import annotations

import collections

import pytest
from lbproc import running_lb

pytestmark = pytest.mark.e2e


def add_backend_arm(lab) -> list[tuple[str, str, str]]:
    """br1 in the switch ns; LB eth1 10.0.1.10; each backend eth1 10.0.1.N. Returns
    (role, ip, mac) of the backends on the new arm."""
    sw, lbns = lab.switch_ns, lab.ns("lb")
    stub = lab.lb_peer_prog or str(__import__("xdplb._bpf", fromlist=["object_path"])
                                   .object_path("stub"))
    ip = lab._ip
    ip("link", "add", "br1", "type", "bridge", "forward_delay", "0", ns=sw)
    ip("link", "set", "br1", "up", ns=sw)
    ip("link", "add", "veth9", "type", "veth", "peer", "name", "eth1", "netns", lbns, ns=sw)
    ip("link", "set", "veth9", "master", "br1", "up", ns=sw)
    ip("link", "set", "dev", "veth9", "xdp", "obj", stub, "sec", "xdp", ns=sw)
    ip("addr", "add", "10.0.1.10/24", "dev", "eth1", ns=lbns)
    ip("link", "set", "eth1", "address", "de:ad:be:ef:01:10", "up", ns=lbns)
    arm = []
    for i, h in enumerate(lab.backend_hosts):
        n = int(h.ipv4.rsplit(".", 1)[1])
        mac = f"de:ad:be:ef:02:{n:02x}"
        ip("link", "add", f"vb{n}", "type", "veth", "peer", "name", "eth1", "netns",
           lab.ns(h.role), ns=sw)
        ip("link", "set", f"vb{n}", "master", "br1", "up", ns=sw)
        ip("addr", "add", f"10.0.1.{n}/24", "dev", "eth1", ns=lab.ns(h.role))
        ip("link", "set", "eth1", "address", mac, "up", ns=lab.ns(h.role))
        arm.append((h.role, f"10.0.1.{n}", mac))
    return arm


def test_two_armed_nat_redirects_between_interfaces(lab, tmp_path):
    arm = add_backend_arm(lab)
    for h in lab.backend_hosts:
        d = tmp_path / h.role
        d.mkdir()
        (d / "whoami").write_text(h.role)
        lab.start_http_servers(d, 8000, hosts=[h.role])
    argv = ["run", "veth6"] + [w for _, addr, mac in arm for w in (addr, mac)] + \
        ["--egress", "eth1"]
    with running_lb(lab, argv=argv):
        served = collections.Counter(
            lab.run("client", ["curl", "-s", "-m", "5", "http://10.0.0.10:8000/whoami"]).stdout
            or "FAIL" for _ in range(20))
        from xdplb.demo import xdplb_argv

        stats = lab.run("lb", xdplb_argv() + ["stats", "veth6", "--json"]).stdout
    assert served["h2"] + served["h3"] == 20 and len(served) == 2, served
    import json

    st = json.loads(stats)["stats"]
    assert st["tx_error"][0] == 0
    assert st["reply"][0] > 0
    assert {r: lab.tcp_csum_errors(r) for r in lab.hosts} == {r: 0 for r in lab.hosts}
