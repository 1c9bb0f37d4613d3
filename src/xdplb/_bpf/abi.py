"""ctypes mirror of bpf/abi.h (checked against the object's BTF by tests/bpf/test_abi.py)."""
from __future__ import annotations

import ctypes as C
import enum
import ipaddress
import struct

AF_INET = 2
AF_INET6 = 10
NO_BACKEND = 0xFFFFFFFF

MODE_NAT = 0
MODE_DSR = 1
MODE_IPIP = 2
MODE_GUE = 3
MODES = {"nat": MODE_NAT, "dsr": MODE_DSR, "ipip": MODE_IPIP, "gue": MODE_GUE}
MODE_NAMES = {v: k for k, v in MODES.items()}
TUNNEL_MODES = ("ipip", "gue")

VIP_F_RESET_REMOVED = 1 << 0
VIP_F_UDP_STATELESS = 1 << 1
VIP_F_PREV_RING = 1 << 2  # gue: prev_rings holds the table before the last change

GUE_F_HINT = 0x0001  # GUE variant 0 flags (private): a previous-backend address follows
GUE_F_REDIRECTED = 0x0002  # given its second chance already

BE_F_ACTIVE = 1 << 0
BE_F_MAC = 1 << 1
BE_F_REDIRECT = 1 << 2

DECAP_CACHE = 16  # the decapsulator's per-CPU cache of FIB answers (struct decap_state)

FLOW_F_CLOSING = 1 << 0
FLOW_F_EMBRYONIC = 1 << 1
FLOW_F_SYNACK = 1 << 2
SET_F_SPILL = 1 << 0
FLOW_WAYS = 4
CT_WAYS = 8  # abi.h: entries of a conntrack bucket (two sets)
CT_PREFER = 6  # a conntrack flow stays in its first bucket while that has fewer live flows
FLOW_FORMAT = 2  # abi.h: what the flows table means; a takeover needs the same

Addr = C.c_uint8 * 16


class VipKey(C.Structure):
    _fields_ = [("addr", Addr), ("port", C.c_uint16), ("proto", C.c_uint8), ("family", C.c_uint8)]


class VipInfo(C.Structure):
    _fields_ = [
        ("vip_id", C.c_uint32),
        ("ring_size", C.c_uint32),
        ("snat_addr", Addr),
        ("mode", C.c_uint8),
        ("flags", C.c_uint8),
        ("pad", C.c_uint16),
    ]


VIP_SLOTS = 8192


class VipSlot(C.Structure):
    _fields_ = [("key", VipKey), ("info", VipInfo)]


def vip_slot(key: VipKey) -> int:
    """select.h::vip_slot: where a VIP sits in the direct-mapped vip_slots array."""
    w = struct.unpack("<4I", bytes(key.addr))
    h = w[0] ^ w[1] ^ w[2] ^ w[3] ^ ((key.port << 16) | key.proto)
    return ((h * 0x9E3779B1) & 0xFFFFFFFF) >> 19


class Backend(C.Structure):
    _fields_ = [
        ("addr", Addr),
        ("mac", C.c_uint8 * 6),
        ("port", C.c_uint16),
        ("family", C.c_uint8),
        ("flags", C.c_uint8),
        ("pad", C.c_uint16),
        ("ifindex", C.c_uint32),
        ("vip_id", C.c_uint32),
        ("snat_addr", Addr),
    ]


class IfMac(C.Structure):
    _fields_ = [("mac", C.c_uint8 * 6), ("pad", C.c_uint16)]


class FlowKey(C.Structure):
    _fields_ = [
        ("src", Addr),
        ("dst", Addr),
        ("sport", C.c_uint16),
        ("dport", C.c_uint16),
        ("proto", C.c_uint8),
        ("family", C.c_uint8),
        ("pad", C.c_uint16),
    ]


