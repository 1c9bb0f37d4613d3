"""Flow admission and lifecycle under attack, through the real program (issue 14):
SYN floods, non-SYN misses, reused client ports, forged FIN/RST, the non-SYN budget."""
from __future__ import annotations

import contextlib
import ipaddress
import os

import pytest
from scapy.all import IP, TCP, UDP, Ether, Raw, raw

from xdplb._bpf import abi
from xdplb._bpf.dataplane import Knobs, Sizes
from xdplb._bpf.libbpf import XDP_DROP, XDP_TX
from xdplb.lb import BackendSpec, VipSpec

pytestmark = pytest.mark.bpf

ip = ipaddress.ip_address
VIP = "10.0.0.10"
CMAC, LBMAC = "de:ad:be:ef:00:01", "de:ad:be:ef:00:10"
EMB, CLOSING = abi.FLOW_F_EMBRYONIC, abi.FLOW_F_CLOSING


def backends(n: int) -> tuple[BackendSpec, ...]:
    return tuple(BackendSpec(ip(f"10.0.1.{i}"), bytes.fromhex(f"deadbeef01{i:02x}"))
                 for i in range(1, n + 1))


def client(sport: int, flags: str, src: str = "10.0.0.1", ack: int = 0, seq: int = 1,
           data: bytes = b"") -> bytes:
    return raw(Ether(src=CMAC, dst=LBMAC) / IP(src=src, dst=VIP)
               / TCP(sport=sport, dport=8000, flags=flags, seq=seq, ack=ack) / Raw(data))


def backend(be: str, nat_port: int, flags: str, seq: int = 0, data: bytes = b"") -> bytes:
    return raw(Ether(src="de:ad:be:ef:01:01", dst=LBMAC) / IP(src=be, dst=VIP)
               / TCP(sport=8000, dport=nat_port, flags=flags, seq=seq, ack=2) / Raw(data))


@contextlib.contextmanager
def small_lb_and_lb(mode: str = "nat", ports: tuple[int, int] = (10000, 10015),
                    n_backends: int = 4, **knobs):
    """A fresh data plane serving VIP:8000 (and the LoadBalancer that configured it)."""
    from xdplb._bpf.loader import load
    from xdplb.testing.fixtures import configured

    dp = load(sizes=Sizes(max_vips=16, max_backends=64, conntrack=1024),
              knobs=Knobs(nat_port_min=ports[0], nat_port_max=ports[1], **knobs))
    try:
        with configured(dp, [VipSpec(ip(VIP), 8000, mode=mode,
                                     backends=backends(n_backends))]) as lb:
            yield dp, lb
    finally:
        dp.close()


@contextlib.contextmanager
def small_lb(mode: str = "nat", ports: tuple[int, int] = (10000, 10015), n_backends: int = 4,
             **knobs):
    with small_lb_and_lb(mode, ports, n_backends, **knobs) as (dp, _lb):
        yield dp


VIP_KEY = VipSpec(ip(VIP), 8000).key


def entry(dp, sport: int, src: str = "10.0.0.1"):
    """The live entry of client flow src:sport (None when it has none)."""
    t = dp.flow_table()
    want = ip(src).packed
    for e in t[(t["family"] != 0) & (t["proto"] == 6)]:
        if e["src"].tobytes()[:4] == want and int(e["sport"]) == (
                (sport >> 8) | ((sport & 0xFF) << 8)):
            return e
    return None


def handshake(dp, sport: int, src: str = "10.0.0.1") -> tuple[str, int]:
    """SYN, the backend's SYN-ACK (ISN 7000), the client's ACK: (backend, NAT port)."""
    action, out, _ = dp.program.test_run(client(sport, "S", src))
    assert action == XDP_TX
    o = Ether(out)
    assert dp.program.test_run(backend(o[IP].dst, o[TCP].sport, "SA", 7000))[0] == XDP_TX
    action, ack, _ = dp.program.test_run(client(sport, "A", src, ack=7001))
    # forwarded to the flow's backend (a lost entry would make it a miss: an RST back)
    assert action == XDP_TX and Ether(ack)[IP].dst == o[IP].dst
    return o[IP].dst, o[TCP].sport


