"""The lab's naming and address plan, state round trip and CLI parsing: no privileges."""
from __future__ import annotations

import argparse
import ipaddress
import json
import os

import pytest

from xdplb.lab import (
    Host,
    Lab,
    LabError,
    LabNotFound,
    backend_numbers,
    plan_hosts,
    register_cli,
)
from xdplb.lab import cli as lab_cli

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def state_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("XDPLB_LAB_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def test_default_name_is_prefix_plus_pid():
    lab = Lab()
    assert lab.name == f"xl{os.getpid()}"
    assert lab.switch_ns == f"xl{os.getpid()}-sw"


def test_tutorial_topology_exactly():
    lab = Lab("t1")
    assert list(lab.hosts) == ["client", "lb", "h2", "h3"]
    want = {
        "client": ("t1-client", "veth0", "veth1", "10.0.0.1", "fd00::1", "de:ad:be:ef:00:01"),
        "lb": ("t1-lb", "veth6", "veth7", "10.0.0.10", "fd00::a", "de:ad:be:ef:00:10"),
        "h2": ("t1-h2", "veth3", "veth2", "10.0.0.2", "fd00::2", "de:ad:be:ef:00:02"),
        "h3": ("t1-h3", "veth5", "veth4", "10.0.0.3", "fd00::3", "de:ad:be:ef:00:03"),
    }
    for role, (ns, ifname, peer, v4, v6, mac) in want.items():
        h = lab.hosts[role]
        assert (h.ns, h.ifname, h.peer_ifname, h.ipv4, h.ipv6, h.mac) == (ns, ifname, peer, v4,
                                                                          v6, mac)
        assert lab.ns(role) == ns
    assert lab.ns("sw") == "t1-sw"
    assert lab.namespaces == ["t1-sw", "t1-client", "t1-lb", "t1-h2", "t1-h3"]
    assert lab.lb_peer_ifname() == "veth7"
    assert lab.vip == "10.0.0.10"
    assert lab.hosts["lb"].ipv4_cidr == "10.0.0.10/24"
    assert lab.hosts["lb"].ipv6_cidr == "fd00::a/64"
    assert lab.run_argv() == ["xdplb", "run", "veth6", "10.0.0.2", "de:ad:be:ef:00:02",
                              "10.0.0.3", "de:ad:be:ef:00:03"]


def test_unknown_host_is_a_clear_error():
    with pytest.raises(LabError, match="has no host 'h9'"):
        Lab("t1").ns("h9")


@pytest.mark.parametrize("n", [1, 2, 3, 8, 9, 10, 20, 96])
def test_backend_plan_is_consistent_and_collision_free(n):
    hosts = plan_hosts("p", backends=n, clients=5)
    backends = [h for h in hosts.values() if h.kind == "backend"]
    assert len(backends) == n
    assert [h.role for h in backends][:2] == ["h2", "h3"][:n]
    for h in backends:
        num = int(h.role[1:])
        assert h.ipv4 == f"10.0.0.{num}"
        assert h.mac == f"de:ad:be:ef:00:{num:02x}"
        assert h.ipv6 == f"fd00::{num:x}"
        if num >= 4:
            assert (h.ifname, h.peer_ifname) == ("eth0", f"vh{num}")
    everything = list(hosts.values())
    for attr in ("ns", "ipv4", "ipv6", "mac"):
        vals = [getattr(h, attr) for h in everything]
        assert len(set(vals)) == len(vals), attr
    peers = [h.peer_ifname for h in everything]
    assert len(set(peers)) == len(peers)
    assert all(len(p) < 16 and len(h.ifname) < 16 for h in everything for p in [h.peer_ifname])
    for h in everything:
        assert ipaddress.ip_address(h.ipv4) in ipaddress.ip_network("10.0.0.0/24")


def test_backend_numbers_skip_lb_ip_and_lb_mac():
    nums = backend_numbers(20)
    assert 10 not in nums  # 10.0.0.10 is the LB
    assert 16 not in nums  # de:ad:be:ef:00:10 is the LB's MAC
    assert nums[:9] == [2, 3, 4, 5, 6, 7, 8, 9, 11]


def test_client_plan():
    hosts = plan_hosts("p", backends=2, clients=3)
    assert [h.role for h in hosts.values() if h.kind == "client"] == ["client", "c2", "c3"]
    c2, c3 = hosts["c2"], hosts["c3"]
    assert (c2.ipv4, c2.mac, c2.ifname, c2.peer_ifname, c2.ns) == (
        "10.0.0.102", "de:ad:be:ef:01:02", "eth0", "vc2", "p-c2")
    assert (c3.ipv4, c3.mac, c3.ipv6) == ("10.0.0.103", "de:ad:be:ef:01:03", "fd00::67")


def test_no_ipv6():
    lab = Lab("p", ipv6=False)
    assert all(h.ipv6 is None and h.ipv6_cidr is None for h in lab.hosts.values())


@pytest.mark.parametrize("kw, msg", [
    ({"backends": 0}, "backends must be"),
    ({"backends": 97}, "at most 96 backends"),
    ({"clients": 0}, "clients must be"),
    ({"clients": 155}, "at most 154 clients"),
    ({"offloads": "on"}, "offloads must be"),
    ({"name": "a/b"}, "bad lab name"),
    ({"name": "-x"}, "bad lab name"),
    ({"name": "a-b"}, "bad lab name"),
    ({"name": "x" * 33}, "bad lab name"),
    ({"name": ""}, "bad lab name"),
])
def test_bad_options(kw, msg):
    with pytest.raises(LabError, match=msg):
        Lab(**kw)


def test_json_round_trip(state_in_tmp):
    lab = Lab("rt", backends=5, clients=2, offloads="off", ipv6=False)
    lab.created = ["rt-sw", "rt-client"]
    lab.lb_peer_mode, lab.lb_peer_prog = "xdp", "/x/stub.bpf.o"
    path = lab.save()
    assert path == state_in_tmp / "rt.json"
    d = json.loads(path.read_text())
    assert d["hosts"]["h5"]["mac"] == "de:ad:be:ef:00:05"
    assert d["lb_peer"] == {"ifname": "veth7", "mode": "xdp", "prog": "/x/stub.bpf.o"}
    back = Lab.load("rt")
    assert back.to_dict() == lab.to_dict()
    assert back.hosts == lab.hosts
    assert (back.n_backends, back.n_clients, back.offloads, back.ipv6) == (5, 2, "off", False)
    assert back.created == ["rt-sw", "rt-client"]
    assert Lab.saved() == ["rt"]
    assert Host.from_dict(lab.hosts["lb"].to_dict()) == lab.hosts["lb"]


def test_load_missing_and_corrupt(state_in_tmp):
    with pytest.raises(LabNotFound, match="lab 'nope' does not exist"):
        Lab.load("nope")
    state_in_tmp.mkdir(parents=True)
    (state_in_tmp / "bad.json").write_text("{not json")
    with pytest.raises(LabError, match="cannot read"):
        Lab.load("bad")
    (state_in_tmp / "old.json").write_text(json.dumps({"version": 99}))
    with pytest.raises(LabError, match="version"):
        Lab.load("old")


def test_down_of_never_started_lab_is_a_noop(state_in_tmp):
    lab = Lab("never")
    lab.down()
    lab.down()
    assert not (state_in_tmp / "never.json").exists()


def test_without_root_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(LabError, match="needs root"):
        Lab("nr").up()
    for argv in (["lab", "up", "--name", "nr"], ["lab", "down", "--all"],
                 ["lab", "exec", "h2", "--", "true"]):
        assert lab_cli.main(argv) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "needs root" in err, argv


def _parser():
    parser = argparse.ArgumentParser(prog="xdplb")
    sub = parser.add_subparsers(dest="command")
    register_cli(sub)
    return parser


def test_cli_parsing_sets_func_for_every_subcommand():
    p = _parser()
    a = p.parse_args(["lab", "up", "--name", "x", "--backends", "4", "--clients", "2",
                      "--offloads", "off", "--no-ipv6"])
    assert (a.name, a.backends, a.clients, a.offloads, a.no_ipv6) == ("x", 4, 2, "off", True)
    for argv in (["lab", "up"], ["lab", "down", "--all"], ["lab", "status"],
                 ["lab", "exec", "h2", "--", "ip", "-br", "a"], ["lab"]):
        assert callable(p.parse_args(argv).func), argv
    a = p.parse_args(["lab", "exec", "--name", "x", "h2", "--", "ip", "-br", "a"])
    assert (a.name, a.host) == ("x", "h2")
    assert [c for c in a.cmd if c != "--"] == ["ip", "-br", "a"]
    with pytest.raises(SystemExit):
        p.parse_args(["lab", "down", "--all", "--name", "x"])


def test_cli_errors_are_one_line_exit_1(capsys):
    rc = lab_cli.main(["lab", "down", "--name", "nope"])
    assert rc == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("xdplb: ")
    if os.geteuid() == 0:
        assert err == "xdplb: lab 'nope' does not exist\n"
    rc = lab_cli.main(["lab", "status", "--name", "nope"])
    assert rc == 1
    assert capsys.readouterr().err == "xdplb: lab 'nope' does not exist\n"


def test_cli_status_without_labs(capsys):
    assert lab_cli.main(["lab", "status"]) == 0
    assert "no lab is up" in capsys.readouterr().out


def test_cli_name_may_be_omitted_only_with_one_lab(state_in_tmp, capsys):
    Lab("one").save()
    assert lab_cli._resolve(None).name == "one"
    Lab("two").save()
    with pytest.raises(LabError, match="several labs are up"):
        lab_cli._resolve(None)
