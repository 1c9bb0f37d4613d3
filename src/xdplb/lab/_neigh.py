"""ARP/NDP from a lab host, through a packet socket (the kernel's neighbour cache is bypassed).

``python -m xdplb.lab._neigh ask IFACE ADDR [TIMEOUT]``: send one ARP request (IPv4) or
neighbour solicitation (IPv6) for ADDR from IFACE's own MAC and address; print the MAC that
answered and exit 0, or print nothing and exit 1 after TIMEOUT seconds (default 0.5).
``python -m xdplb.lab._neigh watch IFACE ADDR SECONDS``: print one JSON line per ARP or NA
frame about ADDR seen on IFACE (kind, MAC, seconds since start), for SECONDS; it prints
``ready`` first, once listening. Bounded in time; run as root inside a namespace.
"""
from __future__ import annotations

import ipaddress
import json
import select
import socket
import sys
import time

from ..l2 import (
    ETH_P_ARP,
    ETH_P_IPV6,
    _addresses,
    _link,
    arp_frame,
    format_mac,
    mac_bytes,
    neighbour_solicitation,
    parse_announcement,
)

ETH_P_ALL = 0x0003


def _socket(iface: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((iface, 0))
    return s


def ask(iface: str, addr: str, timeout: float) -> str | None:
    target = ipaddress.ip_address(addr)
    mac = mac_bytes(_link(iface)["address"])
    own = [a for a in _addresses(iface) if a.version == target.version
           and not (a.version == 6 and a.is_link_local)]
    if not own:
        raise SystemExit(f"{iface} has no IPv{target.version} address")
    with _socket(iface) as s:
        if isinstance(target, ipaddress.IPv4Address):
            assert isinstance(own[0], ipaddress.IPv4Address)
            s.send(arp_frame(1, mac, own[0], b"\0" * 6, target))
            want = ("arp-reply",)
        else:
            assert isinstance(own[0], ipaddress.IPv6Address)
            s.send(neighbour_solicitation(mac, own[0], target))
            want = ("na",)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([s], [], [], left)[0]:
                break
            frame, meta = s.recvfrom(2048)
            if meta[2] == socket.PACKET_OUTGOING:
                continue
            got = parse_announcement(frame)
            if got and got[0] in want and got[1] == target:
                return format_mac(got[2])
    return None


def watch(iface: str, addr: str, seconds: float) -> None:
    target = ipaddress.ip_address(addr)
    with _socket(iface) as s:
        print("ready", flush=True)
        t0 = time.monotonic()
        while (left := t0 + seconds - time.monotonic()) > 0:
            if not select.select([s], [], [], left)[0]:
                break
            frame, meta = s.recvfrom(2048)
            if meta[2] == socket.PACKET_OUTGOING or len(frame) < 14:
                continue
            if int.from_bytes(frame[12:14], "big") not in (ETH_P_ARP, ETH_P_IPV6):
                continue
            got = parse_announcement(frame)
            if got and got[1] == target and got[0] in ("arp-request", "arp-reply", "na"):
                print(json.dumps({"kind": got[0], "mac": format_mac(got[2]),
                                  "to": format_mac(frame[0:6]),
                                  "t": round(time.monotonic() - t0, 3)}), flush=True)


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "ask":
        mac = ask(argv[1], argv[2], float(argv[3]) if len(argv) > 3 else 0.5)
        if mac:
            print(mac)
        return 0 if mac else 1
    if len(argv) == 4 and argv[0] == "watch":
        watch(argv[1], argv[2], min(float(argv[3]), 120.0))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
