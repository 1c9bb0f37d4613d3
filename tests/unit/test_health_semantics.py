"""What a health state means for traffic (drain, reset, initial down, max_drain_time, the
last backend), the reload that removes a check, and one source of truth: after any
sequence of edits, overrides and flips, the maps say what `status` says."""
from __future__ import annotations

import io
import ipaddress
import random
import re
import time

import numpy as np
import pytest

from xdplb._bpf import abi
from xdplb._bpf.fake import FakeDataPlane
from xdplb.config import parse_config
from xdplb.daemon import Controller
from xdplb.health import HealthMonitor
from xdplb.logfmt import Log

pytestmark = pytest.mark.unit

WEB = (ipaddress.ip_address("10.0.0.10"), 8000, "tcp")
B2, B3 = (WEB, "10.0.0.2:8000"), (WEB, "10.0.0.3:8000")


def config(health: str | None = "", backends=("10.0.0.2", "10.0.0.3"), weights=None) -> str:
    text = ('[lb]\ninterface = "veth6"\n[[vip]]\nname = "web"\naddress = "10.0.0.10"\n'
            "port = 8000\n")
    for i, b in enumerate(backends):
        w = f"weight = {weights[i]}\n" if weights else ""
        text += f'[[vip.backend]]\naddress = "{b}"\n{w}'
    if health is not None:
        text += '[vip.health]\nkind = "tcp"\nrise = 2\nfall = 2\n' + health
    return text


def controller(text: str) -> tuple[Controller, FakeDataPlane, io.StringIO]:
    """A controller over a fake data plane; probes never run (no event loop): tests
    flip states with `flip`."""
    log = io.StringIO()
    dp = FakeDataPlane()
    ctl = Controller(dp, parse_config(text, "lb.toml"), "lb.toml", Log(log),
                     HealthMonitor(None, lambda check: None if check.kind == "none"
                                   else _never))
    ctl.start()
    return ctl, dp, log


async def _never(address, port):
    raise AssertionError("no probe runs in these tests")


def flip(ctl: Controller, key, ok: bool) -> None:
    """Record results until the backend flips to `ok` (as the monitor would)."""
    st = ctl.monitor.states[key]
    for _ in range(1000):
        if st.record(ok, "" if ok else "refused"):
            ctl._on_health_change(key, st)
        ctl._on_health_result(key, ok, "" if ok else "refused")
        if st.up == ok:
            return
    raise AssertionError("never flipped")


def ring(ctl, dp) -> set[int]:
    return set(dp.rings[ctl.lb.vip_id(WEB)].tolist()) - {abi.NO_BACKEND}


def active(ctl, dp, key) -> bool:
    return bool(dp.backends[ctl.lb.backend_ids(WEB)[key[1]]].flags & abi.BE_F_ACTIVE)


def backend_status(ctl, key) -> dict:
    return next(b for b in ctl.status()["vips"][0]["backends"] if b["backend"] == key[1])


def test_new_backends_take_no_traffic_before_rise_checks_pass():
    ctl, dp, _log = controller(config())
    assert ring(ctl, dp) == set(), "both start down"
    assert backend_status(ctl, B2)["state"] == "down"
    flip(ctl, B2, True)
    assert ring(ctl, dp) == {ctl.lb.backend_ids(WEB)[B2[1]]}


def test_initial_up_trusts_new_backends():
    ctl, dp, _ = controller(config('initial = "up"\n'))
    assert len(ring(ctl, dp)) == 2


def test_drain_keeps_established_flows_and_takes_no_new_ones():
    ctl, dp, log = controller(config('initial = "up"\n'))
    flip(ctl, B3, False)
    assert ring(ctl, dp) == {ctl.lb.backend_ids(WEB)[B2[1]]}
    assert active(ctl, dp, B3), "active: its flows keep going to it"
    st = backend_status(ctl, B3)
    assert (st["state"], st["traffic"]) == ("down", "established")
    assert "event=backend_down" in log.getvalue() and "action=\"drain:" in log.getvalue()
    flip(ctl, B3, True)
    assert len(ring(ctl, dp)) == 2 and backend_status(ctl, B3)["traffic"] == "new"


def test_reset_moves_the_flows_at_once():
    ctl, dp, _ = controller(config('initial = "up"\non_down = "reset"\n'))
    flip(ctl, B3, False)
    assert not active(ctl, dp, B3)
    assert backend_status(ctl, B3)["traffic"] == "none"


def test_max_drain_time_ends_the_drain():
    ctl, dp, log = controller(config('initial = "up"\nmax_drain_time = 0.2\n'))
    flip(ctl, B3, False)
    assert active(ctl, dp, B3)
    ctl._on_health_result(B3, False, "refused")
    assert active(ctl, dp, B3), "not yet"
    time.sleep(0.25)
    ctl._on_health_result(B3, False, "refused")
    assert not active(ctl, dp, B3)
    assert "event=drain_expired" in log.getvalue()
    flip(ctl, B3, True)
    assert active(ctl, dp, B3) and len(ring(ctl, dp)) == 2


def test_losing_the_last_backend_is_logged_and_counted_whatever_the_cause():
    ctl, _dp, log = controller(config('initial = "up"\n'))
    flip(ctl, B2, False)
    assert "vip_without_backend" not in log.getvalue()
    flip(ctl, B3, False)
    assert log.getvalue().count("event=vip_without_backend") == 1
    flip(ctl, B3, True)
    ctl.handle({"cmd": "backend", "op": "drain", "backend": "10.0.0.3"})
    assert log.getvalue().count("event=vip_without_backend") == 2, "an operator's drain too"
    assert ctl.status()["vips"][0]["lost_last_backend"] == 2


