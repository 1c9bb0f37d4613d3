"""Netlink queries through pyroute2 (links and addresses of the current netns)."""
from __future__ import annotations

import ipaddress
import socket


def interface_addresses(ifindex: int, family: int = socket.AF_INET) -> list:
    """Addresses on an interface, primary first."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        out = []
        for msg in ipr.get_addr(index=ifindex, family=family):
            addr = msg.get_attr("IFA_ADDRESS")
            if addr:
                out.append(ipaddress.ip_address(addr))
        return out


def interface_mac(ifindex: int) -> str | None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        links = ipr.get_links(ifindex)
        return links[0].get_attr("IFLA_ADDRESS") if links else None


def interface_kind(ifindex: int) -> str | None:
    """IFLA_INFO_KIND of a link ("veth", "bridge", ...), None for physical NICs."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        links = ipr.get_links(ifindex)
        info = links[0].get_attr("IFLA_LINKINFO") if links else None
        return info.get_attr("IFLA_INFO_KIND") if info else None
