"""The exporter's HTTP side: /metrics only, and a bind failure is an error, not a log line."""
from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest

from xdplb.metrics import MetricsError, MetricsSnapshot, start_exporter

pytestmark = pytest.mark.unit


def snap() -> MetricsSnapshot:
    return MetricsSnapshot(info={"instance": "t"}, reasons={"fwd_new": (3, 180)})


def test_only_metrics_is_served():
    ex = start_exporter("127.0.0.1", 0, snap)
    try:
        host, port = ex.address
        body = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5).read().decode()
        assert 'xdplb_packets_total{outcome="fwd_new"} 3.0' in body
        for path in ("/", "/metrics/x", "/favicon.ico", "/debug"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5)
            assert e.value.code == 404
    finally:
        ex.close()


def test_an_address_in_use_is_one_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(MetricsError, match=f"cannot serve metrics on 127.0.0.1:{port}: "
                           "Address already in use"):
            start_exporter("127.0.0.1", port, snap)


def test_an_address_not_on_this_host_is_one_clear_error():
    with pytest.raises(MetricsError, match="cannot serve metrics on 192.0.2.1:9100: Cannot "
                       "assign requested address"):
        start_exporter("192.0.2.1", 9100, snap)


def test_one_version_everywhere():
    import tomllib
    from pathlib import Path

    from xdplb import __version__
    from xdplb.metrics import _families

    root = Path(__file__).resolve().parents[2]
    assert tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"] == \
        __version__
    fams = {f.name: f for f in _families(snap())}
    assert fams["xdplb_build_info"].samples[0].labels == {"version": __version__}


def test_answers_of_the_data_plane_are_outcomes_and_evictions_side_events():
    """A packet answered by guard.h (challenge, RST) or taken as a challenge's answer has
    that as its one outcome; evictions and the DSR non-SYN budget happen besides one."""
    from xdplb.metrics import is_outcome

    for name in ("syn_challenge", "syn_verified", "rst_not_syn", "rst_nat_full",
                 "drop_not_syn", "fwd_new"):
        assert is_outcome(name), name
    for name in ("evict_embryonic", "evict_closing", "nonsyn_stateless", "ct_full",
                 "reselect", "csum_full"):
        assert not is_outcome(name), name
