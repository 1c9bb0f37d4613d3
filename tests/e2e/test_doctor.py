"""`xdplb doctor IFACE` in the lab's LB namespace: read-only checks with advice."""
from __future__ import annotations

import pytest
from lbproc import running_lb

from xdplb.demo import xdplb_argv

pytestmark = pytest.mark.e2e


def doctor(lab, *args):
    return lab.run("lb", xdplb_argv() + ["doctor", *args], timeout=60)


def test_doctor_explains_the_lab_interface(lab):
    r = doctor(lab, "veth6")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no XDP program attached" in r.stdout
    assert "veth peer" in r.stdout and "another namespace" in r.stdout
    with running_lb(lab):
        lab.run("client", ["curl", "-s", "-m", "3", "http://10.0.0.10:8000/"])
        r = doctor(lab, "veth6")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "(xdplb)" in r.stdout and "packets forwarded to backends" in r.stdout


def test_doctor_fails_on_an_unknown_interface(lab):
    r = doctor(lab, "nosuch0")
    assert r.returncode == 1 and "FAIL no interface 'nosuch0'" in r.stdout
