"""The OCI image and the lab's hosts as containers (issue 18), with real traffic.

The image is built once per session by `scripts/build-image.sh` (what `make image` runs): the
base stays in podman's storage and an unchanged tree hits the layer cache, so a warm build
takes seconds and a cold one about a minute. The tests skip, with the reason, only when this
machine cannot run containers at all (no podman, no mmdebstrap, or podman refuses to start
one); a Containerfile or build that breaks fails them.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xdplb.lab import ContainerError, Podman

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
XDPLB = [sys.executable, "-m", "xdplb.cli"]


def _root_netns_view() -> dict[str, str]:
    """What the containers must never change in the machine's own namespace."""
    def out(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout

    links = sorted(ln.split(":")[1].strip() for ln in out("ip", "-o", "link", "show").splitlines())
    return {"links": " ".join(links), "nft": out("nft", "list", "ruleset"),
            "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text()}


@pytest.fixture(scope="session")
def image() -> str:
    """The id of the image built from this tree (skip when containers cannot run here)."""
    if os.geteuid() != 0:
        pytest.skip("the containerized lab needs root (rootful podman, namespaces)")
    for tool in ("podman", "mmdebstrap"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/install-deps.sh image; make test "
                        "installs it)")
    p = subprocess.run([str(ROOT / "scripts" / "build-image.sh")], capture_output=True,
                       text=True, timeout=600, check=False,
                       env={**os.environ, "PYTHON": sys.executable})
    if p.returncode != 0:
        _skip_if_podman_cannot_run_anything()
        pytest.fail(f"scripts/build-image.sh failed:\n{p.stdout}{p.stderr}")
    image_id = p.stdout.strip().splitlines()[-1]
    try:
        Podman().probe(image_id)
    except ContainerError as e:
        pytest.skip(f"podman cannot run containers here: {e}")
    return image_id


def _skip_if_podman_cannot_run_anything() -> None:
    """A failed build is a failure, unless podman cannot run even the base it built on."""
    podman = Podman()
    p = subprocess.run(podman.argv("images", "--format", "{{.Repository}}:{{.Tag}}",
                                   "--filter", "reference=localhost/xdplb-base"),
                       capture_output=True, text=True, env=podman.env, check=False)
    bases = p.stdout.split()
    if p.returncode != 0:
        pytest.skip(f"podman does not work here: {p.stderr.strip().splitlines()[-1:]}")
    if bases:
        try:
            podman.call("run", "--rm", "--network", "none", bases[0], "true",
                        what="podman cannot run a container here")
        except ContainerError as e:
            pytest.skip(str(e))


def _containers_of(lab: str) -> list[dict]:
    podman = Podman()
    p = subprocess.run(podman.argv("ps", "--all", "--format", "json", "--filter",
                                   f"label=xdplb.lab={lab}"),
                       capture_output=True, text=True, env=podman.env, check=True)
    return json.loads(p.stdout or "[]")


def test_the_image_runs_xdplb_with_serve_as_its_default_command(image):
    podman = Podman()
    p = podman.call("image", "inspect", "--format",
                    "{{json .Config.Entrypoint}} {{json .Config.Cmd}}", image, what="inspect")
    assert p.stdout.split() == ['["xdplb"]', '["serve","-c","/etc/xdplb/xdplb.toml"]']
    # no config mounted: serve's own one-line error, exit 2 as for any bad config
    p = subprocess.run(podman.argv("run", "--rm", image), capture_output=True, text=True,
                       env=podman.env, timeout=60, check=False)
    assert p.returncode == 2, p.stderr
    assert "/etc/xdplb/xdplb.toml" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    # the run-time needs are there, the compiler is not
    p = subprocess.run(podman.argv("run", "--rm", "--entrypoint", "sh", image, "-c",
                                   "for c in ip curl python3 clang gcc cc; do "
                                   "command -v $c; done; "
                                   "python3 -c 'import xdplb._bpf as b; "
                                   "print(b.object_path(\"xdplb\"))'"),
                       capture_output=True, text=True, env=podman.env, timeout=60, check=False)
    assert [Path(x).name for x in p.stdout.split()[:3]] == ["ip", "curl", "python3"], p.stdout
    assert p.stdout.split()[3].endswith("/xdplb/_data/xdplb.bpf.o"), p.stdout


def test_containerized_demo_answers_every_request(image):
    before = _root_netns_view()
    p = subprocess.Popen([*XDPLB, "demo", "--containers", "--image", image],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = p.communicate(timeout=180)
    finally:
        if p.poll() is None:
            p.terminate()  # the demo removes its containers and namespaces on SIGTERM too
            p.wait(30)
    assert p.returncode == 0, out
    assert "== OK: 20/20 requests answered, 2 backends used" in out, out
    assert f"podman run --privileged --network ns:/run/netns/xl{p.pid}-lb" in out
    assert "client=0, lb=0, h2=0, h3=0" in out  # no checksum errors on any host
    assert _containers_of(f"xl{p.pid}") == []
    assert not any(Path("/run/netns").glob(f"xl{p.pid}-*"))
    assert _root_netns_view() == before


def test_lab_up_containers_puts_every_host_in_its_namespace(image):
    name = f"xc{os.getpid()}"
    up = subprocess.run([*XDPLB, "lab", "up", "--containers", "--image", image, "--name", name],
                        capture_output=True, text=True, timeout=120, check=False)
    try:
        assert up.returncode == 0, up.stderr
        running = {c["Names"][0]: c for c in _containers_of(name)}
        assert sorted(running) == sorted(f"{name}-{h}" for h in ("client", "lb", "h2", "h3"))
        # the container sees the lab's interface and address: it is in the lab's namespace
        p = subprocess.run([*XDPLB, "lab", "exec", "--name", name, "h2", "--", "ip", "-br",
                            "addr", "show", "veth3"], capture_output=True, text=True,
                           timeout=60, check=False)
        assert p.returncode == 0 and "10.0.0.2/24" in p.stdout, p.stdout + p.stderr
        # and it reaches its neighbours over the lab's bridge
        p = subprocess.run([*XDPLB, "lab", "exec", "--name", name, "client", "--", "python3",
                            "-c", ("import socket; s = socket.socket(); s.settimeout(2); "
                            "print(s.connect_ex(('10.0.0.2', 9)))")],
                           capture_output=True, text=True, timeout=60, check=False)
        assert p.stdout.strip() == "111", p.stdout + p.stderr  # ECONNREFUSED: h2 answered
    finally:
        down = subprocess.run([*XDPLB, "lab", "down", "--name", name], capture_output=True,
                              text=True, timeout=120, check=False)
    assert down.returncode == 0, down.stderr
    assert _containers_of(name) == []
    assert not any(Path("/run/netns").glob(f"{name}-*"))


def test_a_missing_image_is_one_line_and_leaves_nothing(image):
    name = f"xm{os.getpid()}"
    p = subprocess.run([*XDPLB, "lab", "up", "--containers", "--image",
                        "localhost/xdplb-no-such-image:0", "--name", name],
                       capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 1
    assert p.stderr.strip() == ("xdplb: image localhost/xdplb-no-such-image:0 not found: "
                                "build it with `make image`")
    assert not any(Path("/run/netns").glob(f"{name}-*"))
