"""[bgp] config validation and the pure parts of announce: which routes, which BIRD config."""
from __future__ import annotations

import ipaddress
import shutil
import subprocess

import pytest

from xdplb.announce import (
    Route,
    VipHealth,
    bird_config,
    parse_protocols,
    parse_route_prefixes,
    wanted_routes,
)
from xdplb.config import ConfigError, parse_config

pytestmark = pytest.mark.unit

LB = '[lb]\ninterface = "eth0"\n'
BGP = """
[bgp]
asn = 65001
router_id = "10.2.0.11"
[[bgp.peer]]
address = "10.2.0.254"
asn = 65000
"""
DSR = '[[vip]]\naddress = "10.9.0.1"\nport = 80\nmode = "dsr"\n'


def parse(text: str):
    return parse_config(text, "lb.toml")


def error(text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        parse(text)
    return str(exc.value)


class TestBgpConfig:
    def test_defaults(self):
        c = parse(LB + BGP + DSR)
        assert c.bgp is not None
        assert (c.bgp.asn, str(c.bgp.router_id), c.bgp.hold_time) == (65001, "10.2.0.11", 9)
        assert (c.bgp.bfd, c.bgp.bfd_interval_ms, c.bgp.bfd_multiplier) == (False, 100, 3)
        (peer,) = c.bgp.peers
        assert (str(peer.address), peer.asn, peer.password) == ("10.2.0.254", 65000, None)
        (v,) = c.vips
        assert (v.announce, v.min_healthy, v.communities, v.med) == (True, 1, (), None)

    def test_no_bgp_table_is_no_bgp(self):
        assert parse(LB + DSR).bgp is None

    @pytest.mark.parametrize("extra, key, reason", [
        ("asn = 0\n", "bgp.asn", "out of range"),
        ('router_id = "fd00::1"\n', "bgp.router_id", "not an IPv4 address"),
        ("hold_time = 2\n", "bgp.hold_time", "out of range 3..65535"),
        ('bfd = "yes"\n', "bgp.bfd", "expected true or false"),
        ("bfd_interval_ms = 5\n", "bgp.bfd_interval_ms", "out of range 10..10000"),
        ("bfd_multiplier = 0\n", "bgp.bfd_multiplier", "out of range"),
        ("graceful = true\n", "bgp.graceful", "unknown key"),
    ])
    def test_bad_bgp_keys(self, extra, key, reason):
        text = BGP
        if key in ("bgp.asn", "bgp.router_id"):  # replaced, not added twice
            text = "\n".join(ln for ln in BGP.splitlines() if not ln.startswith(key[4:]))
        text = text.replace("[bgp]\n", "[bgp]\n" + extra, 1)
        msg = error(LB + text)
        assert msg.startswith(f"lb.toml: {key}: ") and reason in msg, msg

    def test_peer_is_required(self):
        msg = error(LB + '[bgp]\nasn = 65001\nrouter_id = "1.1.1.1"\n')
        assert msg.startswith("lb.toml: bgp.peer: at least one"), msg

    @pytest.mark.parametrize("peer, key, reason", [
        ('address = "10.2.0.253"\n', "bgp.peer[1].asn", "required"),
        ('address = "nope"\nasn = 1\n', "bgp.peer[1].address", "not an IPv4 or IPv6"),
        ('address = "10.2.0.254"\nasn = 1\n', "bgp.peer[1].address", "already"),
        ('address = "10.2.0.253"\nasn = 1\npassword = "a\\"b"\n', "bgp.peer[1].password",
         "without quotes"),
        ('address = "10.2.0.253"\nasn = 1\nport = 179\n', "bgp.peer[1].port", "unknown key"),
    ])
    def test_bad_peer(self, peer, key, reason):
        msg = error(LB + BGP + "[[bgp.peer]]\n" + peer)
        assert msg.startswith(f"lb.toml: {key}: ") and reason in msg, msg

    def test_bad_aggregate(self):
        msg = error(LB + BGP + '[[bgp.aggregate]]\nprefix = "10.9.0.1/24"\n')
        assert msg.startswith("lb.toml: bgp.aggregate[0].prefix: ") and "host bits" in msg, msg

    @pytest.mark.parametrize("line, key, reason", [
        ('announce = "no"\n', "announce", "true or false"),
        ("min_healthy = 0\n", "min_healthy", "out of range"),
        ('communities = ["65536:1"]\n', "communities", "within 0..65535"),
        ('communities = "1:2"\n', "communities", "expected an array"),
        ('communities = ["x"]\n', "communities", "not a community"),
        ("med = -1\n", "med", "out of range"),
    ])
    def test_bad_vip_announce_keys(self, line, key, reason):
        msg = error(LB + BGP + DSR + line)
        assert msg.startswith(f"lb.toml: vip[0].{key}: ") and reason in msg, msg

    def test_snat_on_the_vip_is_refused_when_announced(self):
        nat = '[[vip]]\naddress = "10.9.0.1"\nport = 80\n'
        msg = error(LB + BGP + nat)
        assert msg.startswith("lb.toml: vip[0].snat: ") and "several nodes" in msg, msg
        # its own SNAT address, or not announced, or no BGP at all: fine
        assert parse(LB + BGP + nat + 'snat = "10.2.0.11"\n').vips[0].snat
        assert parse(LB + BGP + nat + "announce = false\n").vips[0].announce is False
        assert parse(LB + nat).bgp is None


class TestSyncConfig:
    SYNC = '[sync]\nlisten = "10.2.0.11:5789"\npeers = ["10.2.0.12:5789", "[fd02::c]:5789"]\n'

    def test_defaults(self):
        s = parse(LB + self.SYNC).sync
        assert s is not None
        assert s.listen == ("10.2.0.11", 5789)
        assert s.peers == (("10.2.0.12", 5789), ("fd02::c", 5789))
        assert (s.interval, s.min_age, s.resend, s.max_bytes_per_s) == (0.5, 1.0, 5.0, 2_000_000)

    @pytest.mark.parametrize("line, key, reason", [
        ('listen = "10.2.0.11"\n', "listen", "not an address like"),
        ("peers = []\n", "peers", "at least one peer"),
        ('peers = ["10.2.0.12:5789", "10.2.0.12:5789"]\n', "peers", "listed twice"),
        ("min_age = 0\n", "min_age", "> 0"),
        ("resend = 0.1\n", "resend", "shorter than the interval"),
        ("max_bytes_per_s = 10\n", "max_bytes_per_s", "out of range"),
        ("tos = 1\n", "tos", "unknown key"),
    ])
    def test_bad_keys(self, line, key, reason):
        head = self.SYNC
        for k in ("listen", "peers"):
            if line.startswith(k):
                head = "\n".join(x for x in head.splitlines() if not x.startswith(k)) + "\n"
        msg = error(LB + head + line)
        assert msg.startswith(f"lb.toml: sync.{key}: ") and reason in msg, msg


def vh(addr: str, healthy: int = 1, port: int = 80, **kw) -> VipHealth:
    text = LB + f'[[vip]]\naddress = "{addr}"\nport = {port}\nmode = "dsr"\n'
    for k, v in kw.items():
        text += f"{k} = {v}\n"
    return VipHealth(parse(text).vips[0], healthy)


class TestWantedRoutes:
    def test_healthy_vips_are_announced_per_address(self):
        r = wanted_routes([vh("10.9.0.1"), vh("10.9.0.1", port=443), vh("fd09::1")])
        assert list(r) == ["10.9.0.1/32", "fd09::1/128"]

    def test_below_min_healthy_is_withdrawn(self):
        assert wanted_routes([vh("10.9.0.1", healthy=0)]) == {}
        assert wanted_routes([vh("10.9.0.1", healthy=1, min_healthy=2)]) == {}
        assert list(wanted_routes([vh("10.9.0.1", healthy=2, min_healthy=2)])) == ["10.9.0.1/32"]

    def test_one_healthy_port_keeps_the_address_announced(self):
        r = wanted_routes([vh("10.9.0.1", healthy=0), vh("10.9.0.1", port=443)])
        assert list(r) == ["10.9.0.1/32"]

    def test_announce_false_detached_and_drained(self):
        assert wanted_routes([vh("10.9.0.1", announce="false")]) == {}
        assert wanted_routes([vh("10.9.0.1")], attached=False) == {}
        assert wanted_routes([vh("10.9.0.1")], drained=True) == {}

    def test_aggregate_replaces_the_vips_inside(self):
        agg = [ipaddress.ip_network("10.9.0.0/24")]
        r = wanted_routes([vh("10.9.0.1"), vh("10.9.0.2"), vh("10.8.0.1")], agg)
        assert list(r) == ["10.8.0.1/32", "10.9.0.0/24"]
        assert wanted_routes([vh("10.9.0.1", healthy=0)], agg) == {}

    def test_attributes(self):
        r = wanted_routes([vh("10.9.0.1", med=7, communities='["65001:1", "1:2:3"]')])
        assert r["10.9.0.1/32"].med == 7
        assert r["10.9.0.1/32"].communities == ("65001:1", "1:2:3")


class TestBirdConfig:
    def cfg(self, extra: str = ""):
        text = LB + BGP.replace("[bgp]\n", "[bgp]\n" + extra) + '[[bgp.peer]]\n' \
            'address = "fd02::fe"\nasn = 65000\npassword = "s3cret"\n'
        c = parse(text)
        assert c.bgp is not None
        return c.bgp

    def test_routes_go_to_the_peers_of_their_family(self):
        routes = wanted_routes([vh("10.9.0.1", med=5, communities='["65001:100"]'),
                                vh("fd09::1")])
        text = bird_config(self.cfg(), routes)
        assert "route 10.9.0.1/32 blackhole { bgp_med = 5; bgp_community.add((65001,100)); };" \
            in text
        assert "route fd09::1/128 blackhole;" in text
        assert 'neighbor 10.2.0.254 as 65000;' in text and 'neighbor fd02::fe as 65000;' in text
        assert 'ipv4 { import none; export where proto = "xdplb4"; };' in text
        assert 'ipv6 { import none; export where proto = "xdplb6"; };' in text
        assert 'password "s3cret";' in text
        assert "protocol kernel" not in text  # nothing is installed in the node's own tables
        assert "bfd" not in text

    def test_bfd(self):
        text = bird_config(self.cfg("bfd = true\nbfd_interval_ms = 150\nbfd_multiplier = 4\n"),
                           {})
        assert "min rx interval 150 ms; min tx interval 150 ms; multiplier 4;" in text
        assert text.count("bfd on;") == 2

    @pytest.mark.skipif(shutil.which("bird") is None, reason="BIRD 2 not installed")
    def test_bird_accepts_it(self, tmp_path):
        routes = wanted_routes([vh("10.9.0.1", med=5, communities='["65001:100", "1:2:3"]'),
                                vh("fd09::1")], [ipaddress.ip_network("10.8.0.0/16")])
        conf = tmp_path / "bird.conf"
        conf.write_text(bird_config(self.cfg("bfd = true\n"), routes, str(tmp_path / "log")))
        p = subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True,
                           check=False)
        assert p.returncode == 0, p.stderr
        conf.write_text(bird_config(self.cfg(), {}))
        p = subprocess.run(["bird", "-p", "-c", str(conf)], capture_output=True, text=True,
                           check=False)
        assert p.returncode == 0, p.stderr


def test_parse_birdc_output():
    protos = parse_protocols(
        "BIRD 2.0.12 ready.\n"
        "Name       Proto      Table      State  Since         Info\n"
        "device1    Device     ---        up     21:16:14.256  \n"
        "peer0      BGP        ---        up     21:16:19.185  Established   \n"
        "peer1      BGP        ---        start  21:16:19.277  Active        Received: "
        "Administrative shutdown\n")
    assert [(p["name"], p["state"], p["info"]) for p in protos] == [
        ("device1", "up", ""), ("peer0", "up", "Established"),
        ("peer1", "start", "Active        Received: Administrative shutdown")]
    assert parse_route_prefixes(
        "BIRD 2.0.12 ready.\nTable master4:\n"
        "10.9.0.1/32          blackhole [xdplb4 21:16:14.256] * (200)\n"
        "fd09::1/128          blackhole [xdplb6 21:16:14.256] * (200)\n") == [
        "10.9.0.1/32", "fd09::1/128"]
    assert Route(ipaddress.ip_network("10.9.0.1/32")).med is None
