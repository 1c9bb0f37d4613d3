"""One set of rules for every way in: the file, `xdplb run`'s arguments (run_config) and
control requests (load_request, vip_from_table): the same refusals, one line each."""
from __future__ import annotations

import pytest

from xdplb.config import (
    ConfigError,
    load_request,
    parse_config,
    parse_listen,
    run_config,
    vip_from_table,
)

pytestmark = pytest.mark.unit

GOOD = [("10.0.0.2", "de:ad:be:ef:00:02")]


def run_error(**kw) -> str:
    args = {"interface": "veth6", "backends": GOOD, "vip": "10.0.0.10", "ports": [8000]}
    args.update(kw)
    with pytest.raises(ConfigError) as e:
        run_config(**args)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("kw, want", [
    ({"backends": [("10.0.0.2", "ff:ff:ff:ff:ff:ff")]}, ("backend 1 MAC: 'ff:ff:ff:ff:ff:ff' is a "
     "multicast or broadcast MAC")),
    ({"backends": [("10.0.0.2", "01:00:5e:00:00:01")]}, ("backend 1 MAC: '01:00:5e:00:00:01' is a "
     "multicast")),
    ({"backends": [("10.0.0.2", "00:00:00:00:00:00")]}, ("backend 1 MAC: '00:00:00:00:00:00' is the "
     "all-zero MAC")),
    ({"backends": [("0.0.0.0", "de:ad:be:ef:00:02")]}, "backend 1 IP: 0.0.0.0 is not a unicast"),
    ({"backends": [("255.255.255.255", "de:ad:be:ef:00:02")]}, "backend 1 IP: 255.255.255.255"),
    ({"backends": [("224.0.0.1", "de:ad:be:ef:00:02")]}, "backend 1 IP: 224.0.0.1 is not"),
    ({"backends": GOOD * 2}, "backend 2: duplicate of backend 1 (10.0.0.2:8000)"),
    ({"vip": "0.0.0.0"}, "--vip: 0.0.0.0 is not a unicast host address"),
    ({"vip": "239.1.1.1"}, "--vip: 239.1.1.1 is not a unicast host address"),
    ({"vip": "255.255.255.255"}, "--vip: 255.255.255.255 is not a unicast host address"),
    ({"snat": "fd00::1"}, "--snat: fd00::1 is IPv6 but the VIP is IPv4"),
    ({"snat": "abc"}, "--snat: 'abc' is not an IPv4 or IPv6 address"),
    ({"conntrack": 0}, "--conntrack: 0 is out of range 1024.."),
    ({"conntrack": -1}, "--conntrack: -1 is out of range"),
    ({"conntrack": 4294967296}, "--conntrack: 4294967296 is out of range"),
    ({"conntrack": 1 << 40}, "--conntrack: 1099511627776 is out of range"),
    ({"nat_ports": "5-3"}, "--nat-ports: '5-3'"),
    ({"interface": "a/b"}, "IFACE: 'a/b' is not a valid interface name"),
    ({"interface": "veth\x006"}, "IFACE: contains a NUL byte"),
    ({"udp_stateless": True}, "--udp-stateless: only allowed with mode = 'dsr'"),
])
def test_run_arguments_meet_the_files_rules(kw, want):
    assert run_error(**kw).startswith(want)


def test_run_config_builds_one_vip_per_port():
    c = run_config("veth6", GOOD, vip="10.0.0.10", ports=[80, 443], snat="10.0.0.10",
                   conntrack=1 << 16)
    assert [v.port for v in c.vips] == [80, 443]
    assert c.lb.conntrack_size == 1 << 16
    assert c.vips[0].backends[0].port == 80 and c.vips[0].backends[0].mac == bytes.fromhex(
        "deadbeef0002")


def test_many_backends_get_a_ring_that_fits_them():
    many = [(f"10.0.{i // 250}.{i % 250 + 1}", "de:ad:be:ef:00:02") for i in range(700)]
    c = run_config("veth6", many, vip="10.1.0.10", ports=[80])
    assert c.vips[0].ring_size >= 70000


@pytest.mark.parametrize("text, key, why", [
    ('[lb]\ninterface = "veth\\u00006"\n', "lb.interface", "contains a NUL byte"),
    (('[lb]\ninterface = "veth6"\n[[vip]]\naddress = "10.0.0.10"\nport = 80\n'
     'name = "a\\u0000b"\n'), "vip[0].name", "contains a NUL byte"),
    ("[lb]\ninterface = 'veth6'\nx = " + "[" * 5000 + "]" * 5000 + "\n", None,
     "nested more than 16 levels deep"),
    ("[lb]\ninterface = 'veth6'\nx = " + "[" * 20 + "]" * 20 + "\n", "lb.x" + "[0]" * 15,
     "nested more than 16 levels deep"),
    ("a = " + "{b = " * 3000 + "1" + "}" * 3000 + "\n", None, "nested more than 16 levels deep"),
])
def test_nul_bytes_and_deep_nesting_are_one_line(text, key, why):
    with pytest.raises(ConfigError) as e:
        parse_config(text, "lb.toml")
    msg = str(e.value)
    assert msg == f"lb.toml: {key + ': ' if key else ''}{why}", msg


@pytest.mark.parametrize("line, why", [
    (b"[" * 100_000 + b"]" * 100_000, "nested more than 16 levels deep"),
    (b'{"cmd": "status\\u0000"}', "request: cmd: contains a NUL byte"),
    (b"{nope", "not JSON"),
])
def test_control_requests_are_checked_like_files(line, why):
    with pytest.raises(ValueError) as e:
        load_request(line)
    assert why in str(e.value) and "\n" not in str(e.value)


def test_a_runtime_vip_meets_the_files_rules():
    with pytest.raises(ConfigError, match="vip.backend.0..mac: 'ff:ff:ff:ff:ff:ff' is a multi"):
        vip_from_table({"address": "10.0.0.10", "port": 80,
                        "backend": [{"address": "10.0.0.2", "mac": "ff:ff:ff:ff:ff:ff"}]})
    with pytest.raises(ConfigError, match="contains a NUL byte"):
        vip_from_table({"address": "10.0.0.10", "port": 80, "name": "a\x00"})


@pytest.mark.parametrize("text, want", [
    (":9100", ("127.0.0.1", 9100)),
    ("0.0.0.0:9100", ("0.0.0.0", 9100)),
    ("[::1]:9100", ("::1", 9100)),
])
def test_metrics_listen_on_loopback_unless_told(text, want):
    assert parse_listen(text) == want
