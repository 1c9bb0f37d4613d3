"""README.md's line counts are generated (scripts/linecounts.py), never typed: this fails
when they are stale. Fix: run scripts/linecounts.py."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "linecounts.py"


def load():
    spec = importlib.util.spec_from_file_location("linecounts", SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_readme_block_is_current():
    lc = load()
    text = lc.README.read_text()
    assert lc.replace_block(text, lc.render()) == text, \
        "README.md: line counts are stale; run scripts/linecounts.py"


def test_the_counts_are_counted(tmp_path):
    """On a made-up tree: each part's files are counted once, the rest goes to 'the rest'."""
    lc = load()
    (tmp_path / "bpf").mkdir()
    (tmp_path / "bpf" / "a.c").write_text("x\n" * 120)
    pkg = tmp_path / "src" / "xdplb"
    (pkg / "cli").mkdir(parents=True)
    (pkg / "cli" / "main.py").write_text("x\n" * 30)
    (pkg / "health.py").write_text("x\n" * 70)
    got = {label: n for label, _, n in lc.counts(tmp_path)}
    assert got["bpf/"] == 120 and got["src/xdplb/cli/"] == 30
    assert got["src/xdplb/ (the rest)"] == 70
    assert lc._rounded(120) == "~100" and lc._rounded(10) == "~50"
