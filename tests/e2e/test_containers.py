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
import time
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
    assert f"podman run --cap-add NET_ADMIN,SYS_ADMIN --network ns:/run/netns/xl{p.pid}-lb" in out
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


# --- the production form: serve in the image with the documented privileges ---------------
# The host's network is replaced by the lab's LB namespace (nothing may change in the
# machine's own), the host's bpffs by a private one; the rest is docs/operations.md's command.

# what the kernel and podman's default seccomp profile ask for (CAP_SYS_ADMIN passes the
# kernel's CAP_BPF and CAP_PERFMON checks too); docs/operations.md, compose.yaml
CAPS = ("NET_ADMIN", "SYS_ADMIN")
#: the split without CAP_SYS_ADMIN; bpf() then needs a seccomp profile that allows it
SPLIT = ("BPF", "NET_ADMIN", "PERFMON")
UNCONFINED = ("--security-opt", "seccomp=unconfined")
HOLD = """
import socket, sys
s = socket.create_connection(("10.0.0.10", 8000), timeout=10)
print("connected", flush=True)
sys.stdin.readline()
s.sendall(b"GET /whoami HTTP/1.0\\r\\n\\r\\n")
data = b""
while chunk := s.recv(4096):
    data += chunk
print(data.split(b"\\r\\n\\r\\n", 1)[-1].decode().strip(), flush=True)
"""


