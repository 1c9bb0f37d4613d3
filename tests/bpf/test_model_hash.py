"""The program's choices for new flows equal the bit-exact model's (xdplb.model through
xdplb.testing.predict): Maglev backend from hash_flow(5-tuple, seed), NAT port from the
flow's set or the next one (nat_port_candidates), including shared ports, spills and
exhaustion of a 3-port NAT range; after each sequence the kernel's flow table equals
the model's entry for entry. Random IPv4/IPv6 clients and ports, TCP and UDP, NAT and
DSR, exact and port-0 VIPs."""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from xdplb._bpf import abi
from xdplb._bpf.dataplane import Knobs
from xdplb.lb import PROTOCOLS, BackendSpec, VipSpec
from xdplb.model import FlowEntry, FlowKey, flow_entries, nat_port_candidates
from xdplb.testing.cases import XDP_DROP, XDP_TX
from xdplb.testing.fixtures import clear_flows, configured
from xdplb.testing.framediff import frame_diff
from xdplb.testing.predict import Predictor
from xdplb.testing.runner import stats_delta

pytestmark = pytest.mark.bpf

CLIENT_MAC, LB_MAC = "de:ad:be:ef:00:01", "de:ad:be:ef:00:10"
A = ipaddress.ip_address


def _backends(prefix: str, n: int = 5) -> tuple[BackendSpec, ...]:
    return tuple(BackendSpec(A(f"{prefix}{i}"), bytes([2, 0, 0, 0, 1, i])) for i in range(1, n + 1))


VIPS = [
    VipSpec(A("10.0.0.10"), 8000, "tcp", backends=_backends("10.0.1.")),
    VipSpec(A("10.0.0.10"), 53, "udp", backends=_backends("10.0.2.")),
    VipSpec(A("10.0.0.20"), 0, "tcp", backends=_backends("10.0.3.")),  # every port
    VipSpec(A("fd00::a"), 443, "tcp", backends=_backends("fd00::1:")),
    VipSpec(A("fd00::b"), 0, "udp", mode="dsr", backends=_backends("fd00::2:")),
    VipSpec(A("10.0.0.30"), 80, "tcp", backends=_backends("10.0.4.", 1)),  # ports run out
]

# age_shift 31: a victim is chosen by rank and way, not by idle time (the model's clock
# stands still, the kernel's jiffies do not); the SYN challenge off: this is about the
# choices of flows that are admitted (tests/bpf/test_differential.py covers the challenge)
KNOB_SETS = {
    "default knobs": Knobs(age_shift=31, syn_challenge="off"),
    "other seed, 3-port NAT range, 4 conntrack sets": Knobs(
        hash_seed=0x01234567, nat_port_min=61000, nat_port_max=61002, ct_sets=4, age_shift=31,
        syn_challenge="off"),
}


@pytest.fixture(scope="module", params=list(KNOB_SETS), ids=list(KNOB_SETS))
def rig(request, dataplane_pool):
    knobs = KNOB_SETS[request.param]
    dp = dataplane_pool.get(knobs)
    rt = dp.runtime()  # the pool's data plane has the run-time knobs of its first user
    knobs.timeouts(rt, rt.hz or 250)
    dp.set_runtime(rt)
    with configured(dp, VIPS) as lb:
        yield dp, lb, Predictor(VIPS, knobs)


flows = st.lists(st.tuples(st.sampled_from(range(len(VIPS))),
                           st.integers(0, 2**128 - 1),  # client address (IPv4: low 32 bits)
                           st.integers(0, 65535),  # client port
                           st.integers(0, 65535)),  # destination port for port-0 VIPs
                 min_size=1, max_size=12)


def _flow(spec: VipSpec, addr: int, sport: int, dport: int):
    client = (ipaddress.IPv4Address(addr & 0xFFFFFFFF) if spec.address.version == 4
              else ipaddress.IPv6Address(addr))
    return client, sport, spec.port or dport


def _frame(src, dst, sport, dport, proto, smac, dmac) -> bytes:
    if A(src).version == 4:
        l3 = IP(src=str(src), dst=str(dst))
    else:
        l3 = IPv6(src=str(src), dst=str(dst))
    l4 = TCP(sport=sport, dport=dport, flags="S", seq=1) if proto == "tcp" else \
        UDP(sport=sport, dport=dport) / b"hello"
    return bytes(Ether(src=smac, dst=dmac) / l3 / l4)