def count(dp, name: str) -> int:
    return dp.stats()[name][0]


def test_only_the_clients_ack_of_the_syn_ack_confirms_a_nat_flow():
    with small_lb() as dp:
        action, out, _ = dp.program.test_run(client(40000, "S"))
        assert action == XDP_TX and entry(dp, 40000)["flags"] == EMB
        be, port = Ether(out)[IP].dst, Ether(out)[TCP].sport
        # a blind ACK before the SYN-ACK, or one acknowledging the wrong sequence: still
        # embryonic (forwarded all the same: the flow has an entry)
        assert dp.program.test_run(client(40000, "A", ack=7001))[0] == XDP_TX
        assert entry(dp, 40000)["flags"] == EMB
        dp.program.test_run(backend(be, port, "SA", 7000))
        assert entry(dp, 40000)["flags"] == EMB | abi.FLOW_F_SYNACK
        dp.program.test_run(client(40000, "A", ack=1234))
        assert entry(dp, 40000)["flags"] == EMB | abi.FLOW_F_SYNACK
        dp.program.test_run(client(40000, "A", ack=7001))
        assert entry(dp, 40000)["flags"] == 0


def test_a_non_syn_miss_of_a_nat_vip_is_dropped_and_creates_nothing():
    """Unanswered: on a node of an ECMP group it may be a flow whose synced entry has not
    arrived yet (tests/e2e/test_ecmp.py adds a node under live connections)."""
    with small_lb() as dp:
        for flags in ("A", "PA", "FA", "R", "SA", ""):
            f = client(41000, flags)
            assert dp.program.test_run(f)[:2] == (XDP_DROP, f), flags
        assert count(dp, "drop_not_syn") == 6 and entry(dp, 41000) is None
        assert count(dp, "rst_not_syn") == 0
        assert dp.program.test_run(client(41000, "S"))[0] == XDP_TX


def flows_on(dp, victim: str, n: int, base: int, src: str = "10.0.0.1") -> list[int]:
    """Client ports of `n` new flows (SYNs) that went to backend `victim`."""
    out = []
    for sport in range(base, base + 400):
        o = Ether(dp.program.test_run(client(sport, "S", src))[1])
        if o[IP].dst == victim:
            out.append(sport)
            if len(out) == n:
                return out
    raise AssertionError(f"fewer than {n} flows on {victim}")


def test_a_reselected_nat_flow_is_answered_with_an_rst():
    """Its backend removed (on_backend_removed = reselect): the flow's entry is retired and
    its next packet without SYN gets what RFC 793 says a closed port sends (with ACK: an
    RST whose seq is that ACK number; without: an RST|ACK acknowledging its sequence
    space); options and payload dropped, the VLAN tag kept; an RST is never answered."""
    from scapy.all import Dot1Q

    from xdplb.testing.cases import answer

    with small_lb_and_lb(n_backends=2) as (dp, lb):
        sports = flows_on(dp, "10.0.1.1", 5, 41000)
        lb.set_backend(VIP_KEY, ip("10.0.1.1"), remove=True)
        f = raw(Ether(src=CMAC, dst=LBMAC) / IP(src="10.0.0.1", dst=VIP, options=b"\x01" * 4)
                / TCP(sport=sports[0], dport=8000, flags="PA", seq=500, ack=9000,
                      options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))])
                / Raw(b"xyz"))
        action, out, _ = dp.program.test_run(f)
        assert action == XDP_TX
        assert out == raw(answer(CMAC, "10.0.0.1", VIP, sports[0], 9000, 0, "R"))
        assert entry(dp, sports[0]) is None  # retired, nothing new
        f = client(sports[1], "F", seq=700, data=b"abcd")
        assert dp.program.test_run(f)[1] == raw(answer(CMAC, "10.0.0.1", VIP, sports[1], 0,
                                                       705, "RA"))
        f = raw(Ether(src=CMAC, dst=LBMAC) / Dot1Q(vlan=7) / IP(src="10.0.0.1", dst=VIP)
                / TCP(sport=sports[2], dport=8000, flags="A", ack=42))
        want = raw(Ether(src=LBMAC, dst=CMAC) / Dot1Q(vlan=7)
                   / IP(src=VIP, dst="10.0.0.1", id=0, flags="DF", ttl=64)
                   / TCP(sport=8000, dport=sports[2], seq=42, ack=0, flags="R", window=0))
        assert dp.program.test_run(f)[1] == want
        f = client(sports[3], "R", seq=1)
        assert dp.program.test_run(f)[:2] == (XDP_DROP, f)  # an RST is never answered
        assert (count(dp, "rst_not_syn"), count(dp, "drop_not_syn")) == (3, 1)
        assert count(dp, "reselect") == 4


