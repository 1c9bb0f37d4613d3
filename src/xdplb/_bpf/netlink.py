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


def mac_bytes(mac: str | None) -> bytes | None:
    """'de:ad:be:ef:00:10' -> 6 bytes; None (or not an Ethernet MAC) -> None."""
    if not mac or mac.count(":") != 5:
        return None
    return bytes.fromhex(mac.replace(":", ""))


def interface_kind(ifindex: int) -> str | None:
    """IFLA_INFO_KIND of a link ("veth", "bridge", ...), None for physical NICs."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        links = ipr.get_links(ifindex)
        info = links[0].get_attr("IFLA_LINKINFO") if links else None
        return info.get_attr("IFLA_INFO_KIND") if info else None


def neighbour_macs(addresses) -> dict:
    """address -> MAC (bytes) for those the neighbour table has a usable entry for."""
    from pyroute2 import IPRoute

    usable = 0x02 | 0x04 | 0x08 | 0x10 | 0x80  # REACHABLE STALE DELAY PROBE PERMANENT
    out = {}
    with IPRoute() as ipr:
        for n in ipr.get_neighbours():
            dst = n.get_attr("NDA_DST")
            mac = n.get_attr("NDA_LLADDR")
            if not dst or not mac or not n["state"] & usable:
                continue
            addr = ipaddress.ip_address(dst)
            if addr in addresses:
                out[addr] = bytes.fromhex(mac.replace(":", ""))
    return out
