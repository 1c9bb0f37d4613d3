"""xdplb.frames: the checksum arithmetic every test, benchmark and the lab's ping share."""
from __future__ import annotations

import ipaddress
import struct

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from xdplb import frames as F


def test_the_rfc_1071_example_sums_and_inverts():
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert F.sum16(data) == 0xDDF2
    assert F.inet_csum(data) == 0x220D
    assert F.sum16(b"\x01") == 0x0100  # an odd byte is padded with a zero


def test_a_filled_in_checksum_sums_to_all_ones():
    hdr = struct.pack("!BBHHH", 8, 0, 0, 0x1234, 1) + b"abc"
    full = hdr[:2] + struct.pack("!H", F.inet_csum(hdr)) + hdr[4:]
    assert F.inet_csum(full) == 0


def test_pseudo_headers_of_both_families():
    v4 = F.pseudo_header(bytes(4), bytes(4), 6, 20)
    assert v4 == bytes(8) + b"\x00\x06\x00\x14"
    a, b = ipaddress.ip_address("fd00::1").packed, ipaddress.ip_address("fd00::2").packed
    v6 = F.pseudo_header(a, b, 17, 0x10008)
    assert v6 == a + b + b"\x00\x01\x00\x08" + b"\x00\x00\x00\x11"


def test_tcp_frame_matches_scapy_and_parses_back():
    raw = F.tcp_frame(src_mac="de:ad:be:ef:00:01", dst_mac="de:ad:be:ef:00:10",
                      src="10.0.0.1", dst="10.0.0.10", sport=40000, dport=8000,
                      flags=F.TCP_SYN, payload=7, seq=5, ack=0)
    pkt = Ether(raw)
    want_tcp, want_ip = pkt[TCP].chksum, pkt[IP].chksum
    del pkt[TCP].chksum, pkt[IP].chksum
    again = Ether(bytes(pkt))  # scapy computes both checksums afresh
    assert (again[TCP].chksum, again[IP].chksum) == (want_tcp, want_ip)
    p = F.parse(raw)
    assert p and (p.src, p.dst, p.sport, p.dport) == ("10.0.0.1", "10.0.0.10", 40000, 8000)
    assert p.ip_csum_ok and p.l4_csum_ok
    partial = F.parse(F.tcp_frame(src_mac="de:ad:be:ef:00:01", dst_mac="de:ad:be:ef:00:10",
                                  src="10.0.0.1", dst="10.0.0.10", sport=1, dport=2,
                                  csum="partial"))
    assert partial and not partial.l4_csum_ok  # the CHECKSUM_PARTIAL form is not complete
