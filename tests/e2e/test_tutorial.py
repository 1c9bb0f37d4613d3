"""The tutorial's topology and command line, with real traffic (issue: the tutorial done right).

Each test builds the lab (client, lb, h2, h3 on br0, kernel-default offloads), serves files
with python's http.server on the backends and starts the LB as the tutorial does:
`ip netns exec lb xdplb run veth6 10.0.0.2 de:ad:be:ef:00:02 10.0.0.3 de:ad:be:ef:00:03`.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lbproc import running_lb, xdp_attached

pytestmark = pytest.mark.e2e

FILES = {"odd.bin": 155, "odd2.bin": 100_001, "even.bin": 4096, "big.bin": 4 * 1024 * 1024}


@pytest.fixture
def webroot(tmp_path):
    for name, size in FILES.items():
        (tmp_path / name).write_bytes(os.urandom(size))
    return tmp_path


def serve(lab, webroot: Path, protocol: str = "HTTP/1.0"):
    """http.server on every backend; each serves `whoami` naming itself."""
    for h in lab.backend_hosts:
        d = webroot / h.role
        d.mkdir(exist_ok=True)
        for name in FILES:
            link = d / name
            if not link.exists():
                link.symlink_to(webroot / name)
        (d / "whoami").write_text(h.role)
        lab.popen(h.role, [sys.executable, "-m", "http.server", "8000", "--bind", "0.0.0.0",
                           "--protocol", protocol], cwd=str(d), stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL)
    for h in lab.backend_hosts:
        for _ in range(100):
            r = lab.run(h.role, ["curl", "-s", "-m", "1", "http://127.0.0.1:8000/whoami"])
            if r.returncode == 0:
                break
        else:
            raise AssertionError(f"http.server on {h.role} did not start")


def curl(lab, host: str, *urls: str, extra=()) -> subprocess.CompletedProcess:
    return lab.run(host, ["curl", "-s", "-m", "10", *extra, *urls], timeout=60)


def no_csum_errors(lab) -> dict:
    return {role: lab.tcp_csum_errors(role) for role in lab.hosts}


def test_twenty_curls_are_all_answered_by_both_backends(lab, webroot):
    serve(lab, webroot)
    with running_lb(lab) as lb:
        assert lb.lines == ["XDP load balancer configured with backends:",
                            "Backend 1 - IP: 10.0.0.2, MAC: de:ad:be:ef:00:02",
                            "Backend 2 - IP: 10.0.0.3, MAC: de:ad:be:ef:00:03",
                            "Press Ctrl+C to exit..."]  # the tutorial's stdout, exactly
        served = [curl(lab, "client", "http://10.0.0.10:8000/whoami").stdout for _ in range(20)]
    assert served.count("h2") + served.count("h3") == 20, served
    assert {"h2", "h3"} <= set(served)
    assert not any(no_csum_errors(lab).values()), no_csum_errors(lab)


def test_odd_even_and_multi_megabyte_files_arrive_byte_identical(lab, webroot):
    serve(lab, webroot)
    with running_lb(lab):
        for name in FILES:
            cmd = f"curl -s -m 30 http://10.0.0.10:8000/{name} | sha256sum"
            r = lab.run("client", ["sh", "-c", cmd], timeout=60)
            want = hashlib.sha256((webroot / name).read_bytes()).hexdigest()
            assert r.stdout.split()[0] == want, f"{name} differs"
    assert not any(no_csum_errors(lab).values()), no_csum_errors(lab)


def test_requests_on_one_keepalive_connection_stay_on_one_backend(lab, webroot):
    serve(lab, webroot, protocol="HTTP/1.1")
    with running_lb(lab):
        for _ in range(4):
            r = curl(lab, "client", *["http://10.0.0.10:8000/whoami"] * 5,
                     extra=("-w", "|%{num_connects}\n"))
            answers = [seg.split("|")[0] for seg in r.stdout.strip().splitlines()]
            connects = sum(int(seg.split("|")[1]) for seg in r.stdout.strip().splitlines())
            assert connects == 1, r.stdout
            assert len(set(answers)) == 1 and answers[0] in ("h2", "h3"), answers


@pytest.mark.lab(clients=2)
def test_two_clients_concurrently_are_all_answered(lab, webroot):
    serve(lab, webroot)
    clients = [h.role for h in lab.client_hosts]
    assert len(clients) == 2
    want = hashlib.sha256((webroot / "odd2.bin").read_bytes()).hexdigest()

    def fetch(host):
        cmd = "curl -s -m 20 http://10.0.0.10:8000/odd2.bin | sha256sum"
        return lab.run(host, ["sh", "-c", cmd], timeout=60).stdout.split()[0]

    with running_lb(lab), concurrent.futures.ThreadPoolExecutor(4) as pool:
        digests = list(pool.map(fetch, [c for c in clients for _ in range(10)]))
    assert digests == [want] * 20
    assert not any(no_csum_errors(lab).values()), no_csum_errors(lab)


@pytest.mark.lab(clients=2)
def test_two_clients_with_the_same_source_port_both_get_answers(lab, webroot):
    serve(lab, webroot, protocol="HTTP/1.1")
    with running_lb(lab), concurrent.futures.ThreadPoolExecutor(2) as pool:
        jobs = [pool.submit(curl, lab, c.role, "http://10.0.0.10:8000/big.bin",
                            extra=("--local-port", "40000", "-o", "/dev/null", "-w",
                                   "%{size_download}"))
                for c in lab.client_hosts]
        sizes = [int(j.result().stdout or 0) for j in jobs]
    assert sizes == [FILES["big.bin"]] * 2


def test_the_lb_host_itself_stays_reachable_on_other_ports(lab, webroot):
    serve(lab, webroot)
    lab.popen("lb", [sys.executable, "-m", "http.server", "2222", "--bind", "0.0.0.0"],
              cwd=str(webroot), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with running_lb(lab):
        for _ in range(50):
            if curl(lab, "lb", "http://127.0.0.1:2222/even.bin", extra=("-o", "/dev/null")
                    ).returncode == 0:
                break
        r = curl(lab, "client", "http://10.0.0.10:2222/even.bin", extra=("-o", "/dev/null",
                                                                        "-w", "%{http_code}"))
        assert r.stdout == "200"
        # the LB host's own connection to a backend is not hijacked
        assert curl(lab, "lb", "http://10.0.0.2:8000/whoami").stdout == "h2"
        assert lab.ping("client", "10.0.0.10").returncode == 0


def test_sigint_detaches_cleanly(lab, webroot):
    serve(lab, webroot)
    with running_lb(lab) as lb:
        assert xdp_attached(lab, "lb", "veth6")
        lb.send_signal(signal.SIGINT)
        out, err = lb.communicate(timeout=10)
        assert lb.returncode == 0, err
        assert not out.strip(), out  # stdout stays the tutorial's
        assert "xdplb: detached from veth6" in err and "Traceback" not in err, err
    assert not xdp_attached(lab, "lb", "veth6")
    # the host still answers on the VIP address without the LB
    assert lab.ping("client", "10.0.0.10").returncode == 0


def test_stats_interval_counts_on_stderr_and_leaves_stdout_the_tutorials(lab, webroot):
    serve(lab, webroot)
    with running_lb(lab, "--stats-interval", "0.2") as lb:
        for _ in range(3):
            assert curl(lab, "client", "http://10.0.0.10:8000/whoami").stdout in {"h2", "h3"}
        time.sleep(0.6)  # at least two ticks after the traffic
        lb.send_signal(signal.SIGINT)
        out, err = lb.communicate(timeout=10)
    assert lb.returncode == 0, err
    assert not out.strip(), out  # nothing after "Press Ctrl+C to exit..."
    ticks = re.findall(r"^xdplb: flows (\d+), to backends (\d+) pkts", err, re.MULTILINE)
    assert len(ticks) >= 2, err
    assert int(ticks[-1][0]) >= 3, err  # the three connections were counted


def test_sigterm_detaches_cleanly(lab, webroot):
    with running_lb(lab) as lb:
        lb.send_signal(signal.SIGTERM)
        lb.communicate(timeout=10)
        assert lb.returncode == 0
    assert not xdp_attached(lab, "lb", "veth6")


@pytest.mark.parametrize("argv, code, needle", [
    (["run", "nosuchif0", "10.0.0.2", "de:ad:be:ef:00:02"], 1, "unknown interface"),
    (["run", "veth6", "10.0.0.2", "de:ad:be:ef:00"], 2, "MAC"),
    (["run", "veth6", "10.0.0.300", "de:ad:be:ef:00:02"], 2, "10.0.0.300"),
    (["run", "veth6", "10.0.0.2", "de:ad:be:ef:00:02", "10.0.0.3"], 2, "pairs"),
    (["run", "veth6"], 2, "BACKEND_IP"),
])
def test_bad_input_gives_one_line_and_leaves_nothing_attached(lab, argv, code, needle):
    from xdplb.demo import xdplb_argv

    r = lab.run("lb", xdplb_argv() + argv, timeout=30)
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xdplb: ") and needle in lines[0], lines
    assert not xdp_attached(lab, "lb", "veth6")


def test_attach_refused_reports_the_kernel_and_leaves_the_other_program(lab):
    """A second LB on the same interface is refused (the first stays attached)."""
    from xdplb.demo import xdplb_argv

    with running_lb(lab):
        r = lab.run("lb", xdplb_argv() + lab.run_argv()[1:], timeout=30)
        assert r.returncode == 1
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot attach XDP to veth6" in lines[0], lines
        assert xdp_attached(lab, "lb", "veth6")


def test_trace_shows_client_vip_backend_and_verdict(lab, webroot):
    from xdplb.demo import xdplb_argv

    serve(lab, webroot)
    with running_lb(lab):
        tracer = lab.popen("lb", xdplb_argv() + ["trace", "veth6", "--count", "4",
                                                 "--duration", "20"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        import time

        time.sleep(1.0)  # tracer attaches to the ring and switches sampling on
        for _ in range(3):
            curl(lab, "client", "http://10.0.0.10:8000/whoami")
        out, err = tracer.communicate(timeout=30)
        lines = out.strip().splitlines()
        assert len(lines) == 4, (out, err)
        assert any("client 10.0.0.1:" in ln and "-> 10.0.0.10:8000" in ln and " TX " in ln
                   and "fwd_new" in ln for ln in lines), lines
        # tracing is switched off again when the tracer exits
        stats = lab.run("lb", xdplb_argv() + ["stats", "veth6", "--json"]).stdout
    import json

    report = json.loads(stats)
    assert report["trace_rate"] == 0
    assert report["stats"]["fwd_new"][0] >= 3
    assert sum(b["new_flows"] for b in report["backends"]) >= 3


def test_after_a_kill_9_the_program_stays_and_stop_detaches_it(lab, webroot):
    """SIGKILL cannot be caught: XDP stays attached (traffic keeps flowing); a new run is
    refused with the way out, and `xdplb stop --iface` detaches it."""
    from xdplb.demo import xdplb_argv

    serve(lab, webroot)
    with running_lb(lab) as lb:
        lb.kill()
        lb.wait(10)
    assert xdp_attached(lab, "lb", "veth6")
    assert curl(lab, "client", "http://10.0.0.10:8000/whoami").stdout in ("h2", "h3")
    r = lab.run("lb", xdplb_argv() + lab.run_argv()[1:], timeout=30)
    assert r.returncode == 1 and "xdplb stop --iface veth6" in r.stderr, r.stderr
    r = lab.run("lb", xdplb_argv() + ["stop", "--iface", "veth6"], timeout=30)
    assert r.returncode == 0, r.stderr
    assert not xdp_attached(lab, "lb", "veth6")
