"""Bit-exact Python reference of the data plane (bpf/xdplb.bpf.c and its headers).

Two levels:

* the primitives the rest of the code already uses: `hash_flow` and `reply_tag`
  (hash.h), `select_slot` (select.h) and `nat_port_candidates` (flow.h: the
  NAT_PROBES ports a new flow may get);
* `Model`: the whole program as plain functions over plain data. It takes the
  same frames as the XDP entry `xdplb` and returns the same verdict, the same
  output frame byte for byte, and moves the same `stats` counters (and per-VIP /
  per-backend counters), keeping its own copy of the `flows` table::

      m = Model.from_specs(vips, knobs)          # FakeDataPlane + LoadBalancer
      action, out, stat = m.process(frame)       # XDP_TX, rewritten frame, Stat.FWD_NEW

  Pipeline, each step mirrored from its header: `parse` (parse.h) -> classify
  (select.h: the .bss pre-filter, the vip_slots array then the vips hash map when
  some VIP spilled, exact VIP then port-0 wildcard; NAT replies by port range
  and nat_reply_find; ICMP errors as in process_icmp / icmp.h) -> flow (flow.h,
  lb.h::flow_backend) -> rewrite (rewrite.h / csum.h: RFC 1624 incremental
  updates, the CHECKSUM_PARTIAL detection and full recompute, UDP/IPv4 zero
  checksums) -> next hop (forward.h::xmit_mac: configured MAC, XDP_TX out of the
  ingress interface or XDP_REDIRECT through tx_ports / if_macs) -> counters
  (stats.h).

The flow table (`Model.flows`: index -> `FlowEntry`, an absent index is a
never-used, all-zero entry) has the kernel's geometry: FLOW_WAYS ways per set,
first the NAT region (`nat_sets` sets, set s <=> NAT port nat_port_min + s),
then the conntrack region (`ct_sets` sets, a power of two) of the other modes.
Every rule of flow.h is followed: lookups scan a set's ways in order and stop
at the first never-used way; a NAT flow lives in set hash % nat_sets or, while
a set's first way has SET_F_SPILL, in the next one (NAT_PROBES sets at most); a
new NAT flow takes a stale way with its own reply tag, else the first never-used
or stale way, of its set and then of the next ones (VIP ports skipped, a live
flow with the same reply tag makes a set unusable), else is dropped
(ST_DROP_NAT_FULL); a new
conntrack flow takes the first never-used or stale way, else evicts way
(hash >> 30) % FLOW_WAYS (ST_CT_FULL); a NAT flow whose backend was removed is
retired (proto 0, stale) and claims a way as a new flow, a conntrack flow is
re-selected in place; replies are found by port (the set), reply tag, protocol,
family and the flow's backend (address, port, SNAT address). `Model.table()`
and `flow_entries()` (over DataPlane.flow_table()) give comparable views of the
model's and the kernel's tables.

Words are read as the BPF program reads them: memory bytes loaded little-endian
(one's complement sums do not care about byte order, but the exact 16-bit
results written back do, so the model computes in the same representation).

What the model does NOT model:

* time: the model has a clock (`Model.now`, jiffies, 0 by default) that never
  moves by itself; every entry it creates is stamped `now`, so with the clock
  left alone nothing is ever stale (but retired entries) and "refresh" happens
  only when a FIN/RST adds the closing flag. Tests against the kernel must use
  timeouts (and a refresh interval) far longer than the test (e.g.
  Knobs(tcp_timeout_s=1e6, ...)), and compare entries without `last_seen`
  (FlowEntry.decision()): the kernel's is real jiffies. Advancing `now` by hand
  gives the kernel's timeout rules (ages are 32-bit, as in flow.h).
* bpf_fib_lookup: a backend without a configured MAC raises `Unmodelled`
  (after the flow state was updated, as the program would have).
* concurrency: the compare-and-swap of flow_publish never fails here (one CPU).
* trace events (ring buffer).
"""
from __future__ import annotations

import ctypes as C
import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple, cast

from ._bpf import abi
from ._bpf.abi import Stat
from .config import DEFAULTS

if TYPE_CHECKING:
    from .lb import LoadBalancer

H_P1 = 0x9E3779B1
H_P2 = 0x85EBCA77
H_P3 = 0xC2B2AE3D
M32 = 0xFFFFFFFF
FLOW_WAYS = abi.FLOW_WAYS
SET_F_SPILL = abi.SET_F_SPILL
NAT_PROBES = 16  # flow.h: sets a NAT flow may live in
CT_WAYS = abi.CT_WAYS  # entries of a conntrack bucket (two sets)
CT_PREFER = abi.CT_PREFER
AGE_MAX = 0x7FFFFFFF  # timeouts are capped like Knobs.timeouts: flow ages are 32-bit

# XDP actions
XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)

# parse.h
PARSE_OK, PARSE_NOT_IP, PARSE_OTHER_L4, PARSE_FRAG, PARSE_MALFORMED = range(5)
IPV6_EXT_MAX = 4
_IPV6_EXT = (0, 43, 60, 44)  # hop-by-hop, routing, destination options, fragment
TCPF_FIN, TCPF_SYN, TCPF_RST, TCPF_ACK = 0x01, 0x02, 0x04, 0x10
IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMPV6 = 1, 6, 17, 58
ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD = 0x0800, 0x86DD, 0x8100, 0x88A8

CSUM_MAX_CHUNKS = 16  # csum.h: longest segment finished = 16 * 512 bytes
ICMP_ERR_MAX_OFF = 256  # icmp.h
XLATE_PARTIAL = 1

__all__ = [
    "XDP_ABORTED",
    "XDP_DROP",
    "XDP_PASS",
    "XDP_REDIRECT",
    "XDP_TX",
    "FlowEntry",
    "FlowKey",
    "FlowPick",
    "Model",
    "Packet",
    "Result",
    "Stat",
    "Unmodelled",
    "addr_bit",
    "csum_fold64",
    "csum_replace",
    "ct_buckets",
    "flow_entries",
    "hash_flow",
    "nat_port_candidates",
    "parse",
    "reply_tag",
    "select_slot",
    "syn_cookie",
]


# --- hash.h / select.h / flow.h primitives ---------------------------------------------


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & M32


def _round(h: int, w: int) -> int:
    return (_rotl((h + w * H_P2) & M32, 13) * H_P1) & M32


def _sw16(x: int) -> int:
    """bpf_htons / bpf_ntohs on a little-endian machine."""
    return ((x & 0xFF) << 8) | ((x >> 8) & 0xFF)


def _hash_raw(src: bytes, dst: bytes, sport: int, dport: int, proto: int, seed: int) -> int:
    """hash.h::hash_flow over a flow_key: 16-byte stored addresses, host-order ports.
    The first word of each address, then the other three of both only when one of them
    is not zero (IPv6): an IPv4 flow's hash has two address rounds."""
    s = struct.unpack("<4I", src)
    d = struct.unpack("<4I", dst)
    h = (seed + H_P3) & M32
    h = _round(h, s[0])
    h = _round(h, d[0])
    if s[1] | s[2] | s[3] | d[1] | d[2] | d[3]:
        for w in (*s[1:], *d[1:]):
            h = _round(h, w)
    h = _round(h, _sw16(sport) | (_sw16(dport) << 16))
    h = _round(h, proto)
    h ^= h >> 15
    h = (h * H_P2) & M32
    h ^= h >> 13
    h = (h * H_P3) & M32
    h ^= h >> 16
    return h


def hash_flow(src, dst, sport: int, dport: int, proto: int, seed: int) -> int:
    """hash.h::hash_flow for a flow (addresses as strings/ip objects, ports host order)."""
    return _hash_raw(_addr16(src), _addr16(dst), sport, dport, proto, seed)


def reply_tag(be_addr, be_port: int, snat, proto: int, seed: int) -> int:
    """hash.h::reply_tag: the tag of a NAT flow's reply tuple (backend address, its port
    (host order), SNAT address), i.e. hash_flow of (backend, port) -> (SNAT, port 0)."""
    return _hash_raw(_addr16(be_addr), _addr16(snat), be_port, 0, proto, seed)


