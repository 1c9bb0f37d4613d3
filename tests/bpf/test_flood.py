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
def small_lb(mode: str = "nat", ports: tuple[int, int] = (10000, 10015), n_backends: int = 4,
             **knobs):
    from xdplb._bpf.loader import load
    from xdplb.testing.fixtures import configured

    dp = load(sizes=Sizes(max_vips=16, max_backends=64, conntrack=1024),
              knobs=Knobs(nat_port_min=ports[0], nat_port_max=ports[1], **knobs))
    try:
        with configured(dp, [VipSpec(ip(VIP), 8000, mode=mode,
                                     backends=backends(n_backends))]):
            yield dp
    finally:
        dp.close()


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
    assert dp.program.test_run(client(sport, "A", src, ack=7001))[0] == XDP_TX
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
    with small_lb() as dp:
        for flags in ("A", "PA", "FA", "R", "SA", ""):
            f = client(41000, flags)
            assert dp.program.test_run(f)[:2] == (XDP_DROP, f), flags
        assert count(dp, "drop_not_syn") == 6 and entry(dp, 41000) is None
        assert dp.program.test_run(client(41000, "S"))[0] == XDP_TX


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


def test_a_syn_flood_cannot_fill_the_nat_region_against_confirmed_and_new_flows():
    """64 NAT ports x 4 ways. 32 confirmed flows, then 5,000 spoofed SYNs: the flood only
    recycles embryonic ways (evict_embryonic), the confirmed flows keep theirs, and legit
    clients opening connections during the flood get in and complete their handshake."""
    with small_lb(ports=(10000, 10063)) as dp:
        confirmed = {s: handshake(dp, s, "10.0.0.2") for s in range(44000, 44032)}
        legit_ok = 0
        for i in range(5000):
            src = f"10.{100 + i // 60000}.{(i // 250) % 240}.{i % 250 + 1}"
            dp.program.test_run(client(1024 + i % 60000, "S", src))
            if i % 100 == 50:  # a real client's connection in the middle of the flood
                with contextlib.suppress(AssertionError):
                    handshake(dp, 45000 + i // 100, "10.0.0.3")
                    legit_ok += 1
        assert count(dp, "evict_embryonic") > 4000
        assert count(dp, "drop_nat_full") == 0
        assert legit_ok == 50
        for s, (be, port) in confirmed.items():
            action, out, _ = dp.program.test_run(client(s, "A", "10.0.0.2", ack=7001))
            assert action == XDP_TX and (Ether(out)[IP].dst, Ether(out)[TCP].sport) == \
                (be, port)


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
