"""`xdplb run` as a foreground serve: the tutorial's arguments as a Config, validated by
the same rules as a config file (errors name the command-line option)."""
from __future__ import annotations

import re
import socket
from collections.abc import Sequence
from typing import Any

from .._bpf.loader import interface_index
from .._bpf.netlink import interface_addresses
from ..config import Config, ConfigError, IPAddress, config_from_dict
from ..errors import UsageError, XdplbError

# config keys -> the options that set them (vip[N] is one VIP per --port)
_OPTIONS = [
    (r"lb\.conntrack_size", "--conntrack"),
    (r"lb\.nat_ports", "--nat-ports"),
    (r"lb\.frag_policy", "--frag"),
    (r"vip\[\d+\]\.address", "--vip"),
    (r"vip\[\d+\]\.snat", "--snat"),
    (r"vip\[\d+\]\.port", "--port"),
    (r"vip\[\d+\]\.udp_stateless", "--udp-stateless"),
    (r"vip\[\d+\]", "VIP"),
]


def _option(key: str | None) -> str:
    if key is None:
        return "xdplb run"
    m = re.fullmatch(r"vip\[\d+\]\.backend\[(\d+)\].*", key)
    if m:
        return f"backend {int(m[1]) + 1}"
    for pattern, option in _OPTIONS:
        if re.fullmatch(pattern, key):
            return option
    return key


def interface_ipv4(name: str) -> str | None:
    """The first IPv4 address of an interface (None: it has none)."""
    addrs = interface_addresses(interface_index(name), socket.AF_INET)
    return str(addrs[0]) if addrs else None


def run_config(interface: str, backends: Sequence[tuple[IPAddress, bytes]], *,
               ports: Sequence[int], protocol: str = "tcp", mode: str = "nat",
               vip: str | None = None, snat: str | None = None, egress: str | None = None,
               conntrack_size: int | None = None, nat_ports: str | None = None,
               frag_policy: str | None = None, on_backend_removed: str = "reselect",
               udp_stateless: bool = False) -> Config:
    """One VIP per port on `vip` (default: the interface's first IPv4 address) over
    `backends` (address, MAC); SNAT towards backends from `snat`, else the egress
    interface's IPv4 address (two-armed), else the VIP."""
    interface_index(interface)  # unknown interface: say so before anything else
    if vip is None:
        vip = interface_ipv4(interface)
        if vip is None:
            raise XdplbError(f"interface {interface} has no IPv4 address; give --vip")
    if egress and snat is None and mode == "nat":
        snat = interface_ipv4(egress)
    lb: dict[str, Any] = {"interface": interface}
    for key, value in (("conntrack_size", conntrack_size), ("nat_ports", nat_ports),
                       ("frag_policy", frag_policy)):
        if value is not None:
            lb[key] = value
    vips = []
    for port in ports:
        v: dict[str, Any] = {
            "address": vip, "port": port, "protocol": protocol, "mode": mode,
            "on_backend_removed": on_backend_removed, "udp_stateless": udp_stateless,
            "backend": [{"address": str(a), "mac": ":".join(f"{x:02x}" for x in mac)}
                        for a, mac in backends]}
        if snat is not None:
            v["snat"] = snat
        vips.append(v)
    try:
        return config_from_dict({"lb": lb, "vip": vips}, source="xdplb run")
    except ConfigError as e:
        raise UsageError(f"{_option(e.key)}: {e.reason}") from None
