"""Issue 14's bad-input table, through the real command line in a lab's LB namespace:
one line, the right exit status, no traceback, nothing left attached (the table is
xdplb.testing.badinput.CASES; scripts/badinput_tally.py counts the same runs)."""
from __future__ import annotations

import os

import pytest

from xdplb.demo import xdplb_argv
from xdplb.lab import Lab, sigterm_as_interrupt
from xdplb.testing.badinput import CASES, run_case

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def bad_lab():
    if os.geteuid() != 0:
        pytest.skip("e2e lab tests need root (network namespaces)")
    lab = Lab(name=f"bi{os.getpid()}")
    with sigterm_as_interrupt():
        try:
            lab.up()
            yield lab
        finally:
            lab.down()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_and_the_right_exit(case, bad_lab, tmp_path):
    out = run_case(case, bad_lab, xdplb_argv(), tmp_path, f"bi{os.getpid()}")
    assert not out.problems(), (out.problems(), out.code, out.stderr)
