"""One set of rules for every way in: the file, `xdplb run`'s arguments (run_config) and
control requests (load_request, vip_from_table): the same refusals, one line each."""
from __future__ import annotations

import pytest

from xdplb.config import (
    ConfigError,
    load_request,
    parse_config,
    parse_listen,
    vip_from_table,
)

pytestmark = pytest.mark.unit

@pytest.mark.parametrize("text, key, why", [
    ('[lb]\ninterface = "veth\\u00006"\n', "lb.interface", "contains a NUL byte"),
    (('[lb]\ninterface = "veth6"\n[[vip]]\naddress = "10.0.0.10"\nport = 80\n'
     'name = "a\\u0000b"\n'), "vip[0].name", "contains a NUL byte"),
    ("[lb]\ninterface = 'veth6'\nx = " + "[" * 5000 + "]" * 5000 + "\n", None,
     "nested more than 16 levels deep"),
    ("[lb]\ninterface = 'veth6'\nx = " + "[" * 20 + "]" * 20 + "\n", "lb.x" + "[0]" * 15,
     "nested more than 16 levels deep"),
    ("a = " + "{b = " * 3000 + "1" + "}" * 3000 + "\n", None, "nested more than 16 levels deep"),
])
def test_nul_bytes_and_deep_nesting_are_one_line(text, key, why):
    with pytest.raises(ConfigError) as e:
        parse_config(text, "lb.toml")
    msg = str(e.value)
    assert msg == f"lb.toml: {key + ': ' if key else ''}{why}", msg


@pytest.mark.parametrize("line, why", [
    (b"[" * 100_000 + b"]" * 100_000, "nested more than 16 levels deep"),
    (b'{"cmd": "status\\u0000"}', "request: cmd: contains a NUL byte"),
    (b"{nope", "not JSON"),
])
def test_control_requests_are_checked_like_files(line, why):
    with pytest.raises(ValueError) as e:
        load_request(line)
    assert why in str(e.value) and "\n" not in str(e.value)


def test_a_runtime_vip_meets_the_files_rules():
    with pytest.raises(ConfigError, match="vip.backend.0..mac: 'ff:ff:ff:ff:ff:ff' is a multi"):
        vip_from_table({"address": "10.0.0.10", "port": 80,
                        "backend": [{"address": "10.0.0.2", "mac": "ff:ff:ff:ff:ff:ff"}]})
    with pytest.raises(ConfigError, match="contains a NUL byte"):
        vip_from_table({"address": "10.0.0.10", "port": 80, "name": "a\x00"})


@pytest.mark.parametrize("text, want", [
    (":9100", ("127.0.0.1", 9100)),
    ("0.0.0.0:9100", ("0.0.0.0", 9100)),
    ("[::1]:9100", ("::1", 9100)),
])
def test_metrics_listen_on_loopback_unless_told(text, want):
    assert parse_listen(text) == want


def test_the_shipped_example_config_is_valid():
    from importlib.resources import files

    text = files("xdplb").joinpath("example.toml").read_text()
    c = parse_config(text, "example.toml")
    assert [v.health.kind for v in c.vips] == ["http", "dns"]
    assert c.lb.metrics == ("127.0.0.1", 9100)
