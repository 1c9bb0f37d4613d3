"""Health checks: the rise/fall state machine, the monitor with fake probes, the real
probes against local servers, and what a pulled backend means for the data plane."""
from __future__ import annotations

import asyncio
import io
import ipaddress
import socket

import pytest

from xdplb._bpf import abi
from xdplb._bpf.fake import FakeDataPlane
from xdplb.config import HealthCheck, parse_config
from xdplb.daemon import Controller
from xdplb.health import HealthMonitor, HealthState, Target, probe_http, probe_tcp
from xdplb.logfmt import Log

pytestmark = pytest.mark.unit

LOCAL = ipaddress.ip_address("127.0.0.1")


class TestStateMachine:
    def test_starts_up_and_goes_down_after_fall_failures(self):
        st = HealthState(rise=2, fall=3)
        assert st.up
        assert [st.record(False, "refused") for _ in range(3)] == [False, False, True]
        assert not st.up and st.last_detail == "refused" and st.failures == 3

    def test_comes_back_after_rise_successes(self):
        st = HealthState(rise=2, fall=1, up=False)
        assert [st.record(True), st.record(True)] == [False, True]
        assert st.up and st.last_detail == ""

    def test_a_success_resets_the_failure_streak(self):
        st = HealthState(rise=2, fall=3)
        for ok in (False, False, True, False, False):
            assert not st.record(ok)
        assert st.up
        assert st.record(False)

    def test_a_failure_resets_the_success_streak(self):
        st = HealthState(rise=3, fall=1, up=False)
        for ok in (True, True, False, True, True):
            assert not st.record(ok)
        assert not st.up
        assert st.record(True) and st.up

    @pytest.mark.parametrize("rise, fall", [(1, 1), (1, 5), (4, 2)])
    def test_flips_exactly_at_the_thresholds(self, rise, fall):
        st = HealthState(rise=rise, fall=fall)
        flips = [st.record(False) for _ in range(fall)]
        assert flips == [False] * (fall - 1) + [True]
        flips = [st.record(True) for _ in range(rise)]
        assert flips == [False] * (rise - 1) + [True]


def scripted(results: dict):
    """A probe factory whose probes answer from per-port scripts (then repeat the last)."""
    calls = []

    def factory(check):
        async def probe(address, port):
            calls.append(port)
            seq = results[port]
            return seq.pop(0) if len(seq) > 1 else seq[0]
        return probe
    return factory, calls


FAST = HealthCheck(kind="tcp", interval=0.01, timeout=0.01, rise=2, fall=2, initial="up")


