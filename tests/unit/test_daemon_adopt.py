"""Taking over a kept data plane: VIPs and backends keep their ids (matched by address and
port), so a restarted or upgraded daemon keeps every live flow on its backend."""
from __future__ import annotations

import io
import ipaddress
from dataclasses import replace

import numpy as np
import pytest

from xdplb._bpf import abi
from xdplb._bpf.fake import FakeDataPlane
from xdplb.config import parse_config
from xdplb.daemon import Controller, specs_from_config
from xdplb.lb import IdPool, LoadBalancer, read_map_state
from xdplb.logfmt import Log

pytestmark = pytest.mark.unit

CONFIG = """
[lb]
interface = "veth6"

[[vip]]
name = "web"
address = "10.0.0.10"
port = 8000
[[vip.backend]]
address = "10.0.0.2"
[[vip.backend]]
address = "10.0.0.3"
[[vip.backend]]
address = "10.0.0.4"
weight = 0

[[vip]]
name = "dns"
address = "10.0.0.11"
port = 53
protocol = "udp"
mode = "dsr"
[[vip.backend]]
address = "10.0.0.3"
[[vip.backend]]
address = "10.0.0.2"
"""
WEB = (ipaddress.ip_address("10.0.0.10"), 8000, "tcp")
DNS = (ipaddress.ip_address("10.0.0.11"), 53, "udp")


def specs(text=CONFIG):
    return specs_from_config(parse_config(text, "lb.toml"))


def running(text=CONFIG, churn=True):
    """A fake data plane as a first daemon left it (with some id churn)."""
    dp = FakeDataPlane()
    lb = LoadBalancer(dp)
    s = specs(text)
    if churn:  # ids not in file order: a removed and re-added backend, a removed VIP
        lb.apply([replace(s[0], backends=s[0].backends[1:]), s[1]])
        lb.apply([replace(s[0], port=8001), *s])
        lb.apply(s)
    else:
        lb.apply(s)
    return dp, lb


def ids_of(lb):
    return {key: (lb.vip_id(key), lb.backend_ids(key)) for key in (s.key for s in lb.vips)}


def test_same_config_keeps_every_id_and_rewrites_identically():
    dp, first = running()
    before = (dict(dp.vips), {k: bytes(v) for k, v in dp.backends.items()},
              {k: v.copy() for k, v in dp.rings.items()}, dict(dp.vip_addrs), bytes(dp.rt))
    second = LoadBalancer(dp)
    log = second.adopt(specs(), read_map_state(dp))
    assert ids_of(second) == ids_of(first)
    assert ids_of(first)[WEB][1]["10.0.0.2:8000"] == 7  # churned: not in file order
    assert log == ["adopted VIP web (id 0): 3 of 3 backends kept their ids",
                   "adopted VIP dns (id 1): 2 of 2 backends kept their ids"]
    assert {k: bytes(v) for k, v in dp.vips.items()} == {k: bytes(v) for k, v in
                                                         before[0].items()}
    assert {k: bytes(v) for k, v in dp.backends.items()} == before[1]
    assert dp.rings.keys() == before[2].keys()
    assert all(np.array_equal(dp.rings[k], before[2][k]) for k in dp.rings)
    assert dp.vip_addrs == before[3] and bytes(dp.rt) == before[4]


def test_adopted_state_then_diffs_like_before():
    dp, _ = running()
    second = LoadBalancer(dp)
    second.adopt(specs(), read_map_state(dp))
    s = specs()
    assert second.apply(s) == []
    assert second.apply([replace(s[0], backends=s[0].backends[:2]), s[1]]) == \
        ["web: removed backend 10.0.0.4:8000"]


def test_a_backend_shared_by_two_vips_keeps_each_vips_id():
    """In DSR the entries of 10.0.0.3 for web (NAT, port 8000) and dns (port 0) differ,
    but two DSR VIPs sharing a backend have identical entries: the rings tell them apart."""
    text = CONFIG.replace('port = 8000\n', 'port = 8000\nmode = "dsr"\n')
    dp, first = running(text)
    a = first.backend_ids(WEB)["10.0.0.3:8000"]
    b = first.backend_ids(DNS)["10.0.0.3:53"]
    ea, eb = dp.backends[a], dp.backends[b]
    assert (bytes(ea.addr), ea.port, ea.flags) == (bytes(eb.addr), eb.port, eb.flags)
    assert (ea.vip_id, eb.vip_id) == (first.vip_id(WEB), first.vip_id(DNS))
    second = LoadBalancer(dp)
    second.adopt(specs(text), read_map_state(dp))
    assert ids_of(second) == ids_of(first)