def _candidate_index(model, client, sport, spec, dport, pick) -> int:
    h = model.hash(client, sport, spec.address, dport, spec.protocol)
    k = model.knobs
    return nat_port_candidates(h, k.nat_port_min, k.nat_port_max).index(pick.nat_port)


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(flows=flows)
def test_new_flows_follow_the_model(rig, flows):
    check_flows(rig, flows)


@SETTINGS
@given(flows=st.lists(st.tuples(st.just(len(VIPS) - 1), st.integers(0, 2**32 - 1),
                                st.integers(0, 65535), st.just(0)), min_size=2, max_size=8))
def test_nat_ports_run_out_as_the_model_says(rig, flows):
    """One backend: every flow competes for the same reply tuples."""
    check_flows(rig, flows)


def check_flows(rig, flows):
    dp, lb, model = rig
    clear_flows(dp)
    model.reset()
    for vip_index, addr, sport, dport in flows:
        spec = VIPS[vip_index]
        client, sport, dport = _flow(spec, addr, sport, dport)
        pick = model.forward(client, sport, spec.address, dport, spec.protocol,
                             client_mac=bytes.fromhex(CLIENT_MAC.replace(":", "")))
        known = pick.known
        side = {s.name.lower() for s in model.model.last_counters}  # evictions, reselect
        frame = _frame(client, spec.address, sport, dport, spec.protocol, CLIENT_MAC, LB_MAC)
        before = dp.stats()
        action, out, _ = dp.program.test_run(frame)
        moved = stats_delta(before, dp.stats())
        what = f"{client}:{sport} -> {spec.label} (dport {dport})"
        if pick.drop in ("rst_nat_full", "rst_not_syn"):  # answered (guard.h): back out
            event(pick.drop)
            assert action == XDP_TX and TCP in Ether(out) and "R" in Ether(out)[TCP].flags, what
            assert set(moved) == {pick.drop} | side, (what, moved)
            continue
        if pick.drop:
            event(pick.drop)
            assert (action, out) == (XDP_DROP, frame), what
            assert set(moved) == {pick.drop} | side, (what, moved)
            continue
        if spec.mode == "nat":
            want = _frame(spec.snat or spec.address, pick.addr, pick.nat_port,
                          pick.backend_port, spec.protocol, LB_MAC, pick.mac)
        else:
            want = _frame(client, spec.address, sport, dport, spec.protocol, LB_MAC, pick.mac)
        if known:
            event("known flow")
        elif spec.mode == "nat":
            event(f"NAT port: candidate {_candidate_index(model, client, sport, spec, dport, pick)}")
        assert action == XDP_TX, what
        assert out == want, f"{what}:\n{frame_diff(want, out)}"
        assert set(moved) == {"fwd_est" if known else "fwd_new"} | side, (what, moved)
        caddr, fam = abi.pack_addr(client)
        vaddr, _ = abi.pack_addr(spec.address)
        key = FlowKey(bytes(caddr), bytes(vaddr), sport, dport, PROTOCOLS[spec.protocol], fam)
        idx = model.model.find_flow(key)
        assert idx is not None, what
        e = FlowEntry.from_abi(dp.flow_table()[idx])  # the kernel's entry where the model's is
        assert e.key == key and e.backend_id == pick.backend_id, (what, e)
        if spec.mode == "nat":
            assert model.model.nat_port_of(idx) == pick.nat_port, what
        assert lb.backend_ids(spec.key)[pick.backend.key] == pick.backend_id
        if spec.mode == "nat":
            check_reply(dp, spec, client, sport, dport, pick, what)
    kernel = {i: e.decision() for i, e in flow_entries(dp.flow_table()).items()}
    assert kernel == model.model.table(), "flow tables differ"


def check_reply(dp, spec, client, sport, dport, pick, what):
    """The backend's answer goes back to this flow's client, even when ports collided."""
    snat = spec.snat or spec.address
    reply = _frame(pick.addr, snat, pick.backend_port, pick.nat_port, spec.protocol,
                   pick.mac, LB_MAC)
    want = _frame(spec.address, client, dport, sport, spec.protocol, LB_MAC, CLIENT_MAC)
    before = dp.stats()
    action, out, _ = dp.program.test_run(reply)
    moved = stats_delta(before, dp.stats())
    assert action == XDP_TX, f"reply of {what}"
    assert out == want, f"reply of {what}:\n{frame_diff(want, out)}"
    assert set(moved) == {"reply"}, (what, moved)