def test_rst_answers_are_rate_limited_per_cpu():
    os.sched_setaffinity(0, {0})  # the token bucket is per CPU
    try:
        for rate, want in ((3, [XDP_TX] * 3 + [XDP_DROP] * 2), (0, [XDP_DROP] * 5)):
            with small_lb_and_lb(n_backends=2, rst_rate=rate) as (dp, lb):
                sports = flows_on(dp, "10.0.1.1", 5, 41100)
                lb.set_backend(VIP_KEY, ip("10.0.1.1"), remove=True)
                got = [dp.program.test_run(client(s, "A", ack=7))[0] for s in sports]
                # a second's worth, then nothing (0: never answered)
                assert got == want, rate
                assert count(dp, "rst_not_syn") == want.count(XDP_TX)
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


SECRET = bytes(range(16))


def cookie_of(dp, sport: int, src: str = "10.0.0.1", vip: str = VIP,
              slot: int = 0) -> int:
    """guard.h's cookie for client src:sport -> VIP:8000 in time slot `slot` (0: these
    tests freeze it with cookie_shift 63), from the loaded secret (the model's
    syn_cookie)."""
    from xdplb.model import FlowKey, syn_cookie

    a = ip(src)
    key = FlowKey(a.packed.ljust(16, b"\0"), ip(vip).packed.ljust(16, b"\0"), sport, 8000, 6,
                  abi.AF_INET if a.version == 4 else abi.AF_INET6)
    return syn_cookie(key, slot, tuple(dp.runtime().cookie_secret))


def verified(dp) -> set[str]:
    return {str(ip(bytes(k)[:4] if bytes(k)[16] == abi.AF_INET else bytes(k)[:16]))
            for k in dp.maps["verified"]}


def test_an_engaged_challenge_answers_a_syn_statelessly_and_the_cookie_rst_verifies():
    with small_lb(syn_challenge="always", cookie_secret=SECRET, cookie_shift=63) as dp:
        action, out, _ = dp.program.test_run(client(42100, "S", seq=1000))
        o = Ether(out)
        c = cookie_of(dp, 42100)
        assert action == XDP_TX and (o.dst, o.src) == (CMAC, LBMAC)
        assert (o[IP].src, o[IP].dst, o[TCP].sport, o[TCP].dport) == (VIP, "10.0.0.1", 8000,
                                                                      42100)
        assert (o[TCP].flags, o[TCP].seq, o[TCP].ack) == ("SA", c, c) and c != 1001
        t = dp.flow_table()
        assert not (t["family"] != 0).any(), "a challenged SYN creates no flow"
        assert count(dp, "syn_challenge") == 1 and count(dp, "fwd_new") == 0
        # an RST with another sequence number verifies nothing; the next SYN is challenged
        assert dp.program.test_run(client(42100, "R", seq=c ^ 0x40))[0] == XDP_DROP
        assert verified(dp) == set() and count(dp, "drop_not_syn") == 1
        assert Ether(dp.program.test_run(client(42100, "S", seq=1000))[1])[TCP].flags == "SA"
        # the client's answer (Linux: RST, seq = the ACK number) verifies its address
        assert dp.program.test_run(client(42100, "R", seq=c))[0] == XDP_DROP
        assert verified(dp) == {"10.0.0.1"} and count(dp, "syn_verified") == 1
        action, out, _ = dp.program.test_run(client(42100, "S", seq=1000))  # its next SYN
        assert action == XDP_TX and Ether(out)[IP].dst.startswith("10.0.1.")
        assert entry(dp, 42100)["flags"] == EMB and count(dp, "fwd_new") == 1
        # another port of a verified address goes straight in, another address does not
        assert Ether(dp.program.test_run(client(42101, "S"))[1])[IP].dst.startswith("10.0.1.")
        assert Ether(dp.program.test_run(client(42102, "S", "10.0.0.2"))[1])[TCP].flags == "SA"


