"""Health checks as operators know them, with real traffic in the lab: a backend failing
its check drains (a running download survives) or resets (on_down = "reset"); a new
backend takes no traffic before `rise` checks pass; removing the check on reload brings
pulled backends back at once; UDP and DNS checks against real servers (dnsmasq)."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time

import pytest
from clients import paced_download
from test_serve import KEEPALIVE_CLIENT, Backends, curls, serving, write_config

pytestmark = pytest.mark.e2e

CHECK = ('kind = "http"\npath = "/healthy"\ninterval = 0.2\ntimeout = 0.15\nrise = 2\n'
         "fall = 2\n")

@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    return d


def healthy(tmp_path, role: str, on: bool = True) -> None:
    f = tmp_path / role / "healthy"
    if on:
        f.write_text("ok")
    else:
        f.unlink(missing_ok=True)


def states(lb) -> dict[str, tuple[str, str]]:
    return {b["address"]: (b["state"], b["traffic"]) for b in lb.status()["vips"][0]["backends"]}


def wait_states(lb, want: dict, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (got := states(lb)) != want:
        if time.monotonic() > deadline:
            raise AssertionError(f"states {got}, wanted {want}")
        time.sleep(0.05)


def serving_backend(lb, before: dict[str, int]) -> str:
    """The backend whose new_flows grew since `before` (address -> new_flows)."""
    now = {b["address"]: b["new_flows"] for b in lb.status()["vips"][0]["backends"]}
    grown = [a for a in now if now[a] > before.get(a, 0)]
    assert len(grown) == 1, (before, now)
    return grown[0]


def flows_of(lb) -> dict[str, int]:
    return {b["address"]: b["new_flows"] for b in lb.status()["vips"][0]["backends"]}


ROLE = {"10.0.0.2": "h2", "10.0.0.3": "h3"}


def test_a_download_survives_its_backend_failing_its_check_under_drain(lab, tmp_path,
                                                                       run_dir):
    be = Backends(lab, tmp_path)
    for r in ("h2", "h3"):
        healthy(tmp_path, r)
    config = write_config(tmp_path / "lb.toml", lab, ["h2", "h3"], CHECK)
    with serving(lab, config, run_dir) as lb:
        wait_states(lb, {"10.0.0.2": ("up", "new"), "10.0.0.3": ("up", "new")})
        before = flows_of(lb)
        hold = tmp_path / "hold"
        hold.touch()  # the download stalls (open, idle) until the backend is down
        dl = lab.popen("client", paced_download(4 << 20, hold),
                       stdout=subprocess.PIPE, text=True)
        assert dl.stdout.readline().strip() == "HTTP/1.0 200 OK"
        addr = serving_backend(lb, before)
        other = next(a for a in ROLE if a != addr)
        n = len(lb.lines)
        healthy(tmp_path, ROLE[addr], False)  # its check now gets a 404
        line = lb.wait_log("event=backend_down", after=n, timeout=5)
        assert f"backend={addr}:8000" in line and "HTTP 404" in line and "drain" in line, line
        assert states(lb)[addr] == ("down", "established")
        assert dl.poll() is None, "the download is still running when its backend is down"
        assert curls(lab, 10) == [ROLE[other]] * 10, "new connections avoid it"
        hold.unlink()
        size, digest = dl.communicate(timeout=30)[0].split()
        assert dl.returncode == 0
        assert (int(size), digest) == (len(be.big), hashlib.sha256(be.big).hexdigest())


def test_on_down_reset_ends_the_established_connection(lab, tmp_path, run_dir):
    Backends(lab, tmp_path, protocol="HTTP/1.1")
    for r in ("h2", "h3"):
        healthy(tmp_path, r)
    config = write_config(tmp_path / "lb.toml", lab, ["h2", "h3"],
                          CHECK + 'on_down = "reset"\n')
    with serving(lab, config, run_dir) as lb:
        wait_states(lb, {"10.0.0.2": ("up", "new"), "10.0.0.3": ("up", "new")})
        conn = lab.popen("client", [sys.executable, "-c", KEEPALIVE_CLIENT],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
        first, _ = conn.stdout.readline().split()
        n = len(lb.lines)
        healthy(tmp_path, first, False)
        line = lb.wait_log("event=backend_down", after=n, timeout=5)
        assert "reset" in line, line
        addr = {v: k for k, v in ROLE.items()}[first]
        assert states(lb)[addr] == ("down", "none")
        conn.stdin.write("\n")
        conn.stdin.flush()
        out, err = conn.communicate(timeout=15)
        # its flow was re-selected: a NAT flow whose new backend never saw its handshake
        # is a miss without SYN, which the data plane answers with an RST (bpf/guard.h)
        assert conn.returncode != 0 and "Connection reset" in err, (out, err)


def test_a_new_backend_takes_no_traffic_before_rise_checks_pass(lab, tmp_path, run_dir):
    Backends(lab, tmp_path)
    healthy(tmp_path, "h2")
    config = write_config(tmp_path / "lb.toml", lab, ["h2"], CHECK)
    with serving(lab, config, run_dir) as lb:
        wait_states(lb, {"10.0.0.2": ("up", "new")})
        write_config(config, lab, ["h2", "h3"], CHECK)
        assert "add" in lb.ctl("reload").stdout
        assert states(lb)["10.0.0.3"] == ("down", "established"), "starts down"
        assert curls(lab, 20) == ["h2"] * 20
        assert flows_of(lb)["10.0.0.3"] == 0
        n = len(lb.lines)
        healthy(tmp_path, "h3")
        lb.wait_log("event=backend_up", after=n, timeout=5)
        assert set(curls(lab, 20)) == {"h2", "h3"}


def test_removing_the_check_on_reload_brings_pulled_backends_back_at_once(lab, tmp_path,
                                                                         run_dir):
    """Issue 17, failure 2: the reload said "no changes", status said up, the data plane
    kept the backend pulled (and with one backend the VIP dropped everything)."""
    Backends(lab, tmp_path)
    healthy(tmp_path, "h2")
    for health in (None, 'kind = "none"\n'):
        config = write_config(tmp_path / "lb.toml", lab, ["h2", "h3"],
                              CHECK + 'on_down = "reset"\ninitial = "up"\n')
        with serving(lab, config, run_dir) as lb:
            wait_states(lb, {"10.0.0.2": ("up", "new"), "10.0.0.3": ("down", "none")})
            assert curls(lab, 10) == ["h2"] * 10
            write_config(config, lab, ["h2", "h3"], health)
            out = lb.ctl("reload").stdout
            assert out.strip() != "no changes", out
            assert states(lb) == {"10.0.0.2": ("up", "new"), "10.0.0.3": ("up", "new")}
            assert set(curls(lab, 20)) == {"h2", "h3"}, "in the data plane too"


# --- UDP and DNS checks against real servers --------------------------------------------

ECHO = r"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7007))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(b"echo:" + data, peer)
"""

