"""e2e fixtures: labs (the tutorial's topology in namespaces) that are always torn down.

``lab``          an up ``Lab`` with the defaults (client, lb, h2, h3); options via the marker
                 ``@pytest.mark.lab(backends=4, clients=2, offloads="off", ipv6=False)``
``lab_factory``  ``lab_factory(**Lab kwargs) -> Lab`` (up), for tests needing several or a
                 custom one; every lab it made is torn down after the test

SIGTERM is turned into KeyboardInterrupt while a lab fixture is active, so ``kill`` of a pytest
run still goes through the teardown (pytest runs finalizers on KeyboardInterrupt).
"""
from __future__ import annotations

import os
import shutil

import pytest

from xdplb.lab import Lab, sigterm_as_interrupt


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "lab(**kwargs): options for the `lab` fixture (backends, clients, offloads, "
        "ipv6)")


def _skip_unless_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("e2e lab tests need root (network namespaces)")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 `ip` not found")


@pytest.fixture
def lab_factory():
    _skip_unless_root()
    made: list[Lab] = []
    pid = os.getpid()

    def make(**kw) -> Lab:
        if "name" not in kw:
            kw["name"] = f"xl{pid}" if not made else f"xl{pid}_{len(made)}"
        lab = Lab(**kw)
        made.append(lab)  # before up(): torn down even if up() is interrupted
        lab.up()
        return lab

    with sigterm_as_interrupt():
        try:
            yield make
        finally:
            errors = []
            for lab in reversed(made):
                try:
                    lab.down()
                except Exception as e:  # noqa: BLE001 - keep tearing down the others
                    errors.append(e)
            if errors:
                raise errors[0]


@pytest.fixture
def lab(request, lab_factory) -> Lab:
    marker = request.node.get_closest_marker("lab")
    return lab_factory(**(marker.kwargs if marker else {}))
