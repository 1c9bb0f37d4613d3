"""Map writes as data (plan.py): the plan is pure, and no prefix of a plan ever shows the
data plane a half-made VIP, over random sequences of desired states."""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xdplb._bpf import abi
from xdplb._bpf.fake import FakeDataPlane
from xdplb.lb import read_map_state
from xdplb.plan import PutVip, State, SwapRings, execute, plan, plan_adoption
from xdplb.spec import BackendSpec, VipSpec, vip_addr_key

pytestmark = pytest.mark.unit

ADDRS = [ipaddress.ip_address(a) for a in ("10.0.0.10", "10.0.0.11", "fd00::10")]
BACKENDS = {4: [ipaddress.ip_address(f"10.0.1.{i}") for i in range(1, 6)],
            6: [ipaddress.ip_address(f"fd00:1::{i}") for i in range(1, 6)]}


@st.composite
def vip_specs(draw) -> list[VipSpec]:
    """A desired state: up to 4 VIPs from a small pool (so sequences add, change and
    remove the same VIPs), each with a few backends, weights (0 = drained) and health."""
    keys = draw(st.lists(st.tuples(st.sampled_from(ADDRS), st.sampled_from([0, 80, 443]),
                                   st.sampled_from(["tcp", "udp"])),
                         max_size=4, unique=True))
    out = []
    for addr, port, proto in keys:
        pool = BACKENDS[addr.version]
        chosen = draw(st.lists(st.sampled_from(pool), max_size=4, unique=True))
        backends = tuple(BackendSpec(b, mac=bytes(6), weight=draw(st.integers(0, 3)),
                                     active=draw(st.booleans())) for b in chosen)
        out.append(VipSpec(addr, port, proto, mode=draw(st.sampled_from(["nat", "dsr"])),
                           backends=backends, ring_size=draw(st.sampled_from([7, 13])),
                           on_backend_removed=draw(st.sampled_from(["reselect", "reset"]))))
    return out


def visible(dp: FakeDataPlane) -> dict[bytes, abi.VipInfo]:
    """VIPs the data plane can find: in the hash map or in the direct-mapped cache."""
    out = dict(dp.vips)
    for slot in dp.vip_slots.values():
        out[bytes(slot.key)] = slot.info
    return out


def assert_whole(dp: FakeDataPlane) -> None:
    """Every VIP the data plane can find is whole: its address entry, its switches, its
    Maglev table, and every backend that table names written, active and its own."""
    rt = dp.rt
    for kb, info in visible(dp).items():
        key = abi.VipKey.from_buffer_copy(kb)
        addr = abi.unpack_addr(key.addr, key.family)
        port = abi.ntohs(key.port)
        assert dp.vip_addrs.get(bytes(vip_addr_key(addr)), 0) >= 1, f"{addr}: no vip_addrs"
        if port == 0:
            assert rt.wildcard_vips >= 1, "a port-0 VIP before the wildcard switch"
        if info.mode == abi.MODE_NAT:
            assert rt.nat_vips >= 1, "a NAT VIP before the NAT switch"
        b = abi.addr_bit(addr)
        assert rt.addr_bits[b >> 6] >> (b & 63) & 1, f"{addr} not in the pre-filter"
        assert rt.port_bits[port >> 6] >> (port & 63) & 1, f"port {port} not in the pre-filter"
        assert info.vip_id in dp.rings, f"VIP id {info.vip_id} visible without its table"
        members = set(dp.rings[info.vip_id].tolist()) - {abi.NO_BACKEND}
        for bid in members:
            be = dp.backends.get(bid)
            assert be is not None and be.family, f"table names unwritten backend {bid}"
            assert be.vip_id == info.vip_id, f"backend {bid} belongs to another VIP"
            assert be.flags & abi.BE_F_ACTIVE, f"table names inactive backend {bid}"


def serves(dp: FakeDataPlane, desired: list[VipSpec]) -> None:
    """After the whole plan: exactly `desired` is visible."""
    from xdplb.spec import vip_key

    assert set(visible(dp)) == {bytes(vip_key(*v.key)) for v in desired}


def run_stepwise(dp: FakeDataPlane, writes) -> None:
    for w in writes:
        execute(dp, [w])
        assert_whole(dp)


@settings(max_examples=150, deadline=None)
@given(st.lists(vip_specs(), min_size=1, max_size=6))
def test_no_prefix_of_a_plan_shows_a_half_made_vip(sequence):
    dp = FakeDataPlane()
    state = State.empty(64, 256)
    for desired in sequence:
        p = plan(state, desired)
        run_stepwise(dp, p.writes)
        serves(dp, desired)
        state = p.state


@settings(max_examples=60, deadline=None)
@given(vip_specs(), vip_specs())
def test_adoption_shows_no_half_made_vip_either(before, after):
    """A restart: another planner adopts the maps and serves `after`."""
    dp = FakeDataPlane()
    execute(dp, plan(State.empty(64, 256), before).writes)
    dp.vip_slots.clear()  # the new program's VIP cache starts empty (never shared)
    p = plan_adoption(State.empty(64, 256), after, read_map_state(dp))
    run_stepwise(dp, p.writes)
    serves(dp, after)


def test_plan_is_pure():
    state = State.empty(8, 8)
    spec = VipSpec(ADDRS[0], 80, backends=(BackendSpec(BACKENDS[4][0], mac=bytes(6)),))
    p1, p2 = plan(state, [spec]), plan(state, [spec])
    assert not state.vips and state.vip_ids.take() == 0  # untouched
    assert [type(w) for w in p1.writes] == [type(w) for w in p2.writes]
    assert p1.log == ("added VIP 10.0.0.10:80/tcp with 1 backends",)


def test_the_vip_comes_after_its_table():
    spec = VipSpec(ADDRS[0], 80, backends=(BackendSpec(BACKENDS[4][0], mac=bytes(6)),))
    kinds = [type(w) for w in plan(State.empty(8, 8), [spec]).writes]
    assert kinds.index(SwapRings) < kinds.index(PutVip)


def test_the_checker_catches_a_vip_written_first():
    """The property is not vacuous: the same writes with the VIP moved first fail it."""
    spec = VipSpec(ADDRS[0], 80, backends=(BackendSpec(BACKENDS[4][0], mac=bytes(6)),))
    writes = list(plan(State.empty(8, 8), [spec]).writes)
    first = next(w for w in writes if isinstance(w, PutVip))
    writes.remove(first)
    with pytest.raises(AssertionError):
        run_stepwise(FakeDataPlane(), [first, *writes])