def test_an_ipv6_client_is_challenged_and_verified_too():
    from scapy.all import IPv6

    v6 = VipSpec(ip("fd00::a"), 8000, backends=(BackendSpec(ip("fd00::1:1"),
                                                            bytes.fromhex("deadbeef0101")),))
    from xdplb._bpf.loader import load
    from xdplb.testing.fixtures import configured

    dp = load(sizes=Sizes(max_vips=16, max_backends=64, conntrack=1024),
              knobs=Knobs(nat_port_min=10000, nat_port_max=10015, syn_challenge="always",
                          cookie_secret=SECRET, cookie_shift=63))

    def syn(flags: str, seq: int) -> bytes:
        return raw(Ether(src=CMAC, dst=LBMAC) / IPv6(src="fd00::1", dst="fd00::a")
                   / TCP(sport=42200, dport=8000, flags=flags, seq=seq))
    try:
        with configured(dp, [v6]):
            o = Ether(dp.program.test_run(syn("S", 5))[1])
            c = cookie_of(dp, 42200, "fd00::1", "fd00::a")
            assert (o[IPv6].dst, o[TCP].flags, o[TCP].ack, o[IPv6].plen) == \
                ("fd00::1", "SA", c, 20)
            assert dp.program.test_run(syn("R", c))[0] == XDP_DROP
            assert verified(dp) == {"fd00::1"}
            o = Ether(dp.program.test_run(syn("S", 5))[1])
            assert o[IPv6].dst == "fd00::1:1" and o[TCP].flags == "S"
    finally:
        dp.close()


def test_the_cookie_follows_a_time_slot_of_about_8_seconds():
    """The default slot (cookie_shift from HZ): jiffies64 >> shift, jiffies64 counting
    from 2^32 - 300 s (INITIAL_JIFFIES); an answer is good in its slot and the next."""
    import time

    with small_lb(syn_challenge="always", cookie_secret=SECRET) as dp:
        rt = dp.runtime()
        assert (1 << rt.cookie_shift) >= 8 * rt.hz > (1 << (rt.cookie_shift - 1))
        slot = int((1 << 32) + (time.clock_gettime(time.CLOCK_MONOTONIC) - 300) * rt.hz) \
            >> rt.cookie_shift
        ack = Ether(dp.program.test_run(client(42600, "S", seq=1))[1])[TCP].ack
        near = {cookie_of(dp, 42600, slot=slot + d): d for d in (-1, 0, 1)}
        assert ack in near, (ack, near)
        prev = cookie_of(dp, 42600, slot=slot + near[ack] - 1)  # the previous slot's
        assert dp.program.test_run(client(42600, "R", seq=prev))[0] == XDP_DROP
        assert count(dp, "syn_verified") == 1
        older = cookie_of(dp, 42601, "10.0.0.7", slot=slot + near[ack] - 2)  # too old
        dp.program.test_run(client(42601, "R", "10.0.0.7", seq=older))
        assert count(dp, "syn_verified") == 1


def test_the_challenge_engages_above_the_syn_rate_and_not_below():
    os.sched_setaffinity(0, {0})  # engagement is per CPU
    try:
        with small_lb(syn_challenge_rate=5, cookie_secret=SECRET, cookie_shift=63) as dp:
            got = [Ether(dp.program.test_run(client(42300 + i, "S", f"10.0.2.{i}"))[1])
                   for i in range(8)]
            assert [o[IP].dst.startswith("10.0.1.") for o in got] == [True] * 5 + [False] * 3
            assert all(o[TCP].flags == "SA" for o in got[5:])
            assert (count(dp, "fwd_new"), count(dp, "syn_challenge")) == (5, 3)
        with small_lb(syn_challenge="off") as dp:  # off: never
            for i in range(8):
                assert Ether(dp.program.test_run(client(42400 + i, "S"))[1])[TCP].flags == "S"
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