def test_config_changed_while_down():
    dp, first = running()
    old = ids_of(first)
    s = specs()
    web = replace(s[0], backends=(*s[0].backends[1:], replace(s[0].backends[0], address=
                                                                ipaddress.ip_address("10.0.0.5"),
                                                                ring_key="10.0.0.5:8000")))
    new_vip = replace(s[1], address=ipaddress.ip_address("10.0.0.12"), name="dns2")
    second = LoadBalancer(dp)
    log = second.adopt([web, new_vip], read_map_state(dp))
    got = ids_of(second)
    # web keeps its id and its surviving backends' ids; 10.0.0.5 gets a fresh id
    assert got[WEB][0] == old[WEB][0]
    for k in ("10.0.0.3:8000", "10.0.0.4:8000"):
        assert got[WEB][1][k] == old[WEB][1][k]
    fresh = got[WEB][1]["10.0.0.5:8000"]
    assert fresh not in {i for _, ids in old.values() for i in ids.values()}
    # the removed backend and the removed VIP's backends are inactive; the VIP is gone
    gone = [old[WEB][1]["10.0.0.2:8000"], *old[DNS][1].values()]
    assert all(not dp.backends[i].flags & abi.BE_F_ACTIVE for i in gone)
    assert DNS not in got and len(dp.vips) == 2
    assert old[DNS][0] not in dp.rings
    addrs = {abi.unpack_addr(abi.VipKey.from_buffer_copy(k).addr, 2) for k in dp.vip_addrs}
    assert addrs == {ipaddress.ip_address("10.0.0.10"), ipaddress.ip_address("10.0.0.12")}
    assert "removed VIP 10.0.0.11:53/udp" in log
    assert "web: added backend 10.0.0.5:8000 weight 1" in log


def test_new_ids_do_not_collide_with_adopted_or_stale_ones():
    dp, _ = running()
    second = LoadBalancer(dp)
    second.adopt(specs(), read_map_state(dp))
    used = set(dp.backends)
    s = specs()
    second.apply([replace(s[0], backends=(*s[0].backends, replace(
        s[0].backends[0], address=ipaddress.ip_address("10.0.0.9"), ring_key="10.0.0.9:8000"))),
        s[1]])
    new = second.backend_ids(WEB)["10.0.0.9:8000"]
    assert new not in used


def test_id_pool_reserve_hands_out_gaps_first_and_stale_ids_last():
    pool = IdPool(8)
    pool.reserve({0, 2, 5}, stale=[3])
    assert [pool.take() for _ in range(5)] == [6, 7, 1, 4, 3]
    with pytest.raises(RuntimeError):
        pool.take()


def test_fresh_ids_start_with_zeroed_counters_adopted_ones_keep_theirs():
    class CountingFake(FakeDataPlane):
        def __init__(self):
            super().__init__()
            self.resets = []

        def reset_obj_stats(self, which, idx):
            self.resets.append((which, idx))

    dp = CountingFake()
    LoadBalancer(dp).apply(specs())
    assert sorted(dp.resets) == sorted([("vip_stats", 0), ("vip_stats", 1)] +
                                       [("be_stats", i) for i in range(5)])
    dp.resets.clear()
    LoadBalancer(dp).adopt(specs(), read_map_state(dp))
    assert dp.resets == []


HEALTH = CONFIG.replace('[[vip]]\nname = "dns"', '[vip.health]\nkind = "tcp"\n\n[[vip]]\n'
                        'name = "dns"')


def test_a_backend_the_previous_daemon_had_pulled_starts_down():
    dp, first = running(HEALTH, churn=False)
    s = specs(HEALTH)
    pulled = replace(s[0], backends=tuple(replace(b, active=b.key != "10.0.0.3:8000")
                                          for b in s[0].backends))
    first.apply([pulled, s[1]])
    bid = first.backend_ids(WEB)["10.0.0.3:8000"]
    assert not dp.backends[bid].flags & abi.BE_F_ACTIVE

    ctl = Controller(dp, parse_config(HEALTH, "lb.toml"), "lb.toml",
                     Log(io.StringIO()))
    ctl.start(read_map_state(dp))
    assert not ctl.monitor.is_up((WEB, "10.0.0.3:8000"))
    assert ctl.lb.backend_ids(WEB)["10.0.0.3:8000"] == bid
    assert not dp.backends[bid].flags & abi.BE_F_ACTIVE, "not re-activated by the restart"
    assert bid not in set(dp.rings[ctl.lb.vip_id(WEB)].tolist())
    # the DSR VIP has no health check: its 10.0.0.3 is up
    assert ctl.monitor.is_up((DNS, "10.0.0.3:53"))
