"""xdplb.model on hand-made frames (no kernel): decisions, rewritten frames, counters;
every checksum the model writes is verified by scapy recomputing it."""
from __future__ import annotations

import ctypes as C
import ipaddress
import struct
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
from scapy.layers.inet6 import (
    ICMPv6PacketTooBig,
    IPerror6,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from xdplb import model
from xdplb._bpf import abi
from xdplb.lb import BackendSpec, VipSpec, vip_key
from xdplb.model import (
    XDP_DROP,
    XDP_PASS,
    XDP_REDIRECT,
    XDP_TX,
    FlowKey,
    Model,
    Stat,
    Unmodelled,
)

pytestmark = pytest.mark.unit

A = ipaddress.ip_address
CLIENT_MAC, LB_MAC = "de:ad:be:ef:00:01", "de:ad:be:ef:00:10"
BE_MACS = [bytes([2, 0, 0, 0, 1, i]) for i in range(8)]


def knobs(**kw):
    base = {"hash_seed": 0x5EED1B0B, "nat_port_min": 10000, "nat_port_max": 32767, "frag_drop": False,
                "csum_fixup": True}
    base.update(kw)
    return SimpleNamespace(**base)


def be4(i: int, **kw) -> BackendSpec:
    return BackendSpec(A(f"10.0.1.{i}"), BE_MACS[i], **kw)


def be6(i: int, **kw) -> BackendSpec:
    return BackendSpec(A(f"fd00:1::{i}"), BE_MACS[i], **kw)


NAT4 = VipSpec(A("10.0.0.10"), 80, "tcp", backends=(be4(1), be4(2, port=8080)), ring_size=251)
UDP4 = VipSpec(A("10.0.0.10"), 53, "udp", backends=(be4(3),), ring_size=251)
DSR4 = VipSpec(A("10.0.0.20"), 0, "tcp", mode="dsr", backends=(be4(4), be4(5)), ring_size=251)
NAT6 = VipSpec(A("fd00::10"), 443, "tcp", backends=(be6(1), be6(2)), ring_size=251)
UDP6 = VipSpec(A("fd00::10"), 53, "udp", backends=(be6(3),), ring_size=251)
EMPTY = VipSpec(A("10.0.0.40"), 80, "tcp", ring_size=251)
VIPS = [NAT4, UDP4, DSR4, NAT6, UDP6, EMPTY]


@pytest.fixture
def m() -> Model:
    return Model.from_specs(VIPS, knobs())


def eth(src=CLIENT_MAC, dst=LB_MAC):
    return Ether(src=src, dst=dst)


def tcp4(src="10.0.1.100", dst="10.0.0.10", sport=40000, dport=80, flags="S", payload=b"",
         **ip):
    return eth() / IP(src=src, dst=dst, **ip) / TCP(sport=sport, dport=dport, flags=flags) / \
        payload


def udp4(src="10.0.2.100", dst="10.0.0.10", sport=5353, dport=53, payload=b"q", **ip):
    return eth() / IP(src=src, dst=dst, **ip) / UDP(sport=sport, dport=dport) / payload


def tcp6(src="fd01::100", dst="fd00::10", sport=40000, dport=443, flags="S", payload=b""):
    return eth() / IPv6(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags) / payload


def pseudo_sum(src: str, dst: str, proto: int, length: int) -> int:
    s, d = A(src).packed, A(dst).packed
    raw = s + d + (struct.pack("!BBH", 0, proto, length) if len(s) == 4 else
                   struct.pack("!IxxxB", length, proto))
    total = sum(struct.unpack(f"!{len(raw) // 2}H", raw))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def partial(pkt):
    """The CHECKSUM_PARTIAL form a veth peer with TX offload sends: the L4 field holds
    only the folded pseudo-header sum."""
    l3 = pkt[IP] if IP in pkt else pkt[IPv6]
    l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
    l4_len = len(bytes(l4))
    l4.chksum = pseudo_sum(l3.src, l3.dst, 6 if TCP in pkt else 17, l4_len)
    return pkt


def assert_checksums(frame: bytes) -> None:
    """Every checksum in the frame (but the inner L4 one of an ICMP error, which the
    data plane leaves alone) equals what scapy computes for it."""
    layers = []
    p = Ether(frame)
    while p:
        layers.append(p)
        p = p.payload
    checked = 0
    for i, layer in enumerate(layers):
        kind = type(layer)
        if kind in (TCPerror, UDPerror) or kind.__name__ == "Padding":
            continue
        name = "cksum" if kind.__name__.startswith("ICMPv6") else "chksum"
        if name not in layer.fields:
            continue
        got = layer.fields[name]
        if kind is UDP and got == 0 and not any(type(x) is IPv6 for x in layers):
            continue  # no UDP checksum
        q = Ether(frame)
        for _ in range(i):
            q = q.payload
        del q.fields[name]
        rebuilt = Ether(bytes(Ether(frame).__class__(bytes(_root(q)))))
        want = _nth(rebuilt, i).fields[name]
        assert got == want, f"{kind.__name__} checksum {got:#06x}, scapy says {want:#06x}"
        checked += 1
    assert checked, "no checksum checked"


def _root(layer):
    while layer.underlayer is not None:
        layer = layer.underlayer
    return layer


def _nth(p, i):
    for _ in range(i):
        p = p.payload
    return p


def run(m: Model, pkt, ifindex: int = 1):
    frame = bytes(pkt)
    return (*m.process(frame, ifindex), frame)


def nat_port_for(m: Model, client, sport, vip, dport, proto) -> int:
    """The NAT port of a new flow when its set is free: the port of set hash % ports."""
    h = model.hash_flow(client, vip, sport, dport, proto, m.hash_seed)
    return model.nat_port_candidates(h, m.nat_port_min, m.nat_port_max)[0]


def entries(m: Model) -> dict[int, model.FlowEntry]:
    """The model's used entries (family set: never-used ways may hold set flags)."""
    return {i: e for i, e in m.flows.items() if e.family}


def only_entry(m: Model) -> tuple[int, model.FlowEntry]:
    (idx, e), = entries(m).items()
    return idx, e


def key_of(frame: bytes) -> FlowKey:
    return model.parse(frame)[1].key


def open_flow(m: Model, pkt):
    """Process SYN `pkt` and confirm its flow, as the client's ACK of the handshake
    would: (action, out, stat) of the SYN."""
    frame = bytes(pkt)
    res = m.process(frame)
    idx = m.find_flow(key_of(frame))
    if idx is not None:
        m.flows[idx].flags &= ~(abi.FLOW_F_EMBRYONIC | abi.FLOW_F_SYNACK)
    return res


# --- primitives ------------------------------------------------------------------------


def test_hash_of_stored_key_equals_hash_of_addresses():
    for src, dst in (("10.0.1.100", "10.0.0.10"), ("fd01::1", "fd00::10")):
        k = FlowKey(model._addr16(src), model._addr16(dst), 1234, 80, 6,
                    abi.AF_INET if ":" not in src else abi.AF_INET6)
        assert model._hash_raw(k.src, k.dst, 1234, 80, 6, 7) == \
            model.hash_flow(src, dst, 1234, 80, 6, 7)


def test_csum_replace_is_rfc1624():
    """Replacing a word and updating the checksum incrementally keeps it valid."""
    data = bytearray(b"\x12\x34\x00\x00\x56\x78")
    before = ~model.csum_fold64(sum(struct.unpack("<3H", data))) & 0xFFFF
    old = struct.unpack_from("<H", data)[0]
    data[0:2] = b"\x43\x21"
    new = struct.unpack_from("<H", data)[0]
    after = model.csum_replace(before, ((~old) & 0xFFFF) + new)
    assert model.csum_fold64(sum(struct.unpack("<3H", data)) + after) == 0xFFFF


def test_addr_bit_matches_abi():
    for a in ("10.0.0.10", "fd00::10", "192.168.1.1"):
        assert model.addr_bit(model._addr16(a)) == abi.addr_bit(a)


# --- parse -----------------------------------------------------------------------------


def test_parse_vlan_options_and_lengths_from_ip_header():
    pkt = Ether() / Dot1Q(vlan=5) / IP(src="1.2.3.4", dst="5.6.7.8", options=b"\x01" * 8) / \
        UDP(sport=1, dport=2) / b"abc"
    frame = bytes(pkt) + b"\0" * 11  # Ethernet padding is not payload
    res, p = model.parse(frame)
    assert res == model.PARSE_OK
    assert (p.l3_off, p.l4_off, p.l4_len, p.sport, p.dport) == (18, 18 + 28, 11, 1, 2)


@pytest.mark.parametrize("mutate, want", [
    (lambda f: f[:14 + 19], model.PARSE_MALFORMED),  # truncated IPv4 header
    (lambda f: f[:14] + bytes([0x44]) + f[15:], model.PARSE_MALFORMED),  # ihl 4
    (lambda f: f[:16] + b"\x05\xdc" + f[18:], model.PARSE_MALFORMED),  # tot_len > frame
    (lambda f: f[:14] + bytes([0x55]) + f[15:], model.PARSE_MALFORMED),  # version 5
    (lambda f: f[:14 + 20 + 10], model.PARSE_MALFORMED),  # TCP header cut
    (lambda f: f[:12] + b"\x08\x06" + f[14:], model.PARSE_NOT_IP),
    (lambda f: f[:13], model.PARSE_NOT_IP),
])
def test_parse_malformed(mutate, want):
    frame = mutate(bytes(tcp4()))
    assert model.parse(frame)[0] == want


def test_parse_ipv6_extension_headers_and_fragments():
    base = IPv6(src="fd01::1", dst="fd00::10")
    ok = Ether() / base / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / TCP(sport=1, dport=443)
    res, p = model.parse(bytes(ok))
    assert res == model.PARSE_OK and p.l4_off == 14 + 40 + 16 and p.dport == 443
    frag = Ether() / base / IPv6ExtHdrFragment(m=1) / TCP(sport=1, dport=443)
    assert model.parse(bytes(frag))[0] == model.PARSE_FRAG
    five = Ether() / base
    for _ in range(5):
        five = five / IPv6ExtHdrDestOpt()
    assert model.parse(bytes(five / TCP()))[0] == model.PARSE_MALFORMED


# --- forward path ----------------------------------------------------------------------


def test_syn_to_nat_vip(m):
    action, out, stat, frame = run(m, tcp4(), ifindex=3)
    assert (action, stat) == (XDP_TX, Stat.FWD_NEW)
    o = Ether(out)
    idx, e = only_entry(m)
    assert m.find_flow(key_of(frame)) == idx
    be = m.config.backends[e.backend_id]
    assert o.src == LB_MAC and o.dst == ":".join(f"{b:02x}" for b in be.mac)
    assert o[IP].src == "10.0.0.10" and o[IP].dst == str(A(be.addr[:4]))
    port = nat_port_for(m, "10.0.1.100", 40000, "10.0.0.10", 80, 6)
    assert o[TCP].sport == port == m.nat_port_of(idx) and o[TCP].dport == (be.port or 80)
    assert idx == (port - m.nat_port_min) * model.FLOW_WAYS  # the first way of its set
    assert_checksums(out)
    assert e.key == key_of(frame) and e.flags == abi.FLOW_F_EMBRYONIC and e.set_flags == 0
    assert e.client_mac == bytes.fromhex(CLIENT_MAC.replace(":", "")) and e.client_ifindex == 3
    assert e.reply_tag == model.reply_tag(be.addr, be.port or 80, "10.0.0.10", 6, m.hash_seed)
    assert m.last_counters == {Stat.FWD_NEW: (1, len(frame))}
    assert m.be_stats[e.backend_id] == [1, len(frame), 1]


def test_dsr_flow_lives_in_the_conntrack_region(m):
    frame = bytes(tcp4(dst="10.0.0.20", dport=22))
    assert m.process(frame)[2] == Stat.FWD_NEW
    idx, e = only_entry(m)
    h = model.hash_flow("10.0.1.100", "10.0.0.20", 40000, 22, 6, m.hash_seed)
    assert idx == m.nat_sets * model.FLOW_WAYS + (h & (m.ct_sets // 2 - 1)) * model.CT_WAYS
    assert (e.reply_tag, e.client_mac, e.client_ifindex) == (0, bytes(6), 0)
    assert e.flags == abi.FLOW_F_EMBRYONIC
    assert m.process(bytes(tcp4(dst="10.0.0.20", dport=22, flags="F")))[2] == Stat.FWD_EST
    assert m.flows[idx].flags == abi.FLOW_F_EMBRYONIC  # before the handshake: no mark
    assert m.process(bytes(tcp4(dst="10.0.0.20", dport=22, flags="A")))[2] == Stat.FWD_EST
    assert m.flows[idx].flags == 0  # DSR: the client's ACK confirms it
    assert m.process(bytes(tcp4(dst="10.0.0.20", dport=22, flags="F")))[2] == Stat.FWD_EST
    assert m.flows[idx].flags == abi.FLOW_F_CLOSING  # a FIN marks the flow closing


def test_established_keeps_backend_and_port(m):
    _a1, out1, s1, _ = run(m, tcp4())
    _a2, out2, s2, _ = run(m, tcp4(flags="A", payload=b"x" * 101))
    assert (s1, s2) == (Stat.FWD_NEW, Stat.FWD_EST)
    assert Ether(out1)[IP].dst == Ether(out2)[IP].dst
    assert Ether(out1)[TCP].sport == Ether(out2)[TCP].sport
    assert_checksums(out2)


def test_reply_is_reverse_translated_to_the_client(m):
    _, out, _, _ = run(m, tcp4())
    fwd = Ether(out)
    reply = Ether(src=fwd.dst, dst=LB_MAC) / IP(src=fwd[IP].dst, dst=fwd[IP].src) / \
        TCP(sport=fwd[TCP].dport, dport=fwd[TCP].sport, flags="SA") / b"hello!!"
    action, out, stat, _ = run(m, reply)
    assert (action, stat) == (XDP_TX, Stat.REPLY)
    o = Ether(out)
    assert (o.dst, o.src) == (CLIENT_MAC, LB_MAC)
    assert (o[IP].src, o[IP].dst, o[TCP].sport, o[TCP].dport) == ("10.0.0.10", "10.0.1.100",
                                                                  80, 40000)
    assert_checksums(out)


def test_ipv6_nat_and_reply(m):
    action, out, stat, _ = run(m, tcp6(payload=b"odd"))
    assert (action, stat) == (XDP_TX, Stat.FWD_NEW)
    fwd = Ether(out)
    assert fwd[IPv6].src == "fd00::10" and fwd[IPv6].dst.startswith("fd00:1::")
    assert_checksums(out)
    reply = Ether(src=fwd.dst, dst=LB_MAC) / IPv6(src=fwd[IPv6].dst, dst=fwd[IPv6].src) / \
        TCP(sport=fwd[TCP].dport, dport=fwd[TCP].sport, flags="SA")
    action, out, stat, _ = run(m, reply)
    assert (action, stat) == (XDP_TX, Stat.REPLY)
    assert Ether(out)[IPv6].dst == "fd01::100"
    assert_checksums(out)


def test_ip_options_vlan_and_padding_are_kept(m):
    pkt = Ether(src=CLIENT_MAC, dst=LB_MAC) / Dot1AD(vlan=7) / \
        IP(src="10.0.1.100", dst="10.0.0.10", options=b"\x01\x01\x01\x00") / \
        TCP(sport=40001, dport=80, flags="S") / b"abc"
    frame = bytes(pkt) + b"\xaa" * 9
    action, out, stat = m.process(frame)
    assert (action, stat) == (XDP_TX, Stat.FWD_NEW)
    assert out[-9:] == b"\xaa" * 9 and out[12:18] == frame[12:18]
    assert out[18 + 20:18 + 24] == b"\x01\x01\x01\x00"  # the options, untouched
    assert_checksums(out)


def test_udp_zero_checksum_stays_zero_and_computed_zero_becomes_ffff(m):
    pkt = udp4()
    pkt[UDP].chksum = 0
    _, out, stat, _ = run(m, pkt)
    assert stat == Stat.FWD_NEW and Ether(out)[UDP].chksum == 0
    # a second flow: learn its translation with a zero payload word, then send the word
    # that makes the translated segment sum to 0xffff (a computed checksum of 0)
    _, out, _, _ = run(m, udp4(sport=5354, payload=b"\0\0"))
    o = Ether(out)
    probe = IP(src=o[IP].src, dst=o[IP].dst) / UDP(sport=o[UDP].sport, dport=o[UDP].dport) / \
        b"\0\0"
    s0 = ~IP(bytes(probe))[UDP].chksum & 0xFFFF  # folded sum with a zero word
    word = 0xFFFF - s0
    _action, out, stat, _ = run(m, udp4(sport=5354, payload=struct.pack("!H", word)))
    assert stat == Stat.FWD_EST
    assert Ether(out)[UDP].chksum == 0xFFFF
    assert_checksums(out)


def test_partial_checksum_is_finished_over_the_segment(m):
    pkt = partial(tcp4(payload=b"y" * 77))
    frame = bytes(pkt)
    action, out, stat = m.process(frame)
    assert (action, stat) == (XDP_TX, Stat.FWD_NEW)
    assert m.last_counters[Stat.CSUM_FULL] == (1, 0)
    assert_checksums(out)
    # IPv6 UDP, odd length
    action, out, stat = m.process(bytes(partial(eth() / IPv6(src="fd01::5", dst="fd00::10") /
                                                UDP(sport=7, dport=53) / b"odd")))
    assert stat == Stat.FWD_NEW and Stat.CSUM_FULL in m.last_counters
    assert_checksums(out)


def test_partial_checksum_left_alone_without_fixup():
    m = Model.from_specs(VIPS, knobs(csum_fixup=False))
    _action, _out, stat = m.process(bytes(partial(tcp4(payload=b"z" * 10))))
    assert stat == Stat.FWD_NEW and Stat.CSUM_FULL not in m.last_counters


def test_dsr_changes_only_macs_but_finishes_a_partial_checksum(m):
    frame = bytes(tcp4(dst="10.0.0.20", dport=22, payload=b"ssh?"))
    action, out, stat = m.process(frame)
    assert (action, stat) == (XDP_TX, Stat.FWD_NEW)
    assert out[12:] == frame[12:] and out[6:12] == frame[0:6]
    frame = bytes(partial(tcp4(dst="10.0.0.20", dport=22, sport=40002, payload=b"ssh?")))
    action, out, stat = m.process(frame)
    assert stat == Stat.FWD_NEW and m.last_counters[Stat.CSUM_FULL] == (1, 0)
    assert out[14:14 + 36] == frame[14:14 + 36]  # IP header and ports unchanged
    assert_checksums(out)


# --- what is not balanced --------------------------------------------------------------


def test_not_ours_passes_untouched(m):
    for pkt, stat in ((tcp4(dst="10.0.0.1"), Stat.PASS_NOT_VIP),
                      (tcp4(dport=22), Stat.PASS_NOT_VIP),  # SSH on the VIP address
                      (udp4(dport=54), Stat.PASS_NOT_VIP),
                      (eth() / ARP(), Stat.PASS_NOT_IP),
                      (eth() / IP(src="10.0.1.100", dst="10.0.0.10", ihl=4) / TCP(),
                       Stat.PASS_MALFORMED)):
        frame = bytes(pkt)
        action, out, got = m.process(frame)
        assert (action, out, got) == (XDP_PASS, frame, stat)
    assert not m.flows


def test_fragments_to_a_vip_pass_or_drop_by_policy(m):
    first = tcp4()
    first[IP].flags = "MF"
    frame = bytes(first)
    assert m.process(frame) == (XDP_PASS, frame, Stat.PASS_FRAGMENT)
    later = tcp4(frag=100)
    assert m.process(bytes(later))[2] == Stat.PASS_FRAGMENT
    other = tcp4(dst="10.0.0.1")
    other[IP].flags = "MF"
    assert m.process(bytes(other))[2] == Stat.PASS_NOT_VIP
    v6 = eth() / IPv6(src="fd01::1", dst="fd00::10") / IPv6ExtHdrFragment(m=1) / TCP(dport=443)
    assert m.process(bytes(v6))[2] == Stat.PASS_FRAGMENT
    dropping = Model.from_specs(VIPS, knobs(frag_drop=True))
    assert dropping.process(frame)[:3:2] == (XDP_DROP, Stat.DROP_FRAGMENT)
    assert not m.flows


def test_vip_without_backends_drops(m):
    frame = bytes(tcp4(dst="10.0.0.40"))
    assert m.process(frame) == (XDP_DROP, frame, Stat.DROP_NO_BACKEND)
    vid = m.lb.vip_id(EMPTY.key)
    assert m.vip_stats[vid] == [1, len(frame), 0]


# --- ICMP errors -----------------------------------------------------------------------


def test_icmp_error_to_the_vip_goes_to_the_flows_backend(m):
    _, out, _, _ = run(m, tcp4())
    fwd = Ether(out)
    err = Ether(src="02:00:00:00:00:99", dst=LB_MAC) / IP(src="10.9.9.9", dst="10.0.0.10") / \
        ICMP(type=3, code=4, nexthopmtu=1400) / \
        IPerror(src="10.0.0.10", dst="10.0.1.100") / TCPerror(sport=80, dport=40000)
    action, out, stat, _ = run(m, err)
    assert (action, stat) == (XDP_TX, Stat.ICMP_FWD)
    o = Ether(out)
    assert o[IP].src == "10.9.9.9" and o[IP].dst == fwd[IP].dst and o.dst == fwd.dst
    assert (o[IPerror].src, o[IPerror].dst) == (fwd[IP].dst, "10.0.0.10")
    assert (o[TCPerror].sport, o[TCPerror].dport) == (fwd[TCP].dport, fwd[TCP].sport)
    assert_checksums(out)


def test_icmp_error_from_a_backend_goes_back_to_the_client(m):
    _, out, _, _ = run(m, udp4())
    fwd = Ether(out)
    err = Ether(src=fwd.dst, dst=LB_MAC) / IP(src=fwd[IP].dst, dst="10.0.0.10") / \
        ICMP(type=3, code=3) / IPerror(src="10.0.0.10", dst=fwd[IP].dst) / \
        UDPerror(sport=fwd[UDP].sport, dport=fwd[UDP].dport)
    action, out, stat, _ = run(m, err)
    assert (action, stat) == (XDP_TX, Stat.ICMP_REPLY)
    o = Ether(out)
    assert (o[IP].src, o[IP].dst, o.dst) == ("10.0.0.10", "10.0.2.100", CLIENT_MAC)
    assert (o[IPerror].src, o[IPerror].dst) == ("10.0.2.100", "10.0.0.10")
    assert (o[UDPerror].sport, o[UDPerror].dport) == (5353, 53)
    assert_checksums(out)


def test_icmpv6_packet_too_big_from_a_backend(m):
    _, out, _, _ = run(m, tcp6())
    fwd = Ether(out)
    err = Ether(src=fwd.dst, dst=LB_MAC) / IPv6(src=fwd[IPv6].dst, dst="fd00::10") / \
        ICMPv6PacketTooBig(mtu=1280) / IPerror6(src="fd00::10", dst=fwd[IPv6].dst) / \
        TCPerror(sport=fwd[TCP].sport, dport=fwd[TCP].dport)
    action, out, stat, _ = run(m, err)
    assert (action, stat) == (XDP_TX, Stat.ICMP_REPLY)
    o = Ether(out)
    assert (o[IPv6].src, o[IPv6].dst) == ("fd00::10", "fd01::100")
    assert (o[IPerror6].src, o[IPerror6].dst) == ("fd01::100", "fd00::10")
    assert_checksums(out)


def test_icmp_that_is_not_an_error_or_not_about_a_flow_passes(m):
    echo = bytes(eth() / IP(src="10.0.1.100", dst="10.0.0.10") / ICMP(type=8))
    assert m.process(echo) == (XDP_PASS, echo, Stat.PASS_NOT_VIP)
    stray = bytes(eth() / IP(src="10.9.9.9", dst="10.0.0.10") / ICMP(type=3) /
                  IPerror(src="10.0.0.10", dst="10.0.1.200") / TCPerror(sport=80, dport=1))
    assert m.process(stray) == (XDP_PASS, stray, Stat.PASS_NOT_VIP)


# --- flow state: NAT ports, removed backends -------------------------------------------


def test_nat_port_skips_vip_ports_and_runs_out():
    vip = VipSpec(A("10.0.0.10"), 20000, "tcp", backends=(be4(1),), ring_size=251)
    m = Model.from_specs([vip], knobs(nat_port_min=20000, nat_port_max=20001))
    stats = []
    for sport in range(1000, 1004):
        _action, out, stat = open_flow(m, tcp4(sport=sport, dport=20000))
        stats.append(stat)
        if stat == Stat.FWD_NEW:
            assert Ether(out)[TCP].sport == 20001  # 20000 is a VIP port
    # one backend: every flow has the same reply tuple, so the port serves one flow; the
    # SYNs that find no way are answered with an RST|ACK (guard.h)
    assert stats[0] == Stat.FWD_NEW and set(stats[1:]) == {Stat.RST_NAT_FULL}
    (idx, e), = entries(m).items()
    assert idx == 1 * model.FLOW_WAYS and e.sport == 1000
    # every set a flow hashed to and could not use is marked: its flows may live next door
    assert {i // model.FLOW_WAYS for i, x in m.flows.items() if x.set_flags} == {0, 1}


def _clients_of_set(m: Model, vip: str, dport: int, want_set: int, n: int,
                    proto: int = 6) -> list[str]:
    out = []
    for i in range(1, 60000):
        c = f"10.2.{i >> 8}.{i & 255}"
        if model.hash_flow(c, vip, 40000, dport, proto, m.hash_seed) % m.nat_sets == want_set:
            out.append(c)
            if len(out) == n:
                return out
    raise LookupError("no such clients")


def test_a_nat_port_serves_flows_of_different_reply_tuples():
    """Flows of set 0 of a 3-port range: its port is shared by flows to different
    backends (FLOW_WAYS of them); a second and a third flow to the same backend spill to
    the next sets (and are found there), a fourth is dropped (the probes wrap around to
    sets that already hold a flow to that backend)."""
    four = VipSpec(A("10.0.0.10"), 80, "tcp", backends=tuple(be4(i) for i in range(1, 5)),
                   ring_size=251)
    m = Model.from_specs([four], knobs(nat_port_min=30000, nat_port_max=30002))
    ring = m.config.rings[m.lb.vip_id(four.key)]
    clients = _clients_of_set(m, "10.0.0.10", 80, 0, 14)
    seen: dict[int, int] = {}  # backend id -> flows so far
    got: dict[str, tuple[str, int]] = {}
    for c in clients:
        bid = ring[model.hash_flow(c, "10.0.0.10", 40000, 80, 6, m.hash_seed) % 251]
        k = seen.get(bid, 0)
        seen[bid] = k + 1
        _a, out, stat = open_flow(m, tcp4(src=c))
        if k >= 3:
            assert stat == Stat.RST_NAT_FULL, c
            continue
        assert stat == Stat.FWD_NEW and Ether(out)[TCP].sport == 30000 + k, c
        got[c] = (Ether(out)[IP].dst, Ether(out)[TCP].sport)
    assert len(seen) == 4 and max(seen.values()) > 3  # every case happened
    assert m.flows[0].set_flags == model.SET_F_SPILL
    assert sum(1 for i in entries(m) if i < model.FLOW_WAYS) == 4  # set 0 is full
    for c, want in got.items():  # found again, in whichever set they live
        _a, out, stat = m.process(bytes(tcp4(src=c, flags="A")))
        assert stat == Stat.FWD_EST and (Ether(out)[IP].dst, Ether(out)[TCP].sport) == want
    for c, (baddr, port) in got.items():  # and their replies go back to them
        bmac = BE_MACS[int(baddr.rsplit(".", 1)[1])]
        reply = Ether(src=bmac, dst=LB_MAC) / IP(src=baddr, dst="10.0.0.10") / \
            TCP(sport=80, dport=port, flags="SA")
        _a, out, stat = m.process(bytes(reply))
        assert stat == Stat.REPLY and Ether(out)[IP].dst == c


def test_nat_flows_beyond_their_probe_sets_are_dropped():
    """One backend, a 20-port range, flows of set 0: each takes the next port (the same
    backend cannot share one), NAT_PROBES of them fit, the next one is dropped; every set
    but the last probed one is marked spilled."""
    one = VipSpec(A("10.0.0.10"), 80, "tcp", backends=(be4(1),), ring_size=251)
    m = Model.from_specs([one], knobs(nat_port_min=30000, nat_port_max=30019))
    clients = _clients_of_set(m, "10.0.0.10", 80, 0, model.NAT_PROBES + 1)
    ports = []
    for c in clients:
        _a, out, stat = open_flow(m, tcp4(src=c))
        ports.append(Ether(out)[TCP].sport if stat == Stat.FWD_NEW else stat)
    assert ports == [30000 + i for i in range(model.NAT_PROBES)] + [Stat.RST_NAT_FULL]
    spilled = [s for s in range(20)
               if (e := m.flows.get(s * model.FLOW_WAYS)) is not None and e.set_flags]
    assert spilled == list(range(model.NAT_PROBES - 1))
    for c, port in zip(clients, ports[:-1]):  # found again along the probe sequence
        _a, out, stat = m.process(bytes(tcp4(src=c, flags="A")))
        assert stat == Stat.FWD_EST and Ether(out)[TCP].sport == port


def test_stale_entry_with_the_same_reply_tuple_is_taken_over():
    one = VipSpec(A("10.0.0.10"), 80, "tcp", backends=(be4(1),), ring_size=251)
    m = Model.from_specs([one], knobs(nat_port_min=30000, nat_port_max=30000,
                                      tcp_timeout_s=100))
    m.now = 1000  # (a clock at 0 stamps 1: flow.h::flow_now is never 0)
    assert open_flow(m, tcp4(src="10.2.0.1"))[2] == Stat.FWD_NEW
    assert m.process(bytes(tcp4(src="10.2.0.2")))[2] == Stat.RST_NAT_FULL
    m.now += 100 * m.hz  # not yet idle beyond the timeout
    assert m.process(bytes(tcp4(src="10.2.0.2")))[2] == Stat.RST_NAT_FULL
    m.now += 1
    assert open_flow(m, tcp4(src="10.2.0.2"))[2] == Stat.FWD_NEW
    (idx, e), = entries(m).items()  # the same way: replies must find one flow only
    assert idx == 0 and e.src[:4] == A("10.2.0.2").packed and e.last_seen == m.now
    # the old flow is gone: without a SYN it gets no entry (nor would a SYN: its reply
    # tuple is held by a live flow)
    assert m.process(bytes(tcp4(src="10.2.0.1", flags="A")))[2] == Stat.DROP_NOT_SYN
    assert m.process(bytes(tcp4(src="10.2.0.1")))[2] == Stat.RST_NAT_FULL


def test_stale_way_with_the_same_reply_tuple_wins_over_an_earlier_one():
    """Replies must find one flow only: a new flow takes the stale way holding its reply
    tuple, not the first stale way of the set."""
    two = VipSpec(A("10.0.0.10"), 80, "tcp", backends=(be4(1), be4(2)), ring_size=251)
    m = Model.from_specs([two], knobs(nat_port_min=30000, nat_port_max=30000,
                                      tcp_timeout_s=10))
    m.now = 1000  # a clock at 0 stamps 1 (flow_now is never 0)
    ring = m.config.rings[m.lb.vip_id(two.key)]

    def backend(c: str) -> int:
        return ring[model.hash_flow(c, "10.0.0.10", 40000, 80, 6, m.hash_seed) % 251]

    clients = [f"10.2.0.{i}" for i in range(1, 200)]
    a = clients[0]
    b = next(c for c in clients if backend(c) != backend(a))
    c = next(c for c in clients if backend(c) == backend(b) and c != b)
    assert m.process(bytes(tcp4(src=a)))[2] == Stat.FWD_NEW
    assert m.process(bytes(tcp4(src=b)))[2] == Stat.FWD_NEW
    assert [m.flows[w].src[:4] for w in (0, 1)] == [A(a).packed, A(b).packed]
    m.now += 10 * m.hz + 1  # both idle beyond the timeout: both ways stale
    assert m.process(bytes(tcp4(src=c)))[2] == Stat.FWD_NEW
    assert m.flows[1].src[:4] == A(c).packed and m.flows[0].src[:4] == A(a).packed


def test_set_flags_stay_when_the_first_way_is_reused():
    """A flow that spilled to the next set is still found after the first way of its own
    set was taken by another flow."""
    one = VipSpec(A("10.0.0.10"), 80, "tcp", backends=(be4(1),), ring_size=251)
    m = Model.from_specs([one], knobs(nat_port_min=30000, nat_port_max=30001,
                                      tcp_timeout_s=10, refresh_s=1))
    m.now = 1000  # a clock at 0 stamps 1 (flow_now is never 0)
    a, b, c = _clients_of_set(m, "10.0.0.10", 80, 0, 3)
    assert m.process(bytes(tcp4(src=a)))[2] == Stat.FWD_NEW  # set 0
    _x, out, stat = m.process(bytes(tcp4(src=b)))  # same reply tuple: spills to set 1
    assert stat == Stat.FWD_NEW and Ether(out)[TCP].sport == 30001
    assert m.flows[0].set_flags == model.SET_F_SPILL
    m.now += 10 * m.hz + 1
    assert m.process(bytes(tcp4(src=b, flags="A")))[2] == Stat.FWD_EST  # b refreshed
    _x, out, stat = m.process(bytes(tcp4(src=c)))  # a's way: stale, the same reply tuple
    assert stat == Stat.FWD_NEW and Ether(out)[TCP].sport == 30000
    assert m.flows[0].src[:4] == A(c).packed and m.flows[0].set_flags == model.SET_F_SPILL
    _x, out, stat = m.process(bytes(tcp4(src=b, flags="A")))
    assert stat == Stat.FWD_EST and Ether(out)[TCP].sport == 30001


def test_reply_is_checked_against_the_flows_backend():
    """The reply tag is the backend's tuple when the flow began; a reply is taken only if
    the flow's backend still has that tuple (here its port changed, its id kept)."""
    old = VipSpec(A("10.0.0.10"), 80, "tcp", ring_size=251,
                  backends=(be4(1, port=8080, ring_key="b1"),))
    m = Model.from_specs([old], knobs())
    _, out, _, _ = run(m, tcp4())
    port = Ether(out)[TCP].sport
    m.lb.apply([replace(old, backends=(be4(1, port=9090, ring_key="b1"),))])
    assert len(m.config.backends) == 1  # the same backend id, rewritten
    _a, out, stat = m.process(bytes(tcp4(flags="A")))
    assert stat == Stat.FWD_EST and Ether(out)[TCP].dport == 9090
    for bport in (8080, 9090):
        reply = Ether(src=BE_MACS[1], dst=LB_MAC) / IP(src="10.0.1.1", dst="10.0.0.10") / \
            TCP(sport=bport, dport=port, flags="A")
        frame = bytes(reply)
        assert m.process(frame) == (XDP_PASS, frame, Stat.PASS_NOT_VIP), bport


def test_reply_must_come_from_the_flows_backend():
    m = Model.from_specs([NAT4], knobs())
    _, out, _, _ = run(m, tcp4())
    fwd = Ether(out)
    for src, sport, dst in ((fwd[IP].dst, fwd[TCP].dport + 1, "10.0.0.10"),
                            ("10.0.1.99", fwd[TCP].dport, "10.0.0.10"),
                            (fwd[IP].dst, fwd[TCP].dport, "10.0.0.11")):
        reply = Ether(src=fwd.dst, dst=LB_MAC) / IP(src=src, dst=dst) / \
            TCP(sport=sport, dport=fwd[TCP].sport, flags="SA")
        frame = bytes(reply)
        assert m.process(frame) == (XDP_PASS, frame, Stat.PASS_NOT_VIP)


def test_conntrack_bucket_full_evicts_embryonic_then_the_longest_idle_flow():
    m = Model.from_specs([DSR4], knobs(ct_sets=2))  # one bucket of CT_WAYS
    assert m.ct_sets == 2 and m.size == (m.nat_sets + 2) * model.FLOW_WAYS
    first = m.nat_sets * model.FLOW_WAYS
    outs = {}
    for sport in range(1, model.CT_WAYS + 1):
        m.now = 100 + sport  # flow 1 is the longest idle
        _a, outs[sport], stat = m.process(bytes(tcp4(dst="10.0.0.20", sport=sport)))
        assert stat == Stat.FWD_NEW
        if sport != 3:  # flow 3 stays embryonic
            m.process(bytes(tcp4(dst="10.0.0.20", sport=sport, flags="A")))
    assert [m.flows[first + w].sport for w in range(model.CT_WAYS)] == list(range(1, 9))
    m.now = 200
    frame = bytes(tcp4(dst="10.0.0.20", sport=9))
    action, _out, stat = m.process(frame)
    assert (action, stat) == (XDP_TX, Stat.FWD_NEW)
    assert m.last_counters == {Stat.FWD_NEW: (1, len(frame)), Stat.EVICT_EMBRYONIC: (1, 0)}
    assert m.flows[first + 2].sport == 9  # the embryonic flow's way
    m.process(bytes(tcp4(dst="10.0.0.20", sport=9, flags="A")))
    frame = bytes(tcp4(dst="10.0.0.20", sport=10))
    _a, _out, stat = m.process(frame)
    assert stat == Stat.FWD_NEW and m.last_counters[Stat.CT_FULL] == (1, 0)
    assert m.flows[first].sport == 10  # flow 1, idle the longest, is evicted
    # the others are still known; the evicted flow (no SYN: within the non-SYN budget)
    # is chosen again, onto the same backend: the ring did not change
    for sport in (2, 4, 5, 9):
        assert m.process(bytes(tcp4(dst="10.0.0.20", sport=sport, flags="A")))[2] \
            == Stat.FWD_EST
    _a, out, stat = m.process(bytes(tcp4(dst="10.0.0.20", sport=1, flags="A")))
    assert stat == Stat.FWD_NEW and Stat.EVICT_EMBRYONIC in m.last_counters
    assert Ether(out)[Ether].dst == Ether(outs[1])[Ether].dst


def test_conntrack_flows_balance_over_two_buckets():
    """A bucket with CT_PREFER live flows sends the next flow of its hash to the less
    loaded of its two buckets, marks itself spilled, and the flow is found there."""
    m = Model.from_specs([DSR4], knobs(ct_sets=64))
    want_b1 = None
    placed = []
    for sport in range(1, 5000):
        h = model.hash_flow("10.0.1.100", "10.0.0.20", sport, 80, 6, m.hash_seed)
        b1, b2 = m._ct_buckets(h)
        want_b1 = b1 if want_b1 is None else want_b1
        if b1 != want_b1 or b2 == b1:
            continue
        m.process(bytes(tcp4(dst="10.0.0.20", sport=sport)))
        placed.append((sport, b1, b2))
        if len(placed) == model.CT_PREFER + 1:
            break
    sport, b1, b2 = placed[-1]
    idx = m.find_flow(key_of(bytes(tcp4(dst="10.0.0.20", sport=sport))))
    assert idx is not None and m._ct_first(b2) <= idx < m._ct_first(b2) + model.CT_WAYS
    assert m.flows[m._ct_first(b1)].set_flags == model.SET_F_SPILL
    assert m.process(bytes(tcp4(dst="10.0.0.20", sport=sport, flags="A")))[2] == Stat.FWD_EST


def test_dsr_flow_whose_conntrack_entry_was_lost_keeps_its_backend(m):
    """(NAT flows have one entry, found by their replies too: only the conntrack region
    can be lost.)"""
    frame = bytes(tcp4(dst="10.0.0.20", dport=22))
    _, out1, _ = m.process(frame)
    _, nat_out, _ = m.process(bytes(tcp4()))
    m.reset_flows(nat=False)
    assert [e.dport for e in entries(m).values()] == [80]  # the NAT flow stays
    _, out2, stat = m.process(frame)
    assert stat == Stat.FWD_NEW and out1 == out2
    _, nat_out2, stat = m.process(bytes(tcp4()))
    assert stat == Stat.FWD_EST and nat_out2 == nat_out


@pytest.mark.parametrize("policy, want", [("reselect", Stat.FWD_NEW),
                                          ("reset", Stat.DROP_REMOVED)])
@pytest.mark.parametrize("spec", [NAT4, DSR4], ids=["nat", "dsr"])
def test_removed_backend_reselects_or_resets(spec, policy, want):
    vip = replace(spec, on_backend_removed=policy)
    m = Model.from_specs([vip], knobs())
    syn = tcp4(dst=str(spec.address), dport=spec.port or 80)
    m.process(bytes(syn))
    idx, e = only_entry(m)
    bid, old_tag = e.backend_id, e.reply_tag
    pulled = tuple(replace(b, active=m.lb.backend_ids(vip.key)[b.key] != bid)
                   for b in vip.backends)
    m.lb.apply([replace(vip, backends=pulled)])
    ack = syn.copy()
    ack[TCP].flags = "A"
    action, out, stat = m.process(bytes(ack))
    if spec.mode == "nat" and want == Stat.FWD_NEW:
        # the new backend never saw the handshake: the entry is retired, the ACK answered
        # with an RST (seq = its ACK number)
        assert stat == Stat.RST_NOT_SYN and m.find_flow(key_of(bytes(ack))) is None
        assert action == XDP_TX and Ether(out)[TCP].flags == "R"
        assert Ether(out)[TCP].seq == ack[TCP].ack
        assert m.last_counters[Stat.RESELECT] == (1, 0)
        action, out, stat = m.process(bytes(syn))  # the client's next SYN opens it anew
    assert stat == want
    if want == Stat.DROP_REMOVED:
        assert action == XDP_DROP and m.flows[idx].backend_id == bid
        return
    assert_checksums(out)
    if spec.mode == "dsr":
        assert m.last_counters[Stat.RESELECT] == (1, 0)  # re-selected in place
        assert only_entry(m)[0] == idx and m.flows[idx].backend_id != bid
        return
    # the old entry was retired (stale, matching nothing) before the flow claimed a way
    # as a new flow: the first stale way of its set, its own
    new_idx, new = only_entry(m)
    assert new_idx == idx and new.backend_id != bid and new.proto == 6
    assert new.reply_tag != old_tag and Ether(out)[TCP].sport == m.nat_port_of(idx)
    assert m.process(bytes(ack))[2] == Stat.FWD_EST


def test_retired_nat_entry_matches_nothing_and_is_reused():
    vip = replace(NAT4, on_backend_removed="reselect")
    m = Model.from_specs([vip], knobs())
    m.process(bytes(tcp4()))
    (idx, e), = entries(m).items()
    m.now = 5
    m._flow_retire(m.flows[idx], m.now)
    assert m.flows[idx].last_seen == (5 - 0x80000000) & model.M32
    assert m.find_flow(e.key) is None
    reply = Ether(src=CLIENT_MAC, dst=LB_MAC) / IP(src=str(A(m.config.backends[e.backend_id]
                                                             .addr[:4])), dst="10.0.0.10") / \
        TCP(sport=m.config.backends[e.backend_id].port or 80, dport=m.nat_port_of(idx))
    assert m.process(bytes(reply))[2] == Stat.PASS_NOT_VIP  # proto 0: no reply matches
    assert m.process(bytes(tcp4(flags="A")))[2] == Stat.DROP_NOT_SYN  # no SYN, no flow
    assert m.process(bytes(tcp4()))[2] == Stat.FWD_NEW  # a new flow, same way
    assert only_entry(m)[0] == idx


def test_flow_entries_reads_a_kernel_table():
    from xdplb._bpf.dataplane import FLOW_DTYPE

    m = Model.from_specs(VIPS, knobs())
    m.process(bytes(tcp6()))
    m.process(bytes(tcp4(dst="10.0.0.20", dport=22)))
    t = np.zeros(m.size, dtype=FLOW_DTYPE)
    for i, e in m.flows.items():
        raw = abi.FlowEntry(src=abi.Addr.from_buffer_copy(e.src),
                            dst=abi.Addr.from_buffer_copy(e.dst), sport=abi.htons(e.sport),
                            dport=abi.htons(e.dport), proto=e.proto, family=e.family,
                            flags=e.flags, set_flags=e.set_flags, last_seen=12345,
                            reply_tag=e.reply_tag, backend_id=e.backend_id,
                            client_ifindex=e.client_ifindex,
                            client_mac=(C.c_uint8 * 6).from_buffer_copy(e.client_mac))
        t[i] = np.frombuffer(bytes(raw), dtype=FLOW_DTYPE)[0]
    t[7]["last_seen"] = 99  # a time stamp alone is no entry
    got = model.flow_entries(t)
    assert {i: e.decision() for i, e in got.items()} == m.table()
    assert {e.last_seen for e in got.values()} == {12345}
    t[next(iter(m.flows))]["client_mac"][5] ^= 1
    assert {i: e.decision() for i, e in model.flow_entries(t).items()} != m.table()


def test_redirect_to_another_interface():
    vip = VipSpec(A("10.0.0.10"), 80, "tcp", backends=(be4(1, ifindex=7),), ring_size=251)
    m = Model.from_specs([vip], knobs())
    frame = bytes(tcp4())
    action, out, stat = m.process(frame)
    assert (action, stat) == (XDP_DROP, Stat.TX_ERROR)  # no MAC known for ifindex 7
    m.add_tx_port(7, bytes.fromhex("020000000707"))
    action, out, stat = m.process(bytes(tcp4(sport=2)))
    assert (action, stat) == (XDP_REDIRECT, Stat.FWD_NEW)
    assert out[6:12] == bytes.fromhex("020000000707")


def test_fib_next_hop_is_not_modelled():
    vip = VipSpec(A("10.0.0.10"), 80, "tcp", backends=(BackendSpec(A("10.0.1.1")),),
                  ring_size=251)
    with pytest.raises(Unmodelled):
        Model.from_specs([vip], knobs()).process(bytes(tcp4()))


def test_port0_vip_on_the_snat_address_still_gets_replies():
    wild = VipSpec(A("10.0.0.21"), 0, "udp", backends=(be4(1),), ring_size=251)
    m = Model.from_specs([wild], knobs())
    _, out, stat = m.process(bytes(udp4(dst="10.0.0.21", dport=7777)))
    fwd = Ether(out)
    reply = Ether(src=fwd.dst, dst=LB_MAC) / IP(src=fwd[IP].dst, dst="10.0.0.21") / \
        UDP(sport=fwd[UDP].dport, dport=fwd[UDP].sport) / b"r"
    action, out, stat = m.process(bytes(reply))
    assert (action, stat) == (XDP_TX, Stat.REPLY)
    assert_checksums(out)


def test_model_never_writes_a_packet_it_passes(m):
    for pkt in (tcp4(dst="10.0.0.1"), partial(tcp4(dport=22)), udp4(dport=9)):
        frame = bytes(pkt)
        assert m.process(frame)[1] == frame


def test_raw_payload_is_untouched_by_a_nat_rewrite(m):
    payload = bytes(range(256)) * 3
    _, out, _, _frame = run(m, tcp4(payload=payload))
    assert Ether(out)[Raw].load == payload


def test_spilled_vip_is_found_through_the_hash_map():
    """Two VIPs with the same vip_slots index: the second lives in the vips hash map only
    (runtime.vip_spill), and is still balanced."""
    first = VipSpec(A("10.0.0.10"), 80, "tcp", backends=(be4(1),), ring_size=251)
    second = VipSpec(A("10.0.0.10"), 17437, "tcp", backends=(be4(2),), ring_size=251)
    assert abi.vip_slot(vip_key(*first.key)) == abi.vip_slot(vip_key(*second.key))
    m = Model.from_specs([first, second], knobs())
    assert m.config.vip_spill == 1 and len(m.config.vip_slots) == 1
    action, out, stat = m.process(bytes(tcp4(dport=17437)))
    assert (action, stat) == (XDP_TX, Stat.FWD_NEW)
    assert Ether(out)[IP].dst == "10.0.1.2"