class Serve:
    """`xdplb serve` containers of the image in the lab's LB namespace; removed afterwards."""

    def __init__(self, lab, image: str, tmp: Path) -> None:
        self.lab, self.image, self.podman = lab, image, Podman()
        self.instance = f"pf{os.getpid()}"
        self.etc = tmp / "etc"
        self.etc.mkdir()
        backends = "".join(f'\n[[vip.backend]]\naddress = "{h.ipv4}"\nmac = "{h.mac}"\n'
                           for h in lab.backend_hosts)
        (self.etc / "xdplb.toml").write_text(
            f'[lb]\ninterface = "{lab.lb.ifname}"\nname = "{self.instance}"\n\n'
            f'[[vip]]\naddress = "{lab.vip}"\nport = 8000\n{backends}')
        self.bpffs = tmp / "bpffs"
        self.bpffs.mkdir()
        subprocess.run(["mount", "-t", "bpf", "bpf", str(self.bpffs)], check=True)
        self.names: list[str] = []

    def start(self, caps=CAPS, extra: tuple[str, ...] = (), keep: bool = True) -> str:
        name = f"{self.instance}-{len(self.names)}"
        self.names.append(name)
        flags = ["--network", f"ns:/run/netns/{self.lab.ns('lb')}", "--cap-drop", "ALL",
                 "--cap-add", ",".join(caps), "-v", f"{self.etc}:/etc/xdplb:ro",
                 "-v", f"{self.bpffs}:/sys/fs/bpf", *extra]
        self.podman.call("run", "--detach", "--name", name, *flags, self.image, "serve", "-c",
                         "/etc/xdplb/xdplb.toml", *(["--keep"] if keep else []),
                         what=f"podman run {name}")
        return name

    def logs(self, name: str) -> str:
        return subprocess.run(self.podman.argv("logs", name), capture_output=True, text=True,
                              env=self.podman.env, check=False).stderr

    def running(self, name: str) -> bool:
        p = subprocess.run(self.podman.argv("inspect", "--format", "{{.State.Running}}", name),
                           capture_output=True, text=True, env=self.podman.env, check=False)
        return p.stdout.strip() == "true"

    def wait_ready(self, name: str, timeout: float = 30) -> bool:
        """True once serve logged `ready`; False when its container ended first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "event=ready" in self.logs(name):
                return True
            if not self.running(name):
                return "event=ready" in self.logs(name)
            time.sleep(0.2)
        raise AssertionError(f"serve in {name} neither ready nor ended: {self.logs(name)}")

    def xdp_attached(self) -> bool:
        p = self.lab.run("lb", ["ip", "link", "show", self.lab.lb.ifname], check=True)
        return "prog/xdp" in p.stdout

    def close(self) -> None:
        self.podman.remove(self.names, timeout=5)
        subprocess.run(["umount", str(self.bpffs)], check=False)


@pytest.fixture
def serve(lab, image, tmp_path):
    root = tmp_path / "www"
    for h in lab.backend_hosts:
        (root / h.role).mkdir(parents=True)
        (root / h.role / "whoami").write_text(f"{h.role}\n")
        lab.start_http_servers(root / h.role, 8000, hosts=[h.role])
    s = Serve(lab, image, tmp_path)
    try:
        yield s
    finally:
        s.close()


def _answered(lab, n: int) -> int:
    return sum(lab.run("client", ["curl", "-s", "-m", "2", "http://10.0.0.10:8000/whoami"],
                       timeout=10).returncode == 0 for _ in range(n))


def test_production_form_serves_and_survives_a_container_replacement(serve):
    lab = serve.lab
    first = serve.start()
    assert serve.wait_ready(first), serve.logs(first)
    assert _answered(lab, 10) == 10
    status = serve.podman.call("exec", first, "xdplb", "status", what="status").stdout
    assert f"instance {serve.instance} on {lab.lb.ifname}" in status
    assert serve.podman.call("exec", first, "xdplb", "stats", lab.lb.ifname, what="stats")
    # a connection opened through the first container ...
    held = lab.popen("client", [sys.executable, "-c", HOLD], stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, text=True)
    assert held.stdout is not None and held.stdin is not None
    assert held.stdout.readline().strip() == "connected"
    # ... outlives it: stopped with --keep, XDP stays, the pins are on the (host's) bpffs
    serve.podman.call("stop", "--time", "10", first, what="podman stop")
    assert "event=kept" in serve.logs(first)
    assert serve.xdp_attached()
    assert (serve.bpffs / "xdplb" / serve.instance / "flows").exists()
    second = serve.start()
    assert serve.wait_ready(second), serve.logs(second)
    assert "event=took_over" in serve.logs(second) and "maps_from=pins" in serve.logs(second)
    held.stdin.write("go\n")
    held.stdin.flush()
    out, _ = held.communicate(timeout=15)
    assert out.strip() in {h.role for h in lab.backend_hosts}, out
    assert _answered(lab, 10) == 10
    # stop for good: detached and unpinned, and serve exits 0 (restart: on-failure stays down);
    # the exec session ends with the container
    subprocess.run(serve.podman.argv("exec", second, "xdplb", "stop", "-c",
                                     "/etc/xdplb/xdplb.toml"),
                   capture_output=True, env=serve.podman.env, timeout=30, check=False)
    deadline = time.monotonic() + 15
    while serve.running(second) and time.monotonic() < deadline:
        time.sleep(0.2)
    state = serve.podman.call("inspect", "--format", "{{.State.ExitCode}}", second,
                              what="inspect").stdout.strip()
    assert state == "0"
    assert not serve.xdp_attached()
    assert not (serve.bpffs / "xdplb" / serve.instance).exists()


@pytest.mark.parametrize(("caps", "extra", "message"), [
    (("SYS_ADMIN",), (), "XDP attach refused (Operation not permitted)"),
    (("NET_ADMIN",), (), "Couldn't load trivial BPF program"),  # seccomp: bpf() needs SYS_ADMIN
    (("NET_ADMIN", "BPF"), UNCONFINED, "the kernel's verifier rejected the data plane"),
], ids=["without-NET_ADMIN", "without-SYS_ADMIN", "without-SYS_ADMIN-and-PERFMON"])
def test_production_form_needs_each_privilege(serve, caps, extra, message):
    name = serve.start(caps=caps, extra=extra)
    assert not serve.wait_ready(name)
    assert message in serve.logs(name)
    assert not serve.xdp_attached()


def test_without_sys_admin_serve_forwards_but_cannot_take_over(serve):
    first = serve.start(caps=SPLIT, extra=UNCONFINED)
    assert serve.wait_ready(first), serve.logs(first)
    assert _answered(serve.lab, 5) == 5
    stats = subprocess.run(serve.podman.argv("exec", first, "xdplb", "stats",
                                             serve.lab.lb.ifname),
                           capture_output=True, text=True, env=serve.podman.env, timeout=30,
                           check=False)
    assert stats.returncode != 0 and "opening program id" in stats.stderr, stats.stderr
    serve.podman.call("stop", "--time", "10", first, what="podman stop")
    second = serve.start(caps=SPLIT, extra=UNCONFINED)
    assert not serve.wait_ready(second)
    assert "opening program id" in serve.logs(second)  # BPF_PROG_GET_FD_BY_ID: CAP_SYS_ADMIN
    assert serve.xdp_attached()  # the kept program still forwards
    assert _answered(serve.lab, 5) == 5
