"""Tunnel modes in the config: mode = "ipip" | "gue", tunnel_source, [lb] gue_port, backend
families; and the default tunnel source (the interface's address of the backend's family)."""
from __future__ import annotations

import ipaddress

import pytest

from xdplb.config import ConfigError, parse_config
from xdplb.errors import XdplbError
from xdplb.lb import BackendSpec, VipSpec
from xdplb.tunnel import fill_tunnel_sources

pytestmark = pytest.mark.unit
A = ipaddress.ip_address


def cfg(vip: str, backends: str = '[[vip.backend]]\naddress = "10.0.1.2"\n', lb: str = ""):
    return parse_config(f'[lb]\ninterface = "veth6"\n{lb}\n[[vip]]\naddress = "10.0.0.10"\n'
                        f'port = 8000\n{vip}\n{backends}', "t.toml")


def fails(match: str, *args, **kw) -> None:
    with pytest.raises(ConfigError, match=match):
        cfg(*args, **kw)


def test_ipip_and_gue_are_modes_with_defaults():
    c = cfg('mode = "ipip"')
    assert c.vips[0].mode == "ipip" and c.vips[0].tunnel_source == ()
    assert c.lb.gue_port == 6080 and cfg('mode = "gue"').vips[0].mode == "gue"


def test_gue_port_is_read_and_checked():
    assert cfg('mode = "gue"', lb="gue_port = 7000").lb.gue_port == 7000
    fails(r"t.toml: lb.gue_port: 0 is out of range 1..65535", 'mode = "gue"', lb="gue_port = 0")
    fails(r"lb.gue_port: expected an integer", 'mode = "gue"', lb='gue_port = "x"')


def test_tunnel_source_one_address_or_one_per_family():
    assert cfg('mode = "gue"\ntunnel_source = "10.0.0.9"').vips[0].tunnel_source == (
        A("10.0.0.9"),)
    two = cfg('mode = "gue"\ntunnel_source = ["10.0.0.9", "fd00::9"]',
              '[[vip.backend]]\naddress = "10.0.1.2"\n[[vip.backend]]\naddress = "fd00:1::2"\n')
    assert two.vips[0].tunnel_source == (A("10.0.0.9"), A("fd00::9"))
    fails(r"vip\[0\].tunnel_source: at most one address per family",
          'mode = "gue"\ntunnel_source = ["10.0.0.9", "10.0.0.8"]')
    fails(r"vip\[0\].tunnel_source: 'x' is not an IPv4 or IPv6 address",
          'mode = "ipip"\ntunnel_source = "x"')
    fails(r"vip\[0\].tunnel_source: expected an IP address string or an array of them",
          'mode = "ipip"\ntunnel_source = 5')


def test_tunnel_source_only_in_tunnel_modes():
    fails(r"vip\[0\].tunnel_source: only for mode = 'ipip' or 'gue'",
          'mode = "dsr"\ntunnel_source = "10.0.0.9"')


def test_tunnel_source_must_cover_every_backend_family():
    fails(r"vip\[0\].tunnel_source: no IPv6 address for backend fd00:1::2 \(vip\[0\].backend\[0\]\)",
          'mode = "gue"\ntunnel_source = "10.0.0.9"',
          '[[vip.backend]]\naddress = "fd00:1::2"\n')


def test_backend_family_ipip_same_gue_either():
    fails(r"vip\[0\].backend\[0\].address: fd00:1::2 is IPv6 but the VIP is IPv4 \(mode = 'gue'",
          'mode = "ipip"', '[[vip.backend]]\naddress = "fd00:1::2"\n')
    fails(r"backend\[0\].address: fd00:1::2 is IPv6 but the VIP is IPv4$", 'mode = "dsr"',
          '[[vip.backend]]\naddress = "fd00:1::2"\n')
    assert cfg('mode = "gue"', '[[vip.backend]]\naddress = "fd00:1::2"\n').vips[0].backends


def test_snat_and_backend_port_are_nat_only():
    fails(r"vip\[0\].snat: only for mode = 'nat' \(gue keeps the client's source address\)",
          'mode = "gue"\nsnat = "10.0.0.10"')
    fails(r"vip\[0\].backend\[0\].port: only for mode = 'nat' \(ipip keeps the VIP's port\)",
          'mode = "ipip"', '[[vip.backend]]\naddress = "10.0.1.2"\nport = 80\n')


def test_unknown_mode_names_the_choices():
    fails(r"vip\[0\].mode: 'vxlan' is not one of 'nat', 'dsr', 'ipip', 'gue'", 'mode = "vxlan"')


def spec(mode: str, *backends: str, src: tuple = ()) -> VipSpec:
    return VipSpec(A("10.0.0.10"), 80, mode=mode, tunnel_source=src,
                   backends=tuple(BackendSpec(A(b)) for b in backends))


def test_default_tunnel_source_is_resolved_per_backend_family_once():
    asked = []

    def resolve(iface: str, version: int, exclude: frozenset):
        assert A("10.0.0.10") in exclude  # never a VIP
        asked.append((iface, version))
        return A("10.0.0.10") if version == 4 else A("fd00::a")

    cache: dict = {}
    out = fill_tunnel_sources([spec("gue", "10.0.1.2", "fd00:1::2"), spec("nat", "10.0.1.3"),
                               spec("ipip", "10.0.1.4", src=(A("10.0.0.9"),))], "veth6",
                              resolve, cache)
    assert out[0].tunnel_source == (A("10.0.0.10"), A("fd00::a"))
    assert out[1].tunnel_source == () and out[2].tunnel_source == (A("10.0.0.9"),)
    fill_tunnel_sources([spec("gue", "10.0.1.2")], "veth6", resolve, cache)
    assert asked == [("veth6", 4), ("veth6", 6)]


def test_a_missing_interface_is_one_clear_error():
    with pytest.raises(XdplbError, match="tunnel source: no interface 'nope0'"):
        fill_tunnel_sources([spec("ipip", "10.0.1.2")], "nope0")
