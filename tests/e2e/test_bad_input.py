"""Issue 14's bad-input table, through the real command line in a lab's LB namespace:
one line, the right exit status, no traceback, nothing left attached, and a running serve
unharmed (the table is xdplb.testing.badinput.CASES; scripts/badinput_tally.py counts the
same runs for docs/RELIABILITY.md)."""
from __future__ import annotations

import os

import pytest

from xdplb.demo import xdplb_argv
from xdplb.lab import Lab, sigterm_as_interrupt
from xdplb.testing.badinput import CASES, Served, run_case

pytestmark = pytest.mark.e2e

INSTANCE = f"bi{os.getpid()}"


@pytest.fixture(scope="module")
def bad_lab():
    if os.geteuid() != 0:
        pytest.skip("e2e lab tests need root (network namespaces)")
    lab = Lab(name=INSTANCE)
    with sigterm_as_interrupt():
        try:
            lab.up()
            yield lab
        finally:
            lab.down()


@pytest.fixture(scope="module")
def served(bad_lab, tmp_path_factory):
    with Served(bad_lab, xdplb_argv(), tmp_path_factory.mktemp("served"), INSTANCE) as s:
        yield s


ALONE = [c for c in CASES if c.group != "served"]
WITH_SERVE = [c for c in CASES if c.group == "served"]


@pytest.mark.parametrize("case", ALONE, ids=[c.name for c in ALONE])
def test_bad_input_is_one_line_and_the_right_exit(case, bad_lab, tmp_path):
    out = run_case(case, bad_lab, xdplb_argv(), tmp_path, INSTANCE)
    assert not out.problems(), (out.problems(), out.code, out.stderr)


@pytest.mark.parametrize("case", WITH_SERVE, ids=[c.name for c in WITH_SERVE])
def test_bad_input_to_a_running_serve_leaves_it_serving(case, bad_lab, served, tmp_path):
    out = run_case(case, bad_lab, xdplb_argv(), tmp_path, INSTANCE, served=served)
    assert not out.problems(), (out.problems(), out.code, out.stderr[:300])
