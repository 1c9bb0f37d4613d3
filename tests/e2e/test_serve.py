"""`xdplb serve -c FILE` in the lab: config file, reload, health checks, restart without
dropping connections, drain.

The daemon runs in the LB's namespace (`ip netns exec <lab>-lb xdplb serve -c FILE`) with
its own run directory and an instance named after the lab, so labs running side by side
never share a control socket.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from clients import paced_download
from lbproc import xdp_attached

from xdplb._bpf import abi
from xdplb.demo import xdplb_argv

pytestmark = pytest.mark.e2e

BIG = 4 * 1024 * 1024
VIP = "http://10.0.0.10:8000"


def cli_argv() -> list[str]:
    return xdplb_argv()


# --- backends -----------------------------------------------------------------------------


class Backends:
    """python -m http.server on each backend, each serving `whoami` (its name) and
    big.bin; one can be stopped and started again."""

    def __init__(self, lab, root: Path, protocol: str = "HTTP/1.0"):
        self.lab, self.root, self.protocol = lab, root, protocol
        self.procs: dict[str, subprocess.Popen] = {}
        self.big = os.urandom(BIG)
        for h in lab.backend_hosts:
            d = root / h.role
            d.mkdir()
            (d / "whoami").write_text(h.role)
            (d / "big.bin").write_bytes(self.big)
            self.start(h.role)

    def start(self, role: str) -> None:
        self.procs[role] = self.lab.popen(
            role, [sys.executable, "-m", "http.server", "8000", "--bind", "0.0.0.0",
                   "--protocol", self.protocol], cwd=str(self.root / role),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            if self.lab.run(role, ["curl", "-s", "-m", "1", "http://127.0.0.1:8000/whoami"]
                            ).stdout == role:
                return
            time.sleep(0.02)
        raise AssertionError(f"http.server on {role} did not start")

    def stop(self, role: str) -> None:
        p = self.procs.pop(role)
        p.terminate()
        p.wait(5)


# --- the config file -----------------------------------------------------------------------


def write_config(path: Path, lab, roles: list[str], health: str | None = None) -> Path:
    hosts = {h.role: h for h in lab.backend_hosts}
    text = (f'[lb]\ninterface = "{lab.lb.ifname}"\nname = "{lab.name}"\n'
            "conntrack_size = 65536\nmax_vips = 16\nmax_backends = 64\n\n"
            '[[vip]]\nname = "web"\naddress = "10.0.0.10"\nport = 8000\n')
    for r in roles:
        text += f'\n[[vip.backend]]\naddress = "{hosts[r].ipv4}"\nmac = "{hosts[r].mac}"\n'
    if health:
        text += f"\n[vip.health]\n{health}\n"
    path.write_text(text)
    return path


FAST_HTTP_CHECK = 'kind = "http"\npath = "/whoami"\ninterval = 0.3\ntimeout = 0.25\nrise = 2\n' \
    "fall = 2"


# --- the daemon ------------------------------------------------------------------------------


class Served:
    """One `xdplb serve` process in the LB namespace; stderr collected line by line."""

    def __init__(self, lab, config: Path, run_dir: Path, *extra: str):
        self.lab, self.config, self.run_dir = lab, config, run_dir
        self.lines: list[str] = []
        self.proc = lab.popen("lb", [*cli_argv(), "serve", "-c", str(config), "--run-dir",
                                     str(run_dir), *extra],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.wait_log("event=ready")

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_log(self, needle: str, timeout: float = 15, after: int = 0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[after:]:
                if needle in line:
                    return line
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no {needle!r} in the daemon's log:\n" + "\n".join(self.lines))

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = self.lab.run("lb", [*cli_argv(), *args, "-c", str(self.config), "--run-dir",
                                str(self.run_dir)], timeout=30)
        if check:
            assert r.returncode == 0, (args, r.stdout, r.stderr)
        return r

    def status(self) -> dict:
        return json.loads(self.ctl("status", "--json").stdout)

    def signal(self, sig: int) -> int:
        self.proc.send_signal(sig)
        rc = self.proc.wait(15)
        self._reader.join(5)
        return rc

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def serving(lab, config: Path, run_dir: Path, *extra: str):
    s = Served(lab, config, run_dir, *extra)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    return d


def curls(lab, n: int, path: str = "/whoami", host: str = "client") -> list[str]:
    return [lab.run(host, ["curl", "-s", "-m", "5", f"{VIP}{path}"]).stdout for _ in range(n)]


def backend_states(st: dict) -> dict[str, tuple[str, int]]:
    return {b["address"]: (b["state"], b["weight"]) for b in st["vips"][0]["backends"]}


# --- tests -------------------------------------------------------------------------------------


def test_serve_answers_twenty_curls_from_both_backends(lab, tmp_path, run_dir):
    Backends(lab, tmp_path)
    config = write_config(tmp_path / "lb.toml", lab, ["h2", "h3"], FAST_HTTP_CHECK)
    with serving(lab, config, run_dir) as lb:
        assert xdp_attached(lab, "lb", "veth6")
        got = curls(lab, 20)
        assert got.count("h2") + got.count("h3") == 20, got
        assert {"h2", "h3"} <= set(got)
        st = lb.status()
        assert backend_states(st) == {"10.0.0.2": ("up", 1), "10.0.0.3": ("up", 1)}
        assert st["vips"][0]["new_flows"] >= 20
        text = lb.ctl("status").stdout
        assert "VIP web 10.0.0.10:8000/tcp nat" in text and "10.0.0.3:8000" in text
        assert lb.signal(signal.SIGINT) == 0
        assert any("event=detached" in line for line in lb.lines), lb.lines
    assert not xdp_attached(lab, "lb", "veth6")
    assert not list(run_dir.iterdir()), "pid file and socket are removed"


def test_a_bad_config_is_one_line_and_nothing_is_attached(lab, tmp_path, run_dir):
    config = tmp_path / "lb.toml"
    config.write_text('[lb]\ninterface = "veth6"\n[[vip]]\naddress = "10.0.0.10"\n'
                      'port = 8000\nprot = "tcp"\n')
    r = lab.run("lb", [*cli_argv(), "serve", "-c", str(config), "--run-dir", str(run_dir)],
                timeout=30)
    assert r.returncode == 2
    assert r.stderr.strip() == f"xdplb: {config}: vip[0].prot: unknown key (did you mean " \
        "'protocol'?)"
    config.write_text('[lb]\ninterface = "nosuch0"\n')
    r = lab.run("lb", [*cli_argv(), "serve", "-c", str(config), "--run-dir", str(run_dir)],
                timeout=30)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "xdplb: unknown interface 'nosuch0' (in this network namespace)"]
    assert not xdp_attached(lab, "lb", "veth6")


@pytest.mark.lab(backends=3)
def test_edit_config_and_sighup_adds_a_backend(lab, tmp_path, run_dir):
    Backends(lab, tmp_path)
    config = write_config(tmp_path / "lb.toml", lab, ["h2", "h3"])
    with serving(lab, config, run_dir) as lb:
        assert set(curls(lab, 12)) == {"h2", "h3"}
        write_config(config, lab, ["h2", "h3", "h4"])
        n = len(lb.lines)
        lb.proc.send_signal(signal.SIGHUP)
        lb.wait_log("event=reloaded", after=n)
        assert any("added backend 10.0.0.4:8000" in line for line in lb.lines[n:]), lb.lines
        got = curls(lab, 30)
        assert set(got) == {"h2", "h3", "h4"}, got
        # `xdplb reload` through the socket: back to two, and it says what changed
        write_config(config, lab, ["h2", "h3"])
        r = lb.ctl("reload")
        assert r.stdout.strip() == "web: removed backend 10.0.0.4:8000"
        assert set(curls(lab, 12)) <= {"h2", "h3"}
        # a broken edit is refused and the running config stays
        config.write_text(config.read_text().replace("port = 8000", "port = 80000"))
        r = lb.ctl("reload", check=False)
        assert r.returncode == 2
        assert r.stderr.strip() == f"xdplb: {config}: vip[0].port: 80000 is out of range " \
            "0..65535"
        assert set(curls(lab, 6)) <= {"h2", "h3"}


def test_a_dead_backend_is_pulled_and_returns(lab, tmp_path, run_dir):
    be = Backends(lab, tmp_path)
    config = write_config(tmp_path / "lb.toml", lab, ["h2", "h3"], FAST_HTTP_CHECK)
    with serving(lab, config, run_dir) as lb:
        assert set(curls(lab, 10)) == {"h2", "h3"}
        n = len(lb.lines)
        be.stop("h3")
        line = lb.wait_log("event=backend_down", after=n, timeout=10)
        assert "backend=10.0.0.3:8000" in line and "reason=" in line, line
        assert curls(lab, 20) == ["h2"] * 20
        assert backend_states(lb.status())["10.0.0.3"] == ("down", 1)
        n = len(lb.lines)
        be.start("h3")
        lb.wait_log("event=backend_up", after=n, timeout=10)
        got = curls(lab, 20)
        assert set(got) == {"h2", "h3"}, got
        assert backend_states(lb.status())["10.0.0.3"] == ("up", 1)


POLL_XDP = r"""
import sys, time
from pathlib import Path
from xdplb._bpf.dataplane import ifindex_of
from xdplb._bpf.libbpf import xdp_attachment
ifindex, stop = ifindex_of(sys.argv[1]), Path(sys.argv[2])
seen = []
end = time.monotonic() + 60
while not stop.exists() and time.monotonic() < end:
    pid = xdp_attachment(ifindex)[0]
    if not seen or seen[-1] != pid:
        seen.append(pid)
    time.sleep(0.002)
