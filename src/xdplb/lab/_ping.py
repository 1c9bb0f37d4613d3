"""Minimal ICMP/ICMPv6 echo ("ping") with raw sockets, for hosts without iputils.

Run inside a namespace: ``python -m xdplb.lab._ping ADDR [COUNT [TIMEOUT]]``.  Prints one line
per reply (``reply from ADDR seq=N time=T ms``) and exits 0 if every request was answered.
Needs CAP_NET_RAW.
"""
from __future__ import annotations

import os
import select
import socket
import struct
import sys
import time

from ..frames import inet_csum


def ping(addr: str, count: int = 1, timeout: float = 1.0) -> int:
    info = socket.getaddrinfo(addr, None, type=socket.SOCK_RAW)[0]
    fam, sockaddr = info[0], info[4]
    v6 = fam == socket.AF_INET6
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    req_type, rep_type = (128, 129) if v6 else (8, 0)
    ident = os.getpid() & 0xFFFF
    ok = 0
    with socket.socket(fam, socket.SOCK_RAW, proto) as s:
        for seq in range(1, count + 1):
            payload = struct.pack("!d", time.monotonic()) + b"xdplb-lab-ping"
            hdr = struct.pack("!BBHHH", req_type, 0, 0, ident, seq)
            # the kernel fills in the ICMPv6 checksum (it needs the pseudo header)
            csum = 0 if v6 else inet_csum(hdr + payload)
            s.sendto(struct.pack("!BBHHH", req_type, 0, csum, ident, seq) + payload, sockaddr)
            t0 = time.monotonic()
            deadline = t0 + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([s], [], [], left)[0]:
                    print(f"no reply from {addr} seq={seq}")
                    break
                data, src = s.recvfrom(65535)
                if not v6:
                    data = data[(data[0] & 0x0F) * 4:]
                if len(data) < 8:
                    continue
                typ, _code, _c, rid, rseq = struct.unpack("!BBHHH", data[:8])
                if typ == rep_type and rid == ident and rseq == seq:
                    ms = (time.monotonic() - t0) * 1000
                    print(f"reply from {src[0]} seq={seq} time={ms:.3f} ms")
                    ok += 1
                    break
            if seq < count:
                time.sleep(0.05)
    return ok


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m xdplb.lab._ping ADDR [COUNT [TIMEOUT]]", file=sys.stderr)
        return 2
    count = int(argv[1]) if len(argv) > 1 else 1
    timeout = float(argv[2]) if len(argv) > 2 else 1.0
    return 0 if ping(argv[0], count, timeout) == count else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
