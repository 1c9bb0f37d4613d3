"""The planner at scale: what a change writes is what changed (no rewrite of unchanged
tables or entries), tables change in place, and adoption of identical maps writes no
table and no entry."""
from __future__ import annotations

import ipaddress
from dataclasses import replace

import numpy as np
import pytest

from xdplb._bpf.fake import FakeDataPlane
from xdplb.lb import BackendSpec, LoadBalancer, VipSpec, read_map_state
from xdplb.plan import PatchRings, PutBackend, PutVip, SwapRings, plan
from xdplb.ring import maglev_table

pytestmark = pytest.mark.unit

ip = ipaddress.ip_address
POOL = tuple(BackendSpec(ip(f"10.0.0.{i}"), bytes(6), 80) for i in range(2, 6))


def vips(n: int, pool=POOL) -> list[VipSpec]:
    return [VipSpec(ip(f"10.1.{v // 250}.{v % 250 + 1}"), 80, backends=pool, ring_size=251)
            for v in range(n)]


def drained(specs: list[VipSpec], address: str) -> list[VipSpec]:
    return [replace(s, backends=tuple(replace(b, weight=0) if b.address == ip(address)
                                      else b for b in s.backends)) for s in specs]


def test_a_drain_patches_tables_in_place_and_writes_no_entry():
    dp = FakeDataPlane()
    lb = LoadBalancer(dp, 64, 1024)
    specs = vips(20)
    lb.apply(specs)
    p = plan(lb.state, drained(specs, "10.0.0.2"))
    kinds = {type(w) for w in p.writes}
    assert PatchRings in kinds
    assert not kinds & {SwapRings, PutVip, PutBackend}, kinds
    lb.apply(drained(specs, "10.0.0.2"))
    for s in specs:
        st = lb.state.vips[s.key]
        want = maglev_table([(st.backend_ids[b.key], b.key, 0 if b.address == ip("10.0.0.2")
                              else 1) for b in s.backends], 251)
        assert np.array_equal(dp.rings[st.vip_id], want)


def test_a_plan_leaves_its_input_state_as_it_was():
    lb = LoadBalancer(FakeDataPlane(), 64, 1024)
    specs = vips(5)
    lb.apply(specs)
    before = {k: (v.spec, dict(v.backend_ids)) for k, v in lb.state.vips.items()}
    plan(lb.state, drained(specs, "10.0.0.3")[:3] + [replace(specs[4], backends=POOL[:2])])
    assert {k: (v.spec, dict(v.backend_ids)) for k, v in lb.state.vips.items()} == before


def test_adopting_maps_that_already_serve_the_config_writes_no_table_and_no_entry():
    dp = FakeDataPlane()
    LoadBalancer(dp, 64, 1024).apply(vips(10))
    dp.writes.clear()
    again = LoadBalancer(dp, 64, 1024)
    again.adopt(vips(10), read_map_state(dp))
    ops = {op for op, _ in dp.writes}
    assert not ops & {"swap_ring", "put_backend", "put_vip"}, ops


def test_adopting_rewrites_only_the_tables_that_differ():
    dp = FakeDataPlane()
    LoadBalancer(dp, 64, 1024).apply(vips(10))
    dp.writes.clear()
    want = vips(10)
    want[3] = replace(want[3], backends=POOL[:3])
    LoadBalancer(dp, 64, 1024).adopt(want, read_map_state(dp))
    assert [k for op, k in dp.writes if op == "swap_ring"] == [3]


def test_a_changed_vip_is_copied_before_the_planner_changes_it():
    lb = LoadBalancer(FakeDataPlane(), 8, 64)
    lb.apply(vips(2))
    old = lb.state
    p = plan(old, [replace(vips(2)[0], backends=POOL[1:]), vips(2)[1]])
    key0, key1 = vips(2)[0].key, vips(2)[1].key
    assert p.state.vips[key1] is old.vips[key1]  # unchanged: shared
    assert p.state.vips[key0] is not old.vips[key0]
    assert len(old.vips[key0].backend_ids) == 4 and len(p.state.vips[key0].backend_ids) == 3