def test_a_verified_address_expires():
    import time

    with small_lb(syn_challenge="always", verified_timeout_s=0.3, cookie_secret=SECRET,
                  cookie_shift=63) as dp:
        dp.program.test_run(client(42500, "S"))
        dp.program.test_run(client(42500, "R", seq=cookie_of(dp, 42500)))
        assert Ether(dp.program.test_run(client(42501, "S"))[1])[TCP].flags == "S"
        time.sleep(0.6)
        assert Ether(dp.program.test_run(client(42502, "S"))[1])[TCP].flags == "SA"


def test_fin_and_rst_before_the_handshake_do_not_mark_and_data_clears_a_forged_mark():
    with small_lb() as dp:
        dp.program.test_run(client(42000, "S"))
        dp.program.test_run(client(42000, "R"))  # a forged RST of a half-open flow
        assert entry(dp, 42000)["flags"] == EMB
        handshake_rest = entry(dp, 42000) is not None
        assert handshake_rest
        dp.program.test_run(client(42000, "S"))  # (a retransmitted SYN: the same flow)
        be, port = handshake(dp, 42001)
        assert entry(dp, 42001)["flags"] == 0
        dp.program.test_run(client(42001, "R"))  # forged: the connection goes on
        assert entry(dp, 42001)["flags"] == CLOSING
        dp.program.test_run(client(42001, "PA", ack=7001, data=b"more"))
        assert entry(dp, 42001)["flags"] == 0  # data: it was not closed
        dp.program.test_run(backend(be, port, "FA", 7001))  # the backend closes
        assert entry(dp, 42001)["flags"] == CLOSING
        dp.program.test_run(client(42001, "A", ack=7002))  # an ACK carries no data
        assert entry(dp, 42001)["flags"] == CLOSING


@pytest.mark.parametrize("close", ["FA", "R"])
def test_a_reused_client_port_opens_a_fresh_flow(close):
    with small_lb() as dp:
        handshake(dp, 43000)
        dp.program.test_run(client(43000, close))
        assert entry(dp, 43000)["flags"] == CLOSING
        before = count(dp, "fwd_new")
        assert dp.program.test_run(client(43000, "S"))[0] == XDP_TX  # port reused
        assert count(dp, "fwd_new") == before + 1
        e = entry(dp, 43000)
        assert e["flags"] == EMB  # nothing inherited
        t = dp.flow_table()
        assert ((t["family"] != 0) & (t["proto"] == 6)).sum() == 1  # the old one retired
        handshake(dp, 43000)
        assert entry(dp, 43000)["flags"] == 0


def challenged_handshake(dp, sport: int, src: str) -> tuple[str, int]:
    """A Linux client through an engaged challenge: SYN, the challenge SYN-ACK, its RST
    (seq = the ACK number), its SYN again, then the handshake."""
    action, out, _ = dp.program.test_run(client(sport, "S", src))
    o = Ether(out)
    if action == XDP_TX and o[IP].dst == src:  # challenged
        assert o[TCP].flags == "SA"
        assert dp.program.test_run(client(sport, "R", src, seq=o[TCP].ack))[0] == XDP_DROP
    return handshake(dp, sport, src)


