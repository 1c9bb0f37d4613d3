"""docs/seed-defects.md is the list the packet cases cite: every number a case cites is
there, and the list is numbered without gaps."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def listed() -> list[int]:
    text = (ROOT / "docs" / "seed-defects.md").read_text()
    return [int(n) for n in re.findall(r"^(\d+)\. ", text, re.MULTILINE)]


def cited() -> set[int]:
    text = (ROOT / "src" / "xdplb" / "testing" / "cases.py").read_text()
    out: set[int] = set()
    for note in re.findall(r'seed_note="([^"]*)"', text):
        out |= {int(n) for n in re.findall(r"(?:^|, )(\d+)(?= \(|,|$)", note)}
    return out


def test_the_list_is_numbered_without_gaps():
    assert listed() == list(range(1, len(listed()) + 1)) and len(listed()) >= 11


def test_every_cited_defect_is_listed():
    assert cited(), "no case cites a defect"
    assert cited() <= set(listed()), sorted(cited() - set(listed()))
