"""`xdplb top`'s view: rates from two status views, sorting, filtering, keys; rendered
by rich into a string as a terminal would show it."""
from __future__ import annotations

import io

import pytest
from rich.console import Console

from xdplb.cli.top import View, run_top

pytestmark = pytest.mark.unit


def status(pkts: int, h3_state: str = "up") -> dict:
    def be(key, share, state="up"):
        return {"backend": key, "address": key.split(":")[0], "weight": 1, "state": state,
                "traffic": "new", "active_flows": share, "packets": pkts * share,
                "bytes": pkts * share * 100, "new_flows": pkts * share // 10}
    web = [be("10.0.0.2:8000", 1), be("10.0.0.3:8000", 3, h3_state)]
    return {"version": "0.1.0", "instance": "edge", "interface": "veth6", "uptime": 5.0,
            "flows": {"nat_size": 1000, "nat_used": 50, "nat_live": 40, "ct_size": 0},
            "stats": {"drop_no_backend": {"packets": pkts, "bytes": 0},
                      "fwd_new": {"packets": pkts, "bytes": 0}},
            "vips": [{"name": "web", "vip": "10.0.0.10:8000/tcp", "mode": "nat",
                      "packets": 4 * pkts, "bytes": 400 * pkts, "new_flows": 4 * pkts // 10,
                      "backends": web},
                     {"name": "dns", "vip": "10.0.0.10:53/udp", "mode": "nat", "packets": 0,
                      "bytes": 0, "new_flows": 0, "backends": []}]}


def test_rates_are_the_counters_difference_over_the_time_between_views():
    v = View()
    v.rows(status(0), 10.0)
    rows, drops = v.rows(status(100), 12.0)
    web = rows[0]
    assert (web.pps, web.bps, web.new, web.active) == (200.0, 160000.0, 20.0, 4)
    assert [b.pps for b in web.backends] == [50.0, 150.0]
    assert drops == {"drop_no_backend": 50.0}


def test_sort_filter_and_keys():
    v = View()
    v.rows(status(0), 0.0)
    rows, _ = v.rows(status(10), 1.0)
    assert [r.name for r in v.select(rows)] == ["web", "dns"]  # pkts/s, highest first
    assert v.key("s") and v.sort == "bps"
    assert v.key("r") and not v.reverse
    assert [r.name for r in v.select(rows)] == ["dns", "web"]
    for ch in "/10.0.0.3\r":
        assert v.key(ch)
    assert v.filter == "10.0.0.3"
    picked = v.select(rows)
    assert [r.name for r in picked] == ["web"] and [b.name for b in picked[0].backends] == \
        ["10.0.0.3:8000"]
    assert v.key("/") and v.key("x") and v.key("\x1b") and v.filter == ""
    assert not v.key("q")


def test_the_terminal_shows_rates_health_drops_and_fill():
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=False)
    views = iter([status(0), status(100, h3_state="down")])
    assert run_top(lambda: next(views), interval=0.01, iterations=1, console=console) == 0
    text = out.getvalue()
    assert "nat 40/1,000 (5.0 % used)" in text
    assert "drop_no_backend" in text
    web = next(line for line in text.splitlines() if line.lstrip().startswith("web "))
    assert "1/2 up" in web
    assert any("10.0.0.3:8000" in line and "down" in line for line in text.splitlines())
