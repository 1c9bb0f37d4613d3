"""The containerized lab without podman or privileges: the podman call line, the one-line
errors and the saved state that lets `xdplb lab down` find the containers."""
from __future__ import annotations

import pytest

from xdplb import __version__
from xdplb.lab import ContainerError, ContainerLab, Lab, Podman
from xdplb.lab.containers import CONTAINERS_CONF, _one_line

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def state_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("XDPLB_LAB_DIR", str(tmp_path / "state"))


def test_a_missing_podman_is_one_line_saying_what_to_install():
    with pytest.raises(ContainerError) as e:
        Podman(exe="xdplb-test-no-podman").check("xdplb:0")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("xdplb-test-no-podman not found")
    assert "scripts/install-deps.sh image" in msg


def test_podman_is_always_given_xdplbs_containers_conf():
    conf = CONTAINERS_CONF.read_text()
    assert Podman().env["CONTAINERS_CONF"] == str(CONTAINERS_CONF)
    # the three facts of this kind of machine, and no network unless one is named
    for line in ('runtime = "runc"', 'cgroup_manager = "cgroupfs"',
                 'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]', 'netns = "none"'):
        assert line in conf


@pytest.mark.parametrize(("stderr", "hint"), [
    (("Error: crun: cgroups in hybrid mode not supported, drop all controllers from cgroupv2: "
     "OCI runtime error"), "install runc"),
    (("Error: runc: runc create failed: unable to start container process: error during "
     "container init: error setting rlimits for ready process: error setting rlimit type 7: "
     "operation not permitted: OCI permission denied"), "ulimits"),
])
def test_podmans_refusals_are_explained_in_one_line(stderr, hint):
    msg = _one_line("some noise\n" + stderr + "\n", "fallback")
    assert "\n" not in msg and not msg.startswith("Error:")
    assert hint in msg


def test_the_lab_saves_its_containers_so_another_process_removes_them():
    lab = ContainerLab("ct1", image="localhost/xdplb:test")
    lab.containers = ["ct1-client", "ct1-lb", "ct1-lb.1"]
    lab.created = ["ct1-sw"]
    lab.save()
    back = Lab.load("ct1")
    assert isinstance(back, ContainerLab)
    assert back.image == "localhost/xdplb:test"
    assert back.containers == ["ct1-client", "ct1-lb", "ct1-lb.1"]


def test_commands_run_in_the_hosts_container_and_only_the_lb_gets_capabilities():
    lab = ContainerLab("ct2")
    assert lab.image == f"xdplb:{__version__}"
    assert lab._exec_argv("client", ["curl", "x"]) == ["podman", "exec", "ct2-client", "curl",
                                                       "x"]
    assert lab._exec_argv("sw", ["ip", "link"])[:4] == ["ip", "netns", "exec", "ct2-sw"]
    lb = lab._run_flags("lb", "ct2-lb")
    assert "NET_ADMIN,SYS_ADMIN" in lb and "ns:/run/netns/ct2-lb" in lb
    assert "--privileged" not in lb
    assert "--cap-add" not in lab._run_flags("h2", "ct2-h2")
