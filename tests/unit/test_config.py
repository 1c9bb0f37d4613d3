"""Config: TOML -> frozen dataclasses; every error says FILE: KEY: reason."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import textwrap
from pathlib import Path

import pytest

from xdplb.config import (
    Backend,
    Config,
    ConfigError,
    HealthCheck,
    LbSettings,
    Vip,
    format_mac,
    load_config,
    parse_config,
    parse_ip,
    parse_mac,
)
from xdplb.errors import XdplbError

pytestmark = pytest.mark.unit

FULL = """\
[lb]
interface = "veth6"
hash_seed = 0x5eed1b0b
nat_ports = "61000-65535"
conntrack_size = 1048576
max_vips = 4096
max_backends = 65536
frag_policy = "pass"

[[vip]]
name = "web"
address = "10.0.0.10"
port = 8000
protocol = "tcp"
mode = "nat"
snat = "10.0.0.10"
ring_size = 65537
on_backend_removed = "reselect"
udp_stateless = false

[[vip.backend]]
address = "10.0.0.2"
mac = "de:ad:be:ef:00:02"
port = 8000
weight = 1

[[vip.backend]]
address = "10.0.0.3"
mac = "DE:AD:BE:EF:00:03"
port = 8080
weight = 3

[vip.health]
kind = "http"
port = 8000
path = "/healthz"
interval = 2.0
timeout = 1
rise = 2
fall = 3

[[vip]]
address = "2001:db8::10"
port = 53
protocol = "udp"
mode = "dsr"
udp_stateless = true

