"""Runtime overrides (drain, weight, backend/VIP add and remove) on top of the file: kept
one per target, applied again after a reload (those that no longer apply dropped), kept in
a state file for a restart, dropped by reset-overrides."""
from __future__ import annotations

import io
import ipaddress

import pytest

from xdplb._bpf import abi
from xdplb._bpf.fake import FakeDataPlane
from xdplb.config import parse_config
from xdplb.daemon import Controller, Desired, RequestError
from xdplb.logfmt import Log

pytestmark = pytest.mark.unit

CONFIG = """
[lb]
interface = "veth6"
max_vips = 3
max_backends = 6

[[vip]]
name = "web"
address = "10.0.0.10"
port = 8000
[[vip.backend]]
address = "10.0.0.2"
[[vip.backend]]
address = "10.0.0.3"
weight = 2

[[vip]]
name = "api"
address = "10.0.0.10"
port = 9000
[[vip.backend]]
address = "10.0.0.2"
port = 9001
"""

WEB = (ipaddress.ip_address("10.0.0.10"), 8000, "tcp")
API = (ipaddress.ip_address("10.0.0.10"), 9000, "tcp")


def cfg(text=CONFIG):
    return parse_config(text, "lb.toml")


def weights(d: Desired) -> dict:
    return {(s.name, b.key): b.weight for s in d.specs() for b in s.backends}


class TestLookups:
    @pytest.mark.parametrize("ref", ["web", "10.0.0.10:8000", "10.0.0.10:8000/tcp"])
    def test_a_vip_by_name_or_address(self, ref):
        assert Desired(cfg()).find_vip(ref) == WEB

    def test_an_address_alone_is_ambiguous_with_two_vips_on_it(self):
        with pytest.raises(RequestError, match="ambiguous"):
            Desired(cfg()).find_vip("10.0.0.10")

    def test_unknown_vip_lists_the_known_ones(self):
        with pytest.raises(RequestError, match=r"no VIP 'db' \(VIPs: web, api\)"):
            Desired(cfg()).find_vip("db")

    def test_a_backend_without_vip_matches_in_every_vip(self):
        hits = Desired(cfg()).select(None, "10.0.0.2")
        assert [(k, b.key) for k, b in hits] == [(WEB, "10.0.0.2:8000"), (API, "10.0.0.2:9001")]

    def test_a_backend_with_port_matches_exactly(self):
        hits = Desired(cfg()).select(None, "10.0.0.2:9001")
        assert [(k, b.key) for k, b in hits] == [(API, "10.0.0.2:9001")]

    @pytest.mark.parametrize("ref, msg", [("10.0.0.9", "no backend '10.0.0.9' in any VIP"),
                                          ("nonsense", "is not a backend"),
                                          ("10.0.0.2:x", "is not a backend")])
    def test_bad_backend_references(self, ref, msg):
        with pytest.raises(RequestError, match=msg):
            Desired(cfg()).select(None, ref)