async def wait_for(cond, timeout=3.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


class TestMonitor:
    def test_reports_flips_and_keeps_checking(self):
        async def go():
            factory, _ = scripted({1: [(False, "refused")] * 2 + [(True, "")]})
            changes = []
            mon = HealthMonitor(lambda k, st: changes.append((k, st.up)), factory)
            mon.update({"a": Target(LOCAL, 1, FAST)})
            await wait_for(lambda: len(changes) == 2)
            await mon.close()
            return changes
        assert asyncio.run(go()) == [("a", False), ("a", True)]

    def test_update_keeps_state_and_stops_removed_targets(self):
        async def go():
            factory, calls = scripted({1: [(False, "x")], 2: [(True, "")]})
            changes = []
            mon = HealthMonitor(lambda k, st: changes.append((k, st.up)), factory)
            mon.update({"a": Target(LOCAL, 1, FAST), "b": Target(LOCAL, 2, FAST)})
            await wait_for(lambda: changes == [("a", False)])
            slower = HealthCheck(kind="tcp", interval=0.02, timeout=0.01, rise=5, fall=2,
                                 initial="up")
            mon.update({"a": Target(LOCAL, 1, slower)})  # new settings, same state
            assert not mon.is_up("a") and mon.states["a"].rise == 5
            assert "b" not in mon.states
            n = len(calls)
            await asyncio.sleep(0.1)
            assert 2 not in calls[n:]
            await mon.close()
        asyncio.run(go())

    def test_kind_none_is_always_up(self):
        async def go():
            mon = HealthMonitor(lambda k, st: None)
            mon.update({"a": Target(LOCAL, 1, HealthCheck(kind="none"))})
            assert mon.is_up("a") and "a" not in mon.states
            await mon.close()
        asyncio.run(go())

    def test_a_probe_that_raises_counts_as_a_failure(self):
        async def go():
            async def boom(address, port):
                raise RuntimeError("bug")
            changes = []
            mon = HealthMonitor(lambda k, st: changes.append(st.last_detail), lambda c: boom)
            mon.update({"a": Target(LOCAL, 1, FAST)})
            await wait_for(lambda: changes)
            await mon.close()
            return changes
        assert asyncio.run(go()) == ["probe error: bug"]


# --- the real probes, against servers on 127.0.0.1 (no privileges) --------------------------

async def http_server(status_line: bytes | None):
    async def handle(reader, writer):
        await reader.readline()
        if status_line is None:  # never answer
            await asyncio.sleep(10)
        writer.write(status_line + b"\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TestProbes:
    @pytest.mark.parametrize("status, ok", [(b"HTTP/1.0 200 OK", True),
                                            (b"HTTP/1.1 302 Found", True),
                                            (b"HTTP/1.0 404 Not Found", False),
                                            (b"HTTP/1.0 503 Unavailable", False),
                                            (b"SSH-2.0-OpenSSH", False)])
    def test_http_status_decides(self, status, ok):
        async def go():
            server, port = await http_server(status)
            async with server:
                return await probe_http(LOCAL, port, "/health", 1.0)
        got, detail = asyncio.run(go())
        assert got == ok
        if not ok:
            assert detail

    def test_http_timeout(self):
        async def go():
            server, port = await http_server(None)
            async with server:
                return await probe_http(LOCAL, port, "/", 0.2)
        assert asyncio.run(go()) == (False, "timed out")

    def test_tcp_connect_and_refused(self):
        async def go():
            server, port = await http_server(b"HTTP/1.0 200 OK")
            async with server:
                up = await probe_tcp(LOCAL, port, 1.0)
            down = await probe_tcp(LOCAL, free_port(), 1.0)
            return up, down
        up, down = asyncio.run(go())
        assert up == (True, "")
        assert down == (False, "connection refused")


# --- what a pulled backend means for the data plane -------------------------------------------

CONFIG = """
[lb]
interface = "veth6"
[[vip]]
name = "web"
address = "10.0.0.10"
port = 8000
on_backend_removed = "reset"
[[vip.backend]]
address = "10.0.0.2"
port = 1
[[vip.backend]]
address = "10.0.0.3"
port = 2
[vip.health]
kind = "tcp"
interval = 0.1
timeout = 0.05
rise = 2
fall = 3
initial = "up"
on_down = "reset"
"""
WEB = (ipaddress.ip_address("10.0.0.10"), 8000, "tcp")


def test_a_failing_backend_is_pulled_and_returns_with_its_id():
    async def go():
        script = {1: [(True, "")], 2: [(True, "")]}
        factory, _ = scripted(script)
        dp = FakeDataPlane()
        ctl = Controller(dp, parse_config(CONFIG, "lb.toml"), "lb.toml",
                         Log(io.StringIO()), HealthMonitor(None, factory))
        ctl.start()
        ctl.sync_health()
        ids = ctl.lb.backend_ids(WEB)
        vid = ctl.lb.vip_id(WEB)
        b3 = ids["10.0.0.3:2"]
        assert b3 in set(dp.rings[vid].tolist())

        script[2] = [(False, "connection refused")]
        await wait_for(lambda: not ctl.monitor.is_up((WEB, "10.0.0.3:2")))
        ring = set(dp.rings[vid].tolist())
        assert ring == {ids["10.0.0.2:1"]}, "pulled from the Maglev table"
        assert not dp.backends[b3].flags & abi.BE_F_ACTIVE, "marked inactive: flows reset"
        assert ctl.lb.backend_ids(WEB) == ids, "keeps its id"
        st = ctl.status()["vips"][0]["backends"][1]
        assert (st["state"], st["health"]["last_error"]) == ("down", "connection refused")
        # pulled only after the new table is published: new flows never pick it
        writes = [w for w in dp.writes if w in (("swap_ring", vid), ("put_backend", b3))]
        assert writes[-2:] == [("swap_ring", vid), ("put_backend", b3)]

        script[2] = [(True, "")]
        await wait_for(lambda: ctl.monitor.is_up((WEB, "10.0.0.3:2")))
        assert dp.backends[b3].flags & abi.BE_F_ACTIVE
        assert set(dp.rings[vid].tolist()) == set(ids.values())
        await ctl.monitor.close()
        return ctl
    ctl = asyncio.run(go())
    assert ctl.checks[("web", "10.0.0.3:2", "fail")] >= 3


def test_a_vip_is_offered_for_announcement_only_once_every_backend_had_a_verdict():
    """Behind ECMP a starting node must not attract flows while one backend has risen and
    the other has not been checked enough: its Maglev table would differ from its peers'
    and the moved flows of the other backend would be reset."""
    async def go():
        cfg = CONFIG.replace('initial = "up"', 'initial = "down"')
        script = {1: [(True, "")], 2: [(True, "")]}
        slow = {"gate": asyncio.Event()}
        factory, _ = scripted(script)

        def gated(check):  # backend port 2 answers only once the gate opens
            probe = factory(check)

            async def p(address, port):
                if port == 2:
                    await slow["gate"].wait()
                return await probe(address, port)
            return p
        ctl = Controller(FakeDataPlane(), parse_config(cfg, "lb.toml"), "lb.toml",
                         Log(io.StringIO()), HealthMonitor(None, gated))
        ctl.start()
        ctl.sync_health()
        healthy = lambda: ctl.vip_health()[0].healthy
        await wait_for(lambda: ctl.monitor.is_up((WEB, "10.0.0.2:1")))
        await asyncio.sleep(0.3)  # several more intervals: 10.0.0.3 still has no verdict
        assert healthy() == 0, "not offered while 10.0.0.3:2 was never checked"
        script[2] = [(False, "connection refused")]
        slow["gate"].set()
        st3 = (WEB, "10.0.0.3:2")
        await wait_for(lambda: ctl.monitor.states[st3].checks >= 3)  # max(rise 2, fall 3)
        assert not ctl.monitor.is_up(st3)
        assert healthy() == 1, "a verdict for each: offered with its one healthy backend"
        # later changes follow min_healthy at once: a backend that goes down is counted out
        script[1] = [(False, "connection refused")]
        await wait_for(lambda: not ctl.monitor.is_up((WEB, "10.0.0.2:1")))
        assert healthy() == 0
        script[1] = [(True, "")]
        await wait_for(lambda: ctl.monitor.is_up((WEB, "10.0.0.2:1")))
        assert healthy() == 1
        await ctl.monitor.close()
    asyncio.run(go())
