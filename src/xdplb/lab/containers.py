"""The lab's hosts as containers of the xdplb image (``xdplb lab up --containers``,
``xdplb demo --containers``).

``ContainerLab`` builds exactly the namespaces of ``Lab`` (the switch stays a plain namespace
with the bridge and the XDP_PASS stub), then runs every host (client, LB, backends) as a
podman container that joins the namespace made for it with ``--network
ns:/run/netns/<lab>-<host>``. podman creates no network for such a container, so nothing
touches the machine's root namespace; podman's bridge networks would (a bridge, firewall
rules and IPv4 forwarding switched on in the root namespace) and are never used: the
containers.conf passed to every podman call makes "no network" the default.

Each host has one idle container named like its namespace (``xl123-lb``): ``run()`` and
``xdplb lab exec`` execute in it (``podman exec``).  A long-running process (``popen()``:
the LB, an HTTP server) gets a container of its own in the same namespace, whose ``podman
run`` proxies signals, so SIGINT/SIGTERM reach the process as they do under ``ip netns
exec``.  The LB's containers get what XDP and BPF need, as in production (docs/operations.md):
CAP_NET_ADMIN and CAP_SYS_ADMIN, not --privileged.  ``down()`` removes every
container it started, then the namespaces, on success, failure and Ctrl-C.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from .. import __version__
from .plan import LB_ROLE, SWITCH_ROLE, LabError
from .topology import NETNS_DIR, Lab, _deferred_signals

#: the containers.conf every podman call of xdplb uses (runc, cgroupfs, ulimits, no network)
CONTAINERS_CONF = Path(__file__).with_name("containers.conf")
#: what the LB's container needs: XDP attach (NET_ADMIN); bpf() through podman's seccomp
#: profile, loading, and opening the program by id for `xdplb stats` (SYS_ADMIN, which also
#: passes the kernel's CAP_BPF and CAP_PERFMON checks). docs/operations.md shows each is needed.
LB_PRIVILEGES = ["--cap-add", "NET_ADMIN,SYS_ADMIN"]
#: podman messages and what to do about them (the first match is appended to the error)
_HINTS = (
    ("cgroups in hybrid mode", ("crun cannot run here: install runc, which xdplb's "
                               "containers.conf selects (scripts/install-deps.sh image)")),
    ("rlimit", f"the container's ulimits exceed this machine's limits ({CONTAINERS_CONF})"),
    ('"runc": executable file not found', "runc is missing (scripts/install-deps.sh image)"),
    ("permission denied", "run it as root (rootful podman)"),
)


class ContainerError(LabError):
    """podman is missing, refuses, or the image is not there; the message is one line."""


def default_image() -> str:
    """The image of this xdplb's version, as `make image` tags it."""
    return f"xdplb:{__version__}"


