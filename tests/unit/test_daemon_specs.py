"""specs_from_config: a config file becomes LoadBalancer specs, identically on every node."""
from __future__ import annotations

import ipaddress

import pytest

from xdplb._bpf.fake import FakeDataPlane
from xdplb.config import parse_config
from xdplb.daemon import specs_from_config
from xdplb.lb import BackendSpec, LoadBalancer, VipSpec

pytestmark = pytest.mark.unit

CONFIG = """
[lb]
interface = "veth6"

[[vip]]
name = "web"
address = "10.0.0.10"
port = 8000
on_backend_removed = "reset"
ring_size = 1009

[[vip.backend]]
address = "10.0.0.2"
mac = "de:ad:be:ef:00:02"

[[vip.backend]]
address = "10.0.0.3"
port = 8080
weight = 3

[[vip]]
address = "2001:db8::10"
port = 53
protocol = "udp"
mode = "dsr"
udp_stateless = true

[[vip.backend]]
address = "2001:db8::2"
"""


def test_every_vip_field_is_carried_over():
    web, dns = specs_from_config(parse_config(CONFIG, "lb.toml"))
    assert web == VipSpec(
        address=ipaddress.ip_address("10.0.0.10"), port=8000, protocol="tcp", mode="nat",
        snat=ipaddress.ip_address("10.0.0.10"), ring_size=1009, on_backend_removed="reset",
        udp_stateless=False, name="web",
        backends=(
            BackendSpec(ipaddress.ip_address("10.0.0.2"), bytes.fromhex("deadbeef0002"), 8000,
                        1, ring_key="10.0.0.2:8000"),
            BackendSpec(ipaddress.ip_address("10.0.0.3"), None, 8080, 3,
                        ring_key="10.0.0.3:8080"),
        ))
    assert (dns.protocol, dns.mode, dns.udp_stateless, dns.snat) == ("udp", "dsr", True, None)
    assert dns.name == "[2001:db8::10]:53/udp"


def test_ring_keys_are_the_config_keys_with_brackets_for_ipv6():
    cfg = parse_config(CONFIG, "lb.toml")
    for vip, spec in zip(cfg.vips, specs_from_config(cfg)):
        assert [b.key for b in spec.backends] == [b.key for b in vip.backends]
    assert specs_from_config(cfg)[1].backends[0].key == "[2001:db8::2]:53"


def test_two_nodes_with_the_same_file_build_the_same_tables():
    """Backend order in the file does not matter either: the ring depends on keys only."""
    a = specs_from_config(parse_config(CONFIG, "a.toml"))
    swapped = CONFIG.replace('address = "10.0.0.2"\nmac = "de:ad:be:ef:00:02"',
                             "TMP").replace('address = "10.0.0.3"\nport = 8080\nweight = 3',
                                            'address = "10.0.0.2"\nmac = "de:ad:be:ef:00:02"'
                                            ).replace("TMP", 'address = "10.0.0.3"\n'
                                                      'port = 8080\nweight = 3')
    b = specs_from_config(parse_config(swapped, "b.toml"))
    assert [x.key for x in b[0].backends] == ["10.0.0.3:8080", "10.0.0.2:8000"]
    tables = []
    for specs in (a, b):
        dp = FakeDataPlane()
        lb = LoadBalancer(dp)
        lb.apply(specs)
        ids = lb.backend_ids(specs[0].key)
        # compare by backend key, not by id (ids are local to a node)
        name = {i: k for k, i in ids.items()}
        tables.append([name[int(i)] for i in dp.rings[lb.vip_id(specs[0].key)]])
    assert tables[0] == tables[1]


def test_weights_shape_the_table():
    specs = specs_from_config(parse_config(CONFIG, "lb.toml"))
    dp = FakeDataPlane()
    lb = LoadBalancer(dp)
    lb.apply(specs)
    ids = lb.backend_ids(specs[0].key)
    table = list(dp.rings[lb.vip_id(specs[0].key)])
    share = table.count(ids["10.0.0.3:8080"]) / len(table)
    assert abs(share - 0.75) < 0.01
