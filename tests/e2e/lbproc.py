"""Start `xdplb run` inside a lab's LB namespace, the way the tutorial does."""
from __future__ import annotations

import contextlib
import signal
import subprocess
import time

from xdplb.demo import xdplb_argv


@contextlib.contextmanager
def running_lb(lab, *extra: str, argv: list[str] | None = None, timeout: float = 30):
    """`ip netns exec <lab>-lb xdplb run veth6 <backends...> *extra`; yields the Popen.
    On exit: SIGINT and wait (the test may have stopped it already)."""
    cmd = xdplb_argv() + (argv if argv is not None else lab.run_argv()[1:]) + list(extra)
    p = lab.popen("lb", cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line and p.poll() is not None:
            raise AssertionError(f"xdplb run exited {p.returncode}: {p.stderr.read().strip()}")
        p.lines.append(line.rstrip("\n"))
        if "Press Ctrl+C" in line:
            break
    else:
        p.kill()
        raise AssertionError(f"xdplb run did not start: {p.lines}")
    try:
        yield p
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def xdp_attached(lab, host: str, ifname: str) -> bool:
    out = lab.run(host, ["ip", "-d", "link", "show", "dev", ifname]).stdout
    return "prog/xdp" in out or " xdp" in out.split("\n")[0]
