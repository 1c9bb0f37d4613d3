"""The direct-mapped VIP cache (vip_slots) and its hash-map fallback for collisions."""
from __future__ import annotations

import ipaddress

import pytest
from scapy.all import IP, TCP, Ether, raw

from xdplb._bpf import abi
from xdplb._bpf.libbpf import XDP_PASS, XDP_TX
from xdplb.lb import BackendSpec, VipSpec, vip_key

pytestmark = pytest.mark.bpf

VIP = ipaddress.ip_address("10.0.0.10")
BACKENDS = (BackendSpec(ipaddress.ip_address("10.0.0.2"), bytes.fromhex("deadbeef0002")),)


def colliding_ports(n: int = 3) -> list[int]:
    """n TCP ports of VIP 10.0.0.10 that share one vip_slots entry."""
    by_slot: dict[int, list[int]] = {}
    for port in range(1, 65536):
        if 10000 <= port <= 32767:  # keep clear of the NAT port range
            continue
        ports = by_slot.setdefault(abi.vip_slot(vip_key(VIP, port, "tcp")), [])
        ports.append(port)
        if len(ports) == n:
            return ports
    raise LookupError("no collision")


def syn(dport: int, sport: int = 40000) -> bytes:
    return raw(Ether(src="de:ad:be:ef:00:01", dst="de:ad:be:ef:00:10")
               / IP(src="10.0.0.1", dst=str(VIP)) / TCP(sport=sport, dport=dport, flags="S"))


def test_vips_sharing_a_slot_are_all_balanced_and_removal_promotes_the_next(balancer):
    ports = colliding_ports()
    vips = [VipSpec(VIP, p, backends=BACKENDS) for p in ports]
    lb = balancer(vips)
    dp = lb.dp
    assert dp.runtime().vip_spill == len(ports) - 1
    for i, p in enumerate(ports):
        action, out, _ = dp.program.test_run(syn(p, 40000 + i))
        assert action == XDP_TX, f"port {p}"
        assert Ether(out)[IP].dst == "10.0.0.2"
    # remove the slot's owner: the next VIP takes the slot, the removed one is not ours
    lb.apply(vips[1:])
    assert dp.runtime().vip_spill == len(ports) - 2
    slot = dp.maps["vip_slots"][abi.vip_slot(vip_key(VIP, ports[1], "tcp"))]
    assert abi.ntohs(slot.key.port) == ports[1]
    assert dp.program.test_run(syn(ports[0], 41000))[0] == XDP_PASS
    for i, p in enumerate(ports[1:]):
        assert dp.program.test_run(syn(p, 42000 + i))[0] == XDP_TX, f"port {p}"


def test_a_removed_vip_leaves_no_slot_behind(balancer):
    lb = balancer([VipSpec(VIP, 8000, backends=BACKENDS)])
    dp = lb.dp
    assert dp.program.test_run(syn(8000))[0] == XDP_TX
    lb.apply([])
    assert all(s.key.family == 0 for _, s in dp.maps["vip_slots"].items())
    assert dp.program.test_run(syn(8000, 40001))[0] == XDP_PASS