[[vip.backend]]
address = "2001:db8::2"
"""

LB = '[lb]\ninterface = "veth6"\n'
VIP = '[[vip]]\naddress = "10.0.0.10"\nport = 8000\n'
BACKEND = '[[vip.backend]]\naddress = "10.0.0.2"\n'


def parse(text: str) -> Config:
    return parse_config(textwrap.dedent(text), "lb.toml")


def error(text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        parse(text)
    return str(exc.value)


def assert_error(text: str, key: str, reason: str) -> None:
    """The message is 'lb.toml: KEY: reason', the reason matching the regex `reason`."""
    msg = error(text)
    prefix = f"lb.toml: {key}: "
    assert msg.startswith(prefix), msg
    assert re.search(reason, msg[len(prefix) :]), msg


class TestValidConfig:
    def test_full_example_gives_every_value(self):
        c = parse(FULL)
        assert c.source == "lb.toml"
        assert c.lb == LbSettings(
            interface="veth6",
            hash_seed=0x5EED1B0B,
            nat_ports=(61000, 65535),
            conntrack_size=1048576,
            max_vips=4096,
            max_backends=65536,
            frag_policy="pass",
        )
        web, dns = c.vips
        assert web == Vip(
            name="web",
            address=ipaddress.IPv4Address("10.0.0.10"),
            port=8000,
            protocol="tcp",
            mode="nat",
            snat=ipaddress.IPv4Address("10.0.0.10"),
            ring_size=65537,
            on_backend_removed="reselect",
            udp_stateless=False,
            backends=(
                Backend(ipaddress.IPv4Address("10.0.0.2"), 8000, 1, bytes.fromhex("deadbeef0002")),
                Backend(ipaddress.IPv4Address("10.0.0.3"), 8080, 3, bytes.fromhex("deadbeef0003")),
            ),
            health=HealthCheck("http", 8000, "/healthz", 2.0, 1.0, 2, 3),
        )
        assert dns.name == "[2001:db8::10]:53/udp"
        assert dns.mode == "dsr" and dns.udp_stateless and dns.snat is None
        assert dns.backends == (Backend(ipaddress.IPv6Address("2001:db8::2"), 53, 1, None),)
        assert dns.backends[0].key == "[2001:db8::2]:53"
        assert web.backends[1].key == "10.0.0.3:8080"
        assert web.key == (ipaddress.IPv4Address("10.0.0.10"), 8000, "tcp")

    def test_minimal_config_gets_the_defaults(self):
        c = parse(LB + VIP + BACKEND)
        assert c.lb == LbSettings(interface="veth6")
        (vip,) = c.vips
        assert vip.name == "10.0.0.10:8000/tcp"
        assert (vip.protocol, vip.mode, vip.ring_size) == ("tcp", "nat", 65537)
        assert vip.snat == vip.address
        assert vip.on_backend_removed == "reselect" and not vip.udp_stateless
        assert vip.health == HealthCheck(kind="none")
        assert vip.backends == (Backend(ipaddress.IPv4Address("10.0.0.2"), 8000),)

    def test_example_in_the_docs_is_valid(self):
        doc = (Path(__file__).parents[2] / "docs" / "config.md").read_text()
        example = re.search(r"```toml\n(.*?)```", doc, re.DOTALL)
        assert example, "docs/config.md has no ```toml example"
        c = parse_config(example[1], "docs/config.md")
        assert [len(v.backends) for v in c.vips] == [2]

    def test_lb_alone_is_a_valid_config(self):
        assert parse(LB).vips == ()

    def test_vip_without_backends_is_valid(self):
        assert parse(LB + VIP).vips[0].backends == ()

    def test_result_is_frozen(self):
        c = parse(LB + VIP + BACKEND)
        with pytest.raises(dataclasses.FrozenInstanceError):
            c.vips[0].port = 1  # type: ignore[misc]

    def test_port_0_vip_keeps_the_clients_port(self):
        c = parse(LB + '[[vip]]\naddress = "10.0.0.10"\nport = 0\n' + BACKEND)
        assert c.vips[0].backends[0].port == 0

    def test_weight_0_is_a_draining_backend(self):
        assert parse(LB + VIP + BACKEND + "weight = 0\n").vips[0].backends[0].weight == 0

    def test_same_address_different_ports_are_different_backends(self):
        c = parse(LB + VIP + BACKEND + "port = 1\n" + BACKEND + "port = 2\n")
        assert [b.port for b in c.vips[0].backends] == [1, 2]

    def test_same_address_and_port_with_other_protocol_is_another_vip(self):
        c = parse(LB + VIP + VIP.replace("port = 8000", 'port = 8000\nprotocol = "udp"'))
        assert [v.protocol for v in c.vips] == ["tcp", "udp"]

    def test_health_defaults(self):
        c = parse(LB + VIP + BACKEND + "[vip.health]\n")
        assert c.vips[0].health == HealthCheck(kind="tcp")
        c = parse(LB + VIP + "[vip.health]\ninterval = 0.5\n")
        assert c.vips[0].health.timeout == 0.5

    def test_load_config_reads_a_file_and_names_it(self, tmp_path):
        p = tmp_path / "xdplb.toml"
        p.write_text(FULL)
        assert load_config(p) == dataclasses.replace(parse(FULL), source=str(p))
        p.write_text(LB + "bogus = 1\n")
        with pytest.raises(ConfigError, match=re.escape(f"{p}: lb.bogus: unknown key")):
            load_config(p)

    def test_missing_file_is_a_config_error(self, tmp_path):
        p = tmp_path / "nope.toml"
        with pytest.raises(ConfigError, match=re.escape(f"{p}: cannot read: ")):
            load_config(p)

    def test_config_error_is_a_value_error_with_parts(self):
        with pytest.raises(ValueError) as exc:
            parse(LB + "x = 1\n")
        e = exc.value
        assert isinstance(e, ConfigError)
        assert isinstance(e, XdplbError)  # the CLI prints it as one line
        assert (e.source, e.key, e.reason) == ("lb.toml", "lb.x", "unknown key")


class TestSyntaxAndStructure:
    def test_toml_syntax_error_names_the_line(self):
        assert_error("[lb\n", "line 1, column 4", "Expected")

    def test_missing_lb_table(self):
        assert_error(VIP, "lb", "required table missing")

    def test_unknown_top_level_key(self):
        assert_error('vips = "x"\n' + LB, "vips", r"unknown key \(did you mean 'vip'\?\)")

    def test_unknown_keys_are_named_everywhere(self):
        assert_error('[lb]\ninterface = "veth6"\ninterfce = "x"\n', "lb.interfce", "unknown key")
        assert_error(
            LB + VIP + 'prot = "tcp"\n', "vip[0].prot", r"unknown key \(did you mean 'protocol'\?\)"
        )
        assert_error(
            LB + VIP + BACKEND + BACKEND + "wieght = 2\n",
            "vip[0].backend[1].wieght",
            r"unknown key \(did you mean 'weight'\?\)",
        )
        assert_error(LB + VIP + "[vip.health]\nrize = 2\n", "vip[0].health.rize", "unknown key")

    def test_vip_must_be_an_array_of_tables(self):
        assert_error(
            LB + '[vip]\naddress = "10.0.0.10"\n',
            "vip",
            r"expected an array of tables \(\[\[vip\]\]\), got a table",
        )

    def test_backend_must_be_an_array_of_tables(self):
        assert_error(
            LB + VIP + 'backend = "10.0.0.2"\n', "vip[0].backend", r"expected an array of tables"
        )

    def test_lb_must_be_a_table(self):
        assert_error('lb = "veth6"\n', "lb", "expected a table, got string 'veth6'")


class TestLbErrors:
    def test_interface_is_required(self):
        assert_error("[lb]\n", "lb.interface", "required")

    @pytest.mark.parametrize("name", ["", "a" * 16, "eth0:1", "a b", "a/b", ".."])
    def test_bad_interface_names(self, name):
        assert_error(
            f'[lb]\ninterface = "{name}"\n', "lb.interface", "'.*' is not a valid interface"
        )

    def test_interface_must_be_a_string(self):
        assert_error("[lb]\ninterface = 6\n", "lb.interface", "expected an interface name string")

    @pytest.mark.parametrize(
        "value, reason",
        [
            ("-1", "-1 is out of range 0..4294967295"),
            ("0x1_0000_0000", "4294967296 is out of range"),
            ('"5eed"', "expected an integer, got string '5eed'"),
            ("true", "expected an integer, got boolean true"),
        ],
    )
    def test_bad_hash_seed(self, value, reason):
        assert_error(LB + f"hash_seed = {value}\n", "lb.hash_seed", reason)

    @pytest.mark.parametrize(
        "value, reason",
        [
            ('"1000-2000"', "'1000-2000': ports must be within 1024..65535"),
            ('"61000-70000"', "ports must be within"),
            ('"65000-61000"', "the first port is above the last"),
            ('"61000"', "'61000' is not a port range"),
            ('"61000 - 65535"', "is not a port range"),
            ("61000", "expected a string like"),
        ],
    )
    def test_bad_nat_ports(self, value, reason):
        assert_error(LB + f"nat_ports = {value}\n", "lb.nat_ports", reason)

    def test_nat_ports_single_port_range_is_fine(self):
        assert parse(LB + 'nat_ports = "1024-1024"\n').lb.nat_ports == (1024, 1024)

    def test_conntrack_too_small(self):
        assert_error(
            LB + "conntrack_size = 1023\n", "lb.conntrack_size", "1023 is out of range 1024"
        )

    @pytest.mark.parametrize(
        "text, key, reason",
        [
            ("syn_timeout = 0.01", "syn_timeout", "0.01 s is outside 0.1 .. 600 s"),
            ("tcp_timeout = 3e6", "tcp_timeout", r"3e\+06 s is outside 1 \.\. 2e\+06 s"),
            ("closing_timeout = -1", "closing_timeout", "must be a finite number"),
            ("udp_timeout = \"30\"", "udp_timeout", "a number of seconds"),
            ("nonsyn_budget = -1", "nonsyn_budget", "-1 is out of range"),
        ],
    )
    def test_bad_flow_timeouts(self, text, key, reason):
        assert_error(LB + text + "\n", f"lb.{key}", reason)

    def test_flow_timeouts(self):
        lb = parse(LB + "syn_timeout = 2\ntcp_timeout = 7200\nclosing_timeout = 0.5\n"
                   "udp_timeout = 60\nnonsyn_budget = 0\n").lb
        assert (lb.syn_timeout, lb.tcp_timeout, lb.closing_timeout, lb.udp_timeout,
                lb.nonsyn_budget) == (2.0, 7200.0, 0.5, 60.0, 0)
        assert parse(LB).lb.tcp_timeout == 900.0

    def test_bad_frag_policy(self):
        assert_error(
            LB + 'frag_policy = "reassemble"\n',
            "lb.frag_policy",
            "'reassemble' is not one of 'pass', 'drop'",
        )

    def test_more_vips_than_max_vips(self):
        text = LB + "max_vips = 1\n" + VIP + VIP.replace("8000", "8001")
        assert_error(text, "lb.max_vips", "2 VIPs configured, max_vips is 1")

    def test_more_backends_than_max_backends(self):
        text = LB + "max_backends = 1\n" + VIP + BACKEND + BACKEND.replace(".2", ".3")
        assert_error(text, "lb.max_backends", "2 backends configured")


class TestVipErrors:
    def test_address_and_port_are_required(self):
        assert_error(LB + "[[vip]]\nport = 1\n", "vip[0].address", "required")
        assert_error(LB + '[[vip]]\naddress = "10.0.0.10"\n', "vip[0].port", "required")

    @pytest.mark.parametrize(
        "addr, reason",
        [
            ("10.0.0.300", "'10.0.0.300' is not an IPv4 or IPv6 address"),
            ("vip.example.com", "'vip.example.com' is not an IPv4 or IPv6 address"),
            ("0.0.0.0", "0.0.0.0 is not a unicast host address"),
            ("224.0.0.1", "is not a unicast"),
            ("127.0.0.1", "is not a unicast"),
            ("255.255.255.255", "is not a unicast"),
            ("::", "is not a unicast"),
            ("fe80::1%eth0", "'fe80::1%eth0': scoped IPv6"),
        ],
    )
    def test_bad_vip_address(self, addr, reason):
        assert_error(LB + f'[[vip]]\naddress = "{addr}"\nport = 1\n', "vip[0].address", reason)

    @pytest.mark.parametrize(
        "port, reason",
        [
            ("-1", "-1 is out of range 0..65535"),
            ("65536", "65536 is out of range"),
            ('"80"', "expected an integer, got string '80'"),
            ("80.0", "expected an integer, got float 80.0"),
        ],
    )
    def test_bad_vip_port(self, port, reason):
        assert_error(LB + f'[[vip]]\naddress = "10.0.0.10"\nport = {port}\n', "vip[0].port", reason)

    def test_bad_protocol_and_mode(self):
        assert_error(
            LB + VIP + 'protocol = "sctp"\n', "vip[0].protocol", "'sctp' is not one of 'tcp', 'udp'"
        )
        assert_error(LB + VIP + 'protocol = "TCP"\n', "vip[0].protocol", "'TCP' is not one of")
        assert_error(
            LB + VIP + 'mode = "tunnel"\n', "vip[0].mode", "'tunnel' is not one of 'nat', 'dsr'"
        )

    def test_bad_on_backend_removed(self):
        assert_error(
            LB + VIP + 'on_backend_removed = "drop"\n',
            "vip[0].on_backend_removed",
            "'drop' is not one of 'reselect', 'reset'",
        )

    def test_bad_name(self):
        assert_error(LB + VIP + 'name = "my web"\n', "vip[0].name", "'my web' is not a valid name")
        assert_error(LB + VIP + 'name = ""\n', "vip[0].name", "'' is not a valid name")

    def test_duplicate_vip(self):
        assert_error(LB + VIP + VIP, "vip[1]", r"duplicate of vip\[0\] \(10.0.0.10:8000/tcp\)")

    def test_duplicate_vip_with_other_spelling_of_ipv6(self):
        v1 = '[[vip]]\naddress = "2001:db8::10"\nport = 80\n'
        v2 = '[[vip]]\naddress = "2001:0db8:0::0010"\nport = 80\n'
        assert_error(LB + v1 + v2, "vip[1]", r"duplicate of vip\[0\] \(\[2001:db8::10\]:80/tcp\)")

    def test_duplicate_vip_name(self):
        text = LB + VIP + 'name = "web"\n' + VIP.replace("8000", "8001") + 'name = "web"\n'
        assert_error(text, "vip[1].name", r"'web' is already used by vip\[0\]")

    def test_snat_other_family(self):
        assert_error(
            LB + VIP + 'snat = "2001:db8::1"\n',
            "vip[0].snat",
            "2001:db8::1 is IPv6 but the VIP is IPv4",
        )

    def test_snat_in_dsr_mode(self):
        assert_error(
            LB + VIP + 'mode = "dsr"\nsnat = "10.0.0.1"\n', "vip[0].snat", "only for mode = 'nat'"
        )

    def test_bad_snat(self):
        assert_error(LB + VIP + 'snat = "10.0.0"\n', "vip[0].snat", "'10.0.0' is not an IPv4")

    @pytest.mark.parametrize(
        "size, reason",
        [
            (65536, r"65536 is not prime \(try 65537\)"),
            (1, "1 is out of range 2..16777216"),
            (100000, r"100000 is not prime \(try 100003\)"),
        ],
    )
    def test_bad_ring_size(self, size, reason):
        assert_error(LB + VIP + f"ring_size = {size}\n", "vip[0].ring_size", reason)

    def test_ring_smaller_than_backend_count(self):
        text = (
            LB
            + VIP
            + "ring_size = 2\n"
            + BACKEND
            + BACKEND.replace(".2", ".3")
            + BACKEND.replace(".2", ".4")
        )
        assert_error(text, "vip[0].ring_size", "2 slots for 3 backends; use at least 307")

    @pytest.mark.parametrize("mode, proto", [("nat", "udp"), ("dsr", "tcp"), ("nat", "tcp")])
    def test_udp_stateless_only_for_dsr_udp(self, mode, proto):
        text = LB + VIP + f'mode = "{mode}"\nprotocol = "{proto}"\nudp_stateless = true\n'
        assert_error(
            text, "vip[0].udp_stateless", "only allowed with mode = 'dsr' and protocol = 'udp'"
        )

    def test_udp_stateless_must_be_a_boolean(self):
        assert_error(
            LB + VIP + 'udp_stateless = "yes"\n',
            "vip[0].udp_stateless",
            "expected true or false, got string 'yes'",
        )


class TestBackendErrors:
    def test_address_is_required(self):
        assert_error(
            LB + VIP + "[[vip.backend]]\nweight = 1\n", "vip[0].backend[0].address", "required"
        )

    def test_bad_address(self):
        assert_error(
            LB + VIP + '[[vip.backend]]\naddress = "10.0.0.256"\n',
            "vip[0].backend[0].address",
            "'10.0.0.256' is not an IPv4 or IPv6 address",
        )

    def test_address_family_must_match_the_vip(self):
        assert_error(
            LB + VIP + BACKEND + '[[vip.backend]]\naddress = "2001:db8::2"\n',
            "vip[0].backend[1].address",
            "2001:db8::2 is IPv6 but the VIP is IPv4",
        )

    @pytest.mark.parametrize(
        "mac, reason",
        [
            ("zz", "'zz' is not a MAC address"),
            ("de:ad:be:ef:00", "'de:ad:be:ef:00' is not a MAC address"),
            ("de-ad-be-ef-00-02", "is not a MAC address"),
            ("deadbeef0002", "is not a MAC address"),
            ("de:ad:be:ef:00:02:03", "is not a MAC address"),
            ("ff:ff:ff:ff:ff:ff", "'ff:ff:ff:ff:ff:ff' is a multicast or broadcast MAC"),
            ("01:00:5e:00:00:01", "is a multicast or broadcast MAC"),
            ("00:00:00:00:00:00", "'00:00:00:00:00:00' is the all-zero MAC"),
        ],
    )
    def test_bad_mac(self, mac, reason):
        assert_error(
            LB + VIP + BACKEND + BACKEND.replace(".2", ".3") + f'mac = "{mac}"\n',
            "vip[0].backend[1].mac",
            reason,
        )

    def test_mac_must_be_a_string(self):
        assert_error(
            LB + VIP + BACKEND + "mac = 12\n",
            "vip[0].backend[0].mac",
            "expected a MAC address string, got integer 12",
        )

    @pytest.mark.parametrize(
        "port, reason",
        [(0, "0 is out of range 1..65535"), (65536, "65536 is out of range 1..65535")],
    )
    def test_bad_port(self, port, reason):
        assert_error(LB + VIP + BACKEND + f"port = {port}\n", "vip[0].backend[0].port", reason)

    def test_port_with_a_port_0_vip(self):
        text = LB + '[[vip]]\naddress = "10.0.0.10"\nport = 0\n' + BACKEND + "port = 8000\n"
        assert_error(text, "vip[0].backend[0].port", r"the VIP has port 0 \(all ports\)")

    def test_port_in_dsr_mode(self):
        assert_error(
            LB + VIP + 'mode = "dsr"\n' + BACKEND + "port = 8000\n",
            "vip[0].backend[0].port",
            "only for mode = 'nat'",
        )

    @pytest.mark.parametrize(
        "weight, reason",
        [
            (-1, "-1 is out of range 0..65535"),
            (65536, "65536 is out of range"),
            (1.5, "expected an integer, got float 1.5"),
        ],
    )
    def test_bad_weight(self, weight, reason):
        assert_error(
            LB + VIP + BACKEND + f"weight = {weight}\n", "vip[0].backend[0].weight", reason
        )

    def test_duplicate_backend(self):
        assert_error(
            LB + VIP + BACKEND + BACKEND,
            "vip[0].backend[1]",
            r"duplicate of vip\[0\].backend\[0\] \(10.0.0.2:8000\)",
        )

    def test_duplicate_backend_via_default_port(self):
        assert_error(
            LB + VIP + BACKEND + BACKEND + "port = 8000\n", "vip[0].backend[1]", "duplicate of"
        )

    def test_same_backend_in_two_vips_is_fine(self):
        c = parse(LB + VIP + BACKEND + VIP.replace("8000", "8001") + BACKEND)
        assert [len(v.backends) for v in c.vips] == [1, 1]


class TestHealthErrors:
    H = LB + VIP + BACKEND + "[vip.health]\n"

    def test_bad_kind(self):
        assert_error(
            self.H + 'kind = "icmp"\n',
            "vip[0].health.kind",
            "'icmp' is not one of 'tcp', 'http', 'udp', 'dns', 'exec', 'none'",
        )

    def test_path_only_for_http(self):
        assert_error(
            self.H + 'kind = "tcp"\npath = "/"\n', "vip[0].health.path", "only for kind = 'http'"
        )

    def test_bad_path(self):
        assert_error(
            self.H + 'kind = "http"\npath = "health"\n',
            "vip[0].health.path",
            "'health' is not an HTTP path",
        )

    @pytest.mark.parametrize("key", ["interval", "timeout"])
    @pytest.mark.parametrize(
        "value, reason",
        [
            ("0", "0 must be a finite number of seconds > 0"),
            ("-1.0", "-1.0 must be"),
            ("nan", "nan must be"),
            ("inf", "inf must be"),
            ('"2s"', "expected a number of seconds, got string"),
        ],
    )
    def test_bad_durations(self, key, value, reason):
        assert_error(self.H + f"{key} = {value}\n", f"vip[0].health.{key}", reason)

    def test_timeout_longer_than_interval(self):
        assert_error(
            self.H + "interval = 1\ntimeout = 1.5\n",
            "vip[0].health.timeout",
            r"1.5 s is longer than the interval \(1 s\)",
        )

    @pytest.mark.parametrize("key", ["rise", "fall"])
    def test_bad_rise_fall(self, key):
        assert_error(self.H + f"{key} = 0\n", f"vip[0].health.{key}", "0 is out of range 1..1000")

    def test_bad_port(self):
        assert_error(self.H + "port = 70000\n", "vip[0].health.port", "70000 is out of range")

    def test_port_needed_when_vip_port_is_0(self):
        text = LB + '[[vip]]\naddress = "10.0.0.10"\nport = 0\n' + BACKEND + "[vip.health]\n"
        assert_error(text, "vip[0].health.port", r"required when the VIP's port is 0")
        assert parse(text + "port = 22\n").vips[0].health.port == 22

    def test_health_must_be_a_table(self):
        assert_error(LB + VIP + 'health = "tcp"\n', "vip[0].health", "expected a table")


class TestParsers:
    def test_parse_mac_accepts_any_case(self):
        assert parse_mac("de:ad:BE:ef:00:02") == b"\xde\xad\xbe\xef\x00\x02"
        assert format_mac(parse_mac("DE:AD:BE:EF:00:02")) == "de:ad:be:ef:00:02"

    @pytest.mark.parametrize(
        "bad",
        [
            "",
            "zz",
            "de:ad:be:ef:00:0",
            "de:ad:be:ef:00:02\n",
            " de:ad:be:ef:00:02",
            "de:ad:be:ef:00:0g",
            "dead.beef.0002",
            "de:ad:be:ef:0:02",
        ],
    )
    def test_parse_mac_rejects_anything_else(self, bad):
        with pytest.raises(ValueError, match="is not a MAC address"):
            parse_mac(bad)

    def test_parse_mac_rejects_non_strings(self):
        with pytest.raises(TypeError):
            parse_mac(b"\xde\xad\xbe\xef\x00\x02")  # type: ignore[arg-type]

    def test_parse_ip_both_families(self):
        assert parse_ip("10.0.0.2") == ipaddress.IPv4Address("10.0.0.2")
        assert parse_ip("2001:db8::2") == ipaddress.IPv6Address("2001:db8::2")

    @pytest.mark.parametrize("bad", ["", "10.0.0", "10.0.0.02", "1.2.3.4/32", "host", "::g"])
    def test_parse_ip_rejects_anything_else(self, bad):
        with pytest.raises(ValueError, match="is not an IPv4 or IPv6 address"):
            parse_ip(bad)

    def test_parse_ip_rejects_non_strings(self):
        with pytest.raises(TypeError, match="is not an IPv4 or IPv6 address"):
            parse_ip(167772162)  # type: ignore[arg-type]