print(" ".join(map(str, seen)))
"""


def test_keep_restart_keeps_the_program_attached_and_the_download_intact(lab, tmp_path,
                                                                         run_dir):
    be = Backends(lab, tmp_path)
    config = write_config(tmp_path / "lb.toml", lab, ["h2", "h3"], FAST_HTTP_CHECK)
    stop = tmp_path / "stop-poll"
    with serving(lab, config, run_dir, "--keep") as first:
        poll = lab.popen("lb", [sys.executable, "-c", POLL_XDP, "veth6", str(stop)],
                         stdout=subprocess.PIPE, text=True)
        download = lab.popen("client", paced_download(),
                             stdout=subprocess.PIPE, text=True)
        assert download.stdout.readline().strip() == "HTTP/1.0 200 OK"
        time.sleep(1)
        assert first.signal(signal.SIGTERM) == 0
        assert any("event=kept" in line for line in first.lines), first.lines
    assert xdp_attached(lab, "lb", "veth6")
    with serving(lab, config, run_dir) as second:
        line = second.wait_log("event=took_over")
        assert "flows" in line and "backends" in line, line
        assert any("2 of 2 backends kept their ids" in ln for ln in second.lines), second.lines
        assert download.poll() is None, "the download spans the restart"
        assert set(curls(lab, 10)) == {"h2", "h3"}
        size, digest = download.communicate(timeout=30)[0].split()
        assert (int(size), digest) == (BIG, hashlib.sha256(be.big).hexdigest())
        stop.touch()
        ids = [int(x) for x in poll.communicate(timeout=10)[0].split()]
        assert second.signal(signal.SIGINT) == 0
    # attached before the poller started, never detached, replaced exactly once
    assert len(ids) == 2 and 0 not in ids, ids
    assert not xdp_attached(lab, "lb", "veth6")


def test_stop_detaches_a_kept_instance_and_a_running_one(lab, tmp_path, run_dir):
    config = write_config(tmp_path / "lb.toml", lab, ["h2", "h3"])
    with serving(lab, config, run_dir, "--keep") as lb:
        assert lb.signal(signal.SIGTERM) == 0
    assert xdp_attached(lab, "lb", "veth6")
    r = lab.run("lb", [*cli_argv(), "stop", "-c", str(config), "--run-dir", str(run_dir)],
                timeout=30)
    assert r.returncode == 0, r.stderr
    assert "detached program id" in r.stdout
    assert not xdp_attached(lab, "lb", "veth6")

    with serving(lab, config, run_dir, "--keep") as lb:
        r = lb.ctl("stop")  # a running daemon: asked to exit and detach, even with --keep
        assert "stopped xdplb serve" in r.stdout
        assert lb.proc.wait(10) == 0
    assert not xdp_attached(lab, "lb", "veth6")


def test_a_takeover_refuses_a_flow_table_of_another_format(lab, tmp_path, run_dir):
    """A kept instance whose flow table means something else (another FLOW_FORMAT: flow
    hash or layout) is not taken over: one line, exit 1, the old program stays."""
    bpf = Path(__file__).resolve().parents[2] / "bpf"
    other = tmp_path / "xdplb-format99.bpf.o"
    cc = shutil.which("clang-19") or shutil.which("clang")
    arch = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True,
                          check=True).stdout.strip()
    subprocess.run([cc, "-O2", "-g", "--target=bpf", "-DFLOW_FORMAT=99",
                    f"-I/usr/include/{arch}", f"-I{bpf}", "-c", str(bpf / "xdplb.bpf.c"),
                    "-o", str(other)], check=True)
    config = write_config(tmp_path / "lb.toml", lab, ["h2", "h3"])
    with serving(lab, config, run_dir, "--keep") as lb:
        assert lb.signal(signal.SIGTERM) == 0
    before = xdp_attached(lab, "lb", "veth6")
    assert before
    r = lab.run("lb", [*cli_argv(), "serve", "-c", str(config), "--run-dir", str(run_dir),
                       "--object", str(other)], timeout=60)
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert f"flow table has format {abi.FLOW_FORMAT}, this xdplb uses 99" in lines[-1], lines
    assert xdp_attached(lab, "lb", "veth6") == before
    r = lab.run("lb", [*cli_argv(), "stop", "-c", str(config), "--run-dir", str(run_dir)],
                timeout=30)
    assert r.returncode == 0, r.stderr


KEEPALIVE_CLIENT = r"""
import socket, sys
s = socket.create_connection(("10.0.0.10", 8000), timeout=10)
f = s.makefile("rb")
def get():
    s.sendall(b"GET /whoami HTTP/1.1\r\nHost: vip\r\n\r\n")
    length = 0
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return f.read(length).decode()
print(get(), s.getsockname()[1], flush=True)
sys.stdin.readline()
print(get(), s.getsockname()[1], flush=True)
"""


def test_drain_keeps_an_established_keepalive_connection(lab, tmp_path, run_dir):
    Backends(lab, tmp_path, protocol="HTTP/1.1")
    config = write_config(tmp_path / "lb.toml", lab, ["h2", "h3"], FAST_HTTP_CHECK)
    with serving(lab, config, run_dir) as lb:
        conn = lab.popen("client", [sys.executable, "-c", KEEPALIVE_CLIENT],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        first, port = conn.stdout.readline().split()
        assert first in ("h2", "h3")
        addr = {"h2": "10.0.0.2", "h3": "10.0.0.3"}[first]
        other = {"h2": "h3", "h3": "h2"}[first]
        r = lb.ctl("backend", "drain", addr, "--vip", "web")
        assert r.stdout.strip() == f"web: backend {addr}:8000 weight 1 -> 0"
        assert backend_states(lb.status())[addr] == ("draining", 0)
        assert curls(lab, 20) == [other] * 20, "new connections avoid the drained backend"
        conn.stdin.write("\n")
        conn.stdin.flush()
        again, port2 = conn.stdout.readline().split()
        assert (again, port2) == (first, port), "same connection, same backend"
        assert conn.wait(10) == 0
        st = lb.status()
        assert st["overrides"] == [f"drain web {addr}:8000"]
        lb.ctl("backend", "undrain", addr)
        assert first in set(curls(lab, 20))



def test_runtime_overrides_survive_reload_and_restart_until_reset(lab, tmp_path, run_dir):
    """A drain is kept in the state file beside the control socket: a reload and a new
    serve apply it again (status lists it, traffic avoids the backend) until
    `backend reset-overrides`."""
    Backends(lab, tmp_path)
    config = write_config(tmp_path / "lb.toml", lab, ["h2", "h3"])
    with serving(lab, config, run_dir) as lb:
        lb.ctl("backend", "drain", "10.0.0.2")
        r = lb.ctl("reload")
        assert "kept 1 runtime override(s)" in r.stdout, r.stdout
        assert lb.status()["overrides"] == ["drain web 10.0.0.2:8000"]
        assert (run_dir / f"{lab.name}.overrides.json").exists()
    with serving(lab, config, run_dir) as lb:  # a new daemon: the file, then the overrides
        lb.wait_log("event=overrides_kept")
        st = lb.status()
        assert st["overrides"] == ["drain web 10.0.0.2:8000"]
        assert backend_states(st)["10.0.0.2"] == ("draining", 0)
        assert set(curls(lab, 10)) == {"h3"}
        r = lb.ctl("backend", "reset-overrides")
        assert "weight 0 -> 1" in r.stdout, r.stdout
        assert lb.status()["overrides"] == []
        assert not (run_dir / f"{lab.name}.overrides.json").exists()
        assert set(curls(lab, 20)) == {"h2", "h3"}


PINS_SCRIPT = r"""
set -e
serve() { $XDPLB serve -c "$CFG" --run-dir "$RUN" "$@" & }
ready() { until [ -S "$RUN/$NAME.sock" ]; do kill -0 $p; sleep 0.05; done; }
serve --keep 2>"$OUT/log1"; p=$!; ready
ls /sys/fs/bpf/xdplb/$NAME >"$OUT/pins1"
kill -TERM $p; wait $p
ls /sys/fs/bpf/xdplb/$NAME >"$OUT/pins2"
serve --keep 2>"$OUT/log2"; p=$!; ready
kill -TERM $p; wait $p
$XDPLB stop -c "$CFG" --run-dir "$RUN" >"$OUT/stop"
ls /sys/fs/bpf/xdplb >"$OUT/pins3"
"""


def test_pins_carry_the_state_within_one_mount_namespace(lab, tmp_path, run_dir):
    """`ip netns exec` gives every invocation its own bpffs, so the lab's other tests take
    over through the attached program; here both daemons share one (as on a host)."""
    config = write_config(tmp_path / "lb.toml", lab, ["h2", "h3"])
    env = {**os.environ, "CFG": str(config), "RUN": str(run_dir), "NAME": lab.name,
           "OUT": str(tmp_path), "XDPLB": " ".join(cli_argv())}
    r = lab.run("lb", ["sh", "-c", PINS_SCRIPT], env=env, timeout=30)
    assert r.returncode == 0, (r.stderr, *(p.read_text() for p in tmp_path.glob("log*")))
    pins = (tmp_path / "pins1").read_text().split()
    assert {"flows", "backends", "vips", "rings", "runtime", "prog"} <= set(pins)
    assert (tmp_path / "pins2").read_text().split() == pins, "--keep leaves the pins"
    assert "maps_from=pins" in (tmp_path / "log2").read_text()
    assert "removed /sys/fs/bpf/xdplb/" in (tmp_path / "stop").read_text()
    assert lab.name not in (tmp_path / "pins3").read_text().split()
    assert not xdp_attached(lab, "lb", "veth6")