ASK = r"""
import socket, struct, sys
from xdplb.health import dns_query
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(dns_query("health.lab", "A", 0x4242), ("10.0.0.10", 53))
d = s.recv(512)
print(struct.unpack("!H", d[6:8])[0], ".".join(map(str, d[-4:])))
"""


@pytest.mark.skipif(shutil.which("dnsmasq") is None, reason="dnsmasq not installed "
                    "(scripts/install-deps.sh installs dnsmasq-base)")
def test_udp_and_dns_checks_against_real_servers(lab, tmp_path, run_dir):
    procs: dict[str, list[subprocess.Popen]] = {}
    for h in lab.backend_hosts:
        procs[h.role] = [
            lab.popen(h.role, ["dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--no-hosts",
                               "--no-resolv", "--port=53", "--user=root", "--pid-file=",
                               f"--address=/health.lab/{h.ipv4}"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            lab.popen(h.role, [sys.executable, "-c", ECHO], stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)]
    hosts = {h.role: h for h in lab.backend_hosts}
    backends = "".join(f'[[vip.backend]]\naddress = "{hosts[r].ipv4}"\nmac = "{hosts[r].mac}"\n'
                       for r in ("h2", "h3"))
    text = (f'[lb]\ninterface = "{lab.lb.ifname}"\nname = "{lab.name}"\n'
            "conntrack_size = 65536\n"
            '[[vip]]\nname = "dns"\naddress = "10.0.0.10"\nport = 53\nprotocol = "udp"\n'
            + backends + '[vip.health]\nkind = "dns"\nquery = "health.lab"\ninterval = 0.2\n'
            "timeout = 0.15\nrise = 1\nfall = 2\n"
            '[[vip]]\nname = "echo"\naddress = "10.0.0.10"\nport = 7007\nprotocol = "udp"\n'
            + backends + '[vip.health]\nkind = "udp"\nsend = "ping"\nexpect = "echo:ping"\n'
            "interval = 0.2\ntimeout = 0.15\nrise = 1\nfall = 2\n")
    config = tmp_path / "lb.toml"
    config.write_text(text)
    try:
        with serving(lab, config, run_dir) as lb:
            def vip_states() -> dict[str, dict[str, str]]:
                return {v["name"]: {b["address"]: b["state"] for b in v["backends"]}
                        for v in lb.status()["vips"]}

            all_up = {"10.0.0.2": "up", "10.0.0.3": "up"}
            deadline = time.monotonic() + 10
            while vip_states() != {"dns": all_up, "echo": all_up}:
                assert time.monotonic() < deadline, vip_states()
                time.sleep(0.05)
            answers = {lab.run("client", [sys.executable, "-c", ASK]).stdout.split()[1]
                       for _ in range(12)}
            assert answers == {"10.0.0.2", "10.0.0.3"}, "real DNS through the UDP VIP"
            for p in procs["h3"]:
                p.terminate()
                p.wait(5)
            deadline = time.monotonic() + 10
            h3_down = {"10.0.0.2": "up", "10.0.0.3": "down"}
            while vip_states() != {"dns": h3_down, "echo": h3_down}:
                assert time.monotonic() < deadline, vip_states()
                time.sleep(0.05)
            errors = {v["backends"][1]["health"]["last_error"] for v in lb.status()["vips"]}
            # the ICMP port unreachable when it gets through (the kernel rate-limits them)
            assert errors <= {"connection refused", "no reply"}, errors
    finally:
        for ps in procs.values():
            for p in ps:
                if p.poll() is None:
                    p.kill()
                    p.wait()