class FlowEntry(C.Structure):
    """One entry (64 bytes) of the `flows` table (bpf/flow.h)."""

    _fields_ = [
        *FlowKey._fields_[:6],  # laid out like a flow_key up to its padding
        ("flags", C.c_uint8),
        ("set_flags", C.c_uint8),
        ("last_seen", C.c_uint32),
        ("reply_tag", C.c_uint32),
        ("backend_id", C.c_uint32),
        ("client_ifindex", C.c_uint32),
        ("client_mac", C.c_uint8 * 6),
        ("ack_check", C.c_uint16),
    ]


class FloodState(C.Structure):
    """struct flood_state: one CPU's non-SYN budget, SYN challenge and RST bucket."""

    _fields_ = [("window", C.c_uint64), ("used", C.c_uint64), ("syn_window", C.c_uint64),
                ("syns", C.c_uint64), ("engaged_until", C.c_uint64), ("rst_tat", C.c_uint64)]


# lb_runtime.syn_challenge
CHALLENGE_AUTO = 0
CHALLENGE_OFF = 1
CHALLENGE_ALWAYS = 2
CHALLENGE_MODES = {"auto": CHALLENGE_AUTO, "off": CHALLENGE_OFF, "always": CHALLENGE_ALWAYS}


def cookie_shift_for(hz: int) -> int:
    """The shift that makes the challenge cookie's time slot (jiffies >> shift) at least
    8 s long (a client's answer is accepted in its slot and the next: 8 to 16 s)."""
    return max(1, (8 * max(1, hz) - 1).bit_length())


class VerifiedKey(C.Structure):
    """struct verified_key: a client address that answered a SYN challenge."""

    _fields_ = [("addr", Addr), ("family", C.c_uint32)]


class Counter(C.Structure):
    _fields_ = [("packets", C.c_uint64), ("bytes", C.c_uint64)]


class ObjStats(C.Structure):
    _fields_ = [
        ("packets", C.c_uint64),
        ("bytes", C.c_uint64),
        ("new_flows", C.c_uint64),
        ("pad", C.c_uint64),
    ]


class Stat(enum.IntEnum):
    """Index of the global `stats` map (enum xdplb_stat)."""

    FWD_NEW = 0
    FWD_EST = 1
    REPLY = 2
    PASS_NOT_IP = 3
    PASS_NOT_VIP = 4
    PASS_FRAGMENT = 5
    DROP_FRAGMENT = 6
    PASS_MALFORMED = 7
    DROP_NO_BACKEND = 8
    DROP_NAT_FULL = 9
    DROP_REMOVED = 10
    RESELECT = 11
    CSUM_FULL = 12
    PASS_TOO_LONG = 13
    DROP_NO_NEIGH = 14
    DROP_FIB = 15
    ICMP_FWD = 16
    ICMP_REPLY = 17
    CT_FULL = 18
    TX_ERROR = 19
    PASS_OTHER_MAC = 20
    DROP_NOT_SYN = 21
    EVICT_CLOSING = 22
    EVICT_EMBRYONIC = 23
    NONSYN_STATELESS = 24
    SYN_CHALLENGE = 25
    RST_NOT_SYN = 26
    RST_NAT_FULL = 27
    SYN_VERIFIED = 28
    TUNNEL_NO_ROUTE = 29
    PMTU_ICMP = 30
    PMTU_DROP = 31
    GUE_HINT = 32


ST_MAX = 33
# stats a NAT TCP miss answers with a frame of its own (guard.h: XDP_TX)
ANSWER_STATS = (Stat.SYN_CHALLENGE, Stat.RST_NOT_SYN, Stat.RST_NAT_FULL)


class LbKnobs(C.Structure):
    _fields_ = [
        ("hash_seed", C.c_uint32),
        ("nat_port_min", C.c_uint16),
        ("nat_port_max", C.c_uint16),
        ("frag_drop", C.c_uint8),
        ("csum_fixup", C.c_uint8),
        ("flow_format", C.c_uint8),
        ("mac_check", C.c_uint8),
        ("ct_sets", C.c_uint32),
        ("if_mac", C.c_uint8 * 6),
        ("pad", C.c_uint16),
        ("gue_port", C.c_uint16),
        ("pmtu_rate", C.c_uint16),
    ]


