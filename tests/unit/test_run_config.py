"""`xdplb run` is a foreground serve: its arguments become a Config validated by the same
rules as a file, and errors name the option that was wrong."""
from __future__ import annotations

import ipaddress

import pytest

from xdplb.config import DEFAULTS, ConfigError, parse_config
from xdplb.daemon import run_config
from xdplb.errors import UsageError, XdplbError

pytestmark = pytest.mark.unit

BACKENDS = [(ipaddress.ip_address("10.0.0.2"), bytes.fromhex("deadbeef0002")),
            (ipaddress.ip_address("10.0.0.3"), bytes.fromhex("deadbeef0003"))]


def test_the_tutorial_arguments_make_one_nat_vip_with_the_defaults():
    cfg = run_config("lo", BACKENDS, ports=[8000], vip="10.0.0.10")
    assert cfg.lb.interface == "lo" and cfg.lb.conntrack_size == DEFAULTS.conntrack_size
    assert cfg.lb.nat_ports == DEFAULTS.nat_ports
    (v,) = cfg.vips
    assert (str(v.address), v.port, v.protocol, v.mode, str(v.snat)) == \
        ("10.0.0.10", 8000, "tcp", "nat", "10.0.0.10")
    assert [(str(b.address), b.port, b.mac) for b in v.backends] == \
        [("10.0.0.2", 8000, BACKENDS[0][1]), ("10.0.0.3", 8000, BACKENDS[1][1])]


def test_one_vip_per_port():
    cfg = run_config("lo", BACKENDS, ports=[0, 80], vip="10.0.0.10", mode="dsr")
    assert [(v.port, v.mode, v.snat) for v in cfg.vips] == [(0, "dsr", None), (80, "dsr", None)]


@pytest.mark.parametrize("kwargs, needle", [
    ({"conntrack_size": 100}, "--conntrack: 100 is out of range"),
    ({"ports": [20000]}, "--port: 20000 lies in lb.nat_ports 10000-32767"),
    ({"nat_ports": "9000-8000"}, "--nat-ports:"),
    ({"snat": "fd00::1"}, "--snat: fd00::1 is IPv6"),
    ({"vip": "fd00::10"}, "backend 1: 10.0.0.2 is IPv4 but the VIP is IPv6"),
])
def test_bad_arguments_name_the_option(kwargs, needle):
    args = {"ports": [8000], "vip": "10.0.0.10", **kwargs}
    with pytest.raises(UsageError) as e:
        run_config("lo", BACKENDS, **args)
    assert str(e.value).startswith(needle), str(e.value)


def test_an_unknown_interface_is_said_first():
    with pytest.raises(XdplbError, match="unknown interface 'nosuchif0'"):
        run_config("nosuchif0", BACKENDS, ports=[20000], vip="10.0.0.10")


def test_a_file_gets_the_same_nat_port_rule():
    text = ("[lb]\ninterface = 'veth6'\n[[vip]]\naddress = '10.0.0.10'\nport = 20000\n")
    with pytest.raises(ConfigError, match=r"vip\[0\]\.port: 20000 lies in lb.nat_ports"):
        parse_config(text)
    parse_config(text.replace("20000", "20000\nmode = 'dsr'"))  # dsr keeps the client's
