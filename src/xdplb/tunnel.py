"""Tunnel-mode (ipip, gue) control-plane helpers: the outer source address of a VIP's
packets towards its backends.

A VIP's `tunnel_source` names it (one address per family); without it, the LB's interface's
first global address of the backend's family is used, found once through netlink.
"""
from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import replace

from .errors import XdplbError
from .lb import VipSpec

__all__ = ["fill_tunnel_sources", "interface_source"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
TUNNEL_MODES = ("ipip", "gue")


def interface_source(interface: str, version: int, exclude: frozenset = frozenset()
                     ) -> IPAddress:
    """The first global (not link-local) address of `version` on `interface`, VIPs
    (`exclude`) left out: a backend holds the VIP itself, so it cannot be the source."""
    from ._bpf.netlink import interface_addresses

    try:
        ifindex = socket.if_nametoindex(interface)
    except OSError:
        raise XdplbError(f"tunnel source: no interface {interface!r}") from None
    fam = socket.AF_INET if version == 4 else socket.AF_INET6
    for a in interface_addresses(ifindex, fam):
        if not (a.is_link_local or a.is_loopback or a in exclude):
            return a
    raise XdplbError(f"tunnel source: {interface} has no global IPv{version} address; "
                     "set the VIP's tunnel_source")


def fill_tunnel_sources(specs: Iterable[VipSpec], interface: str,
                        resolve: Callable[..., IPAddress] = interface_source,
                        cache: dict[int, IPAddress] | None = None) -> list[VipSpec]:
    """`specs` with every tunnel VIP given a source for each of its backends' families
    (its own `tunnel_source` first, else the interface's address of that family that is
    no VIP)."""
    cache = {} if cache is None else cache
    specs = list(specs)
    vips = frozenset(s.address for s in specs)
    out = []
    for s in specs:
        if s.mode in TUNNEL_MODES:
            have = {a.version for a in s.tunnel_source}
            need = sorted({b.address.version for b in s.backends} - have)
            if need:
                for v in need:
                    if v not in cache:
                        cache[v] = resolve(interface, v, vips)
                s = replace(s, tunnel_source=s.tunnel_source + tuple(cache[v] for v in need))
        out.append(s)
    return out
