"""The packet vocabulary without scapy: the Internet checksum and its pseudo headers, and
Ethernet/IPv4/TCP frames built with struct (~10 us each; scapy takes ~1.4 ms, too slow for a
fresh frame per call) and parsed back for sanity checks. The one home of these for the
tests (the packet-case table, the differential test), the benchmarks and the lab's ping.

Checksums are complete unless ``csum="partial"``: then the TCP field holds only the folded
pseudo-header sum, the CHECKSUM_PARTIAL form a local stack with TX offload puts on a veth.
"""
from __future__ import annotations

import ipaddress
import os
import struct
from dataclasses import dataclass

ETH_P_IP = 0x0800
PROTO_TCP = 6
PROTO_IPIP = 4
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10
MIN_FRAME = 60  # Ethernet minimum without FCS: a "64-byte frame" on the wire


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def ip4(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def sum16(data: bytes) -> int:
    """One's complement sum of 16-bit big-endian words, folded, not inverted."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def inet_csum(data: bytes) -> int:
    """The Internet checksum of `data` (RFC 1071): the inverted folded sum."""
    return ~sum16(data) & 0xFFFF


def pseudo_header(src: bytes, dst: bytes, proto: int, l4_len: int) -> bytes:
    """The pseudo header of an L4 checksum: IPv4's (RFC 793) for 4-byte addresses, else
    IPv6's (RFC 8200 section 8.1)."""
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, l4_len)
    return src + dst + struct.pack("!IxxxB", l4_len, proto)


def pseudo_sum(src: bytes, dst: bytes, proto: int, l4_len: int) -> int:
    """The folded pseudo-header sum: what a CHECKSUM_PARTIAL L4 checksum field holds."""
    return sum16(pseudo_header(src, dst, proto, l4_len))


def tcp_frame(*, src_mac: str, dst_mac: str, src: str, dst: str, sport: int, dport: int,
              flags: int = TCP_ACK, payload: int | bytes = 0, seq: int = 1, ack: int = 1,
              ip_id: int = 1, csum: str = "full", frame_len: int | None = None) -> bytes:
    """One Ethernet+IPv4+TCP frame. ``payload``: bytes, or a length (a repeating pattern);
    ``frame_len``: total length wanted (payload sized to fit); short frames are padded
    to 60 bytes after the IP datagram, as on the wire."""
    hdrs = 14 + 20 + 20
    if frame_len is not None:
        payload = max(0, frame_len - hdrs)
    if isinstance(payload, int):
        payload = bytes((i * 7 + 3) & 0xFF for i in range(payload))
    s, d = ip4(src), ip4(dst)
    l4_len = 20 + len(payload)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4,
                      flags, 64240, 0, 0) + payload
    ph = pseudo_sum(s, d, PROTO_TCP, l4_len)
    if csum == "full":
        check = 0xFFFF & ~sum16(struct.pack("!H", ph) + tcp)
    elif csum == "partial":
        check = ph
    else:
        raise ValueError(f"csum must be 'full' or 'partial', not {csum!r}")
    tcp = tcp[:16] + struct.pack("!H", check) + tcp[18:]
    iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + l4_len, ip_id & 0xFFFF, 0x4000, 64,
                      PROTO_TCP, 0, s, d)
    iph = iph[:10] + struct.pack("!H", 0xFFFF & ~sum16(iph)) + iph[12:]
    frame = mac(dst_mac) + mac(src_mac) + struct.pack("!H", ETH_P_IP) + iph + tcp
    return frame.ljust(MIN_FRAME, b"\0")


@dataclass
class Parsed:
    dst_mac: str
    src_mac: str
    proto: int
    src: str
    dst: str
    sport: int = 0
    dport: int = 0
    ip_csum_ok: bool = False
    l4_csum_ok: bool | None = None
    inner: Parsed | None = None  # IPIP: the encapsulated packet


def _fmt_mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def parse(frame: bytes) -> Parsed | None:
    """Ethernet/IPv4 (TCP or IPIP) back into fields; None if it is neither."""
    if len(frame) < 34 or struct.unpack("!H", frame[12:14])[0] != ETH_P_IP:
        return None
    p = _parse_ip(frame[14:])
    if p is None:
        return None
    p.dst_mac, p.src_mac = _fmt_mac(frame[0:6]), _fmt_mac(frame[6:12])
    return p


def _parse_ip(pkt: bytes) -> Parsed | None:
    ihl = (pkt[0] & 0x0F) * 4
    tot = struct.unpack("!H", pkt[2:4])[0]
    proto = pkt[9]
    p = Parsed("", "", proto, str(ipaddress.IPv4Address(pkt[12:16])),
               str(ipaddress.IPv4Address(pkt[16:20])), ip_csum_ok=sum16(pkt[:ihl]) == 0xFFFF)
    l4 = pkt[ihl:tot]
    if proto == PROTO_TCP and len(l4) >= 20:
        p.sport, p.dport = struct.unpack("!HH", l4[:4])
        p.l4_csum_ok = sum16(struct.pack("!H", pseudo_sum(pkt[12:16], pkt[16:20], proto,
                                                          len(l4))) + l4) == 0xFFFF
    elif proto == PROTO_IPIP:
        p.inner = _parse_ip(l4)
    return p


# --- pcap ---------------------------------------------------------------------------------
PCAP_MAGIC = 0xA1B2C3D4  # microsecond timestamps
LINKTYPE_ETHERNET = 1


def write_pcap(path: str | os.PathLike, frames: list[bytes], *, t0: float = 0.0, step: float = 0.001) -> None:
    """`frames` as a classic pcap file (little-endian, Ethernet) that tcpdump and Wireshark
    read; frame i is stamped t0 + i * step seconds."""
    out = [struct.pack("<IHHiIII", PCAP_MAGIC, 2, 4, 0, 0, 65535, LINKTYPE_ETHERNET)]
    for i, f in enumerate(frames):
        usec = round((t0 + i * step) * 1e6)
        out.append(struct.pack("<IIII", usec // 10**6, usec % 10**6, len(f), len(f)) + f)
    with open(path, "wb") as fh:
        fh.write(b"".join(out))


def read_pcap(path: str | os.PathLike) -> list[bytes]:
    """The frames of a pcap file written by `write_pcap` (or any little-endian classic pcap)."""
    with open(path, "rb") as fh:
        data = fh.read()
    if len(data) < 24 or struct.unpack("<I", data[:4])[0] != PCAP_MAGIC:
        raise ValueError(f"{path}: not a little-endian classic pcap file")
    frames, off = [], 24
    while off + 16 <= len(data):
        incl = struct.unpack("<I", data[off + 8:off + 12])[0]
        frames.append(data[off + 16:off + 16 + incl])
        off += 16 + incl
    return frames
