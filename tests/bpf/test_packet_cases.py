"""Every case of the packet table (xdplb.testing.cases) through the real program: verdict,
whole output frame (a field-by-field diff on mismatch) and counters, step by step."""
from __future__ import annotations

import re

import pytest

from xdplb.testing.cases import table
from xdplb.testing.fixtures import configured
from xdplb.testing.runner import run_case

pytestmark = pytest.mark.bpf

# Cases that show a known data-plane bug: name -> reason (strict xfail: fixing the bug
# makes the test fail until the entry is removed).
KNOWN_BUGS: dict[str, str] = {}


def _params() -> list:
    out = []
    for case in table():
        marks = []
        if case.name in KNOWN_BUGS:
            marks.append(pytest.mark.xfail(reason=KNOWN_BUGS[case.name], strict=True))
        out.append(pytest.param(case, id=case.name, marks=marks))
    return out


@pytest.mark.parametrize("case", _params())
def test_packet_case(case, dataplane_pool):
    dp = dataplane_pool.get(case.knobs)
    with configured(dp, case.vips):
        failures = run_case(dp, case)
    assert not failures, "\n\n".join(failures)


def test_case_names_are_sentences():
    for case in table():
        assert (case.name[0].isupper() or case.name[0].isdigit()) and len(case.name.split()) >= 4, case.name


# docs/seed-defects.md: the packet-level defects; 10 (bpf_printk cost) is a benchmark matter.
SEED_DEFECTS = {1, 2, 3, 4, 5, 6, 7, 8, 9, 11}


def test_every_packet_defect_of_the_seed_has_a_case():
    covered = set()
    for case in table():
        covered |= {int(n) for n in re.findall(r"(?:^|, )(\d+)(?= \(|,|$)", case.seed_note)}
    assert SEED_DEFECTS <= covered, f"no case for defects {sorted(SEED_DEFECTS - covered)}"