PORT_BITS_WORDS = 1024


class LbRuntime(C.Structure):
    _fields_ = [
        ("trace_rate", C.c_uint32),
        ("wildcard_vips", C.c_uint32),
        ("nat_vips", C.c_uint32),
        ("hz", C.c_uint32),
        ("vip_spill", C.c_uint32),
        ("nonsyn_budget", C.c_uint32),
        ("tcp_timeout", C.c_uint64),
        ("closing_timeout", C.c_uint64),
        ("udp_timeout", C.c_uint64),
        ("refresh", C.c_uint64),
        ("syn_timeout", C.c_uint64),
        ("age_shift", C.c_uint32),
        ("syn_challenge", C.c_uint32),
        ("syn_challenge_rate", C.c_uint32),
        ("rst_rate", C.c_uint32),
        ("challenge_hold", C.c_uint64),
        ("verified_timeout", C.c_uint64),
        ("cookie_shift", C.c_uint32),
        ("pad", C.c_uint32),
        ("cookie_secret", C.c_uint32 * 4),
        ("port_bits", C.c_uint64 * PORT_BITS_WORDS),
        ("addr_bits", C.c_uint64 * PORT_BITS_WORDS),
    ]

    def set_filter(self, addresses, ports) -> None:
        """The VIP pre-filter: destination ports (host order) and addresses in use."""
        for i in range(PORT_BITS_WORDS):
            self.port_bits[i] = 0
            self.addr_bits[i] = 0
        for p in ports:
            self.port_bits[p >> 6] |= 1 << (p & 63)
        for a in addresses:
            b = addr_bit(a)
            self.addr_bits[b >> 6] |= 1 << (b & 63)


def addr_bit(ip) -> int:
    """select.h::addr_bit: the address's words (as loaded) xor-folded to 16 bits."""
    w = struct.unpack("<4I", ipaddress.ip_address(ip).packed.ljust(16, b"\0"))
    h = w[0] ^ w[1] ^ w[2] ^ w[3]
    return (h ^ (h >> 16)) & 0xFFFF


class TraceEvent(C.Structure):
    _fields_ = [
        ("ts_ns", C.c_uint64),
        ("src", Addr),
        ("dst", Addr),
        ("out_dst", Addr),
        ("sport", C.c_uint16),
        ("dport", C.c_uint16),
        ("out_dport", C.c_uint16),
        ("proto", C.c_uint8),
        ("family", C.c_uint8),
        ("backend_id", C.c_uint32),
        ("vip_id", C.c_uint32),
        ("verdict", C.c_uint32),
        ("stat", C.c_uint32),
        ("pkt_len", C.c_uint32),
    ]


# Python name -> C struct name, for the BTF check.
MIRRORS = {
    "vip_key": VipKey,
    "vip_info": VipInfo,
    "vip_slot": VipSlot,
    "backend": Backend,
    "if_mac": IfMac,
    "flow_key": FlowKey,
    "flow_entry": FlowEntry,
    "counter": Counter,
    "obj_stats": ObjStats,
    "lb_knobs": LbKnobs,
    "lb_runtime": LbRuntime,
    "flood_state": FloodState,
    "verified_key": VerifiedKey,
    "trace_event": TraceEvent,
}


def pack_addr(ip: ipaddress.IPv4Address | ipaddress.IPv6Address | str
              ) -> tuple[C.Array[C.c_uint8], int]:
    """An address as stored in the maps (network order, IPv4 in the first 4 bytes)."""
    if isinstance(ip, str):  # (ip_address() of an address object parses its str again)
        ip = ipaddress.ip_address(ip)
    raw = ip.packed.ljust(16, b"\0")
    return Addr.from_buffer_copy(raw), (AF_INET if ip.version == 4 else AF_INET6)


def unpack_addr(addr: C.Array[C.c_uint8], family: int
                ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes(addr)
    return ipaddress.ip_address(raw[:4] if family == AF_INET else raw)


def htons(x: int) -> int:
    return ((x & 0xFF) << 8) | ((x >> 8) & 0xFF)


ntohs = htons
