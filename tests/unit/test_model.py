"""xdplb.model on hand-made frames (no kernel): decisions, rewritten frames, counters;
every checksum the model writes is verified by scapy recomputing it."""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import replace
from types import SimpleNamespace

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
    h = model.hash_flow(client, vip, sport, dport, proto, m.hash_seed)
    return model.nat_port_candidates(h, m.nat_port_min, m.nat_port_max)[0]


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
    action, out, stat, frame = run(m, tcp4())
    assert (action, stat) == (XDP_TX, Stat.FWD_NEW)
    o = Ether(out)
    be = m.config.backends[m.conntrack[model.parse(frame)[1].key].backend_id]
    fs = next(iter(m.conntrack.values()))
    assert o.src == LB_MAC and o.dst == ":".join(f"{b:02x}" for b in be.mac)
    assert o[IP].src == "10.0.0.10" and o[IP].dst == str(A(be.addr[:4]))
    assert o[TCP].sport == fs.nat_port and o[TCP].dport == (be.port or 80)
    assert fs.nat_port == nat_port_for(m, "10.0.1.100", 40000, "10.0.0.10", 80, 6)
    assert_checksums(out)
    ns = next(iter(m.nat_rev.values()))
    assert ns.client_mac == bytes.fromhex(CLIENT_MAC.replace(":", ""))
    assert m.last_counters == {Stat.FWD_NEW: (1, len(frame))}
    assert m.be_stats[fs.backend_id] == [1, len(frame), 1]


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
    assert not m.conntrack and not m.nat_rev


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
    assert not m.conntrack


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
        _action, out, stat = m.process(bytes(tcp4(sport=sport, dport=20000)))
        stats.append(stat)
        if stat == Stat.FWD_NEW:
            assert Ether(out)[TCP].sport == 20001  # 20000 is a VIP port
    assert stats[0] == Stat.FWD_NEW and set(stats[1:]) == {Stat.DROP_NAT_FULL}
    assert m.random_picks == 3 * model.NAT_TRIES


def test_same_client_retransmission_after_conntrack_loss_keeps_its_port(m):
    _, out1, _, _ = run(m, tcp4())
    m.conntrack.clear()  # LRU eviction
    _, out2, stat, _ = run(m, tcp4())
    assert stat == Stat.FWD_NEW and out1 == out2


@pytest.mark.parametrize("policy, want", [("reselect", Stat.FWD_NEW),
                                          ("reset", Stat.DROP_REMOVED)])
def test_removed_backend_reselects_or_resets(policy, want):
    vip = replace(NAT4, on_backend_removed=policy)
    m = Model.from_specs([vip], knobs())
    m.process(bytes(tcp4()))
    bid = next(iter(m.conntrack.values())).backend_id
    pulled = tuple(replace(b, active=m.lb.backend_ids(vip.key)[b.key] != bid)
                   for b in vip.backends)
    m.lb.apply([replace(vip, backends=pulled)])
    action, out, stat = m.process(bytes(tcp4(flags="A")))
    assert stat == want
    if want == Stat.FWD_NEW:
        assert m.last_counters[Stat.RESELECT] == (1, 0)
        assert next(iter(m.conntrack.values())).backend_id != bid
        assert_checksums(out)
    else:
        assert action == XDP_DROP


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
