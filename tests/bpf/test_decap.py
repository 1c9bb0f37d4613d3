"""The backends' decapsulator (bpf/decap.bpf.c) under BPF_PROG_TEST_RUN: IPIP and GUE
(variants 0 and 1, either family in either) stripped for local inner destinations, the rest
passed untouched and counted by reason.

The test runs need a network namespace of their own: "local" is the kernel FIB's answer
for the ingress device (lo under a test run), so the runs happen in a namespace created
here (unique name, removed afterwards) with the VIP on its loopback, never in the
machine's."""
from __future__ import annotations

import ctypes as C
import json
import os
import subprocess
import sys
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from xdplb._bpf import abi
from xdplb.decap import STAT_NAMES, DecapKnobs
from xdplb.testing.btf import Btf

pytestmark = pytest.mark.bpf

ROOT = Path(__file__).resolve().parents[2]
OBJ = ROOT / "build" / "bpf" / "decap.bpf.o"
MACS = {"src": "de:ad:be:ef:00:fe", "dst": "de:ad:be:ef:00:02"}
VIP, VIP6, CLIENT, CLIENT6 = "10.0.0.10", "fd00::a", "10.0.0.1", "fd00::1"
LB, LB6, BE, BE6 = "10.0.0.9", "fd00::9", "10.0.1.2", "fd00:1::2"

RUNNER = r"""
import json, socket, sys
# an established connection 10.0.0.1:45000 -> VIP:7000 and a listener on VIP:7000
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("10.0.0.10", 7000))
srv.listen()
cli = socket.socket()
cli.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
cli.bind(("10.0.0.1", 45000))
cli.connect(("10.0.0.10", 7000))
acc, _ = srv.accept()
from xdplb._bpf import libbpf
from xdplb.decap import DecapState
obj = libbpf.BpfObject(sys.argv[1], rodata=bytes.fromhex(sys.argv[2])).load(("xdplb_decap",))
prog, state = obj.program("xdplb_decap"), obj.map("decap_state", value_type=DecapState)
n = int(sys.argv[3])
def counts():
    return [sum(c.stats[i].packets for c in state[0]) for i in range(n)]
out = []
for frame in json.loads(sys.stdin.read()):
    state[0] = DecapState()  # a cold cache on every CPU: every frame asks the FIB
    before = counts()
    act, data, _ = prog.test_run(bytes.fromhex(frame))
    after = counts()
    out.append([act, data.hex(), [i for i in range(len(after)) if after[i] != before[i]]])
print(json.dumps(out))
"""


def inner4(n: int = 100):
    return IP(src=CLIENT, dst=VIP, ttl=60) / TCP(sport=40000, dport=8000, flags="PA") / Raw(
        b"x" * n)


def inner6(n: int = 100):
    return IPv6(src=CLIENT6, dst=VIP6) / UDP(sport=40000, dport=53) / Raw(b"y" * n)


def eth(et: int | None = None):
    return Ether(**MACS) if et is None else Ether(**MACS, type=et)


def gue0(proto: int, hlen: int = 0, control: bool = False) -> bytes:
    """A GUE variant 0 header: version 0, C, Hlen (32-bit words of options), proto, flags."""
    return bytes([(0x20 if control else 0) | hlen, proto, 0, 0]) + b"\xab" * (4 * hlen)


@pytest.fixture(scope="module")
def netns():
    if os.geteuid() != 0:
        pytest.skip("bpf tier needs root")
    subprocess.run(["make", "-s", "-C", str(ROOT / "bpf")], check=True)
    ns = f"xdt{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        def ip(*a):
            subprocess.run(["ip", "-n", ns, *a], check=True)
        ip("link", "set", "lo", "up")
        ip("addr", "add", f"{VIP}/32", "dev", "lo")
        ip("addr", "add", f"{VIP6}/128", "dev", "lo", "nodad")
        ip("addr", "add", f"{CLIENT}/32", "dev", "lo")
        ip("route", "add", "192.0.2.0/24", "dev", "lo")
        ip("-6", "route", "add", "2001:db8::/64", "dev", "lo")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def run(ns: str, frames: list[bytes], forwarding: int, gue_port: int = 6080) -> list:
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                    f"net.ipv4.conf.all.forwarding={forwarding}",
                    f"net.ipv4.conf.lo.forwarding={forwarding}",
                    f"net.ipv6.conf.all.forwarding={forwarding}"], check=True)
    knobs = bytes(DecapKnobs(gue_port=abi.htons(gue_port))).hex()
    p = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", RUNNER, str(OBJ), knobs,
                        str(len(STAT_NAMES))], input=json.dumps([f.hex() for f in frames]),
                       capture_output=True, text=True, check=True)
    return [(a, bytes.fromhex(d), [STAT_NAMES[i] for i in moved])
            for a, d, moved in json.loads(p.stdout)]