class TestOverrides:
    def test_drain_is_weight_zero_and_undrain_restores_the_file_weight(self):
        d = Desired(cfg())
        d.drain("web", "10.0.0.3")
        assert weights(d)[("web", "10.0.0.3:8000")] == 0
        d.drain("web", "10.0.0.3", on=False)
        assert weights(d)[("web", "10.0.0.3:8000")] == 2
        assert d.overrides == [], "an undrain undoes the drain: nothing is left to keep"

    def test_drain_without_vip_drains_the_backend_everywhere(self):
        d = Desired(cfg())
        d.drain(None, "10.0.0.2")
        assert weights(d)[("web", "10.0.0.2:8000")] == 0
        assert weights(d)[("api", "10.0.0.2:9001")] == 0

    def test_weight(self):
        d = Desired(cfg())
        d.set_weight("web", "10.0.0.2", 7)
        assert weights(d)[("web", "10.0.0.2:8000")] == 7
        with pytest.raises(RequestError, match="out of range"):
            d.set_weight("web", "10.0.0.2", 70000)

    def test_a_drained_backend_given_a_weight_stays_drained(self):
        d = Desired(cfg())
        d.drain("web", "10.0.0.2")
        d.set_weight("web", "10.0.0.2", 5)
        assert weights(d)[("web", "10.0.0.2:8000")] == 0
        d.drain("web", "10.0.0.2", on=False)
        assert weights(d)[("web", "10.0.0.2:8000")] == 5

    def test_add_backend_is_validated_like_the_file(self):
        d = Desired(cfg())
        d.add_backend("web", {"address": "10.0.0.4", "mac": "de:ad:be:ef:00:04"})
        assert ("web", "10.0.0.4:8000") in weights(d)
        with pytest.raises(RequestError, match=r"request: backend.mac: 'zz' is not a MAC"):
            d.add_backend("web", {"address": "10.0.0.5", "mac": "zz"})
        with pytest.raises(RequestError, match="already has backend 10.0.0.4:8000"):
            d.add_backend("web", {"address": "10.0.0.4"})
        with pytest.raises(RequestError, match="name the VIP"):
            d.add_backend(None, {"address": "10.0.0.5"})

    def test_limits_from_the_file_hold_for_overrides(self):
        d = Desired(cfg())
        d.add_backend("web", {"address": "10.0.0.4"})
        d.add_backend("web", {"address": "10.0.0.5"})
        d.add_backend("web", {"address": "10.0.0.6"})
        with pytest.raises(RequestError, match="max_backends"):
            d.add_backend("web", {"address": "10.0.0.7"})

    def test_remove_backend(self):
        d = Desired(cfg())
        d.drain("web", "10.0.0.3")
        d.remove_backend("web", "10.0.0.3")
        assert ("web", "10.0.0.3:8000") not in weights(d)
        assert not d.drained

    def test_add_and_remove_vip(self):
        d = Desired(cfg())
        v = d.add_vip({"address": "10.0.0.11", "port": 80, "name": "new",
                       "backend": [{"address": "10.0.0.4"}]})
        assert v.name == "new" and d.find_vip("new") == v.key
        with pytest.raises(RequestError, match="exists"):
            d.add_vip({"address": "10.0.0.11", "port": 80})
        with pytest.raises(RequestError, match="request: vip.port: 70000 is out of range"):
            d.add_vip({"address": "10.0.0.12", "port": 70000})
        with pytest.raises(RequestError, match="max_vips"):
            d.add_vip({"address": "10.0.0.12", "port": 80})
        d.remove_vip("new")
        assert [s.name for s in d.specs()] == ["web", "api"]

    def test_health_marks_backends_inactive_and_keeps_them(self):
        d = Desired(cfg())
        specs = d.specs(lambda key: key != (WEB, "10.0.0.3:8000"))
        web = specs[0]
        assert [(b.key, b.active) for b in web.backends] == [("10.0.0.2:8000", True),
                                                             ("10.0.0.3:8000", False)]


