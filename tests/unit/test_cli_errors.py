"""The command line's bad-input paths: one line, `xdplb: ...`, non-zero exit."""
from __future__ import annotations

import os

import pytest

from xdplb import cli

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("argv, code, needle", [
    (["run", "veth6", "10.0.0.2"], 2, "pairs"),
    (["run", "veth6", "10.0.0.2", "zz:zz"], 2, "MAC"),
    (["run", "veth6", "300.0.0.2", "de:ad:be:ef:00:02"], 2, "300.0.0.2"),
    (["run", "veth6", "10.0.0.2", "de:ad:be:ef:00:02", "--port", "70000"], 2, "70000"),
    (["run", "veth6", "10.0.0.2", "de:ad:be:ef:00:02", "--udp-stateless"], 2, "dsr"),
])
def test_bad_run_input_is_one_line(argv, code, needle, capsys):
    assert cli.main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("xdplb: ") and needle in err[0], err


def test_not_root_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli.main(["run", "veth6", "10.0.0.2", "de:ad:be:ef:00:02"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs root" in err[0], err