def ct_buckets(flow_hash: int, ct_sets: int) -> tuple[int, int]:
    """flow.h: a conntrack flow's two candidate buckets (CT_WAYS entries each, from the
    start of the conntrack region), its first and its second (they may be the same)."""
    mask = max(1, ct_sets // 2) - 1
    h = flow_hash & M32
    x = ((((h >> 16) | (h << 16)) & M32) * 0x85EBCA77) & M32
    return h & mask, (x ^ (x >> 15)) & mask


def syn_cookie(key: FlowKey, slot: int, secret: Sequence[int]) -> int:
    """guard.h::syn_cookie: the SYN challenge's cookie of client flow `key` in time slot
    `slot` (the low 32 bits count) under the 4-word key `secret`."""
    h = (secret[0] ^ slot) & M32
    h = _round(h, secret[1])
    for w in struct.unpack("<4I", key.src):
        h = _round(h, w)
    h = _round(h, secret[2])
    for w in struct.unpack("<4I", key.dst):
        h = _round(h, w)
    h = _round(h, _sw16(key.sport) | (_sw16(key.dport) << 16))
    h = _round(h, secret[3] ^ key.family)
    h ^= h >> 15
    h = (h * H_P2) & M32
    h ^= h >> 13
    h = (h * H_P3) & M32
    h ^= h >> 16
    return h


def select_slot(flow_hash: int, ring_size: int) -> int:
    return flow_hash % ring_size


def nat_port_candidates(flow_hash: int, lo: int, hi: int) -> list[int]:
    """The NAT ports (host order) a new flow may get, in order: the port of its set
    (flow hash % number of NAT ports) and of the NAT_PROBES - 1 next sets
    (flow.h::nat_claim; the data plane skips a set whose port is a VIP port, or whose
    ways are all taken or held by a live flow with the same reply tuple)."""
    n = (hi - lo + 1) & M32
    s = flow_hash % n
    return [lo + (s + i) % n for i in range(NAT_PROBES)]


def _addr16(addr) -> bytes:
    if isinstance(addr, bytes | bytearray) and len(addr) == 16:
        return bytes(addr)
    return ipaddress.ip_address(addr).packed.ljust(16, b"\0")


def addr_bit(addr16: bytes) -> int:
    """select.h::addr_bit of a stored 16-byte address."""
    a, b, c, d = struct.unpack("<4I", addr16)
    h = a ^ b ^ c ^ d
    return (h ^ (h >> 16)) & 0xFFFF


# --- csum.h --------------------------------------------------------------------------


def csum_fold64(s: int) -> int:
    """csum.h::csum_fold64: a 64-bit one's complement sum folded to 16 bits."""
    s &= 0xFFFFFFFFFFFFFFFF
    s = (s & 0xFFFFFFFF) + (s >> 32)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return s & 0xFFFF


def csum_replace(check: int, delta: int) -> int:
    """csum.h::csum_replace (RFC 1624 eqn. 3), on raw (as loaded) 16-bit values."""
    return ~csum_fold64(((~check) & 0xFFFF) + delta) & 0xFFFF


def _csum_words(a16: bytes, nw: int) -> int:
    return sum(struct.unpack_from(f"<{nw}I", a16))


def _csum_words_neg(a16: bytes, nw: int) -> int:
    return sum((~w) & M32 for w in struct.unpack_from(f"<{nw}I", a16))


def _csum_pseudo(src: bytes, dst: bytes, nw: int, proto: int, l4_len: int) -> int:
    return (_csum_words(src, nw) + _csum_words(dst, nw) + _sw16(proto & 0xFF)
            + _sw16(l4_len & 0xFFFF))


def _csum_frame(buf: bytearray, off: int, length: int) -> int:
    """csum.h::csum_frame: sum of `length` bytes at `off` as little-endian words (a
    trailing odd byte adds its value). Callers have already checked the bounds."""
    even = length & ~1
    s = sum(struct.unpack_from(f"<{even // 2}H", buf, off)) if even else 0
    if length & 1:
        s += buf[off + even]
    return s


def _rd16(b, o: int) -> int:
    return b[o] | (b[o + 1] << 8)


def _wr16(b: bytearray, o: int, v: int) -> None:
    b[o] = v & 0xFF
    b[o + 1] = (v >> 8) & 0xFF


# --- plain data ----------------------------------------------------------------------


class FlowKey(NamedTuple):
    """struct flow_key: 16-byte stored addresses (IPv4 in the first 4), host-order ports."""

    src: bytes
    dst: bytes
    sport: int
    dport: int
    proto: int
    family: int

    @classmethod
    def from_abi(cls, k) -> FlowKey:
        return cls(bytes(k.src), bytes(k.dst), abi.ntohs(k.sport), abi.ntohs(k.dport),
                   k.proto, k.family)

    def reversed(self) -> FlowKey:
        """icmp.h::reverse_tuple."""
        return FlowKey(self.dst, self.src, self.dport, self.sport, self.proto, self.family)

    def __repr__(self) -> str:
        n = 4 if self.family == abi.AF_INET else 16
        s = ipaddress.ip_address(self.src[:n])
        d = ipaddress.ip_address(self.dst[:n])
        return f"FlowKey({s}:{self.sport} -> {d}:{self.dport} proto {self.proto})"


@dataclass
class FlowEntry:
    """struct flow_entry, one way of the `flows` table (ports host order, addresses
    16 bytes as stored, MAC 6 bytes). All zero: a way never used."""

    src: bytes = bytes(16)
    dst: bytes = bytes(16)
    sport: int = 0
    dport: int = 0
    proto: int = 0
    family: int = 0  # 0: a way never used
    flags: int = 0  # FLOW_F_*
    set_flags: int = 0  # SET_F_* (the first way of a NAT set), kept when the way is reused
    last_seen: int = 0  # jiffies, low 32 bits
    reply_tag: int = 0  # NAT: reply_tag() of the flow's reply tuple; 0 otherwise
    backend_id: int = 0
    client_ifindex: int = 0  # NAT: ingress interface of the client's frames
    client_mac: bytes = bytes(6)  # NAT: their Ethernet source
    ack_check: int = 0  # NAT, FLOW_F_SYNACK: low 16 bits of the backend's ISN + 1

    FIELDS = ("src", "dst", "sport", "dport", "proto", "family", "flags", "set_flags",
              "reply_tag", "backend_id", "client_ifindex", "client_mac", "ack_check")

    @classmethod
    def from_abi(cls, v) -> FlowEntry:
        """From an abi.FlowEntry or a record of DataPlane.flow_table() (FLOW_DTYPE)."""
        def raw(x) -> bytes:
            return x.tobytes() if hasattr(x, "tobytes") else bytes(x)

        return cls(raw(_get(v, "src")), raw(_get(v, "dst")),
                   abi.ntohs(int(_get(v, "sport"))), abi.ntohs(int(_get(v, "dport"))),
                   int(_get(v, "proto")), int(_get(v, "family")), int(_get(v, "flags")),
                   int(_get(v, "set_flags")), int(_get(v, "last_seen")),
                   int(_get(v, "reply_tag")), int(_get(v, "backend_id")),
                   int(_get(v, "client_ifindex")), raw(_get(v, "client_mac"))[:6],
                   int(_get(v, "ack_check")))

    @property
    def key(self) -> FlowKey:
        return FlowKey(self.src, self.dst, self.sport, self.dport, self.proto, self.family)

    def decision(self) -> tuple:
        """Everything but the time stamp: what must equal the kernel's entry."""
        return tuple(getattr(self, f) for f in self.FIELDS)

    def is_zero(self) -> bool:
        """Nothing but (maybe) last_seen set: as good as never used."""
        return self.decision() == _ZERO_DECISION


_ZERO_DECISION = FlowEntry().decision()


def _is_record(v) -> bool:
    return not hasattr(v, "_fields_")


def _get(v, name: str):
    return v[name] if _is_record(v) else getattr(v, name)


def flow_entries(table) -> dict[int, FlowEntry]:
    """The entries of a `flows` table (DataPlane.flow_table(): a FLOW_DTYPE array) that
    hold anything but a time stamp: index -> FlowEntry, comparable with Model.flows."""
    import numpy as np

    words = np.ascontiguousarray(table).view("<u8").reshape(len(table), -1)
    ls = abi.FlowEntry.last_seen.offset // 8  # last_seen shares a word with reply_tag
    keep = np.zeros(len(table), dtype=bool)
    for w in range(words.shape[1]):
        col = words[:, w]
        keep |= ((col >> np.uint64(32)) != 0) if w == ls else (col != 0)
    return {int(i): FlowEntry.from_abi(table[i]) for i in np.flatnonzero(keep)}


@dataclass
class Packet:
    """parse.h::struct packet."""

    frame_len: int
    ifindex: int
    l3_off: int = 0
    l4_off: int = 0
    src: bytes = bytes(16)
    dst: bytes = bytes(16)
    sport: int = 0
    dport: int = 0
    proto: int = 0
    family: int = 0
    l4_len: int = 0
    tcp_flags: int = 0
    tcp_data: bool = False  # the TCP segment carries payload
    tcp_seq: int = 0
    tcp_ack: int = 0

    @property
    def key(self) -> FlowKey:
        return FlowKey(self.src, self.dst, self.sport, self.dport, self.proto, self.family)

    @property
    def nw(self) -> int:
        return 1 if self.family == abi.AF_INET else 4


class Result(NamedTuple):
    action: int  # XDP_*
    out: bytes  # the frame as the program leaves it
    stat: Stat  # the `stats` counter of the verdict (others: Model.last_counters)


class Unmodelled(NotImplementedError):
    """The program would take a path the model does not follow (bpf_fib_lookup)."""


# --- parse.h -------------------------------------------------------------------------


def _be16(b, o: int) -> int:
    return (b[o] << 8) | b[o + 1]


def _parse_l4(pkt: Packet, frame: bytes, l4: int) -> int:
    n = len(frame)
    pkt.l4_off = l4
    if pkt.proto == IPPROTO_TCP:
        if l4 + 20 > n or pkt.l4_len < 20:
            return PARSE_MALFORMED
        pkt.sport, pkt.dport = _be16(frame, l4), _be16(frame, l4 + 2)
        pkt.tcp_flags = frame[l4 + 13]
        pkt.tcp_data = pkt.l4_len > (frame[l4 + 12] >> 4) * 4
        pkt.tcp_seq = int.from_bytes(frame[l4 + 4:l4 + 8], "big")
        pkt.tcp_ack = int.from_bytes(frame[l4 + 8:l4 + 12], "big")
        return PARSE_OK
    if pkt.proto == IPPROTO_UDP:
        if l4 + 8 > n or pkt.l4_len < 8:
            return PARSE_MALFORMED
        pkt.sport, pkt.dport = _be16(frame, l4), _be16(frame, l4 + 2)
        return PARSE_OK
    return PARSE_OTHER_L4


def _parse_ipv4(pkt: Packet, frame: bytes, l3: int) -> int:
    n = len(frame)
    if l3 + 20 > n:
        return PARSE_MALFORMED
    ihl = (frame[l3] & 0x0F) * 4
    tot = _be16(frame, l3 + 2)
    if frame[l3] >> 4 != 4 or ihl < 20 or tot < ihl:
        return PARSE_MALFORMED
    if l3 + tot > n:
        return PARSE_MALFORMED
    pkt.family = abi.AF_INET
    pkt.proto = frame[l3 + 9]
    pkt.src = bytes(frame[l3 + 12:l3 + 16]) + bytes(12)
    pkt.dst = bytes(frame[l3 + 16:l3 + 20]) + bytes(12)
    if _be16(frame, l3 + 6) & 0x3FFF:
        return PARSE_FRAG
    pkt.l4_len = tot - ihl
    return _parse_l4(pkt, frame, l3 + ihl)


def _parse_ipv6(pkt: Packet, frame: bytes, l3: int) -> int:
    n = len(frame)
    if l3 + 40 > n:
        return PARSE_MALFORMED
    plen = _be16(frame, l3 + 4)
    if frame[l3] >> 4 != 6 or l3 + 40 + plen > n:
        return PARSE_MALFORMED
    pkt.family = abi.AF_INET6
    pkt.src = bytes(frame[l3 + 8:l3 + 24])
    pkt.dst = bytes(frame[l3 + 24:l3 + 40])
    nexthdr = frame[l3 + 6]
    cursor = l3 + 40
    for _ in range(IPV6_EXT_MAX):
        if nexthdr not in _IPV6_EXT:
            break
        if cursor + 8 > n:
            return PARSE_MALFORMED
        if nexthdr == 44:
            pkt.proto = frame[cursor]
            return PARSE_FRAG
        length = (frame[cursor + 1] + 1) * 8
        nexthdr = frame[cursor]
        cursor += length
    pkt.proto = nexthdr
    if nexthdr in _IPV6_EXT:
        return PARSE_MALFORMED  # more extension headers than we skip
    if cursor > l3 + 40 + plen:
        return PARSE_MALFORMED
    pkt.l4_len = plen - (cursor - (l3 + 40))
    return _parse_l4(pkt, frame, cursor)


def parse(frame: bytes, ifindex: int = 1) -> tuple[int, Packet]:
    """parse.h::parse_packet: (PARSE_*, what was learnt)."""
    n = len(frame)
    pkt = Packet(frame_len=n, ifindex=ifindex)
    if n < 14:
        return PARSE_NOT_IP, pkt
    proto = _be16(frame, 12)
    l3 = 14
    if proto in (ETH_P_8021Q, ETH_P_8021AD):
        if 18 > n:
            return PARSE_NOT_IP, pkt
        proto = _be16(frame, 16)
        l3 = 18
    pkt.l3_off = l3
    if proto == ETH_P_IP:
        return _parse_ipv4(pkt, frame, l3), pkt
    if proto == ETH_P_IPV6:
        return _parse_ipv6(pkt, frame, l3), pkt
    return PARSE_NOT_IP, pkt


# --- configuration (the maps user space writes) ---------------------------------------


@dataclass(frozen=True)
class VipRec:
    vip_id: int
    ring_size: int
    snat: bytes
    mode: int
    flags: int


@dataclass(frozen=True)
class BackendRec:
    addr: bytes
    mac: bytes
    port: int  # host order, 0 = keep the VIP's port
    family: int
    flags: int
    ifindex: int
    snat: bytes = bytes(16)  # the VIP's source address towards it (replies are sent to it)


_NO_BACKEND_REC = BackendRec(bytes(16), bytes(6), 0, 0, 0, 0)  # an array entry never written


@dataclass
class Config:
    """Plain copy of vips, vip_addrs, backends, rings and the .bss switches."""

    vips: dict[tuple, VipRec] = field(default_factory=dict)  # (addr16, port, proto, family)
    vip_slots: dict[int, tuple] = field(default_factory=dict)  # index -> (vips key, VipRec)
    vip_spill: int = 0
    vip_addrs: set[tuple] = field(default_factory=set)  # (addr16, family)
    backends: dict[int, BackendRec] = field(default_factory=dict)
    rings: dict[int, Sequence[int]] = field(default_factory=dict)  # vip id -> sequence of ids
    prev_rings: dict[int, Sequence[int]] = field(default_factory=dict)  # before the last change
    wildcard_vips: int = 0
    nat_vips: int = 0
    addr_bits: frozenset = frozenset()
    port_bits: frozenset = frozenset()
    tx_ports: frozenset = frozenset()  # ifindexes in the tx_ports devmap
    if_macs: dict[int, bytes] = field(default_factory=dict)  # ifindex -> MAC

    @classmethod
    def from_source(cls, src) -> Config:
        """From anything shaped like FakeDataPlane (vips, vip_addrs, backends, rings, rt)."""
        c = cls()
        for k, info in src.vips.items():
            vk = abi.VipKey.from_buffer_copy(bytes(k))
            c.vips[(bytes(vk.addr), abi.ntohs(vk.port), vk.proto, vk.family)] = VipRec(
                info.vip_id, info.ring_size, bytes(info.snat_addr), info.mode, info.flags)
        for idx, slot in getattr(src, "vip_slots", {}).items():
            vk = slot.key
            if vk.family:
                info = slot.info
                c.vip_slots[int(idx)] = (
                    (bytes(vk.addr), abi.ntohs(vk.port), vk.proto, vk.family),
                    VipRec(info.vip_id, info.ring_size, bytes(info.snat_addr), info.mode,
                           info.flags))
        for k, count in src.vip_addrs.items():
            vk = abi.VipKey.from_buffer_copy(bytes(k))
            if count and vk.port == 0 and vk.proto == 0:
                c.vip_addrs.add((bytes(vk.addr), vk.family))
        for i, be in src.backends.items():
            c.backends[int(i)] = BackendRec(bytes(be.addr), bytes(be.mac), abi.ntohs(be.port),
                                            be.family, be.flags, be.ifindex,
                                            bytes(be.snat_addr))
        c.rings = {int(i): [int(x) for x in t] for i, t in src.rings.items()}
        c.prev_rings = {int(i): [int(x) for x in t]
                        for i, t in getattr(src, "prev_rings", {}).items()}
        rt = src.rt
        c.wildcard_vips, c.nat_vips = rt.wildcard_vips, rt.nat_vips
        c.vip_spill = getattr(rt, "vip_spill", 0)
        c.addr_bits = frozenset(_bits(rt.addr_bits))
        c.port_bits = frozenset(_bits(rt.port_bits))
        c.tx_ports = frozenset(int(i) for i in getattr(src, "tx_ports", {}))
        c.if_macs = {int(i): bytes(m)[:6] for i, m in getattr(src, "if_macs", {}).items()}
        return c


def _bits(words) -> list[int]:
    out = []
    for i, w in enumerate(words):
        while w:
            low = w & -w
            out.append(i * 64 + low.bit_length() - 1)
            w ^= low
    return out


class _Snapshot:
    """The configuration maps of a loaded DataPlane, read once (FakeDataPlane-shaped)."""

    def __init__(self, dp):
        self.vips = {bytes(k): v for k, v in dp.maps["vips"].items()}
        self.vip_addrs = {bytes(k): int.from_bytes(bytes(v), "little")
                          for k, v in dp.maps["vip_addrs"].items()}
        self.backends = dp.backend_entries()
        self.vip_slots = {}
        if "vip_slots" in dp.maps:
            raw = dp.maps["vip_slots"].read_all()
            size = C.sizeof(abi.VipSlot)
            for i in range(len(raw) // size):
                slot = abi.VipSlot.from_buffer_copy(raw, i * size)
                if slot.key.family:
                    self.vip_slots[i] = slot
        self.rings = {}
        self.prev_rings = {}
        for info in self.vips.values():
            t = _read_ring(dp, info.vip_id)
            if t is not None:
                self.rings[info.vip_id] = t
            if "prev_rings" in dp.maps:
                t = _read_ring(dp, info.vip_id, "prev_rings")
                if t is not None:
                    self.prev_rings[info.vip_id] = t
        self.rt = dp.runtime()
        self.tx_ports = {int.from_bytes(bytes(k)[:4], "little")
                         for k in dp.maps["tx_ports"]} if "tx_ports" in dp.maps else set()
        self.if_macs = {int.from_bytes(bytes(k)[:4], "little"): bytes(v)[:6]
                        for k, v in dp.maps["if_macs"].items()} if "if_macs" in dp.maps else {}


def _read_ring(dp, vip_id: int, outer: str = "rings"):
    table = dp.ring_table(vip_id, outer)
    return None if table is None else table.tolist()


# --- the program ---------------------------------------------------------------------


class FlowPick(NamedTuple):
    """lb.h::flow_backend's outcome for a client's packet (Model.pick)."""

    stat: Stat  # FWD_NEW, FWD_EST or the drop (DROP_NO_BACKEND, _NAT_FULL, _REMOVED)
    backend_id: int  # abi.NO_BACKEND when none was selected
    nat_port: int  # host order; 0 unless NAT and forwarded
    idx: int | None  # the index of the flow's entry in the table, None if it has none


class Model:
    """The data plane as plain Python: configuration, flow table and counters.

    `source` is FakeDataPlane-shaped (vips, vip_addrs, backends, rings, rt): the
    configuration is re-read whenever the source's `writes` log grows, so a
    LoadBalancer driving a FakeDataPlane reconfigures the model live.
    `knobs`: anything with Knobs' attributes (hash_seed, nat_port_min/max, ct_sets,
    frag_drop, csum_fixup, if_mac, *_timeout_s, refresh_s); defaults = Knobs() defaults.
    `ct_sets` 0 (or absent) means what the loader derives from Sizes().conntrack.
    """

    def __init__(self, source, knobs=None, hz: int = 1000):
        self.source = source
        self.lb: LoadBalancer | None = None
        k = knobs
        self.hash_seed = getattr(k, "hash_seed", DEFAULTS.hash_seed) & M32
        self.nat_port_min = getattr(k, "nat_port_min", DEFAULTS.nat_ports[0])
        self.nat_port_max = getattr(k, "nat_port_max", DEFAULTS.nat_ports[1])
        self.ct_sets = int(getattr(k, "ct_sets", 0) or _default_ct_sets())
        self.frag_drop = bool(getattr(k, "frag_drop", DEFAULTS.frag_policy == "drop"))
        self.csum_fixup = bool(getattr(k, "csum_fixup", True))
        mac = getattr(k, "if_mac", None)
        self.if_mac: bytes | None = None if mac is None else bytes(mac)
        self.gue_port = int(getattr(k, "gue_port", 6080))
        self.pmtu_rate = int(getattr(k, "pmtu_rate", 100))
        self.mtu = 65536  # MTU of the egress device bpf_check_mtu asks (lo under test runs)
        self._pmtu = [0, 0]  # encap.h pmtu_budget: [second, ICMP sent in it]
        self.hz = hz
        self.tcp_timeout = min(int(getattr(k, "tcp_timeout_s", DEFAULTS.tcp_timeout_s) * hz),
                               AGE_MAX)
        self.closing_timeout = min(int(getattr(k, "closing_timeout_s",
                                                 DEFAULTS.closing_timeout_s) * hz), AGE_MAX)
        self.udp_timeout = min(int(getattr(k, "udp_timeout_s", DEFAULTS.udp_timeout_s) * hz),
                               AGE_MAX)
        self.refresh = max(1, int(getattr(k, "refresh_s", DEFAULTS.refresh_s) * hz))
        self.syn_timeout = min(int(getattr(k, "syn_timeout_s", DEFAULTS.syn_timeout_s) * hz),
                               AGE_MAX)
        self.nonsyn_budget = int(getattr(k, "nonsyn_budget", DEFAULTS.nonsyn_budget))
        self.age_shift = int(getattr(k, "age_shift", 0)) & 31
        # guard.h: the SYN challenge and the RST answers
        self.syn_challenge = abi.CHALLENGE_MODES[getattr(k, "syn_challenge",
                                                         DEFAULTS.syn_challenge)]
        self.syn_challenge_rate = min(max(0, int(getattr(k, "syn_challenge_rate",
                                                         DEFAULTS.syn_challenge_rate))), M32)
        self.challenge_hold = max(0, int(getattr(k, "syn_challenge_hold_s",
                                                 DEFAULTS.syn_challenge_hold_s) * hz))
        self.verified_timeout = max(0, int(getattr(k, "verified_timeout_s",
                                                   DEFAULTS.verified_timeout_s) * hz))
        self.rst_rate = min(max(0, int(getattr(k, "rst_rate", DEFAULTS.rst_rate))), 1 << 24)
        self.cookie_shift = (int(getattr(k, "cookie_shift", 0)) & 63) or abi.cookie_shift_for(hz)
        secret = getattr(k, "cookie_secret", None)
        self.cookie_secret: tuple[int, ...] = struct.unpack("<4I", secret) if secret \
            else (0, 0, 0, 0)
        # the `flood` map of the one CPU the model has (abi.FloodState) and `verified`
        self.budget_window = 0  # flow.h::nonsyn_admit: window start, entries used
        self.budget_used = 0
        self.syn_window = 0  # guard.h::syn_gate: SYN misses counted this second
        self.syns = 0
        self.engaged_until = 0
        self.rst_tat = 0  # guard.h::rst_admit
        self.verified: dict[tuple[bytes, int], int] = {}  # (address, family) -> jiffies
        self.now = 0
        self.flows: dict[int, FlowEntry] = {}  # index -> entry; absent: never used
        self.stats = [[0, 0] for _ in range(abi.ST_MAX)]
        self.vip_stats: dict[int, list[int]] = {}
        self.be_stats: dict[int, list[int]] = {}
        self.last_counters: dict[Stat, tuple[int, int]] = {}
        self._tx: dict[int, bytes] = {}
        self._cfg: Config | None = None
        self._cfg_version = -1

    # construction ------------------------------------------------------------------
    @classmethod
    def from_specs(cls, vips, knobs=None, hz: int = 1000) -> Model:
        """A model configured like a fresh DataPlane after LoadBalancer.apply(vips):
        `model.lb` is that LoadBalancer (over a FakeDataPlane), for later changes."""
        from ._bpf.fake import FakeDataPlane
        from .lb import LoadBalancer

        fake = FakeDataPlane()
        lb = LoadBalancer(fake)
        lb.apply(list(vips))
        m = cls(fake, knobs, hz)
        m.lb = lb
        return m

    @classmethod
    def from_dataplane(cls, dp, knobs=None, hz: int | None = None) -> Model:
        """A model of a loaded DataPlane's current configuration (read once; the flow
        table starts empty, whatever the kernel's holds). The object's load-time knobs
        (hash seed, NAT range, ct_sets, fragment and checksum policies) and run-time
        timeouts replace `knobs`' when they can be read."""
        from ._bpf.dataplane import KNOBS_PIN, read_knobs

        snap = _Snapshot(dp)
        m = cls(snap, knobs, hz or snap.rt.hz or 1000)
        loaded = read_knobs(dp.maps[KNOBS_PIN]) if KNOBS_PIN in dp.maps else None
        if loaded is not None:
            m.hash_seed = loaded.hash_seed
            m.nat_port_min, m.nat_port_max = loaded.nat_port_min, loaded.nat_port_max
            m.frag_drop, m.csum_fixup = bool(loaded.frag_drop), bool(loaded.csum_fixup)
            m.ct_sets = loaded.ct_sets or m.ct_sets
            m.if_mac = bytes(loaded.if_mac) if loaded.mac_check else None
            m.gue_port, m.pmtu_rate = abi.ntohs(loaded.gue_port), loaded.pmtu_rate
        rt = snap.rt
        if rt.hz and rt.refresh:
            m.tcp_timeout, m.closing_timeout = rt.tcp_timeout, rt.closing_timeout
            m.udp_timeout, m.refresh = rt.udp_timeout, rt.refresh
            m.syn_timeout, m.nonsyn_budget = rt.syn_timeout, rt.nonsyn_budget
            m.age_shift = rt.age_shift
            m.syn_challenge, m.syn_challenge_rate = rt.syn_challenge, rt.syn_challenge_rate
            m.challenge_hold, m.verified_timeout = rt.challenge_hold, rt.verified_timeout
            m.rst_rate, m.cookie_shift = rt.rst_rate, rt.cookie_shift
            m.cookie_secret = tuple(rt.cookie_secret)
        return m

    @property
    def config(self) -> Config:
        version = len(getattr(self.source, "writes", ()))
        if self._cfg is None or version != self._cfg_version:
            self._cfg = Config.from_source(self.source)
            self._cfg.tx_ports = self._cfg.tx_ports | set(self._tx)
            self._cfg.if_macs.update(self._tx)
            self._cfg_version = version
        return self._cfg

    def add_tx_port(self, ifindex: int, mac: bytes) -> None:
        """Like DataPlane.add_tx_port: `ifindex` in tx_ports with `mac` in if_macs."""
        self._tx[ifindex] = bytes(mac)
        self._cfg = None

    def counters(self) -> dict[str, tuple[int, int]]:
        """Like DataPlane.stats(): counter name -> (packets, bytes)."""
        return {s.name.lower(): cast("tuple[int, int]", tuple(self.stats[s])) for s in Stat}

    # the flow table ----------------------------------------------------------------
    @property
    def nat_sets(self) -> int:
        """Sets of the NAT region: one per NAT port (flow.h::nat_sets)."""
        return (self.nat_port_max - self.nat_port_min + 1) & M32

    @property
    def size(self) -> int:
        """Entries of the `flows` table (its max_entries)."""
        return (self.nat_sets + self.ct_sets) * FLOW_WAYS

    def nat_port_of(self, idx: int) -> int:
        """The NAT port (host order) of the entry at `idx` of the NAT region."""
        return (self.nat_port_min + idx // FLOW_WAYS) & 0xFFFF

    def reset_flows(self, nat: bool = True, conntrack: bool = True) -> None:
        """Forget the flows of the NAT region, of the conntrack region, or both (like
        DataPlane.clear_flows; testing.fixtures.clear_flows clears both)."""
        split = self.nat_sets * FLOW_WAYS
        for idx in [i for i in self.flows if (i < split and nat) or (i >= split and conntrack)]:
            del self.flows[idx]
        # DataPlane.clear_flows zeroes `flood` (and empties `verified` with the NAT region)
        self.budget_window = self.budget_used = 0
        self.syn_window = self.syns = self.engaged_until = self.rst_tat = 0
        if nat:
            self.verified.clear()

    def table(self) -> dict[int, tuple]:
        """index -> FlowEntry.decision() of every entry holding anything but a time
        stamp: compare with {i: e.decision() for i, e in flow_entries(...).items()}."""
        return {i: e.decision() for i, e in sorted(self.flows.items()) if not e.is_zero()}

    def find_flow(self, key: FlowKey, nat: bool | None = None) -> int | None:
        """The index of client flow `key` (flow.h::flow_find) of a NAT VIP (nat=True) or
        of another mode (nat=False; None: the mode of the VIP `key` is addressed to)."""
        self._cfg_now = self.config
        if nat is None:
            vip = self._lookup_vip(key)
            if vip is None:
                return None
            nat = vip.mode == abi.MODE_NAT
        h = _hash_raw(key.src, key.dst, key.sport, key.dport, key.proto, self.hash_seed)
        return self._flow_find(key, h, nat)

    def pick(self, key: FlowKey, client_mac: bytes = bytes(6), ifindex: int = 1,
             tcp_flags: int = 0) -> FlowPick:
        """lb.h::flow_backend for a client's packet with tuple `key` (to a VIP), without
        a frame: the flow table changes as the packet would change it, and the counters
        it moves on the way (RESELECT, CT_FULL) move, not the verdict's. KeyError when
        `key` is addressed to no VIP."""
        self._cfg_now = self.config
        self.last_counters = {}
        vip = self._lookup_vip(key)
        if vip is None:
            raise KeyError(f"{key!r} is not addressed to a VIP")
        pkt = Packet(0, ifindex, src=key.src, dst=key.dst, sport=key.sport, dport=key.dport,
                     proto=key.proto, family=key.family, tcp_flags=tcp_flags)
        return self._flow_backend(pkt, vip, bytes(client_mac), None)

    def cookie(self, key: FlowKey, slot: int | None = None) -> int:
        """guard.h::syn_cookie of client flow `key` in time slot `slot` (default: now's)."""
        if slot is None:
            slot = self.now >> self.cookie_shift
        return syn_cookie(key, slot, self.cookie_secret)

    # the entry point ----------------------------------------------------------------
    def process(self, frame: bytes, ifindex: int = 1) -> Result:
        """SEC("xdp") xdplb on one frame: (action, output frame, verdict counter).
        `ifindex` is the ingress interface (BPF_PROG_TEST_RUN without a context:
        the loopback device, 1)."""
        self._cfg_now = self.config
        self.last_counters = {}
        buf = bytearray(frame)
        if self.if_mac is not None and frame[0:6] != self.if_mac:
            pkt = Packet(frame_len=len(frame), ifindex=ifindex)
            action, stat = self._verdict(pkt, Stat.PASS_OTHER_MAC, XDP_PASS)
            return Result(action, bytes(buf), stat)
        res, pkt = parse(frame, ifindex)
        if res == PARSE_OK:
            if not self._maybe_vip(pkt) and not self._is_nat_reply(pkt):
                action, stat = self._verdict(pkt, Stat.PASS_NOT_VIP, XDP_PASS)
            else:
                action, stat = self._process_packet(buf, pkt)
        elif res == PARSE_NOT_IP:
            action, stat = self._verdict(pkt, Stat.PASS_NOT_IP, XDP_PASS)
        elif res == PARSE_FRAG:
            action, stat = self._handle_fragment(pkt)
        elif res == PARSE_OTHER_L4:
            if (pkt.proto in (IPPROTO_ICMP, IPPROTO_ICMPV6)
                    and addr_bit(pkt.dst) in self._cfg_now.addr_bits):
                action, stat = self._process_icmp(buf, pkt)
            else:
                action, stat = self._verdict(pkt, Stat.PASS_NOT_VIP, XDP_PASS)
        else:
            action, stat = self._verdict(pkt, Stat.PASS_MALFORMED, XDP_PASS)
        return Result(action, bytes(buf), stat)

    # counters -----------------------------------------------------------------------
    def _count(self, stat: Stat, nbytes: int) -> None:
        c = self.stats[stat]
        c[0] += 1
        c[1] += nbytes
        p, b = self.last_counters.get(stat, (0, 0))
        self.last_counters[stat] = (p + 1, b + nbytes)

    def _verdict(self, pkt: Packet, stat: Stat, action: int) -> tuple[int, Stat]:
        self._count(stat, pkt.frame_len)
        return action, stat

    @staticmethod
    def _count_obj(table: dict, idx: int, nbytes: int, new: bool) -> None:
        c = table.setdefault(idx, [0, 0, 0])
        c[0] += 1
        c[1] += nbytes
        c[2] += int(new)

    # select.h -----------------------------------------------------------------------
    def _maybe_vip(self, pkt: Packet) -> bool:
        cfg = self._cfg_now
        return addr_bit(pkt.dst) in cfg.addr_bits and (
            bool(cfg.wildcard_vips) or pkt.dport in cfg.port_bits)

    def _is_nat_reply(self, pkt: Packet) -> bool:
        cfg = self._cfg_now
        return bool(cfg.nat_vips) and self.nat_port_min <= pkt.dport <= self.nat_port_max

    def _probe_vip(self, k: FlowKey, port: int) -> VipRec | None:
        """select.h::probe_vip: the direct-mapped vip_slots entry of (dst, port, proto)."""
        a, b, c, d = struct.unpack("<4I", k.dst)
        h = a ^ b ^ c ^ d ^ ((_sw16(port) << 16) | k.proto)
        s = self._cfg_now.vip_slots.get(((h * 0x9E3779B1) & M32) >> 19)
        if s is not None and s[0] == (k.dst, port, k.proto, k.family):
            return s[1]
        return None

    def _lookup_vip(self, k: FlowKey) -> VipRec | None:
        """select.h::lookup_vip: the exact VIP (array cache, then, only if some VIP did
        not fit in it, the hash map), then the port-0 VIP the same way."""
        cfg = self._cfg_now
        vip = self._probe_vip(k, k.dport)
        if vip is not None:
            return vip
        if cfg.vip_spill:
            vip = cfg.vips.get((k.dst, k.dport, k.proto, k.family))
            if vip is not None:
                return vip
        if not cfg.wildcard_vips:
            return None
        vip = self._probe_vip(k, 0)
        if vip is not None or not cfg.vip_spill:
            return vip
        return cfg.vips.get((k.dst, 0, k.proto, k.family))

    def _lookup_backend(self, bid: int) -> BackendRec | None:
        be = self._cfg_now.backends.get(bid)
        if be is None or not be.flags & abi.BE_F_ACTIVE:
            return None
        return be

    def _select_backend(self, vip: VipRec, h: int) -> int:
        if not vip.ring_size:
            return abi.NO_BACKEND
        ring = self._cfg_now.rings.get(vip.vip_id)
        if ring is None:
            return abi.NO_BACKEND
        slot = h % vip.ring_size
        return ring[slot] if slot < len(ring) else abi.NO_BACKEND

    # xdplb.bpf.c --------------------------------------------------------------------
    def _handle_fragment(self, pkt: Packet) -> tuple[int, Stat]:
        if (pkt.dst, pkt.family) not in self._cfg_now.vip_addrs:
            return self._verdict(pkt, Stat.PASS_NOT_VIP, XDP_PASS)
        if self.frag_drop:
            return self._verdict(pkt, Stat.DROP_FRAGMENT, XDP_DROP)
        return self._verdict(pkt, Stat.PASS_FRAGMENT, XDP_PASS)

    def _process_packet(self, buf: bytearray, pkt: Packet) -> tuple[int, Stat]:
        # a reply to a NAT port first: a port-0 VIP on the SNAT address would
        # otherwise take it for a new flow
        if self._is_nat_reply(pkt):
            idx = self._nat_reply_find(pkt.key)
            if idx is not None:
                return self._reverse_nat(buf, pkt, idx)
        vip = self._lookup_vip(pkt.key) if self._maybe_vip(pkt) else None
        if vip:
            return self._balance(buf, pkt, vip)
        return self._verdict(pkt, Stat.PASS_NOT_VIP, XDP_PASS)

    # flow.h -------------------------------------------------------------------------
    def _flow_timeout(self, proto: int, flags: int) -> int:
        if flags & abi.FLOW_F_EMBRYONIC:
            return self.syn_timeout
        if flags & abi.FLOW_F_CLOSING:
            return self.closing_timeout
        return self.tcp_timeout if proto == IPPROTO_TCP else self.udp_timeout

    @staticmethod
    def _is_syn(pkt: Packet) -> bool:
        return pkt.tcp_flags & (TCPF_SYN | TCPF_ACK | TCPF_RST) == TCPF_SYN

    @staticmethod
    def _flags_next(e: FlowEntry, pkt: Packet, reply: bool, nat: bool) -> int:
        """flow.h::flow_flags_next."""
        f = e.flags
        tf = pkt.tcp_flags & (TCPF_SYN | TCPF_ACK | TCPF_RST)
        if pkt.proto != IPPROTO_TCP:
            return f
        if f & abi.FLOW_F_EMBRYONIC:
            if reply:
                return f | abi.FLOW_F_SYNACK if tf == TCPF_SYN | TCPF_ACK else f
            if tf == TCPF_ACK and (not nat or (f & abi.FLOW_F_SYNACK
                                               and pkt.tcp_ack & 0xFFFF == e.ack_check)):
                f &= ~(abi.FLOW_F_EMBRYONIC | abi.FLOW_F_SYNACK)
            return f
        if pkt.tcp_flags & (TCPF_FIN | TCPF_RST):
            return f | abi.FLOW_F_CLOSING
        if pkt.tcp_data:
            return f & ~abi.FLOW_F_CLOSING
        return f

    def _at(self, idx: int) -> FlowEntry:
        """flow_at for reading: a way never written reads as zeros (not stored)."""
        e = self.flows.get(idx)
        return e if e is not None else FlowEntry()

    def _at_w(self, idx: int) -> FlowEntry:
        """flow_at for writing."""
        e = self.flows.get(idx)
        if e is None:
            e = self.flows[idx] = FlowEntry()
        return e

    def _flow_stale(self, e: FlowEntry, now: int) -> bool:
        return ((now - e.last_seen) & M32) > (self._flow_timeout(e.proto, e.flags) & M32)

    @staticmethod
    def _flow_match(e: FlowEntry, k: FlowKey) -> bool:
        return (e.src == k.src and e.dst == k.dst and e.sport == k.sport
                and e.dport == k.dport and e.proto == k.proto and e.family == k.family)

    def _set_find(self, k: FlowKey, first: int, ways: int = FLOW_WAYS
                  ) -> tuple[int | None, int]:
        """(index of `k` in the `ways` entries from `first` or None, the first entry's
        SET_F_SPILL)."""
        spill = 0
        for w in range(ways):
            e = self._at(first + w)
            if w == 0:
                spill = e.set_flags & SET_F_SPILL
            if not e.family:
                if not e.last_seen:
                    return None, spill
                continue  # being published by another CPU (never seen here)
            if self._flow_match(e, k):
                return first + w, spill
        return None, spill

    # conntrack buckets (flow.h: ct_mask, ct_first, ct_bucket2)
    def _ct_first(self, bucket: int) -> int:
        return self.nat_sets * FLOW_WAYS + bucket * CT_WAYS

    def _ct_buckets(self, h: int) -> tuple[int, int]:
        return ct_buckets(h, self.ct_sets)

    def _flow_find(self, k: FlowKey, h: int, nat: bool) -> int | None:
        if not nat:
            b1, b2 = self._ct_buckets(h)
            idx, spill = self._set_find(k, self._ct_first(b1), CT_WAYS)
            if idx is not None or not spill or b2 == b1:
                return idx
            return self._set_find(k, self._ct_first(b2), CT_WAYS)[0]
        n = self.nat_sets
        s = h % n
        for _ in range(NAT_PROBES):  # the flow's set, then the next ones while spilled
            idx, spill = self._set_find(k, s * FLOW_WAYS)
            if idx is not None or not spill:
                return idx
            s = 0 if s + 1 == n else s + 1
        return None

    def _nat_reply_find(self, k: FlowKey) -> int | None:
        port = k.dport
        if port < self.nat_port_min or port > self.nat_port_max:
            return None
        first = (port - self.nat_port_min) * FLOW_WAYS
        tag = _hash_raw(k.src, k.dst, k.sport, 0, k.proto, self.hash_seed)
        backends = self._cfg_now.backends
        for w in range(FLOW_WAYS):
            e = self._at(first + w)
            if not e.family:
                if not e.last_seen:
                    return None
                continue
            if e.reply_tag != tag or e.proto != k.proto or e.family != k.family:
                continue
            be = backends.get(e.backend_id, _NO_BACKEND_REC)  # active or not
            if be.addr == k.src and (be.port or e.dport) == k.sport and be.snat == k.dst:
                return first + w
        return None

    def _flow_publish(self, idx: int, n: FlowEntry, now: int) -> None:
        e = self._at_w(idx)
        e.src, e.dst, e.sport, e.dport = n.src, n.dst, n.sport, n.dport
        e.proto, e.flags, e.backend_id = n.proto, n.flags, n.backend_id
        e.client_ifindex, e.client_mac = n.client_ifindex, n.client_mac
        e.ack_check = 0
        e.family = n.family
        e.last_seen, e.reply_tag = now, n.reply_tag  # set_flags kept

    def _victim_score(self, e: FlowEntry, now: int) -> tuple[int, int]:
        """flow.h::victim_consider: (rank, score) of a live way as a victim."""
        rank = 2 if e.flags & abi.FLOW_F_EMBRYONIC else 1 if e.flags & abi.FLOW_F_CLOSING else 0
        return rank, (rank << 30) | min(((now - e.last_seen) & M32) >> self.age_shift,
                                        0x3FFFFFFF)

    def _consider(self, v: list, idx: int, e: FlowEntry, now: int, least: int) -> None:
        """v = [idx or None, score]: keep the better victim."""
        rank, score = self._victim_score(e, now)
        if rank >= least and (v[0] is None or score > v[1]):
            v[0], v[1] = idx, score

    def _nat_set_pick(self, n: FlowEntry, first: int, now: int, v: list) -> int | None:
        pick = same = None
        sv: list = [None, 0]
        for w in range(FLOW_WAYS):
            idx = first + w
            e = self._at(idx)
            if not e.family and e.last_seen:
                continue  # being published by another CPU
            stale = not e.family or self._flow_stale(e, now)
            if e.family and e.reply_tag == n.reply_tag:
                if not stale:  # a live flow has this reply tuple: only it may make room
                    sv = [None, 0]
                    self._consider(sv, idx, e, now, 1)
                    if sv[0] is not None and (v[0] is None or sv[1] > v[1]):
                        v[:] = sv
                    return None
                if same is None:
                    same = idx
            if not stale:
                self._consider(sv, idx, e, now, 1)
            if stale and pick is None:
                pick = idx
            if not e.family:
                break
        if same is not None:
            return same
        if pick is None and sv[0] is not None and (v[0] is None or sv[1] > v[1]):
            v[:] = sv
        return pick

    def _count_eviction(self, score: int) -> None:
        rank = score >> 30
        self._count(Stat.EVICT_EMBRYONIC if rank == 2 else Stat.EVICT_CLOSING if rank == 1
                    else Stat.CT_FULL, 0)

    def _nat_claim(self, n: FlowEntry, h: int, now: int) -> int | None:
        ns = self.nat_sets
        s = h % ns
        v: list = [None, 0]
        for i in range(NAT_PROBES):  # the flow's set, then the next ones
            if ((self.nat_port_min + s) & M32) not in self._cfg_now.port_bits:
                idx = self._nat_set_pick(n, s * FLOW_WAYS, now, v)
                if idx is not None:
                    self._flow_publish(idx, n, now)
                    return idx
            if i == NAT_PROBES - 1:
                break
            self._at_w(s * FLOW_WAYS).set_flags |= SET_F_SPILL
            s = 0 if s + 1 == ns else s + 1
        if v[0] is None:
            return None
        self._flow_publish(v[0], n, now)
        self._count_eviction(v[1])
        if v[1] >> 30 == 2:  # a live handshake lost its way: guard.h::flood_engage
            self._flood_engage()
        return int(v[0])

    def _ct_scan(self, first: int, now: int, v: list) -> tuple[int | None, int]:
        """flow.h::ct_bucket_scan: (first free or stale way, live flows); victims into v."""
        free, live = None, 0
        for w in range(CT_WAYS):
            e = self._at(first + w)
            if not e.family and e.last_seen:
                live += 1  # being published by another CPU
                continue
            if not e.family or self._flow_stale(e, now):
                if free is None:
                    free = first + w
                if not e.family:
                    break
                continue
            live += 1
            self._consider(v, first + w, e, now, 0)
        return free, live

    def _ct_claim(self, n: FlowEntry, h: int, now: int) -> int | None:
        b1, b2 = self._ct_buckets(h)
        v: list = [None, 0]
        free1, live1 = self._ct_scan(self._ct_first(b1), now, v)
        spill = False
        if free1 is not None and live1 < CT_PREFER:
            idx = free1
        else:
            free2, live2 = (self._ct_scan(self._ct_first(b2), now, v) if b2 != b1
                            else (None, CT_WAYS))
            if free1 is not None and (free2 is None or live1 <= live2):
                idx = free1
            elif free2 is not None:
                idx, spill = free2, True
            else:
                if v[0] is None:
                    return None
                idx = int(v[0])
                spill = b2 != b1 and self._ct_first(b2) <= idx < self._ct_first(b2) + CT_WAYS
        if spill:
            self._at_w(self._ct_first(b1)).set_flags |= SET_F_SPILL
        self._flow_publish(idx, n, now)
        if idx == v[0]:
            self._count_eviction(v[1])
        return idx

    def _flow_touch(self, e: FlowEntry, now: int, flags: int) -> None:
        if ((now - e.last_seen) & M32) >= (self.refresh & M32) or flags != e.flags:
            e.last_seen = now
            e.flags = flags

    def _nonsyn_admit(self, now: int) -> bool:
        """flow.h::nonsyn_admit (the budget of the one CPU the model has)."""
        if ((now - self.budget_window) & M32) >= self.hz:
            self.budget_window = now
            self.budget_used = 0
        if self.budget_used >= self.nonsyn_budget:
            return False
        self.budget_used += 1
        return True

    # guard.h ------------------------------------------------------------------------
    def _flood_engage(self) -> None:
        if self.syn_challenge == abi.CHALLENGE_AUTO:
            self.engaged_until = self.now + self.challenge_hold

    def _rst_admit(self, now: int) -> bool:
        rate, hz = self.rst_rate, self.hz
        t = now * rate
        if not rate:
            return False
        tat = max(self.rst_tat, t)
        if tat + hz - t > rate * hz:
            return False
        self.rst_tat = tat + hz
        return True

    def _answer_tcp(self, buf: bytearray | None, pkt: Packet, seq: int, ack: int,
                    flags: int) -> int:
        """guard.h::answer_tcp: 0, or -1 with the frame untouched (None: pick())."""
        if buf is None:
            return 0
        l3, v4 = pkt.l3_off, pkt.family == abi.AF_INET
        if l3 > 18:
            return -1
        n = l3 + (20 if v4 else 40) + 20
        if n > len(buf):
            return -1
        del buf[n:]
        dst_mac = bytes(buf[0:6])
        buf[0:6] = buf[6:12]
        buf[6:12] = self.if_mac if self.if_mac is not None else dst_mac
        if v4:
            ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 64, IPPROTO_TCP,
                                       0, pkt.dst[:4], pkt.src[:4]))
            _wr16(ip, 10, ~csum_fold64(sum(struct.unpack("<5I", ip))) & 0xFFFF)
        else:
            ip = bytearray(struct.pack("!IHBB16s16s", 0x60000000, 20, IPPROTO_TCP, 64,
                                       pkt.dst, pkt.src))
        th = bytearray(struct.pack("!HHIIBBHHH", pkt.dport, pkt.sport, seq & M32, ack & M32,
                                   0x50, flags, 0, 0, 0))
        s = _csum_pseudo(pkt.dst, pkt.src, pkt.nw, IPPROTO_TCP, 20) + \
            sum(struct.unpack("<5I", th))
        _wr16(th, 16, ~csum_fold64(s) & 0xFFFF)
        buf[l3:n] = ip + th
        return 0

    def _syn_gate(self, buf: bytearray | None, pkt: Packet, now: int) -> Stat:
        if self.syn_challenge == abi.CHALLENGE_OFF:
            return Stat.FWD_NEW
        if self.syn_challenge != abi.CHALLENGE_ALWAYS:
            if now - self.syn_window >= self.hz:
                self.syn_window, self.syns = now, 0
            self.syns += 1
            if self.syns > self.syn_challenge_rate:
                self.engaged_until = now + self.challenge_hold
            if now >= self.engaged_until:
                return Stat.FWD_NEW
        at = self.verified.get((pkt.src, pkt.family))
        if at is not None and now - at <= self.verified_timeout:
            return Stat.FWD_NEW
        c = syn_cookie(pkt.key, now >> self.cookie_shift, self.cookie_secret)
        if c == (pkt.tcp_seq + 1) & M32:
            c ^= 1
        if self._answer_tcp(buf, pkt, c, c, TCPF_SYN | TCPF_ACK):
            return Stat.FWD_NEW
        return Stat.SYN_CHALLENGE

    def _cookie_check(self, pkt: Packet, now: int) -> bool:
        slot = now >> self.cookie_shift
        s = pkt.tcp_seq | 1
        if s != syn_cookie(pkt.key, slot, self.cookie_secret) | 1 and \
                s != syn_cookie(pkt.key, slot - 1, self.cookie_secret) | 1:
            return False
        self.verified[(pkt.src, pkt.family)] = now
        return True

    @staticmethod
    def _seg_len(buf: bytearray | None, pkt: Packet) -> int:
        off = pkt.l4_off
        if buf is None or off > 512 or off + 14 > len(buf):
            return 0
        hlen = (buf[off + 12] >> 4) * 4
        return max(0, pkt.l4_len - hlen) + (1 if pkt.tcp_flags & TCPF_FIN else 0)

    def _nat_tcp_miss(self, buf: bytearray | None, pkt: Packet, full: bool,
                      retired: bool = False) -> Stat:
        """guard.h::nat_tcp_miss (`full`: ANSWER_FULL, `retired`: ANSWER_RETIRED)."""
        now = self.now
        if full:
            if self._rst_admit(now) and not self._answer_tcp(buf, pkt, 0, pkt.tcp_seq + 1,
                                                             TCPF_RST | TCPF_ACK):
                return Stat.RST_NAT_FULL
            return Stat.DROP_NAT_FULL
        if self._is_syn(pkt):
            return self._syn_gate(buf, pkt, now)
        if pkt.tcp_flags & TCPF_RST:
            return Stat.SYN_VERIFIED if self._cookie_check(pkt, now) else Stat.DROP_NOT_SYN
        if not retired or not self._rst_admit(now):
            return Stat.DROP_NOT_SYN
        if pkt.tcp_flags & TCPF_ACK:
            rc = self._answer_tcp(buf, pkt, pkt.tcp_ack, 0, TCPF_RST)
        else:
            rc = self._answer_tcp(buf, pkt, 0, pkt.tcp_seq + self._seg_len(buf, pkt),
                                  TCPF_RST | TCPF_ACK)
        return Stat.DROP_NOT_SYN if rc else Stat.RST_NOT_SYN

    @staticmethod
    def _flow_retire(e: FlowEntry, now: int) -> None:
        e.proto = 0
        e.last_seen = (now - 0x80000000) & M32

    # lb.h ---------------------------------------------------------------------------
    def _flow_backend(self, pkt: Packet, vip: VipRec, client_mac: bytes,
                      buf: bytearray | None) -> FlowPick:
        """lb.h::flow_backend; `buf` is the frame (an answer replaces it), None for pick()."""
        now = (self.now & M32) or 1  # flow.h::flow_now: never 0
        nat = vip.mode == abi.MODE_NAT
        h = _hash_raw(pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.proto, self.hash_seed)
        tcp = pkt.proto == IPPROTO_TCP
        syn = self._is_syn(pkt)
        key = pkt.key
        stateless = bool(vip.flags & abi.VIP_F_UDP_STATELESS) and pkt.proto == IPPROTO_UDP
        idx = None if stateless else self._flow_find(key, h, nat)
        e = self.flows[idx] if idx is not None else None
        if e is not None and syn and (e.flags & abi.FLOW_F_CLOSING or self._flow_stale(e, now)):
            self._flow_retire(e, now)  # the tuple opens a new connection
            e = None
        if e is not None and idx is not None:
            be = self._lookup_backend(e.backend_id)
            if be is not None:
                self._flow_touch(e, now, self._flags_next(e, pkt, False, nat))
                return FlowPick(Stat.FWD_EST, e.backend_id,
                                self.nat_port_of(idx) if nat else 0, idx)
            if vip.flags & abi.VIP_F_RESET_REMOVED:
                return FlowPick(Stat.DROP_REMOVED, e.backend_id, 0, idx)
            self._count(Stat.RESELECT, 0)

        bid = self._select_backend(vip, h)
        be = self._lookup_backend(bid)
        if be is None:
            return FlowPick(Stat.DROP_NO_BACKEND, bid, 0, idx if e is not None else None)
        if e is not None and not nat:  # re-selected: the entry stays, with its new backend
            e.backend_id = bid
            self._flow_touch(e, now, self._flags_next(e, pkt, False, nat))
            return FlowPick(Stat.FWD_NEW, bid, 0, idx)
        if e is not None:
            self._flow_retire(e, now)  # NAT: its reply tuple changes, so must its way
        if stateless:
            return FlowPick(Stat.FWD_NEW, bid, 0, None)
        if tcp and nat:  # guard.h
            st = self._nat_tcp_miss(buf, pkt, False, e is not None)
            if st != Stat.FWD_NEW:
                return FlowPick(st, bid, 0, None)
        elif tcp and not syn and not self._nonsyn_admit(now):
            self._count(Stat.NONSYN_STATELESS, 0)
            return FlowPick(Stat.FWD_NEW, bid, 0, None)
        n = FlowEntry(pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.proto, pkt.family,
                      flags=abi.FLOW_F_EMBRYONIC if tcp else 0, backend_id=bid)
        if not nat:
            return FlowPick(Stat.FWD_NEW, bid, 0, self._ct_claim(n, h, now))
        n.reply_tag = _hash_raw(be.addr, vip.snat, be.port or pkt.dport, 0, pkt.proto,
                                self.hash_seed)
        n.client_ifindex = pkt.ifindex
        n.client_mac = client_mac
        new = self._nat_claim(n, h, now)
        if new is None:
            return FlowPick(self._nat_tcp_miss(buf, pkt, True) if tcp else Stat.DROP_NAT_FULL,
                            bid, 0, None)
        return FlowPick(Stat.FWD_NEW, bid, self.nat_port_of(new), new)

    def _balance(self, buf: bytearray, pkt: Packet, vip: VipRec) -> tuple[int, Stat]:
        fp = self._flow_backend(pkt, vip, bytes(buf[6:12]), buf)
        stat = fp.stat
        if stat in abi.ANSWER_STATS:  # guard.h answered: the frame is the answer
            self._count_obj(self.vip_stats, vip.vip_id, pkt.frame_len, False)
            return self._verdict(pkt, stat, XDP_TX)
        be = self._lookup_backend(fp.backend_id) if stat in (Stat.FWD_NEW, Stat.FWD_EST) \
            else None
        if be is None:
            self._count_obj(self.vip_stats, vip.vip_id, pkt.frame_len, False)
            return self._verdict(pkt, stat, XDP_DROP)
        if vip.mode == abi.MODE_NAT:
            dst = be.addr
            dport = be.port or pkt.dport
            if self._rewrite_tuple(buf, pkt, be.snat, dst, fp.nat_port, dport):
                return self._verdict(pkt, Stat.PASS_TOO_LONG, XDP_PASS)
        elif self._finish_csum(buf, pkt):
            return self._verdict(pkt, Stat.PASS_TOO_LONG, XDP_PASS)
        if vip.mode in (abi.MODE_IPIP, abi.MODE_GUE):
            h = _hash_raw(pkt.src, pkt.dst, pkt.sport, pkt.dport, pkt.proto, self.hash_seed)
            hint = self._tunnel_hint(vip, pkt, h, be, fp.backend_id)
            action, stat = self._tunnel_xmit(buf, pkt, vip, be, h, stat, hint)
        elif be.flags & abi.BE_F_MAC:
            action, stat = self._xmit_mac(buf, pkt, be.mac,
                                          be.ifindex if be.flags & abi.BE_F_REDIRECT else 0,
                                          stat)
        else:
            raise Unmodelled(f"backend {fp.backend_id} has no MAC: bpf_fib_lookup")
        self._count_obj(self.be_stats, fp.backend_id, pkt.frame_len, stat == Stat.FWD_NEW)
        return self._verdict(pkt, stat, action)

    def _xmit_mac(self, buf: bytearray, pkt: Packet, mac: bytes, ifindex: int,
                  stat: Stat) -> tuple[int, Stat]:
        """forward.h::xmit_mac: (action, stat)."""
        if not ifindex or ifindex == pkt.ifindex:
            return _tx_to_mac(buf, mac), stat
        src = self._cfg_now.if_macs.get(ifindex)
        if src is None:
            return XDP_DROP, Stat.TX_ERROR
        buf[6:12] = src
        buf[0:6] = mac
        return (XDP_REDIRECT if ifindex in self._cfg_now.tx_ports else XDP_DROP), stat

    def _reverse_nat(self, buf: bytearray, pkt: Packet, idx: int) -> tuple[int, Stat]:
        e = self.flows[idx]
        flags = self._flags_next(e, pkt, True, True)
        if flags & ~e.flags & abi.FLOW_F_SYNACK:
            e.ack_check = (pkt.tcp_seq + 1) & 0xFFFF
        self._flow_touch(e, (self.now & M32) or 1, flags)
        if self._rewrite_tuple(buf, pkt, e.dst, e.src, e.dport, e.sport):
            return self._verdict(pkt, Stat.PASS_TOO_LONG, XDP_PASS)
        action, stat = self._xmit_mac(buf, pkt, e.client_mac, e.client_ifindex, Stat.REPLY)
        self._count_obj(self.be_stats, e.backend_id, pkt.frame_len, False)
        return self._verdict(pkt, stat, action)

    # rewrite.h ----------------------------------------------------------------------
    def _csum_partial_form(self, buf: bytearray, pkt: Packet) -> int:
        """1: partial form, 0: not, -1: cannot tell (field too deep)."""
        off = pkt.l4_off + (16 if pkt.proto == IPPROTO_TCP else 6)
        if off > 512 or off + 2 > len(buf):
            return -1
        return int(_rd16(buf, off) == csum_fold64(
            _csum_pseudo(pkt.src, pkt.dst, pkt.nw, pkt.proto, pkt.l4_len)))

    def _rewrite4_fast(self, buf: bytearray, pkt: Packet, src: bytes, dst: bytes,
                       sport: int, dport: int) -> int:
        l3, l4 = pkt.l3_off, pkt.l4_off
        if l3 > 64 or l4 > 128:
            return -1
        if l3 + 20 > len(buf) or l4 + 18 > len(buf):
            return -1
        s, d = struct.unpack_from("<I", src)[0], struct.unpack_from("<I", dst)[0]
        os_, od = struct.unpack_from("<I", pkt.src)[0], struct.unpack_from("<I", pkt.dst)[0]
        delta = ((~os_) & M32) + ((~od) & M32) + s + d
        _wr16(buf, l3 + 10, csum_replace(_rd16(buf, l3 + 10), delta))
        buf[l3 + 12:l3 + 16] = src[:4]
        buf[l3 + 16:l3 + 20] = dst[:4]
        ck = l4 + 16 if pkt.proto == IPPROTO_TCP else l4 + 6
        if pkt.proto == IPPROTO_TCP or _rd16(buf, ck):
            delta += (((~_sw16(pkt.sport)) & 0xFFFF) + ((~_sw16(pkt.dport)) & 0xFFFF)
                      + _sw16(sport) + _sw16(dport))
            c = csum_replace(_rd16(buf, ck), delta)
            if pkt.proto == IPPROTO_UDP and c == 0:
                c = 0xFFFF
            _wr16(buf, ck, c)
        _wr16(buf, l4, _sw16(sport))
        _wr16(buf, l4 + 2, _sw16(dport))
        return 0

    def _xlate_packet(self, buf: bytearray, pkt: Packet, src: bytes, dst: bytes,
                      sport: int, dport: int, keep: bool) -> int:
        """rewrite.h::xlate_packet: 0, XLATE_PARTIAL, or -1 (untouched)."""
        n = len(buf)
        l3, l4, l4_len = pkt.l3_off, pkt.l4_off, pkt.l4_len
        if l3 > 64 or l4 > 512:
            return -1
        v4 = pkt.family == abi.AF_INET
        nw = pkt.nw
        if l4 + 20 > n and (pkt.proto == IPPROTO_TCP or l4 + 8 > n):
            return -1
        ck = None
        if pkt.proto == IPPROTO_TCP and l4 + 18 <= n:
            ck = l4 + 16
        elif pkt.proto == IPPROTO_UDP and l4 + 8 <= n and (not v4 or _rd16(buf, l4 + 6)):
            ck = l4 + 6
        delta = (_csum_words_neg(pkt.src, nw) + _csum_words_neg(pkt.dst, nw)
                 + _csum_words(src, nw) + _csum_words(dst, nw))
        partial = False
        if ck is not None and self.csum_fixup:
            pseudo = csum_fold64(_csum_pseudo(pkt.src, pkt.dst, nw, pkt.proto, l4_len))
            partial = _rd16(buf, ck) == pseudo
            if partial and l4_len > CSUM_MAX_CHUNKS * 512:
                return -1
        if keep and not partial:
            return 0
        if v4:
            if l3 + 20 > n:
                return -1
            _wr16(buf, l3 + 10, csum_replace(_rd16(buf, l3 + 10), delta))
            buf[l3 + 12:l3 + 16] = src[:4]
            buf[l3 + 16:l3 + 20] = dst[:4]
        else:
            if l3 + 40 > n:
                return -1
            buf[l3 + 8:l3 + 24] = src
            buf[l3 + 24:l3 + 40] = dst
        if l4 + 4 > n:
            return -1
        _wr16(buf, l4, _sw16(sport))
        _wr16(buf, l4 + 2, _sw16(dport))
        if ck is None:
            return 0
        if partial:
            _wr16(buf, ck, csum_fold64(_csum_pseudo(src, dst, nw, pkt.proto, l4_len)))
            res = (~csum_fold64(_csum_frame(buf, l4, l4_len))) & 0xFFFF
            if pkt.proto == IPPROTO_UDP and res == 0:
                res = 0xFFFF
            _wr16(buf, ck, res)
            return XLATE_PARTIAL
        delta += (((~_sw16(pkt.sport)) & 0xFFFF) + ((~_sw16(pkt.dport)) & 0xFFFF)
                  + _sw16(sport) + _sw16(dport))
        c = csum_replace(_rd16(buf, ck), delta)
        if pkt.proto == IPPROTO_UDP and c == 0:
            c = 0xFFFF
        _wr16(buf, ck, c)
        return 0

    def _xlate_count(self, rc: int) -> int:
        if rc == XLATE_PARTIAL:
            self._count(Stat.CSUM_FULL, 0)
        return -1 if rc < 0 else 0

    def _rewrite_tuple(self, buf: bytearray, pkt: Packet, src: bytes, dst: bytes,
                       sport: int, dport: int) -> int:
        if (pkt.family == abi.AF_INET and pkt.l4_len >= 18
                and not (self.csum_fixup and self._csum_partial_form(buf, pkt))):
            return self._rewrite4_fast(buf, pkt, src, dst, sport, dport)
        return self._xlate_count(self._xlate_packet(buf, pkt, src, dst, sport, dport, False))

    def _finish_csum(self, buf: bytearray, pkt: Packet) -> int:
        if not self.csum_fixup:
            return 0
        form = self._csum_partial_form(buf, pkt)
        if form < 0:
            return -1
        if not form:
            return 0
        return self._xlate_count(self._xlate_packet(buf, pkt, pkt.src, pkt.dst, pkt.sport,
                                                    pkt.dport, True))

    # encap.h ------------------------------------------------------------------------
    def _tunnel_hint(self, vip: VipRec, pkt: Packet, h: int, be: BackendRec,
                     be_id: int) -> BackendRec | None:
        """encap.h::tunnel_hint: the slot's backend before the last table change."""
        if (vip.mode != abi.MODE_GUE or not vip.flags & abi.VIP_F_PREV_RING
                or pkt.proto != IPPROTO_TCP or pkt.tcp_flags & TCPF_SYN or not vip.ring_size):
            return None
        ring = self._cfg_now.prev_rings.get(vip.vip_id)
        if ring is None:
            return None
        slot = h % vip.ring_size
        if slot >= len(ring):
            return None
        bid = ring[slot]
        if bid in (be_id, abi.NO_BACKEND):
            return None
        prev = self._cfg_now.backends.get(bid, _NO_BACKEND_REC)
        return prev if prev.family == be.family else None

    def _tunnel_xmit(self, buf: bytearray, pkt: Packet, vip: VipRec, be: BackendRec, h: int,
                     stat: Stat, hint: BackendRec | None = None) -> tuple[int, Stat]:
        """encap.h::tunnel_xmit on `buf` (replaced by the frame sent): (action, stat)."""
        l3 = pkt.l3_off
        if l3 > 18 or len(buf) < 14:
            return XDP_DROP, stat
        gue = vip.mode == abi.MODE_GUE
        out4, in4 = be.family == abi.AF_INET, pkt.family == abi.AF_INET
        proto = IPPROTO_UDP if gue else (4 if in4 else 41)
        inner_len = pkt.l4_off - l3 + pkt.l4_len
        hint_len = 0 if hint is None else 4 + (4 if out4 else 16)
        hdr_len = (20 if out4 else 40) + (8 if gue else 0) + hint_len
        gue0 = b""
        if hint is not None:
            gue0 = struct.pack("!BBH", 1 if out4 else 4, 4 if in4 else 41, abi.GUE_F_HINT) \
                + (hint.addr[:4] if out4 else hint.addr)
        if in4:
            tos, ttl, df = buf[l3 + 1], buf[l3 + 8], bool(buf[l3 + 6] & 0x40)
        else:
            tos, ttl, df = ((buf[l3] & 0x0F) << 4) | (buf[l3 + 1] >> 4), buf[l3 + 7], True
        if not be.flags & abi.BE_F_MAC:
            raise Unmodelled("tunnel to a backend without a MAC: bpf_fib_lookup")
        ifindex = be.ifindex if be.flags & abi.BE_F_REDIRECT else 0
        if inner_len + hdr_len > 1280 and len(buf) + 14 + hdr_len - l3 > self.mtu + 14:
            # bpf_check_mtu, asked only for outer packets longer than TUNNEL_SMALL
            if in4 and not df:
                return XDP_DROP, Stat.PMTU_DROP
            if self._pmtu_reply(buf, pkt, max(self.mtu - hdr_len, 0)) == XDP_TX:
                return XDP_TX, Stat.PMTU_ICMP
            return XDP_DROP, Stat.PMTU_DROP
        sport = 0xC000 | (h & 0x3FFF)
        ucheck = 0
        if gue and not out4:
            s = self._inner_sum(buf, pkt)
            if s < 0:
                return XDP_PASS, Stat.PASS_TOO_LONG
            ulen = inner_len + 8 + hint_len
            s += (_csum_pseudo(be.snat, be.addr, 4, IPPROTO_UDP, ulen) + _sw16(sport)
                  + _sw16(self.gue_port) + _sw16(ulen & 0xFFFF))
            if gue0:
                s += sum(struct.unpack("<5I", gue0))
            ucheck = (~csum_fold64(s)) & 0xFFFF or 0xFFFF
        if out4:
            ip = bytearray(struct.pack("!BBHHHBBH", 0x45, tos, inner_len + hdr_len, 0, 0x4000,
                                       ttl, proto, 0) + be.snat[:4] + be.addr[:4])
            _wr16(ip, 10, (~csum_fold64(sum(struct.unpack("<5I", ip)))) & 0xFFFF)
        else:
            w0 = 0x60000000 | (tos << 20) | ((h >> 12) & 0xFFFFF)
            ip = bytearray(struct.pack("!IHBB", w0, inner_len + hdr_len - 40, proto, ttl)
                           + be.snat + be.addr)
        if gue:
            ip += struct.pack("!HHH", sport, self.gue_port, (inner_len + 8 + hint_len) & 0xFFFF)
            ip += struct.pack("<H", ucheck) + gue0
            if gue0:
                self._count(Stat.GUE_HINT, 0)
        ethertype = ETH_P_IP if out4 else ETH_P_IPV6
        new = bytearray(buf[0:6]) + bytes(6) + struct.pack("!H", ethertype) + ip + buf[l3:]
        buf[:] = new
        return self._xmit_mac(buf, pkt, be.mac, ifindex, stat)

    def _inner_sum(self, buf: bytearray, pkt: Packet) -> int:
        """encap.h::inner_sum: the inner packet's sum for the outer UDP checksum, -1 when
        it cannot be had."""
        v4 = pkt.family == abi.AF_INET
        if v4:
            s = 0xFFFF
        else:
            n = pkt.l4_off - pkt.l3_off
            if n > CSUM_MAX_CHUNKS * 512 or pkt.l3_off + n > len(buf):
                return -1
            s = _csum_frame(buf, pkt.l3_off, n)
        if v4 and pkt.proto == IPPROTO_UDP:
            off = (pkt.l4_off & 0x1FF) + 6
            if off + 2 > len(buf):
                return -1
            if not _rd16(buf, off):
                if pkt.l4_len > CSUM_MAX_CHUNKS * 512 or pkt.l4_off + pkt.l4_len > len(buf):
                    return -1
                return s + _csum_frame(buf, pkt.l4_off, pkt.l4_len)
        return s + ((~csum_fold64(_csum_pseudo(pkt.src, pkt.dst, pkt.nw, pkt.proto,
                                                 pkt.l4_len))) & 0xFFFF)

    def _pmtu_reply(self, buf: bytearray, pkt: Packet, mtu: int) -> int:
        """encap.h::pmtu_reply: `buf` becomes the ICMP error to the client; XDP_TX, or
        XDP_DROP over the budget (knobs.pmtu_rate a second)."""
        win = (self.now & 0xFFFFFFFFFFFFFFFF) // (self.hz or 1000)
        if self._pmtu[0] != win:
            self._pmtu = [win, 0]
        if self._pmtu[1] >= self.pmtu_rate:
            return XDP_DROP
        self._pmtu[1] += 1
        v4 = pkt.family == abi.AF_INET
        l3 = pkt.l3_off
        quote = pkt.l4_off - l3 + 8
        hdr = 28 if v4 else 48
        if l3 > 18 or quote > 128:
            return XDP_DROP
        orig = bytes(buf)
        grown = bytes(14 + hdr - l3) + orig  # adjust_head: fresh (zero) headroom in front
        if len(grown) < 14 + hdr + quote:
            buf[:] = grown
            return XDP_DROP
        q = orig[l3:l3 + quote]
        client, vip = pkt.src, pkt.dst
        if v4:
            ip = bytearray(struct.pack("!BBHHHBBH", 0x45, 0xC0, hdr + quote, 0, 0, 64,
                                       IPPROTO_ICMP, 0) + vip[:4] + client[:4])
            _wr16(ip, 10, (~csum_fold64(sum(struct.unpack("<5I", ip)))) & 0xFFFF)
            icmp = bytearray(struct.pack("!BBHI", 3, 4, 0, mtu & 0xFFFF))
            s = _csum_frame(icmp + q, 0, 8 + quote)
        else:
            ip = bytearray(struct.pack("!IHBB", 0x60000000, 8 + quote, IPPROTO_ICMPV6, 64)
                           + vip + client)
            icmp = bytearray(struct.pack("!BBHI", 2, 0, 0, mtu & M32))
            s = (_csum_frame(icmp + q, 0, 8 + quote)
                 + _csum_pseudo(vip, client, 4, IPPROTO_ICMPV6, 8 + quote))
        _wr16(icmp, 2, (~csum_fold64(s)) & 0xFFFF)
        eth = orig[6:12] + orig[0:6] + struct.pack("!H", ETH_P_IP if v4 else ETH_P_IPV6)
        buf[:] = eth + ip + icmp + q
        return XDP_TX

    # icmp.h / process_icmp ----------------------------------------------------------
    def _process_icmp(self, buf: bytearray, pkt: Packet) -> tuple[int, Stat]:
        e = _parse_icmp_error(buf, pkt)
        if e is None or pkt.dst != e[0].src:  # must be sent to whoever sent the inner packet
            return self._verdict(pkt, Stat.PASS_NOT_VIP, XDP_PASS)
        inner, _il3, _il4 = e
        fk = inner.reversed()
        vip = self._lookup_vip(fk)
        if vip is not None:
            h = _hash_raw(fk.src, fk.dst, fk.sport, fk.dport, fk.proto, self.hash_seed)
            idx = self._flow_find(fk, h, vip.mode == abi.MODE_NAT)
            if idx is not None:
                return self._icmp_to_backend(buf, pkt, e, fk, vip, idx)
        idx = self._nat_reply_find(fk)
        if idx is not None:
            return self._icmp_to_client(buf, pkt, e, idx)
        return self._verdict(pkt, Stat.PASS_NOT_VIP, XDP_PASS)

    def _icmp_to_backend(self, buf, pkt, e, fk: FlowKey, vip: VipRec,
                         idx: int) -> tuple[int, Stat]:
        f = self.flows[idx]
        be = self._lookup_backend(f.backend_id)
        if be is None or vip.mode in (abi.MODE_IPIP, abi.MODE_GUE):
            return self._verdict(pkt, Stat.PASS_NOT_VIP, XDP_PASS)
        if vip.mode == abi.MODE_NAT:
            new_inner = FlowKey(be.addr, vip.snat, be.port or fk.dport, self.nat_port_of(idx),
                                0, 0)
            if _icmp_xlate(buf, pkt, e, pkt.src, be.addr, new_inner):
                return self._verdict(pkt, Stat.PASS_MALFORMED, XDP_PASS)
        if be.flags & abi.BE_F_MAC:
            action, stat = self._xmit_mac(buf, pkt, be.mac,
                                          be.ifindex if be.flags & abi.BE_F_REDIRECT else 0,
                                          Stat.ICMP_FWD)
        else:
            raise Unmodelled(f"backend {f.backend_id} has no MAC: bpf_fib_lookup")
        return self._verdict(pkt, stat, action)

    def _icmp_to_client(self, buf, pkt, e, idx: int) -> tuple[int, Stat]:
        f = self.flows[idx]
        new_inner = FlowKey(f.src, f.dst, f.sport, f.dport, 0, 0)
        if _icmp_xlate(buf, pkt, e, f.dst, f.src, new_inner):
            return self._verdict(pkt, Stat.PASS_MALFORMED, XDP_PASS)
        action, stat = self._xmit_mac(buf, pkt, f.client_mac, f.client_ifindex,
                                      Stat.ICMP_REPLY)
        return self._verdict(pkt, stat, action)


def _default_ct_sets() -> int:
    """The loader's conntrack sets when Knobs.ct_sets is 0 (Sizes().conntrack flows)."""
    from ._bpf.dataplane import Knobs, Sizes

    return Knobs().ct_sets_for(Sizes().conntrack)


def _tx_to_mac(buf: bytearray, mac: bytes) -> int:
    """forward.h::tx_to_mac: the frame's destination MAC (ours) becomes its source (with
    knobs.if_mac set, only frames to if_mac get here, so that is the same bytes)."""
    buf[6:12] = buf[0:6]
    buf[0:6] = mac
    return XDP_TX


def _is_icmp_error(family: int, typ: int) -> bool:
    if family == abi.AF_INET:
        return typ in (3, 11, 12)
    return 1 <= typ <= 4


def _parse_icmp_error(buf: bytearray, pkt: Packet):
    """icmp.h::parse_icmp_error: (inner tuple as embedded, inner l3 off, inner l4 off)
    or None."""
    n = len(buf)
    off = pkt.l4_off
    if off > ICMP_ERR_MAX_OFF:
        return None
    if off + 8 > n or not _is_icmp_error(pkt.family, buf[off]):
        return None
    off += 8
    il3 = off
    if pkt.family == abi.AF_INET:
        if off + 20 > n:
            return None
        ihl = (buf[off] & 0x0F) * 4
        if ihl < 20 or ihl > 60:
            return None
        proto = buf[off + 9]
        src = bytes(buf[off + 12:off + 16]) + bytes(12)
        dst = bytes(buf[off + 16:off + 20]) + bytes(12)
        off += ihl
    else:
        if off + 40 > n:
            return None
        proto = buf[off + 6]
        src = bytes(buf[off + 8:off + 24])
        dst = bytes(buf[off + 24:off + 40])
        off += 40
    if proto not in (IPPROTO_TCP, IPPROTO_UDP):
        return None
    if off > ICMP_ERR_MAX_OFF + 8 + 60:
        return None
    if off + 4 > n:
        return None
    inner = FlowKey(src, dst, _be16(buf, off), _be16(buf, off + 2), proto, pkt.family)
    return inner, il3, off


def _icmp_xlate(buf: bytearray, pkt: Packet, e, osrc: bytes, odst: bytes,
                new: FlowKey) -> int:
    """icmp.h::icmp_xlate: outer addresses -> osrc/odst, embedded tuple -> `new`."""
    inner, il3, il4 = e
    n = len(buf)
    nw = pkt.nw
    l3, l4 = pkt.l3_off, pkt.l4_off
    if l3 > 64 or l4 > ICMP_ERR_MAX_OFF or il3 > ICMP_ERR_MAX_OFF + 8 \
            or il4 > ICMP_ERR_MAX_OFF + 8 + 60:
        return -1
    if l4 + 4 > n or il4 + 4 > n:
        return -1
    d_out = (_csum_words_neg(pkt.src, nw) + _csum_words_neg(pkt.dst, nw)
             + _csum_words(osrc, nw) + _csum_words(odst, nw))
    d_in = (_csum_words_neg(inner.src, nw) + _csum_words_neg(inner.dst, nw)
            + _csum_words(new.src, nw) + _csum_words(new.dst, nw))
    d_icmp = (d_in + ((~_sw16(inner.sport)) & 0xFFFF) + ((~_sw16(inner.dport)) & 0xFFFF)
              + _sw16(new.sport) + _sw16(new.dport))
    if nw == 1:
        if l3 + 20 > n or il3 + 20 > n:
            return -1
        _wr16(buf, l3 + 10, csum_replace(_rd16(buf, l3 + 10), d_out))
        buf[l3 + 12:l3 + 16] = osrc[:4]
        buf[l3 + 16:l3 + 20] = odst[:4]
        old = _rd16(buf, il3 + 10)
        new_ck = csum_replace(old, d_in)
        _wr16(buf, il3 + 10, new_ck)
        d_icmp += ((~old) & 0xFFFF) + new_ck
        buf[il3 + 12:il3 + 16] = new.src[:4]
        buf[il3 + 16:il3 + 20] = new.dst[:4]
    else:
        if l3 + 40 > n or il3 + 40 > n:
            return -1
        d_icmp += d_out  # ICMPv6 covers the outer pseudo-header
        buf[l3 + 8:l3 + 24] = osrc
        buf[l3 + 24:l3 + 40] = odst
        buf[il3 + 8:il3 + 24] = new.src
        buf[il3 + 24:il3 + 40] = new.dst
    _wr16(buf, il4, _sw16(new.sport))
    _wr16(buf, il4 + 2, _sw16(new.dport))
    _wr16(buf, l4 + 2, csum_replace(_rd16(buf, l4 + 2), d_icmp))
    return 0