class TestController:
    """Overrides go through the Controller onto the (fake) data plane; a reload replaces
    them with the file."""

    def ctl(self, text=CONFIG):
        dp = FakeDataPlane()
        c = Controller(dp, cfg(text), "lb.toml", Log(io.StringIO()))
        c.start()
        return c, dp

    def test_drain_keeps_the_backend_active_but_out_of_the_table(self):
        c, dp = self.ctl()
        r = c.handle({"cmd": "backend", "op": "drain", "vip": "web", "backend": "10.0.0.3"})
        assert r["ok"], r
        assert r["changes"] == ["web: backend 10.0.0.3:8000 weight 2 -> 0"]
        bid = c.lb.backend_ids(WEB)["10.0.0.3:8000"]
        assert dp.backends[bid].flags & abi.BE_F_ACTIVE
        assert bid not in set(dp.rings[c.lb.vip_id(WEB)].tolist())

    def test_a_failed_request_changes_nothing(self):
        c, dp = self.ctl()
        before = (dict(dp.backends), c.desired.overrides[:])
        r = c.handle({"cmd": "backend", "op": "weight", "backend": "10.0.0.9", "weight": 3})
        assert r == {"ok": False, "error": "no backend '10.0.0.9' in any VIP", "code": 2}
        assert (dict(dp.backends), c.desired.overrides) == before

    @pytest.mark.parametrize("req, msg", [
        ("nope", "a request is a JSON object"),
        ({"cmd": "fly"}, "unknown command 'fly'"),
        ({"cmd": "backend", "op": "fly", "backend": "10.0.0.2"}, "unknown backend operation"),
        ({"cmd": "backend", "op": "drain"}, "name the backend"),
        ({"cmd": "vip", "op": "remove"}, "name the VIP"),
    ])
    def test_bad_requests_are_answered_not_raised(self, req, msg):
        c, _ = self.ctl()
        r = c.handle(req)
        assert not r["ok"] and msg in r["error"] and r["code"] == 2

    def test_reload_applies_only_the_diff_and_keeps_overrides(self, tmp_path):
        path = tmp_path / "lb.toml"
        path.write_text(CONFIG)
        dp = FakeDataPlane()
        c = Controller(dp, cfg(), str(path), Log(io.StringIO()))
        c.start()
        c.handle({"cmd": "backend", "op": "drain", "vip": "web", "backend": "10.0.0.2"})
        ids = c.lb.backend_ids(WEB)
        path.write_text(CONFIG.replace('address = "10.0.0.3"\nweight = 2',
                                       'address = "10.0.0.3"\nweight = 2\n'
                                       '[[vip.backend]]\naddress = "10.0.0.4"'))
        dp.writes.clear()
        r = c.handle({"cmd": "reload"})
        assert r["ok"], r
        assert r["changes"] == ["web: added backend 10.0.0.4:8000 weight 1"]
        assert r["kept_overrides"] == ["drain web 10.0.0.2:8000"] and not r["dropped_overrides"]
        assert c.desired.overrides == ["drain web 10.0.0.2:8000"]
        # existing backends keep their ids; the untouched VIP is not rewritten
        assert {k: v for k, v in c.lb.backend_ids(WEB).items() if k in ids} == ids
        assert ("swap_ring", c.lb.vip_id(API)) not in dp.writes

    def test_a_bad_file_on_reload_keeps_the_running_config(self, tmp_path):
        path = tmp_path / "lb.toml"
        path.write_text(CONFIG)
        c = Controller(FakeDataPlane(), cfg(), str(path), Log(io.StringIO()))
        c.start()
        path.write_text(CONFIG.replace("port = 8000", 'port = "8000"'))
        r = c.handle({"cmd": "reload"})
        assert r["code"] == 2 and r["error"].startswith(f"{path}: vip[0].port: expected an")
        assert c.reloads == {"ok": 0, "error": 1}
        assert [s.name for s in c.desired.specs()] == ["web", "api"]

    def test_reload_refuses_another_interface(self, tmp_path):
        path = tmp_path / "lb.toml"
        path.write_text(CONFIG.replace("veth6", "eth1"))
        c = Controller(FakeDataPlane(), cfg(), str(path), Log(io.StringIO()))
        c.start()
        r = c.handle({"cmd": "reload"})
        assert not r["ok"] and "lb.interface: cannot change while serving" in r["error"]

    def test_vip_add_and_remove_through_requests(self):
        c, dp = self.ctl()
        r = c.handle({"cmd": "vip", "op": "add", "vip": {
            "address": "10.0.0.11", "port": 80, "name": "new",
            "backend": [{"address": "10.0.0.4", "mac": "de:ad:be:ef:00:04"}]}})
        assert r["ok"] and r["changes"] == ["added VIP new with 1 backends"], r
        assert len(dp.vips) == 3
        r = c.handle({"cmd": "vip", "op": "remove", "vip": "new"})
        assert r["ok"] and len(dp.vips) == 2

    def test_status_lists_vips_backends_state_and_overrides(self):
        c, _ = self.ctl()
        c.handle({"cmd": "backend", "op": "drain", "vip": "web", "backend": "10.0.0.3"})
        st = c.handle({"cmd": "status"})["status"]
        web = st["vips"][0]
        assert (web["name"], web["vip"], web["mode"]) == ("web", "10.0.0.10:8000/tcp", "nat")
        assert [(b["backend"], b["state"], b["weight"], b["config_weight"], b["drained"])
                for b in web["backends"]] == [("10.0.0.2:8000", "up", 1, 1, False),
                                              ("10.0.0.3:8000", "draining", 0, 2, True)]
        assert st["overrides"] == ["drain web 10.0.0.3:8000"]

    def test_stop_request_calls_back_with_keep(self):
        c, _ = self.ctl()
        asked = []
        c.on_stop = asked.append
        assert c.handle({"cmd": "stop", "keep": False})["ok"]
        assert asked == [False]


