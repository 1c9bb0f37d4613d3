"""The daemon's command line, log lines and metrics, without root."""
from __future__ import annotations

import argparse
import io
import ipaddress

import pytest

from xdplb._bpf.fake import FakeDataPlane
from xdplb.cli import main
from xdplb.cli.serve import register
from xdplb.config import ConfigError, parse_config
from xdplb.daemon import Controller
from xdplb.logfmt import Log

pytestmark = pytest.mark.unit


def test_register_cli_adds_the_operator_commands():
    p = argparse.ArgumentParser(prog="xdplb")
    sub = p.add_subparsers(dest="command", required=True)
    register(sub)
    assert {"serve", "reload", "status", "stop", "backend", "vip"} <= set(sub.choices)
    a = p.parse_args(["serve", "-c", "lb.toml", "--keep", "--metrics", ":9100"])
    assert (a.config, a.keep, a.metrics) == ("lb.toml", True, ":9100")
    a = p.parse_args(["backend", "weight", "10.0.0.2:8000", "5", "--vip", "web"])
    assert (a.op, a.backend, a.weight_value, a.vip) == ("weight", "10.0.0.2:8000", 5, "web")
    a = p.parse_args(["vip", "add", "10.0.0.11:80", "--backend", "10.0.0.2@de:ad:be:ef:00:02"])
    assert a.backend == ["10.0.0.2@de:ad:be:ef:00:02"]


@pytest.mark.parametrize("text, needle", [
    ("[lb]\ninterface = 'veth6'\n[[vip]]\naddress = '10.0.0.10'\nport = '80'\n",
     "vip[0].port: expected an integer, got string '80'"),
    ("[lb]\ninterface = 'veth6'\nmetrics = '9100'\n",
     "lb.metrics: '9100' is not an address like"),
    ("[lb]\n", "lb.interface: required"),
])
def test_serve_with_a_bad_config_prints_one_line_and_exits_2(tmp_path, capsys, text, needle):
    path = tmp_path / "lb.toml"
    path.write_text(text)
    assert main(["serve", "-c", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"xdplb: {path}: {needle}"), err


def test_serve_with_a_missing_file(tmp_path, capsys):
    assert main(["serve", "-c", str(tmp_path / "nope.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"xdplb: {tmp_path / 'nope.toml'}: cannot read: No such file or directory " \
        "(errno 2)"


def test_client_commands_without_a_daemon_say_so(tmp_path, capsys):
    assert main(["status", "--run-dir", str(tmp_path), "--instance", "x"]) == 1
    assert "no xdplb serve is running for instance x" in capsys.readouterr().err
    assert main(["status", "--run-dir", str(tmp_path)]) == 2
    assert "which instance? (none running" in capsys.readouterr().err


def test_config_additions():
    c = parse_config("[lb]\ninterface = 'veth6'\nname = 'edge-1'\nmetrics = '[::]:9100'\n",
                     "lb.toml")
    assert (c.lb.instance, c.lb.metrics) == ("edge-1", ("::", 9100))
    assert parse_config("[lb]\ninterface = 'veth6'\n").lb.instance == "veth6"
    assert parse_config("[lb]\ninterface = 'veth6'\nmetrics = ':9100'\n").lb.metrics == \
        ("127.0.0.1", 9100), "no address given: loopback only"
    for bad, why in (("'a/b'", "not a valid instance name"), ("'.x'", "not a valid instance")):
        with pytest.raises(ConfigError, match=why):
            parse_config(f"[lb]\ninterface = 'veth6'\nname = {bad}\n")


def test_log_lines_are_logfmt_one_per_event(capsys):
    import io
    buf = io.StringIO()
    Log(buf)("backend_down", level="warning", vip="web", backend="10.0.0.3:8000",
             reason="connection refused", n=3, skipped=None)
    line = buf.getvalue()
    assert line.count("\n") == 1
    fields = line.split(" ", 2)
    assert fields[0].startswith("time=") and fields[1] == "level=warning"
    assert fields[2].rstrip() == ('event=backend_down vip=web backend=10.0.0.3:8000 '
                                  'reason="connection refused" n=3')


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
"""


class CountingFake(FakeDataPlane):
    def obj_stats(self, which, idx):
        base = 1000 if which == "vip_stats" else 10 * (idx + 1)
        return {"packets": base, "bytes": base * 100, "new_flows": base // 10}

    def stats(self):
        return {"fwd_new": (5, 500), "pass_not_vip": (7, 700), "reselect": (2, 0)}

    def flow_counts(self):
        return {"nat_size": 91072, "nat_used": 12, "nat_live": 9, "ct_size": 1024,
                "ct_used": 3, "ct_live": 3}


def test_metrics_exposition():
    from prometheus_client import generate_latest

    from xdplb.metrics import make_registry

    ctl = Controller(CountingFake(), parse_config(CONFIG, "lb.toml"), "lb.toml",
                     Log(io.StringIO()), info={"instance": "veth6",
                                                        "interface": "veth6"})
    ctl.start()
    ctl.handle({"cmd": "backend", "op": "drain", "backend": "10.0.0.3"})
    ctl.checks[("web", "10.0.0.2:8000", "ok")] = 4
    text = generate_latest(make_registry(ctl.metrics_snapshot)).decode()
    ids = ctl.lb.backend_ids((ipaddress.ip_address("10.0.0.10"), 8000, "tcp"))
    # a VIP's traffic: its backends' plus what it dropped (vip_stats)
    vip_packets = 1000 + sum(10 * (i + 1) for i in ids.values())
    for line in (
        'xdplb_info{instance="veth6",interface="veth6"} 1.0',
        'xdplb_packets_total{outcome="fwd_new"} 5.0',
        'xdplb_bytes_total{outcome="pass_not_vip"} 700.0',
        'xdplb_events_total{event="reselect"} 2.0',
        (f'xdplb_vip_packets_total{{address="10.0.0.10",port="8000",protocol="tcp",vip="web"}} '
         f'{vip_packets:.1f}'),
        ('xdplb_vip_dropped_packets_total{address="10.0.0.10",port="8000",protocol="tcp",'
         'vip="web"} 1000.0'),
        (f'xdplb_backend_packets_total{{address="10.0.0.3",port="8000",vip="web"}} '
         f'{10.0 * (ids["10.0.0.3:8000"] + 1)}'),
        'xdplb_backend_up{address="10.0.0.3",port="8000",vip="web"} 1.0',
        'xdplb_backend_weight{address="10.0.0.3",port="8000",vip="web"} 0.0',
        'xdplb_backend_weight{address="10.0.0.2",port="8000",vip="web"} 1.0',
        'xdplb_health_checks_total{address="10.0.0.2",port="8000",result="ok",vip="web"} 4.0',
        'xdplb_config_last_reload_successful 1.0',
        'xdplb_vip_lost_last_backend_total{vip="web"} 0.0',
        'xdplb_reloads_total{result="ok"} 0.0',
        'xdplb_flow_table_size{region="nat"} 91072.0',
        'xdplb_flow_table_entries{region="nat",state="live"} 9.0',
        'xdplb_flow_table_entries{region="ct",state="used"} 3.0',
    ):
        assert line in text, line