CASES = [  # (name, frame, stripped frame or None for untouched, counter)
    ("ipip 4in4", eth() / IP(src=LB, dst=BE, proto=4) / inner4(), eth() / inner4(), "ipip"),
    ("ipip 6in6", eth() / IPv6(src=LB6, dst=BE6, nh=41) / inner6(), eth() / inner6(), "ipip"),
    ("ipip 6in4", eth() / IP(src=LB, dst=BE, proto=41) / inner6(), eth() / inner6(), "ipip"),
    ("gue v1 4 in 6", eth() / IPv6(src=LB6, dst=BE6) / UDP(sport=50000, dport=6080) / inner4(),
     eth() / inner4(), "gue"),
    ("gue v1 6 in 4", eth() / IP(src=LB, dst=BE) / UDP(sport=50000, dport=6080, chksum=0)
     / inner6(), eth() / inner6(), "gue"),
    ("gue v0 with options", eth() / IP(src=LB, dst=BE) / UDP(sport=5, dport=6080)
     / Raw(gue0(41, hlen=2)) / inner6(), eth() / inner6(), "gue"),
    ("gue v0 plain", eth() / IPv6(src=LB6, dst=BE6) / UDP(sport=5, dport=6080) / Raw(gue0(4))
     / inner4(), eth() / inner4(), "gue"),
    ("gue control message", eth() / IP(src=LB, dst=BE) / UDP(sport=5, dport=6080)
     / Raw(gue0(0, control=True)) / Raw(b"z" * 20), None, "pass_gue_other"),
    ("gue v0 of another protocol", eth() / IP(src=LB, dst=BE) / UDP(sport=5, dport=6080)
     / Raw(gue0(6)) / Raw(b"z" * 20), None, "pass_gue_other"),
    ("udp to another port", eth() / IP(src=LB, dst=BE) / UDP(sport=5, dport=6081) / inner4(),
     None, "pass_not_tunnel"),
    ("plain tcp", eth() / inner4(), None, "pass_not_tunnel"),
    ("arp-like", eth(0x0806) / Raw(b"\0" * 28), None, "pass_not_tunnel"),
    ("inner version does not match", eth() / IP(src=LB, dst=BE, proto=4) / inner6(), None,
     "pass_malformed"),
    ("truncated inner header", eth() / IP(src=LB, dst=BE, proto=4) / Raw(b"\x45\0\0"), None,
     "pass_malformed"),
]


@pytest.mark.parametrize("forwarding", [0, 1], ids=["forwarding off", "forwarding on"])
def test_tunnels_are_stripped_for_local_destinations(netns, forwarding):
    frames = [bytes(c[1]) for c in CASES]
    for (name, frame, want, counter), (act, out, moved) in zip(
            CASES, run(netns, frames, forwarding), strict=True):
        assert act == 2, name  # XDP_PASS: to the stack, always
        assert out == (bytes(frame) if want is None else bytes(want)), name
        assert moved == [counter], name


def test_inner_destination_elsewhere_is_left_alone_when_the_host_forwards(netns):
    away = eth() / IP(src=LB, dst=BE, proto=4) / IP(src=CLIENT, dst="192.0.2.7") / TCP()
    away6 = eth() / IPv6(src=LB6, dst=BE6) / UDP(dport=6080) / IPv6(src=CLIENT6,
                                                                     dst="2001:db8::7") / UDP()
    res = run(netns, [bytes(away), bytes(away6)], forwarding=1)
    assert [(a, o, m) for a, o, m in res] == [(2, bytes(away), ["pass_not_local"]),
                                              (2, bytes(away6), ["pass_not_local"])]
    # with forwarding off the stack itself only takes local packets: handed over
    res = run(netns, [bytes(away)], forwarding=0)
    assert res[0][2] == ["ipip"]