def test_removing_the_check_on_reload_puts_pulled_backends_back_in_the_same_apply(tmp_path):
    """Issue 17, failure 2: the reload applied before the monitor forgot the removed
    check, so pulled backends stayed pulled while status said up."""
    for on_down in ("drain", "reset"):
        path = tmp_path / "lb.toml"
        path.write_text(config(f'initial = "up"\non_down = "{on_down}"\n'))
        ctl, dp, _ = controller(path.read_text())
        ctl.config_path = str(path)
        flip(ctl, B3, False)
        assert len(ring(ctl, dp)) == 1
        for off in (None, 'kind = "none"\n'):
            path.write_text(config(None) if off is None else
                            config("").replace('kind = "tcp"\n', "") + off)
            reply = ctl.reload()
            assert reply["changes"], "the reload changed the data plane"
            assert len(ring(ctl, dp)) == 2 and active(ctl, dp, B3)
            assert backend_status(ctl, B3)["state"] == "up"
            path.write_text(config(f'initial = "up"\non_down = "{on_down}"\n'))
            ctl.reload()
            flip(ctl, B3, False)


def test_a_reload_that_keeps_the_check_keeps_the_states(tmp_path):
    path = tmp_path / "lb.toml"
    path.write_text(config('initial = "up"\n'))
    ctl, dp, _ = controller(path.read_text())
    ctl.config_path = str(path)
    flip(ctl, B3, False)
    path.write_text(config('initial = "up"\n', weights=[3, 1]))
    ctl.reload()
    assert backend_status(ctl, B3)["state"] == "down" and len(ring(ctl, dp)) == 1


# --- one source of truth ---------------------------------------------------------------


def maps_say(ctl: Controller, dp: FakeDataPlane) -> dict[str, str]:
    """What the data plane does with each backend: new / established / none."""
    members = ring(ctl, dp)
    out = {}
    for key, bid in ctl.lb.backend_ids(WEB).items():
        be = dp.backends[bid]
        out[key] = ("none" if not be.flags & abi.BE_F_ACTIVE else
                    "new" if bid in members else "established")
    return out


def status_says(ctl: Controller) -> dict[str, str]:
    return {b["backend"]: b["traffic"] for b in ctl.status()["vips"][0]["backends"]}


def metrics_say(ctl: Controller) -> dict[str, tuple[bool, int]]:
    return {be: (up, w) for _, be, _, up, w in ctl.metrics_snapshot().backends}


@pytest.mark.parametrize("seed", range(8))
def test_status_metrics_and_maps_agree_after_any_sequence(tmp_path, seed):
    rnd = random.Random(seed)
    pool = [f"10.0.0.{i}" for i in range(2, 8)]
    path = tmp_path / "lb.toml"

    def random_config() -> str:
        return with_health().replace("port = 8000\n", "port = 8000\nring_size = 1009\n", 1)

    def with_health() -> str:
        chosen = rnd.sample(pool, rnd.randint(1, len(pool)))
        weights = [rnd.choice([0, 1, 1, 2, 5]) for _ in chosen]
        health = rnd.choice([None, "", 'on_down = "reset"\n', 'initial = "up"\n',
                             'initial = "up"\nkind = "none"\n'])
        if health is not None and "kind" in health:
            return config(None, chosen, weights) + "[vip.health]\n" + health
        return config(health, chosen, weights)

    path.write_text(random_config())
    ctl, dp, _ = controller(path.read_text())
    ctl.config_path = str(path)
    for step in range(60):
        op = rnd.random()
        names = [b.key for b in ctl.desired.vips[WEB].backends]
        if op < 0.15:
            path.write_text(random_config())
            ctl.reload()
        elif op < 0.35 and names:
            name = rnd.choice(names)
            ctl.handle({"cmd": "backend", "op": rnd.choice(["drain", "undrain"]),
                        "backend": name})
        elif op < 0.45 and names:
            ctl.handle({"cmd": "backend", "op": "weight", "backend": rnd.choice(names),
                        "weight": rnd.choice([0, 1, 3])})
        elif op < 0.55:
            free = [a for a in pool if f"{a}:8000" not in names]
            if free:
                ctl.handle({"cmd": "backend", "op": "add",
                            "backend": {"address": rnd.choice(free)}})
        elif op < 0.6 and len(names) > 1:
            ctl.handle({"cmd": "backend", "op": "remove", "backend": rnd.choice(names)})
        else:
            checked = [k for k in ctl.monitor.states if k[0] == WEB]
            if checked:
                key = rnd.choice(checked)
                flip(ctl, key, not ctl.monitor.states[key].up)
        want = maps_say(ctl, dp)
        got = status_says(ctl)
        assert got == {k: want[k] for k in got}, (seed, step)
        m = metrics_say(ctl)
        for b in ctl.status()["vips"][0]["backends"]:
            assert m[b["backend"]] == (b["state"] != "down", b["weight"]), (seed, step)
        # a removed backend is never in the ring
        ids = ctl.lb.backend_ids(WEB)
        assert ring(ctl, dp) <= set(ids.values())
        assert np.all(dp.rings[ctl.lb.vip_id(WEB)] != -1)
        assert re.fullmatch(r"\d+", str(len(got)))
