"""L2 announcement in the lab: with `[l2] announce = true` a VIP that is no address of any
host answers ARP and NDP on the LB's segment while serve runs and the VIP has a healthy
backend, with gratuitous ARP / unsolicited NA when it is taken; it stops answering on
`node drain`, when its last backend fails, when serve stops and when serve is killed.

ARP and NDP are asked through a packet socket in the client (lab/_neigh.py): the client's
neighbour cache is not involved, so "no answer" means nobody answered on the wire."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from xdplb.demo import xdplb_argv

pytestmark = pytest.mark.e2e

VIP4, VIP6 = "10.0.0.100", "fd00::64"
LB_MAC = "de:ad:be:ef:00:10"
#: fall 3: a loaded machine may miss one check, not three in a row
CHECK = ('[vip.health]\nkind = "tcp"\ninterval = 0.4\ntimeout = 0.35\nrise = 1\nfall = 3\n')


def write_config(path: Path, lab, l2: str = "announce = true\ngratuitous_interval = 0.2") -> Path:
    text = (f'[lb]\ninterface = "{lab.lb.ifname}"\nname = "{lab.name}"\n'
            "conntrack_size = 65536\nmax_vips = 16\nmax_backends = 64\n\n"
            f"[l2]\n{l2}\n")
    for name, vip, fam in (("web4", VIP4, "ipv4"), ("web6", VIP6, "ipv6")):
        text += f'\n[[vip]]\nname = "{name}"\naddress = "{vip}"\nport = 8000\n{CHECK}'
        for h in lab.backend_hosts:
            text += f'[[vip.backend]]\naddress = "{getattr(h, fam)}"\nmac = "{h.mac}"\n'
    path.write_text(text)
    return path


class Served:
    """`xdplb serve` in the LB's namespace, its log collected."""

    def __init__(self, lab, config: Path, run_dir: Path):
        self.lab, self.config, self.run_dir = lab, config, run_dir
        self.lines: list[str] = []
        self.proc = lab.popen("lb", [*xdplb_argv(), "serve", "-c", str(config), "--run-dir",
                                     str(run_dir)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_log("event=ready")

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_log(self, needle: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if needle in line:
                    return line
            if self.proc.poll() is not None:
                time.sleep(0.2)
                break
            time.sleep(0.02)
        raise AssertionError(f"no {needle!r} in the log:\n" + "\n".join(self.lines))

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return self.lab.run("lb", [*xdplb_argv(), *args, "-c", str(self.config), "--run-dir",
                                   str(self.run_dir)], timeout=30)

    def status(self) -> dict:
        r = self.ctl("status", "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def ask(lab, addr: str, timeout: float = 0.5) -> str | None:
    """The MAC that answers ARP/NDP for addr on the client's segment, or None."""
    r = lab.run("client", [sys.executable, "-m", "xdplb.lab._neigh", "ask", "veth0", addr,
                           str(timeout)], timeout=timeout + 10)
    return r.stdout.strip() or None


def wait_answer(lab, addr: str, want: str | None, timeout: float = 5.0) -> float:
    """Seconds until ARP/NDP for addr gets `want` (a MAC, or None: no answer)."""
    t0 = time.monotonic()
    got = ask(lab, addr, 0.3)
    while got != want:
        assert time.monotonic() - t0 < timeout, f"{addr}: {got} after {timeout} s, not {want}"
        got = ask(lab, addr, 0.3)
    return time.monotonic() - t0


def vip_addresses(lab) -> set[str]:
    out = json.loads(lab.run("lb", ["ip", "-j", "address", "show", "dev", "veth6"]).stdout)
    return {a["local"] for a in out[0]["addr_info"]} & {VIP4, VIP6}


def wait_addresses(lab, want: set[str], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while vip_addresses(lab) != want:
        assert time.monotonic() < deadline, f"{vip_addresses(lab)} on veth6, not {want}"
        time.sleep(0.02)


def http_servers(lab, www: Path, roles=("h2", "h3")) -> dict[str, subprocess.Popen]:
    (www / "whoami").write_text("ok")
    procs = lab.start_http_servers(www, hosts=list(roles))
    return dict(zip(roles, procs))


def curl(lab, url: str) -> str:
    return lab.run("client", ["curl", "-s", "-m", "3", url]).stdout


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    return d


def test_vip_answers_arp_and_ndp_while_it_should(lab, tmp_path, run_dir):
    servers = http_servers(lab, tmp_path)
    assert ask(lab, VIP4) is None and ask(lab, VIP6) is None  # nobody has the VIP yet
    watchers = {}
    for addr in (VIP4, VIP6):
        w = lab.popen("client", [sys.executable, "-m", "xdplb.lab._neigh", "watch", "veth0", addr,
                                 "30"], stdout=subprocess.PIPE, text=True)
        assert w.stdout.readline().strip() == "ready"
        watchers[addr] = w
    for addr in (VIP4, VIP6):  # a former owner's MAC, as the client's cache may hold it
        lab.run("client", ["ip", "neigh", "replace", addr, "lladdr", "02:00:00:00:00:99",
                           "dev", "veth0", "nud", "stale"], check=True)
    lb = Served(lab, write_config(tmp_path / "lb.toml", lab), run_dir)
    try:
        lb.wait_log(f"event=l2_answer address={VIP4}")
        lb.wait_log(f"event=l2_answer address={VIP6}")
        for addr in (VIP4, VIP6):  # the client's kernel took the announcement: no request
            deadline = time.monotonic() + 2
            while LB_MAC not in (n := lab.run("client", ["ip", "neigh", "show", addr]).stdout):
                assert time.monotonic() < deadline, n
                time.sleep(0.05)
        # no static neighbour entry anywhere: the client resolves the VIP and is served
        assert curl(lab, f"http://{VIP4}:8000/whoami") == "ok"
        assert curl(lab, f"http://[{VIP6}]:8000/whoami") == "ok"
        assert ask(lab, VIP4) == LB_MAC and ask(lab, VIP6) == LB_MAC
        # the VIP is the LB's address now: the kernel answers what no VIP balances (a port
        # nobody listens on is refused at once with a reset; ping is answered)
        r = lab.run("client", ["curl", "-s", "-m", "3", f"http://{VIP4}:9999/"])
        assert r.returncode == 7, r  # 7: connection refused (28 would be a timeout)
        assert lab.ping("client", VIP4).returncode == 0
        st = lb.status()["l2"]
        assert set(st["answering"]) == {VIP4, VIP6} and st["guard_running"]
        time.sleep(0.6)  # three announcements 0.2 s apart
        for addr, kind, to in ((VIP4, "arp-request", "ff:ff:ff:ff:ff:ff"),
                               (VIP6, "na", "33:33:00:00:00:01")):
            w = watchers[addr]
            w.send_signal(signal.SIGINT)
            seen = [json.loads(x) for x in w.communicate(timeout=10)[0].splitlines()
                    if x.startswith("{")]
            unsolicited = [s for s in seen if s["kind"] == kind and s["to"] == to]
            assert len(unsolicited) >= 3 and all(s["mac"] == LB_MAC for s in unsolicited), seen
        assert "L2: veth6: answering ARP/NDP for" in lb.ctl("status").stdout

        # node drain: nothing answers (the data plane stays attached); resume: answers again
        r = lb.ctl("node", "drain")
        assert r.returncode == 0 and f"withdraw {VIP4}" in r.stdout, r.stdout + r.stderr
        assert ask(lab, VIP4) is None and ask(lab, VIP6) is None
        r = lb.ctl("node", "check")
        assert r.returncode == 1 and "drained" in r.stderr, r.stdout + r.stderr
        assert lb.ctl("node", "resume").returncode == 0
        assert ask(lab, VIP4) == LB_MAC and ask(lab, VIP6) == LB_MAC
        assert lb.ctl("node", "check").returncode == 0

        # the last backend fails its check: withdrawn; one comes back: answered again
        for p in servers.values():
            p.terminate()
            p.wait(5)
        wait_answer(lab, VIP4, None)
        wait_answer(lab, VIP6, None)
        r = lb.ctl("node", "check")
        assert r.returncode == 1 and "web4 has 0 of 1 backends up" in r.stderr, r.stderr
        http_servers(lab, tmp_path, ("h2",))
        wait_answer(lab, VIP4, LB_MAC)
        wait_answer(lab, VIP6, LB_MAC)

        # a clean stop withdraws before it detaches
        lb.proc.send_signal(signal.SIGTERM)
        assert lb.proc.wait(15) == 0
        assert vip_addresses(lab) == set()
        assert ask(lab, VIP4) is None
    finally:
        lb.close()


def test_a_killed_serve_leaves_no_vip_answering(lab, tmp_path, run_dir):
    http_servers(lab, tmp_path)
    config = write_config(tmp_path / "lb.toml", lab)
    lb = Served(lab, config, run_dir)
    try:
        lb.wait_log(f"event=l2_answer address={VIP6}")
        wait_addresses(lab, {VIP4, VIP6})
        # SIGKILL: no withdrawal by serve; its guard sees the pipe close and deletes them
        lb.proc.kill()
        lb.proc.wait(5)
        t0 = time.monotonic()
        while vip_addresses(lab):
            assert time.monotonic() - t0 < 1.0, vip_addresses(lab)
            time.sleep(0.01)
        assert ask(lab, VIP4) is None and ask(lab, VIP6) is None

        # serve and its guard both killed: the next serve removes the leftovers first
        lb = Served(lab, config, run_dir)
        lb.wait_log(f"event=l2_answer address={VIP6}")
        wait_addresses(lab, {VIP4, VIP6})
        guard = lb.status()["l2"]["guard_pid"]
        lab.run("lb", ["kill", "-KILL", str(guard), str(lb.proc.pid)])
        lb.proc.wait(5)
        assert vip_addresses(lab) == {VIP4, VIP6}
        lb = Served(lab, config, run_dir)
        lb.wait_log(f"event=l2_leftover_removed address={VIP4}")
        lb.wait_log(f"event=l2_answer address={VIP6}")
        assert ask(lab, VIP4) == LB_MAC
        lb.close()
        assert vip_addresses(lab) == set()
    finally:
        lb.close()