def test_gue_port_is_a_load_time_knob(netns):
    frame = eth() / IP(src=LB, dst=BE) / UDP(sport=5, dport=7000) / inner4()
    assert run(netns, [bytes(frame)], 0, gue_port=7000)[0][2] == ["gue"]
    assert run(netns, [bytes(frame)], 0)[0][2] == ["pass_not_tunnel"]


HINT = "10.0.1.3"


def hinted(sport: int, flags: str, outer6: bool = False):
    """A GUE variant 0 packet with xdplb's hint (the previous backend) to VIP:7000."""
    inner = IP(src=CLIENT, dst=VIP) / TCP(sport=sport, dport=7000, flags=flags) / Raw(b"q" * 9)
    if outer6:
        return (eth() / IPv6(src=LB6, dst=BE6) / UDP(sport=50001, dport=6080)
                / Raw(bytes([4, 4, 0, 1]) + IPv6Address("fd00:1::3").packed) / inner)
    return (eth() / IP(src=LB, dst=BE) / UDP(sport=50001, dport=6080, chksum=0)
            / Raw(bytes([1, 4, 0, 1]) + IPv4Address(HINT).packed) / inner)


def test_second_chance_sends_a_packet_without_connection_to_the_hinted_backend(netns):
    frames = [hinted(45000, "A"), hinted(45001, "A"), hinted(45001, "S"),
              hinted(45001, "PA", outer6=True)]
    res = run(netns, [bytes(f) for f in frames], forwarding=0)
    # a connection here: decapsulated as usual
    assert res[0][0] == 2 and res[0][2] == ["gue"] and res[0][1] == bytes(
        eth() / frames[0][TCP].underlayer), res[0]
    # none (only the listener): back out to the router, from this backend to the hint
    want = (Ether(src=MACS["dst"], dst=MACS["src"]) / IP(src=BE, dst=HINT)
            / UDP(sport=50001, dport=6080, chksum=0)
            / Raw(bytes([1, 4, 0, 2]) + IPv4Address(HINT).packed) / frames[1][TCP].underlayer)
    assert res[1][0] == 3 and res[1][2] == ["second_chance"], res[1]
    assert res[1][1] == bytes(want), (Ether(res[1][1]).show2(dump=True), want.show2(dump=True))
    # a SYN starts a connection here: no second chance
    assert res[2][0] == 2 and res[2][2] == ["gue"]
    # over IPv6 the UDP checksum is updated (scapy recomputes it in the expected frame)
    want6 = (Ether(src=MACS["dst"], dst=MACS["src"]) / IPv6(src=BE6, dst="fd00:1::3")
             / UDP(sport=50001, dport=6080)
             / Raw(bytes([4, 4, 0, 2]) + IPv6Address("fd00:1::3").packed)
             / frames[3][TCP].underlayer)
    assert res[3][0] == 3 and res[3][1] == bytes(want6), Ether(res[3][1]).show2(dump=True)


def test_decap_abi_matches_the_object():
    if not OBJ.exists():
        pytest.skip("decap object not built")
    btf = Btf.from_object(OBJ)
    text = (ROOT / "bpf" / "abi.h").read_text()
    body = text.split("enum decap_stat {", 1)[1].split("};", 1)[0]
    names = [ln.split()[0].rstrip(",").removeprefix("DS_").lower()
             for ln in body.splitlines() if ln.strip().startswith("DS_")]
    assert names[:-1] == list(STAT_NAMES) and names[-1] == "_max"
    from xdplb.decap import DecapLocal, DecapState

    for name, mirror in (("decap_state", DecapState), ("decap_local", DecapLocal)):
        t = btf.named(4, name)
        assert t is not None and t.size == C.sizeof(mirror), name
    knobs = btf.named(4, "decap_knobs")  # BTF_KIND_STRUCT
    assert knobs is not None and knobs.size == len(bytes(DecapKnobs()))
    assert [m.name for m in knobs.members] == [f[0] for f in DecapKnobs._fields_]
    assert btf.datasec_vars(".rodata") == [("dknobs", 0, len(bytes(DecapKnobs())))]
