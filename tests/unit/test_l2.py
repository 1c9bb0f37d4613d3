"""[l2] config validation and the pure parts of l2: which addresses answer, the frames."""
from __future__ import annotations

import ipaddress
import struct

import pytest

from xdplb.announce import VipHealth
from xdplb.config import ConfigError, parse_config
from xdplb.frames import inet_csum as _csum
from xdplb.l2 import (
    gratuitous_arp,
    mac_bytes,
    neighbour_solicitation,
    parse_announcement,
    solicited_node,
    unsolicited_na,
    wanted_addresses,
)

pytestmark = pytest.mark.unit

LB = '[lb]\ninterface = "eth0"\n'
VIP = '[[vip]]\nname = "{n}"\naddress = "{a}"\nport = {p}\n{extra}'
MAC = mac_bytes("de:ad:be:ef:00:10")


def parse(text: str):
    return parse_config(text, "lb.toml")


def error(text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        parse(text)
    return str(exc.value)


class TestL2Config:
    def test_defaults_and_absence(self):
        assert parse(LB).l2 is None
        c = parse(LB + "[l2]\n")
        assert c.l2 is not None
        assert (c.l2.announce, c.l2.gratuitous, c.l2.gratuitous_interval) == (False, 3, 0.5)
        c = parse(LB + "[l2]\nannounce = true\ngratuitous = 0\ngratuitous_interval = 2\n")
        assert (c.l2.announce, c.l2.gratuitous, c.l2.gratuitous_interval) == (True, 0, 2.0)

    @pytest.mark.parametrize("extra, key, reason", [
        ('announce = "yes"\n', "l2.announce", "expected true or false"),
        ("gratuitous = 11\n", "l2.gratuitous", "out of range"),
        ("gratuitous = -1\n", "l2.gratuitous", "out of range"),
        ("gratuitous_interval = 0\n", "l2.gratuitous_interval", "> 0"),
        ("gratuitous_interval = 60\n", "l2.gratuitous_interval", "outside"),
        ("interface = \"eth1\"\n", "l2.interface", "unknown key"),
    ])
    def test_bad_values_name_the_key(self, extra, key, reason):
        msg = error(LB + "[l2]\n" + extra)
        assert key in msg and reason in msg, msg

    def test_per_vip_opt_out_is_the_announce_key(self):
        c = parse(LB + "[l2]\nannounce = true\n"
                  + VIP.format(n="a", a="10.0.0.100", p=80, extra="announce = false\n"))
        assert not c.vips[0].announce


def vh(text_extra: str, healthy: int, name="a", addr="10.0.0.100", port=80) -> VipHealth:
    (v,) = parse(LB + VIP.format(n=name, a=addr, p=port, extra=text_extra)).vips
    return VipHealth(v, healthy)


class TestWantedAddresses:
    def test_the_bgp_rule(self):
        a4, a6 = ipaddress.ip_address("10.0.0.100"), ipaddress.ip_address("fd00::64")
        vips = [vh("", 1), vh("", 1, "b", "fd00::64")]
        assert wanted_addresses(vips) == {a4: "a", a6: "b"}
        assert wanted_addresses(vips, drained=True) == {}
        assert wanted_addresses(vips, attached=False) == {}
        assert wanted_addresses([vh("", 0)]) == {}
        assert wanted_addresses([vh("announce = false\n", 2)]) == {}
        assert wanted_addresses([vh("min_healthy = 2\n", 1)]) == {}
        assert wanted_addresses([vh("min_healthy = 2\n", 2)]) == {a4: "a"}

    def test_one_address_answers_for_every_vip_on_it(self):
        a4 = ipaddress.ip_address("10.0.0.100")
        both = [vh("", 1, "a", port=80), vh("", 0, "b", port=443)]
        assert wanted_addresses(both) == {a4: "a"}
        both = [vh("", 1, "a", port=80), vh("", 1, "b", port=443)]
        assert wanted_addresses(both) == {a4: "a,b"}


class TestFrames:
    def test_gratuitous_arp_is_an_rfc5227_announcement(self):
        ip = ipaddress.IPv4Address("10.0.0.100")
        f = gratuitous_arp(MAC, ip)
        assert len(f) == 42 and f[:6] == b"\xff" * 6 and f[6:12] == MAC
        assert struct.unpack("!HHHBBH", f[12:22]) == (0x0806, 1, 0x0800, 6, 4, 1)
        assert f[22:28] == MAC and f[28:32] == ip.packed  # sender
        assert f[32:38] == b"\0" * 6 and f[38:42] == ip.packed  # target = sender
        assert parse_announcement(f) == ("arp-request", ip, MAC)

    def test_unsolicited_na(self):
        ip = ipaddress.IPv6Address("fd00::64")
        f = unsolicited_na(MAC, ip)
        assert f[:6] == bytes.fromhex("333300000001") and f[6:12] == MAC
        ip6 = f[14:54]
        assert ip6[6] == 58 and ip6[7] == 255  # ICMPv6, hop limit 255 (else dropped)
        assert ip6[8:24] == ip.packed and ip6[24:40] == ipaddress.IPv6Address("ff02::1").packed
        icmp = f[54:]
        assert struct.unpack("!H", ip6[4:6])[0] == len(icmp) == 32
        assert icmp[0] == 136 and icmp[4] == 0x20  # override, not solicited, not router
        pseudo = ip6[8:40] + struct.pack("!I3xB", len(icmp), 58)
        assert _csum(pseudo + icmp) == 0  # the checksum field makes the sum complete
        assert parse_announcement(f) == ("na", ip, MAC)

    def test_neighbour_solicitation_goes_to_the_solicited_node_group(self):
        src, target = ipaddress.IPv6Address("fd00::1"), ipaddress.IPv6Address("fd00::12:3456")
        assert str(solicited_node(target)) == "ff02::1:ff12:3456"
        f = neighbour_solicitation(MAC, src, target)
        assert f[:6] == bytes.fromhex("3333ff123456")
        assert parse_announcement(f) == ("ns", target, MAC)
        ip6, icmp = f[14:54], f[54:]
        assert _csum(ip6[8:40] + struct.pack("!I3xB", len(icmp), 58) + icmp) == 0

    def test_other_frames_are_not_announcements(self):
        assert parse_announcement(b"") is None
        assert parse_announcement(b"\0" * 12 + b"\x08\x00" + b"\0" * 40) is None


class TestNodeRequests:
    """`xdplb node drain|resume|check` through the controller (fake data plane): with no
    announcer of its own the node is still drained for `node check` (a VRRP track script)."""

    def ctl(self, extra: str = ""):
        import io

        from xdplb._bpf.fake import FakeDataPlane
        from xdplb.daemon import Controller
        from xdplb.logfmt import Log

        text = LB + VIP.format(n="web", a="10.0.0.100", p=80, extra=extra) + \
            '[[vip.backend]]\naddress = "10.0.0.2"\nmac = "de:ad:be:ef:00:02"\n'
        c = Controller(FakeDataPlane(), parse(text), "lb.toml", Log(io.StringIO()))
        c.start()
        return c

    def test_drain_resume_check_without_announcer(self):
        c = self.ctl()
        assert c.handle({"cmd": "node", "op": "check"})["ok"]
        r = c.handle({"cmd": "node", "op": "drain"})
        assert r["ok"] and "node drained" in r["changes"][0], r
        r = c.handle({"cmd": "node", "op": "check"})
        assert not r["ok"] and r["code"] == 1 and "drained" in r["error"], r
        assert c.handle({"cmd": "node", "op": "drain"})["changes"] == ["node already drained"]
        assert c.status()["drained"] is True
        assert c.handle({"cmd": "node", "op": "resume"})["ok"]
        assert c.handle({"cmd": "node", "op": "check"})["ok"]
        assert not c.handle({"cmd": "node", "op": "reboot"})["ok"]

    def test_check_fails_below_min_healthy(self):
        c = self.ctl("min_healthy = 2\n")
        r = c.handle({"cmd": "node", "op": "check"})
        assert not r["ok"] and "web has 1 of 2 backends up" in r["error"], r
        c = self.ctl("min_healthy = 2\nannounce = false\n")
        assert c.handle({"cmd": "node", "op": "check"})["ok"]

    def test_drain_reaches_the_l2_announcer(self):
        class Recorder:
            def __init__(self):
                self.calls = []
                self.announced = {}

            def update(self, vips):
                self.calls.append(("update", [v.vip.name for v in vips]))
                return []

            def drain(self):
                self.calls.append(("drain",))
                return ["withdraw 10.0.0.100"]

            def resume(self):
                self.calls.append(("resume",))
                return ["answer 10.0.0.100"]

            def status(self):
                return {"answering": {}}

        c = self.ctl()
        c.l2 = rec = Recorder()
        assert c.announce() == [] and rec.calls == [("update", ["web"])]
        assert c.handle({"cmd": "node", "op": "drain"})["changes"] == ["withdraw 10.0.0.100"]
        assert c.handle({"cmd": "node", "op": "resume"})["changes"] == ["answer 10.0.0.100"]
        assert c.status()["l2"] == {"answering": {}}


class TestUnready:
    def test_the_node_rule(self):
        from xdplb.l2 import unready

        a, b = vh("", 1, "a"), vh("", 0, "b", port=443)
        assert unready([a, b]) == []  # one VIP to serve is enough
        assert unready([vh("", 0, "a"), b]) == ["a has 0 of 1 backends up",
                                                "b has 0 of 1 backends up"]
        assert unready([a], drained=True)[0].startswith("node drained")
        assert unready([a], attached=False) == ["the data plane is not attached"]
        assert unready([]) == [] and unready([vh("announce = false\n", 0)]) == []


class TestPairLab:
    """The pair lab's plan and files (no namespaces: nothing is brought up)."""

    def test_hosts_and_configs(self, tmp_path, monkeypatch):
        from xdplb.lab.pair import VIP4, PairLab

        monkeypatch.setenv("XDPLB_LAB_DIR", str(tmp_path))
        lab = PairLab("xu1")
        assert [h.role for h in lab.node_hosts] == ["lb1", "lb2"]
        addrs = [h.ipv4 for h in lab.hosts.values()] + [VIP4]
        macs = [h.mac for h in lab.hosts.values()]
        assert len(set(addrs)) == len(addrs) and len(set(macs)) == len(macs)
        c1, c2 = (parse(lab.node_config(r)) for r in ("lb1", "lb2"))
        assert c1.l2 is not None and not c1.l2.announce
        assert c1.l2.track_file == str(lab.track_file("lb1"))
        # the same tables on both nodes: only the instance name and the track file differ
        assert c1.vips == c2.vips and c1.lb.hash_seed == c2.lb.hash_seed
        assert {v.mode for v in c1.vips} == {"dsr"}
        with pytest.raises(Exception, match="backends must be an integer 1..8"):
            PairLab("xu2", backends=9)

    def test_operations_md_shows_the_lab_s_keepalived_conf(self):
        from pathlib import Path

        from xdplb.lab.pair import keepalived_config

        doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
        conf = keepalived_config("lb1", "eth0", "/run/xdplb/edge.ready", True)
        assert f"```\n{conf}```" in doc


class TestTrackFileConfig:
    def test_track_file(self):
        assert parse(LB + "[l2]\n").l2.track_file is None
        c = parse(LB + '[l2]\ntrack_file = "/run/xdplb/edge.ready"\n')
        assert c.l2.track_file == "/run/xdplb/edge.ready" and not c.l2.announce

    @pytest.mark.parametrize("value, reason", [
        ('"edge.ready"', "not an absolute file path"),
        ('"/run/xdplb/"', "not an absolute file path"),
        ("3", "expected an absolute path string"),
    ])
    def test_bad_track_file(self, value, reason):
        msg = error(LB + f"[l2]\ntrack_file = {value}\n")
        assert "l2.track_file" in msg and reason in msg, msg


def test_a_reload_that_starts_the_l2_announcer_says_it_needs_a_restart(tmp_path):
    import io

    from xdplb._bpf.fake import FakeDataPlane
    from xdplb.config import load_config
    from xdplb.daemon import Controller
    from xdplb.logfmt import Log

    path = tmp_path / "lb.toml"
    vip = VIP.format(n="web", a="10.0.0.100", p=80, extra="")
    path.write_text(LB + vip)
    c = Controller(FakeDataPlane(), load_config(path), str(path), Log(io.StringIO()))
    c.start()
    path.write_text(LB + "[l2]\ngratuitous = 5\n" + vip)
    assert c.reload()["needs_restart"] == []  # nothing announced either way
    path.write_text(LB + '[l2]\ntrack_file = "/run/x.ready"\n' + vip)
    assert c.reload()["needs_restart"] == ["l2"]