class TestKeptOverrides:
    """The rule: one override per target and kind (the last one), applied again on top of
    every new file, dropped when it no longer applies, in a state file across restarts."""

    def test_later_changes_of_a_target_replace_earlier_ones(self):
        d = Desired(cfg())
        for w in (3, 4, 5):
            d.set_weight("web", "10.0.0.2", w)
        d.drain(None, "10.0.0.2")
        d.drain(None, "10.0.0.2")
        assert d.overrides == ["weight web 10.0.0.2:8000 5", "drain web 10.0.0.2:8000",
                               "drain api 10.0.0.2:9001"]
        d.remove_backend("web", "10.0.0.2")
        assert d.overrides == ["drain api 10.0.0.2:9001", "remove backend web 10.0.0.2:8000"]

    def test_what_an_override_added_goes_with_its_removal(self):
        d = Desired(cfg())
        d.add_backend("web", {"address": "10.0.0.4"})
        d.drain("web", "10.0.0.4")
        d.remove_backend("web", "10.0.0.4")
        d.add_vip({"address": "10.0.0.11", "port": 80, "name": "new",
                   "backend": [{"address": "10.0.0.5"}]})
        d.remove_vip("new")
        assert d.overrides == []
        d.remove_vip("api")
        d.add_vip({"address": "10.0.0.10", "port": 9000, "name": "api",
                   "backend": [{"address": "10.0.0.6"}]})
        assert d.overrides == ["remove VIP api", "add VIP api 10.0.0.10:9000/tcp with 1 backends"]

    def test_a_replay_on_another_file_keeps_what_applies_and_says_what_not(self):
        d = Desired(cfg())
        d.set_weight("web", "10.0.0.3", 7)
        d.drain("api", "10.0.0.2")
        d.add_backend("web", {"address": "10.0.0.4"})
        other = Desired(cfg(CONFIG.split("[[vip]]\nname = \"api\"")[0]))  # api is gone
        dropped = other.replay(d.changes)
        assert dropped == ["drain api 10.0.0.2:9001: no VIP 'api' (VIPs: web)"]
        assert weights(other) == {("web", "10.0.0.2:8000"): 1, ("web", "10.0.0.3:8000"): 7,
                                  ("web", "10.0.0.4:8000"): 1}
        assert other.overrides == ["weight web 10.0.0.3:8000 7",
                                   "add backend web 10.0.0.4:8000 weight 1"]

    def test_the_state_file_carries_overrides_to_the_next_daemon(self, tmp_path):
        state = tmp_path / "edge.overrides.json"
        c = Controller(FakeDataPlane(), cfg(), "lb.toml", Log(io.StringIO()))
        c.overrides_path = str(state)
        c.start()
        c.handle({"cmd": "backend", "op": "drain", "vip": "web", "backend": "10.0.0.3"})
        c.handle({"cmd": "backend", "op": "weight", "vip": "web", "backend": "10.0.0.2",
                  "weight": 9})
        import json
        saved = json.loads(state.read_text())["overrides"]
        log = io.StringIO()
        dp = FakeDataPlane()
        nxt = Controller(dp, cfg(), "lb.toml", Log(log))
        nxt.start(overrides=saved)
        assert nxt.desired.overrides == ["drain web 10.0.0.3:8000", "weight web 10.0.0.2:8000 9"]
        assert weights(nxt.desired)[("web", "10.0.0.3:8000")] == 0
        assert "overrides_kept" in log.getvalue()
        st = nxt.handle({"cmd": "status"})["status"]
        assert st["overrides"] == nxt.desired.overrides
        r = c.handle({"cmd": "backend", "op": "reset-overrides"})
        assert r["ok"] and r["changes"], r
        assert c.desired.overrides == [] and not state.exists()
        assert weights(c.desired) == weights(Desired(cfg()))

    def test_reset_without_overrides_says_so(self):
        c = Controller(FakeDataPlane(), cfg(), "lb.toml", Log(io.StringIO()))
        c.start()
        assert c.handle({"cmd": "backend", "op": "reset-overrides"})["changes"] == \
            ["no runtime overrides"]

    def test_a_check_says_which_overrides_a_reload_keeps_and_drops(self, tmp_path):
        path = tmp_path / "lb.toml"
        path.write_text(CONFIG)
        c = Controller(FakeDataPlane(), cfg(), str(path), Log(io.StringIO()))
        c.start()
        c.handle({"cmd": "backend", "op": "drain", "backend": "10.0.0.2"})
        other = tmp_path / "other.toml"
        other.write_text(CONFIG.split("[[vip]]\nname = \"api\"")[0])
        r = c.handle({"cmd": "check", "config": str(other)})
        assert r["kept_overrides"] == ["drain web 10.0.0.2:8000"]
        assert r["dropped_overrides"] == ["drain api 10.0.0.2:9001: no VIP 'api' (VIPs: web)"]