def _one_line(stderr: str, fallback: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    msg = lines[-1] if lines else fallback
    msg = msg.removeprefix("Error: ").removeprefix("error: ")
    hint = next((h for needle, h in _HINTS if needle in msg), None)
    return f"{msg} ({hint})" if hint else msg


class Podman:
    """podman as xdplb calls it: always with xdplb's containers.conf (runc, cgroupfs, explicit
    ulimits, no network by default)."""

    def __init__(self, exe: str = "podman", conf: Path = CONTAINERS_CONF) -> None:
        self.exe = exe
        self.conf = conf

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.conf)}

    def argv(self, *args: str) -> list[str]:
        return [self.exe, *args]

    def call(self, *args: str, what: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run ``podman ARGS``; a failure raises ContainerError("<what>: <podman's reason>")."""
        try:
            p = subprocess.run(self.argv(*args), capture_output=True, text=True, env=self.env,
                               timeout=timeout, check=False)
        except FileNotFoundError:
            raise ContainerError(self.missing()) from None
        except subprocess.TimeoutExpired:
            raise ContainerError(f"{what}: podman did not answer in {timeout:g} s") from None
        if p.returncode != 0:
            raise ContainerError(f"{what}: {_one_line(p.stderr, f'podman exit {p.returncode}')}")
        return p

    def missing(self) -> str:
        return (f"{self.exe} not found: the containerized lab needs podman and runc "
                "(scripts/install-deps.sh image, or apt-get install podman runc)")

    def check(self, image: str) -> None:
        """podman is there and has the image; else ContainerError with what to do."""
        if shutil.which(self.exe) is None:
            raise ContainerError(self.missing())
        p = subprocess.run(self.argv("image", "exists", image), capture_output=True, text=True,
                           env=self.env, check=False)
        if p.returncode == 1:
            raise ContainerError(f"image {image} not found: build it with `make image`")
        if p.returncode != 0:
            raise ContainerError(f"podman refused to look up image {image}: "
                                 f"{_one_line(p.stderr, f'exit {p.returncode}')}")

    def probe(self, image: str) -> None:
        """Start and remove one container (no network); ContainerError says why it cannot."""
        self.check(image)
        self.call("run", "--rm", "--network", "none", "--entrypoint", "true", image,
                  what="podman cannot run a container here")

    def remove(self, names: Sequence[str], timeout: int = 2) -> None:
        """Stop (SIGTERM, then SIGKILL after ``timeout`` s) and remove; absent ones are fine."""
        if names:
            subprocess.run(self.argv("rm", "--force", "--ignore", "--time", str(timeout),
                                     *names), capture_output=True, env=self.env, check=False)


class ContainerLab(Lab):
    """``Lab`` whose hosts are containers of the xdplb image (see the module's docstring)."""

    kind = "containers"

    def __init__(self, name: str | None = None, backends: int = 2, clients: int = 1,
                 offloads: str = "default", ipv6: bool = True, image: str | None = None,
                 podman: Podman | None = None) -> None:
        super().__init__(name, backends=backends, clients=clients, offloads=offloads,
                         ipv6=ipv6)
        self.image = image or default_image()
        self.podman = podman or Podman()
        #: every container this lab started (host containers and popen()'s), for down()
        self.containers: list[str] = []
        self._seq = 0

    # ------------------------------------------------------------------ naming
    def container(self, host: str) -> str:
        """The idle container of a host: named like its namespace."""
        return self.ns(host)

    def _run_flags(self, host: str, name: str) -> list[str]:
        flags = ["--name", name, "--network", f"ns:{NETNS_DIR / self.ns(host)}",
                 "--hostname", host, "--label", f"xdplb.lab={self.name}"]
        if host == LB_ROLE:
            flags += LB_PRIVILEGES
        return flags

    # ------------------------------------------------------------------ lifecycle
    def up(self) -> ContainerLab:
        if os.geteuid() != 0:
            raise LabError("the containerized lab needs root (network namespaces, rootful "
                           "podman); run with sudo")
        self.podman.check(self.image)  # before any namespace exists
        super().up()
        return self

    def _up(self) -> None:
        super()._up()
        for role in self.hosts:
            name = self.container(role)
            self.containers.append(name)  # registered first: down() removes it whatever happens
            self._save_if_auto()
            self.podman.call("run", "--detach", *self._run_flags(role, name),
                             "--entrypoint", "sleep", self.image, "infinity",
                             what=f"cannot start container {name}")

    def down(self) -> None:
        try:
            with _deferred_signals():
                self._stop_procs()
                self.podman.remove(self.containers)
                self.containers = [c for c in self.containers if self._exists(c)]
        finally:
            super().down()

    def _stop_procs(self, timeout: float = 3.0) -> None:
        """SIGINT first: podman run proxies it, and unlike SIGTERM it also ends a Python
        process that is its container's PID 1 (the kernel drops signals PID 1 has no handler
        for); xdplb detaches on either."""
        running = [p for p in self._procs if p.poll() is None]
        for p in running:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        for p in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.0, deadline - time.monotonic()))
        super()._stop_procs(timeout=1.0)

    def _exists(self, name: str) -> bool:
        p = subprocess.run(self.podman.argv("container", "exists", name), capture_output=True,
                           env=self.podman.env, check=False)
        return p.returncode == 0

    # ------------------------------------------------------------------ commands
    def _exec_argv(self, host: str, argv: Sequence[str]) -> list[str]:
        if isinstance(argv, (str, bytes)):
            raise TypeError("argv must be a sequence of arguments, not a string")
        if host in (SWITCH_ROLE, "switch"):  # the switch is a namespace, not a container
            return super()._exec_argv(host, argv)
        return self.podman.argv("exec", self.container(host), *map(str, argv))

    def interactive_argv(self, host: str, argv: Sequence[str]) -> list[str]:
        if host in (SWITCH_ROLE, "switch"):
            return super().interactive_argv(host, argv)
        tty = ["--interactive", "--tty"] if sys.stdin.isatty() else ["--interactive"]
        return self.podman.argv("exec", *tty, self.container(host), *argv)

    def run(self, host: str, argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
        kw.setdefault("env", self.podman.env)
        return super().run(host, argv, **kw)

    def popen(self, host: str, argv: Sequence[str], **kw) -> subprocess.Popen:
        """``argv`` as the process of a new container in the host's namespace.  ``cwd`` is
        mounted read-only at the same path and is the working directory there."""
        if host in (SWITCH_ROLE, "switch"):
            return super().popen(host, argv, **kw)
        argv = [str(a) for a in argv]
        self._seq += 1
        name = f"{self.container(host)}.{self._seq}"
        flags = self._run_flags(host, name)
        cwd = kw.pop("cwd", None)
        if cwd is not None:
            flags += ["--volume", f"{cwd}:{cwd}:ro", "--workdir", str(cwd)]
        self.containers.append(name)
        self._save_if_auto()
        kw.setdefault("env", self.podman.env)
        p = subprocess.Popen(self.podman.argv("run", "--rm", *flags, "--entrypoint", argv[0],
                                              self.image, *argv[1:]), **kw)
        self._procs.append(p)
        return p

    def host_pid(self, host: str) -> int:
        """pid (in our pid namespace) of the host's idle container: its /proc/PID/net is the
        host's network namespace."""
        p = self.podman.call("inspect", "--format", "{{.State.Pid}}", self.container(host),
                             what=f"cannot inspect container {self.container(host)}")
        return int(p.stdout.strip())

    def start_http_servers(self, directory: str | os.PathLike, port: int = 8000,
                           bind: str | None = None, timeout: float = 10.0,
                           hosts: Sequence[str] | None = None) -> list[subprocess.Popen]:
        """``python3 -m http.server PORT`` of the image, one container per backend serving
        ``directory`` (read-only), returned once each listens."""
        from .topology import _listening

        if bind is None:
            bind = "::" if self.ipv6 else "0.0.0.0"
        roles = list(hosts) if hosts is not None else [h.role for h in self.backend_hosts]
        procs = []
        for role in roles:
            log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by _stop_procs()
            p = self.popen(role, ["python3", "-m", "http.server", str(port), "--bind", bind],
                           cwd=str(directory), stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=log)
            p.xdplb_log = log  # type: ignore[attr-defined]
            procs.append((role, p, self.host_pid(role)))
        deadline = time.monotonic() + timeout
        for role, p, pid in procs:
            while not _listening(pid, port):
                if p.poll() is not None or time.monotonic() > deadline:
                    why = (f"exited with {p.returncode}" if p.poll() is not None
                           else f"not listening after {timeout:g}s")
                    p.xdplb_log.seek(0)  # type: ignore[attr-defined]
                    tail = (p.xdplb_log.read()  # type: ignore[attr-defined]
                            .decode(errors="replace").strip().splitlines()[-1:])
                    raise LabError(f"http.server container on {role} port {port} {why}"
                                   + (f": {tail[0]}" if tail else ""))
                time.sleep(0.05)
        return [p for _, p, _ in procs]

    # ------------------------------------------------------------------ state
    def to_dict(self) -> dict:
        d = super().to_dict()
        d["kind"] = self.kind
        d["containers"] = {"image": self.image, "names": list(self.containers)}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ContainerLab:
        lab = super().from_dict(d)
        assert isinstance(lab, ContainerLab)
        lab.image = d["containers"]["image"]
        lab.containers = list(d["containers"].get("names", []))
        return lab

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", image={self.image!r})"
