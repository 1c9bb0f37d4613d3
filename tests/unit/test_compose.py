"""compose.yaml and docs/operations.md run the image this version builds, with the privileges
the e2e tests check (tests/e2e/test_containers.py)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from xdplb import __version__

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_compose_runs_this_versions_image_on_the_host_network_with_two_capabilities():
    compose = (ROOT / "compose.yaml").read_text()
    assert re.search(rf"^\s+image: xdplb:{re.escape(__version__)}$", compose, re.MULTILINE)
    assert re.search(r"^\s+network_mode: host\b", compose, re.MULTILINE)
    assert re.search(r"^\s+cap_drop: \[ALL\]", compose, re.MULTILINE)
    assert re.search(r"^\s+cap_add: \[NET_ADMIN, SYS_ADMIN\]", compose, re.MULTILINE)
    assert "privileged: true" not in compose.replace("`privileged: true`", "")


def test_the_documented_podman_command_matches_compose():
    ops = (ROOT / "docs" / "operations.md").read_text()
    assert "--cap-drop ALL --cap-add NET_ADMIN,SYS_ADMIN" in ops
    assert f"xdplb:{__version__} serve -c /etc/xdplb/xdplb.toml --keep" in ops
