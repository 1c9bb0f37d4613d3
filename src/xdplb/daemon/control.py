"""The control socket's protocol, both sides: where an instance keeps its pid file and
socket, and one request (a JSON object per connection, one JSON reply)."""
from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

from ..errors import UsageError, XdplbError

DEFAULT_RUN_DIR = "/run/xdplb"
MAX_REQUEST = 1 << 20


def run_dir_default() -> str:
    return os.environ.get("XDPLB_RUN_DIR", DEFAULT_RUN_DIR)


class Paths:
    def __init__(self, run_dir: str, instance: str):
        self.run_dir = Path(run_dir)
        self.instance = instance
        self.sock = self.run_dir / f"{instance}.sock"
        self.pid = self.run_dir / f"{instance}.pid"
        # runtime overrides (drain, weight, ...): kept across reloads and restarts
        self.overrides = self.run_dir / f"{instance}.overrides.json"



def lock_holder(paths: Paths) -> int | None:
    """The pid of the daemon that holds the instance's lock (its pid file), or None: a
    pid file nobody holds is stale, and the pid it names may belong to anything now."""
    try:
        fd = os.open(paths.pid, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # held: a serve is running (maybe still starting)
            try:
                return int(os.read(fd, 64).decode().strip())
            except ValueError:
                return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def call(sock_path: str | os.PathLike, req: dict, timeout: float = 30) -> dict:
    """Send one request to a daemon's control socket; its reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock_path))
        s.sendall(json.dumps(req).encode() + b"\n")
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    data = b"".join(chunks)
    if not data:
        raise XdplbError(f"{sock_path}: the daemon closed the connection without a reply")
    return json.loads(data)



def request(paths: Paths, req: dict, timeout: float = 60) -> dict:
    """One request to the instance at `paths`; its reply, or the refusal as an error
    (UsageError when the daemon says the input was bad)."""
    try:
        reply = call(paths.sock, req, timeout)
    except (FileNotFoundError, ConnectionRefusedError):
        raise XdplbError(f"no xdplb serve is running for instance {paths.instance} "
                         f"(no answer on {paths.sock})") from None
    except TimeoutError:
        raise XdplbError(f"{paths.sock}: no reply within {timeout:g} s") from None
    if not reply.get("ok"):
        err = reply.get("error", "failed")
        if reply.get("code", 1) == 2:
            raise UsageError(err)
        raise XdplbError(err)
    return reply

