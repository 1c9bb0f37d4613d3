"""pytest fixtures of the bpf tier (root, BPF_PROG_TEST_RUN, no namespaces).

Use from a conftest: ``from xdplb.testing.fixtures import *``.

``bpf_object_path``  session: the data plane object; ``make -C bpf`` first when the repo's
                     sources are there (XDPLB_BPF_OBJECT=path overrides). Skips unless root.
``dataplane_pool``   session: one loaded DataPlane per knob set (loading costs ~0.5 s),
                     handed out clean.
``dataplane``        function: a clean DataPlane with the default knobs: no VIPs, empty
                     flow table. Counters are not reset: compare deltas.
``balancer``         function: ``balancer(vips, knobs=None) -> LoadBalancer`` configured on a
                     clean DataPlane (``lb.dp``) and unconfigured after the test.

"Clean" means what a fresh load gives for everything a packet can reach: the VIPs are
removed through the LoadBalancer that made them (rings dropped, backends inactive,
runtime switches off) and the flow table is emptied, so no flow state
leaks from one test into the next. Stale entries of the `backends` array stay, but
nothing refers to them.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .._bpf import abi, object_path
from .._bpf.dataplane import DataPlane, Knobs
from .._bpf.loader import load
from ..lb import LoadBalancer, VipSpec

__all__ = [
    "DataPlanePool",
    "balancer",
    "bpf_object_path",
    "clear_flows",
    "configured",
    "dataplane",
    "dataplane_pool",
    "require_root",
]

_REPO = Path(__file__).resolve().parents[3]


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("bpf tier needs root (BPF_PROG_TEST_RUN, map creation)")


def _build_object() -> Path:
    env = os.environ.get("XDPLB_BPF_OBJECT")
    if env:
        return Path(env)
    bpf_dir = _REPO / "bpf"
    if (bpf_dir / "Makefile").exists() and shutil.which("make"):
        r = subprocess.run(["make", "-s", "-C", str(bpf_dir)], capture_output=True, text=True,
                           check=False)
        if r.returncode:
            pytest.fail(f"make -C {bpf_dir} failed:\n{r.stdout}{r.stderr}", pytrace=False)
        return _REPO / "build" / "bpf" / "xdplb.bpf.o"
    return object_path("xdplb")


class DataPlanePool:
    """Loaded data planes by knob set, for one session."""

    def __init__(self, path: Path):
        self.path = path
        self._dps: dict[str, DataPlane] = {}

    def get(self, knobs: Knobs | None = None) -> DataPlane:
        knobs = knobs or Knobs()
        # every field: the run-time ones (timeouts, nonsyn_budget) are written at load too
        key = repr(knobs)
        if key not in self._dps:
            self._dps[key] = load(self.path, knobs=knobs)
        dp = self._dps[key]
        clear_flows(dp)
        # the run-time knobs (timeouts, SYN challenge, RST rate) are not part of the key:
        # each user gets its own
        rt = dp.runtime()
        knobs.timeouts(rt, rt.hz or 250)
        dp.set_runtime(rt)
        return dp

    def close(self) -> None:
        for dp in self._dps.values():
            dp.close()
        self._dps.clear()


def clear_flows(dp: DataPlane) -> None:
    """Empty the flow table (both regions)."""
    dp.clear_flows()


@contextlib.contextmanager
def configured(dp: DataPlane, vips: list[VipSpec]) -> Iterator[LoadBalancer]:
    """A LoadBalancer serving `vips` on `dp` (flows cleared), unconfigured on exit."""
    clear_flows(dp)
    if len(dp.maps["vips"]):
        raise RuntimeError("data plane not clean: VIPs left by an earlier user")
    lb = LoadBalancer(dp)
    try:
        lb.apply(list(vips))
        yield lb
    finally:
        lb.apply([])
        rt, old = abi.LbRuntime(), dp.runtime()  # switches off, timeouts kept
        for f in ("hz", "tcp_timeout", "closing_timeout", "udp_timeout", "refresh",
                  "syn_timeout", "nonsyn_budget", "age_shift", "syn_challenge",
                  "syn_challenge_rate", "rst_rate", "challenge_hold", "verified_timeout",
                  "cookie_shift", "cookie_secret"):
            setattr(rt, f, getattr(old, f))
        dp.set_runtime(rt)
        clear_flows(dp)


@pytest.fixture(scope="session")
def bpf_object_path() -> Path:
    require_root()
    path = _build_object()
    if not path.exists():
        pytest.fail(f"BPF object {path} not found", pytrace=False)
    return path


@pytest.fixture(scope="session")
def dataplane_pool(bpf_object_path) -> Iterator[DataPlanePool]:
    pool = DataPlanePool(bpf_object_path)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def dataplane(dataplane_pool) -> Iterator[DataPlane]:
    dp = dataplane_pool.get()
    yield dp
    clear_flows(dp)


@pytest.fixture
def balancer(dataplane_pool):
    with contextlib.ExitStack() as stack:
        def make(vips: list[VipSpec], knobs: Knobs | None = None) -> LoadBalancer:
            return stack.enter_context(configured(dataplane_pool.get(knobs), vips))

        yield make