def test_a_syn_flood_engages_the_challenge_and_costs_no_table_space():
    """64 NAT ports x 4 ways. 32 confirmed flows, then 5,000 spoofed SYNs: the first few
    hundred fill the free ways, the next ones recycle embryonic ways (evict_embryonic),
    which engages the challenge (no rate trigger here): from then on the flood is answered
    statelessly (syn_challenge), no more ways move; the confirmed flows keep theirs, and
    legit clients opening connections during the flood answer the challenge and complete
    their handshake."""
    os.sched_setaffinity(0, {0})  # engagement is per CPU
    try:
        with small_lb(ports=(10000, 10063), syn_challenge_rate=1 << 30,
                      syn_challenge_hold_s=600) as dp:
            confirmed = {s: handshake(dp, s, "10.0.0.2") for s in range(44000, 44032)}
            legit_ok = 0
            for i in range(5000):
                src = f"10.{100 + i // 60000}.{(i // 250) % 240}.{i % 250 + 1}"
                dp.program.test_run(client(1024 + i % 60000, "S", src))
                if i % 100 == 50:  # a real client's connection in the middle of the flood
                    with contextlib.suppress(AssertionError):
                        challenged_handshake(dp, 45000 + i // 100, "10.0.0.3")
                        legit_ok += 1
            evicted = count(dp, "evict_embryonic")
            assert 0 < evicted < 50 and count(dp, "syn_challenge") > 4500
            assert count(dp, "drop_nat_full") == count(dp, "rst_nat_full") == 0
            assert count(dp, "syn_verified") == 1  # 10.0.0.3, once
            assert legit_ok == 50
            for s, (be, port) in confirmed.items():
                action, out, _ = dp.program.test_run(client(s, "A", "10.0.0.2", ack=7001))
                assert action == XDP_TX and (Ether(out)[IP].dst, Ether(out)[TCP].sport) == \
                    (be, port)
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


def test_dsr_non_syn_misses_are_forwarded_and_create_entries_within_the_budget():
    if (os.cpu_count() or 1) < 1:
        pytest.skip("no CPU")
    os.sched_setaffinity(0, {0})  # the budget is per CPU
    try:
        with small_lb(mode="dsr", nonsyn_budget=5) as dp:
            outs = {}
            for i in range(20):
                action, out, _ = dp.program.test_run(client(46000 + i, "A"))
                assert action == XDP_TX
                outs[i] = Ether(out).dst
            assert count(dp, "nonsyn_stateless") == 15
            t = dp.flow_table()
            assert ((t["family"] != 0) & (t["proto"] == 6)).sum() == 5
            # stateless or not, a flow keeps its Maglev backend
            for i in range(20):
                assert Ether(dp.program.test_run(client(46000 + i, "A"))[1]).dst == outs[i]
            # a SYN needs no budget
            assert dp.program.test_run(client(47000, "S"))[0] == XDP_TX
            assert entry(dp, 47000)["flags"] == EMB
    finally:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))


def test_a_conntrack_region_filled_to_90_percent_evicts_few_live_flows():
    """16,384 entries (two candidate buckets of 8 per flow), 14,745 UDP flows of a DSR
    VIP (confirmed from their first datagram): the live flows evicted (ct_full) stay
    below 3 %, and every flow not evicted is found again."""
    import struct

    from xdplb._bpf.loader import load
    from xdplb.testing.fixtures import configured

    dp = load(sizes=Sizes(max_vips=16, max_backends=64, conntrack=16384))
    tpl = bytearray(raw(Ether(src=CMAC, dst=LBMAC) / IP(src="10.64.0.0", dst=VIP)
                        / UDP(sport=1, dport=5353, chksum=0) / Raw(b"q" * 18)))
    try:
        with configured(dp, [VipSpec(ip(VIP), 5353, "udp", mode="dsr",
                                     backends=backends(2))]):
            size = dp.flow_counts()["ct_size"]
            n = size * 9 // 10

            def frame(i: int) -> bytes:
                f = bytearray(tpl)
                f[26:30] = struct.pack("!I", (10 << 24 | 64 << 16) + i // 32768)
                f[34:36] = struct.pack("!H", 1024 + i % 32768)
                return bytes(f)

            for i in range(n):
                assert dp.program.test_run(frame(i))[0] == XDP_TX
            evicted = count(dp, "ct_full")
            print(f"\nconntrack fill to 90 %: {n} flows in {size} entries, {evicted} live "
                  f"flows evicted ({100 * evicted / n:.3f} %)")
            assert 0 < evicted < n * 3 // 100
            assert dp.flow_counts()["ct_live"] == n - evicted
            before = count(dp, "fwd_est")
            for i in range(n):
                dp.program.test_run(frame(i))
            assert count(dp, "fwd_est") - before >= n - 2 * evicted
    finally:
        dp.close()
