"""Flow-state sync through the real program: an entry synced from one node's table to
another's keeps a moved flow on its backend after a backend change."""
from __future__ import annotations

import ipaddress

import numpy as np
import pytest
from scapy.all import IP, TCP, Ether, raw

from xdplb._bpf.dataplane import KNOBS_PIN, Knobs, read_knobs
from xdplb._bpf.libbpf import XDP_TX
from xdplb.config import SyncSettings
from xdplb.lb import BackendSpec, VipSpec
from xdplb.sync import FOREIGN_IDS, FlowSync, backend_map, decode, encode
from xdplb.testing.predict import Predictor

pytestmark = pytest.mark.bpf

ip = ipaddress.ip_address
VIP = ip("10.9.0.1")


def backends(n: int, first: int = 1) -> tuple[BackendSpec, ...]:
    return tuple(BackendSpec(ip(f"10.0.1.{i}"), bytes.fromhex(f"deadbeef01{i:02x}"))
                 for i in range(first, first + n))


def frame(sport: int, flags: str) -> bytes:
    return raw(Ether(src="de:ad:be:ef:00:01", dst="de:ad:be:ef:00:10")
               / IP(src="10.1.0.1", dst=str(VIP)) / TCP(sport=sport, dport=80, flags=flags))


def send(dp, f: bytes) -> str | None:
    action, out, _ = dp.program.test_run(f)
    return Ether(out)[IP].dst if action == XDP_TX else None


def node(lb, specs) -> FlowSync:
    k = read_knobs(lb.dp.maps[KNOBS_PIN])
    assert k is not None
    settings = SyncSettings(listen=("127.0.0.1", 1), peers=(("127.0.0.1", 2),), min_age=0.1,
                            resend=1.0, interval=0.5)
    return FlowSync(lb.dp, settings, backends=lambda: backend_map(lb, specs),
                    nat_entries=lb.dp._nat_entries(), hash_seed=k.hash_seed, ct_sets=k.ct_sets,
                    nat_port_min=k.nat_port_min,
                    foreign_base=lb.dp.maps["backends"].max_entries - FOREIGN_IDS)


def test_synced_entries_keep_moved_flows_on_their_backend_after_a_backend_change(balancer):
    spec = VipSpec(VIP, 80, mode="dsr", backends=backends(3))
    # two nodes: two data planes (another NAT range, so another table layout too)
    a = balancer([spec])
    b = balancer([spec], Knobs(nat_port_min=10000, nat_port_max=32000))
    assert a.dp is not b.dp
    flows = {s: send(a.dp, frame(s, "S")) for s in range(20000, 20300)}
    assert all(flows.values())
    for s, be in flows.items():  # the client's ACK confirms each (only those are synced)
        assert send(a.dp, frame(s, "A")) == be
    grown = VipSpec(VIP, 80, mode="dsr", backends=backends(4))
    b.apply([grown])  # a backend added on B: some flows' Maglev slot changes
    fresh = Predictor([grown])  # what B's Maglev picks for a flow it does not know
    moved = [s for s, be in flows.items()
             if str(fresh.forward("10.1.0.1", s, VIP, 80).addr) != be]
    assert moved, "the change must move some flows, or this test shows nothing"

    sa, sb = node(a, [spec]), node(b, [grown])
    assert sa.collect(now=0.0) == []  # younger than min_age: not yet
    datagrams = sa.collect(now=1.0)
    assert datagrams and all(len(d) <= 1400 for d in datagrams)
    assert sa.collect(now=1.5) == []  # sent; again only after `resend`
    for d in datagrams:
        sb.receive(d)
    assert sb.stats.written == len(flows) and sb.stats.no_backend == 0
    assert sb.collect(now=10.0) == []  # a peer's flows are not echoed back
    for s, be in flows.items():  # mid-flow packets on B keep A's choice
        assert send(b.dp, frame(s, "A")) == be, s
    # a second copy changes nothing; a flow B already has is never replaced
    for d in datagrams:
        sb.receive(d)
    assert sb.stats.known == len(flows)


def test_codec_round_trip_and_bounds():
    from xdplb._bpf.dataplane import FLOW_DTYPE

    e = np.zeros(50, dtype=FLOW_DTYPE)
    e["family"] = 2
    e["backend_id"] = np.arange(50) % 3
    ids = {i: (2, bytes(16), 80, bytes(16)) for i in range(3)}
    out = encode(e, ids, node=7, flags=1)
    assert len(out) == 3 and all(len(d) <= 1400 for d in out)
    got = [decode(d) for d in out]
    assert sum(len(x[3]) for x in got) == 50 and {x[:2] for x in got} == {(1, 7)}
    assert np.array_equal(np.concatenate([x[3] for x in got]), e)
    with pytest.raises(ValueError):
        decode(out[0][:-1])


def nat_frame(sport: int, flags: str) -> bytes:
    return raw(Ether(src="de:ad:be:ef:00:01", dst="de:ad:be:ef:00:10")
               / IP(src="10.1.0.1", dst=str(VIP)) / TCP(sport=sport, dport=80, flags=flags))


def nat_send(dp, f: bytes) -> tuple[str, int, str] | None:
    action, out, _ = dp.program.test_run(f)
    if action != XDP_TX:
        return None
    p = Ether(out)
    return p[IP].src, p[TCP].sport, p[IP].dst


def test_synced_nat_flows_leave_another_node_with_their_own_snat_address_and_port(balancer):
    """A NAT flow moved to node B keeps node A's SNAT address and port (the backend knows
    the flow by them and answers A, which still has it)."""
    a_spec = VipSpec(VIP, 80, snat=ip("10.2.0.11"), backends=backends(3))
    b_spec = VipSpec(VIP, 80, snat=ip("10.2.0.12"), backends=backends(3))
    a = balancer([a_spec])
    # another data plane with the same NAT range (every node of a group has the same)
    b = balancer([b_spec], Knobs(frag_drop=True))
    flows = {s: nat_send(a.dp, nat_frame(s, "S")) for s in range(21000, 21200)}
    assert all(f and f[0] == "10.2.0.11" for f in flows.values())
    for s, (snat, port, be) in flows.items():  # the handshake confirms each flow on A
        synack = raw(Ether(src=f"de:ad:be:ef:01:{int(be.rsplit('.', 1)[1]):02x}",
                           dst="de:ad:be:ef:00:10") / IP(src=be, dst=snat)
                     / TCP(sport=80, dport=port, flags="SA", seq=5000))
        assert a.dp.program.test_run(synack)[0] == XDP_TX
        ack = raw(Ether(src="de:ad:be:ef:00:01", dst="de:ad:be:ef:00:10")
                  / IP(src="10.1.0.1", dst=str(VIP)) / TCP(sport=s, dport=80, flags="A",
                                                         ack=5001))
        assert nat_send(a.dp, ack) == (snat, port, be)
    sa, sb = node(a, [a_spec]), node(b, [b_spec])
    assert sa.collect(now=0.0) == []  # first seen now: younger than min_age
    datagrams = sa.collect(now=1.0)
    assert datagrams
    for d in datagrams:
        sb.receive(d)
    assert sb.stats.written == len(flows), sb.stats
    for s, want in flows.items():  # the same SNAT address, port and backend as on A
        assert nat_send(b.dp, nat_frame(s, "A")) == want, s
    assert sb.collect(now=10.0) == []  # never sent back
    # B's own new flows still leave with B's address
    assert nat_send(b.dp, nat_frame(30000, "S"))[0] == "10.2.0.12"
