"""What an operator looks at: `xdplb flows` on a running download, a killed `xdplb trace`
leaving sampling off (the lease), `xdplb check -c` on good and bad files, status with
active flows and the version, `xdplb top` in a terminal (tmux) during traffic."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import time

import pytest
from clients import paced_download
from lbproc import running_lb
from test_serve import Backends, cli_argv, serving, write_config

from xdplb import __version__

pytestmark = pytest.mark.e2e


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    return d


def trace_rate(lab) -> int:
    r = lab.run("lb", [*cli_argv(), "stats", "veth6", "--json"], timeout=30)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["trace_rate"]


def test_flows_lists_a_running_download(lab, tmp_path):
    be = Backends(lab, tmp_path)
    with running_lb(lab):
        hold = tmp_path / "hold"
        hold.touch()  # the download stays open (and idle) while we look at it
        dl = lab.popen("client", paced_download(4 << 20, hold),
                       stdout=subprocess.PIPE, text=True)
        try:
            assert dl.stdout.readline().strip() == "HTTP/1.0 200 OK"
            r = lab.run("lb", [*cli_argv(), "flows", "veth6", "--json"], timeout=30)
            assert r.returncode == 0, r.stderr
            flows = [f for f in json.loads(r.stdout) if f["vip"] == "10.0.0.10:8000"]
            assert len(flows) == 1, flows
            f = flows[0]
            assert f["client"].startswith(f"{lab.client.ipv4}:") and f["proto"] == "tcp"
            assert f["backend"] in ("10.0.0.2:8000", "10.0.0.3:8000")
            assert 10000 <= f["nat_port"] <= 32767 and f["state"] == "established"
            assert f["age"] < 30
            text = lab.run("lb", [*cli_argv(), "flows", "veth6", "--backend",
                                  f["backend"].split(":")[0]], timeout=30).stdout
            assert f["client"] in text and "1 live flow(s)" in text
        finally:
            dl.kill()
            dl.wait()
    assert be.big  # (served)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGHUP])
def test_a_killed_trace_leaves_sampling_off(lab, how):
    with running_lb(lab):
        assert trace_rate(lab) == 0
        tr = lab.popen("lb", [*cli_argv(), "trace", "veth6"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 10
        while trace_rate(lab) != 1:
            assert time.monotonic() < deadline and tr.poll() is None, tr.stderr
            time.sleep(0.1)
        tr.send_signal(how)
        tr.wait(10)
        err = tr.stderr.read()
        assert "Traceback" not in err, err
        if how == signal.SIGHUP:  # a hangup ends the trace cleanly: off at once
            assert trace_rate(lab) == 0
            return
        t0 = time.monotonic()  # SIGKILL: the lease runs out, the LB's process ends it
        while trace_rate(lab) != 0:
            assert time.monotonic() - t0 < 10, "sampling still on"
            time.sleep(0.2)


def test_check_validates_and_diffs_against_the_running_instance(lab, tmp_path, run_dir):
    config = write_config(tmp_path / "lb.toml", lab, ["h2", "h3"])
    new = tmp_path / "new.toml"
    new.write_text(config.read_text() + '[[vip.backend]]\naddress = "10.0.0.9"\n'
                   .replace("[[vip.backend]]", "\n[[vip.backend]]"))
    bad = tmp_path / "bad.toml"
    bad.write_text(config.read_text().replace("port = 8000", 'port = "8000"'))

    def check(path) -> subprocess.CompletedProcess:
        return lab.run("lb", [*cli_argv(), "check", "-c", str(path), "--run-dir", str(run_dir)],
                       timeout=30)

    r = check(new)
    assert r.returncode == 0 and "not running: nothing to compare" in r.stdout, r
    with serving(lab, config, run_dir) as lb:
        r = check(new)
        assert r.returncode == 0, r.stderr
        assert "web: add backend 10.0.0.9:8000 weight 1" in r.stdout, r.stdout
        assert "no changes" in check(config).stdout
        r = check(bad)
        assert r.returncode == 2
        assert r.stderr.strip().splitlines() == [
            f"xdplb: {bad}: vip[0].port: expected an integer, got string '8000'"]
        st = lb.status()
        assert st["version"] == __version__
        assert len(st["vips"][0]["backends"]) == 2, "check applied nothing"
        r = lab.run("lb", [*cli_argv(), "reload", "-c", str(new), "--run-dir", str(run_dir)],
                    timeout=30)
        assert r.returncode == 2 and "a reload re-reads the file it serves" in r.stderr


def test_start_up_interrupted_at_several_points_leaves_nothing_attached(lab):
    """Issue 14, failure 4: a Ctrl-C that landed inside libbpf's print callback was
    swallowed and the LB attached anyway. Signals at increasing delays hit every step of
    the start (import, load and verify, fill, attach); each run must end with nothing
    attached and at most one line on stderr."""
    from lbproc import xdp_attached

    during_start = 0
    for i, delay in enumerate((0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.3, 1.7, 2.2)):
        sig = signal.SIGINT if i % 2 == 0 else signal.SIGTERM
        p = lab.popen("lb", [*cli_argv(), "run", *lab.run_argv()[2:]], stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        p.send_signal(sig)
        out, err = p.communicate(timeout=20)
        assert "Traceback" not in err and "Exception ignored" not in err, err
        started = "Press Ctrl+C" in out
        during_start += not started
        if not started:
            assert len(err.strip().splitlines()) <= 1, err
        assert p.returncode in (0, 1, 130, 143), (delay, p.returncode, err)
        assert not xdp_attached(lab, "lb", "veth6"), (delay, sig, out, err)
    assert during_start >= 3, "the signals should land during the start"


@pytest.mark.skipif(shutil.which("tmux") is None,
                    reason="tmux not installed (scripts/install-deps.sh installs it)")
def test_top_in_tmux_shows_moving_rates_during_traffic(lab, tmp_path, run_dir):
    """`xdplb top` in a real terminal (tmux): the web VIP's packets/s are non-zero and
    change while a bounded curl loop runs; q quits."""
    Backends(lab, tmp_path)
    config = write_config(tmp_path / "lb.toml", lab, ["h2", "h3"])
    session = f"xdplbtop{os.getpid()}"
    with serving(lab, config, run_dir):
        cmd = shlex.join([*cli_argv(), "top", "-c", str(config), "--run-dir", str(run_dir),
                          "--interval", "0.5"])
        subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "150", "-y", "30",
                        cmd], check=True, timeout=10)
        loop = "for i in $(seq 600); do curl -s -m 2 -o /dev/null 10.0.0.10:8000/whoami; done"
        traffic = lab.popen("client", ["sh", "-c", loop])  # bounded: 600 requests
        try:
            rates: list[str] = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and len({r for r in rates if r != "0"}) < 3:
                time.sleep(0.7)
                pane = subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                                      check=True, capture_output=True, text=True,
                                      timeout=10).stdout
                row = next((ln.split() for ln in pane.splitlines()
                            if ln.strip().startswith("web ")), None)
                if row:
                    rates.append(row[3])  # web 10.0.0.10:8000/tcp nat PKTS/S ...
            moving = {r for r in rates if r != "0"}
            assert len(moving) >= 3, f"packets/s seen: {rates}\n{pane}"
            assert "10.0.0.2:8000" in pane and "10.0.0.3:8000" in pane, pane
            subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True, timeout=10)
            for _ in range(50):
                if subprocess.run(["tmux", "has-session", "-t", session], check=False,
                                  capture_output=True).returncode:
                    break
                time.sleep(0.1)
            else:
                raise AssertionError("q did not quit top")
        finally:
            traffic.kill()
            traffic.wait()
            subprocess.run(["tmux", "kill-session", "-t", session], check=False,
                           capture_output=True)
