"""The tutorial's topology as self-cleaning network namespaces.

Nothing here touches the root network namespace: every namespace is created by us, every veth
pair is created inside the switch namespace with its other end moved straight into the host's
namespace (``ip -n SW link add vethX type veth peer name vethY netns HOST``), and ``down()``
removes exactly the namespaces this lab registered as created, newest first.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Self

from .._proc import alive as _alive
from .plan import (
    BACKEND_BRIDGE,
    BACKEND_SUBNET4,
    BACKEND_SUBNET6,
    BRIDGE,
    CLIENT_ROLE,
    LB_ROLE,
    ROUTED_VIP,
    ROUTED_VIP6,
    ROUTER,
    ROUTER_ROLE,
    SWITCH_ROLE,
    TOPOLOGIES,
    Host,
    LabError,
    check_name,
    default_name,
    ns_name,
    plan_hosts,
)

STATE_VERSION = 1
NETNS_DIR = Path("/run/netns")
OFFLOAD_MODES = ("default", "off")
_XDP_MODES = {1: "driver", 2: "generic", 3: "offload", 4: "multi"}


def state_dir() -> Path:
    """Where saved labs live: /run/xdplb/lab, or $XDPLB_LAB_DIR (tests)."""
    return Path(os.environ.get("XDPLB_LAB_DIR", "/run/xdplb/lab"))


def netns_exists(ns: str) -> bool:
    return (NETNS_DIR / ns).exists()


class LabNotFound(LabError):
    pass


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while the block runs (main thread only).

    For callers that create a lab and want ``kill PID`` to clean up like Ctrl-C does (the CLI's
    ``lab up``, the e2e fixtures).  Elsewhere a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def _deferred_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while cleaning up; deliver them afterwards (main thread only).

    A second Ctrl-C must not leave half the namespaces behind.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    sigs: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for s in dict.fromkeys(pending):
            h = old[s]
            if callable(h):
                h(s, None)
            elif h == signal.SIG_DFL:
                signal.raise_signal(s)


class Lab:
    """The tutorial's topology in namespaces ``<name>-sw``, ``<name>-client``, ``<name>-lb``,
    ``<name>-h2``, ``<name>-h3`` (and ``<name>-hN``, ``<name>-cK``).

    >>> with Lab() as lab:                                   # doctest: +SKIP
    ...     lab.run("client", ["ping", "-c1", "10.0.0.2"], check=True)
    """

    #: what ``load()`` rebuilds from a saved state's "kind" (subclasses register themselves)
    kind = "namespaces"

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        _KINDS[cls.kind] = cls

    def __init__(self, name: str | None = None, backends: int = 2, clients: int = 1,
                 offloads: str = "default", ipv6: bool = True, topology: str = "tutorial") -> None:
        self.name = check_name(default_name() if name is None else name)
        if offloads not in OFFLOAD_MODES:
            raise LabError(f"offloads must be one of {', '.join(OFFLOAD_MODES)}, not {offloads!r}")
        if topology not in TOPOLOGIES:
            raise LabError(f"topology must be one of {', '.join(TOPOLOGIES)}, not {topology!r}")
        self.n_backends = backends
        self.n_clients = clients
        self.offloads = offloads
        self.ipv6 = bool(ipv6)
        self.topology = topology
        self.hosts: dict[str, Host] = plan_hosts(self.name, backends, clients, self.ipv6,
                                                 topology)
        self.switch_ns = ns_name(self.name, SWITCH_ROLE)
        #: namespaces this object created, in creation order (down() deletes them reversed)
        self.created: list[str] = []
        #: how the LB's peer (veth7) is made to accept XDP_TX frames: "xdp" | "gro" | None
        self.lb_peer_mode: str | None = None
        self.lb_peer_prog: str | None = None
        #: save state after every step (set by the CLI so another process can clean up)
        self.autosave = False
        self.created_by = os.getpid()
        self.created_at: float | None = None
        self._procs: list[subprocess.Popen] = []
        self._is_up = False

    # ------------------------------------------------------------------ naming
    def ns(self, host: str) -> str:
        """Namespace name of a host role ("client", "lb", "h2", ...) or "sw"."""
        if host in (SWITCH_ROLE, "switch"):
            return self.switch_ns
        try:
            return self.hosts[host].ns
        except KeyError:
            raise LabError(
                f"lab {self.name!r} has no host {host!r} (hosts: {', '.join(self.roles)})"
            ) from None

    @property
    def roles(self) -> list[str]:
        return [SWITCH_ROLE, *self.hosts]

    @property
    def namespaces(self) -> list[str]:
        """All namespaces of the plan, in creation order."""
        return [self.switch_ns, *(h.ns for h in self.hosts.values())]

    @property
    def lb(self) -> Host:
        return self.hosts[LB_ROLE]

    @property
    def client(self) -> Host:
        return self.hosts[CLIENT_ROLE]

    @property
    def vip(self) -> str:
        """The VIP clients use: the LB's address (tutorial), 10.0.0.100 (routed)."""
        return ROUTED_VIP if self.topology == "routed" else self.lb.ipv4

    @property
    def vip6(self) -> str | None:
        if not self.ipv6:
            return None
        return ROUTED_VIP6 if self.topology == "routed" else self.lb.ipv6

    @property
    def backend_hosts(self) -> list[Host]:
        return [h for h in self.hosts.values() if h.kind == "backend"]

    @property
    def client_hosts(self) -> list[Host]:
        return [h for h in self.hosts.values() if h.kind == "client"]

    def lb_peer_ifname(self) -> str:
        """The LB interface's peer in the switch namespace (veth7): where the stub sits."""
        return self.lb.peer_ifname

    def run_argv(self, prog: str = "xdplb") -> list[str]:
        """The tutorial's command line for this lab: ``xdplb run veth6 IP MAC IP MAC ...``."""
        argv = [prog, "run", self.lb.ifname]
        for h in self.backend_hosts:
            argv += [h.ipv4, h.mac]
        return argv

    # ------------------------------------------------------------------ commands
    def _ip(self, *args: str, ns: str | None = None, check: bool = True) -> str:
        argv = ["ip", *(("-n", ns) if ns else ()), *args]
        p = subprocess.run(argv, capture_output=True, text=True, check=False)
        if check and p.returncode != 0:
            raise LabError(f"`{' '.join(argv)}` failed: {p.stderr.strip() or p.returncode}")
        return p.stdout

    def _exec_argv(self, host: str, argv: Sequence[str]) -> list[str]:
        if isinstance(argv, (str, bytes)):
            raise TypeError("argv must be a sequence of arguments, not a string")
        return ["ip", "netns", "exec", self.ns(host), *map(str, argv)]

    def interactive_argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """The command line that runs ``argv`` in a host with the caller's terminal
        (``xdplb lab exec``)."""
        return self._exec_argv(host, argv)

    def run(self, host: str, argv: Sequence[str], **kw) -> subprocess.CompletedProcess:
        """subprocess.run(argv) inside a host's namespace; output captured as text by default."""
        if not {"stdout", "stderr", "capture_output"} & kw.keys():
            kw["capture_output"] = True
        kw.setdefault("text", True)
        check = kw.pop("check", False)
        return subprocess.run(self._exec_argv(host, argv), check=check, **kw)

    def popen(self, host: str, argv: Sequence[str], **kw) -> subprocess.Popen:
        """subprocess.Popen(argv) inside a host's namespace; stopped by down() if still running.

        ``ip netns exec`` execs the command, so ``.pid`` is the command's own pid.
        """
        p = subprocess.Popen(self._exec_argv(host, argv), **kw)
        self._procs.append(p)
        return p

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Self:
        self.up()
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    def up(self) -> Lab:
        """Create everything; on any failure (or Ctrl-C) remove what was created, re-raise."""
        if self._is_up:
            return self
        if os.geteuid() != 0:
            raise LabError("the lab needs root (it creates network namespaces); run with sudo")
        if shutil.which("ip") is None:
            raise LabError("`ip` (iproute2) not found")
        try:
            self._up()
        except BaseException:
            self.down()
            raise
        self._is_up = True
        return self

    def _up(self) -> None:
        self.created_at = time.time()
        for ns in self.namespaces:
            self._add_netns(ns)
        sw = self.switch_ns
        self._ip("link", "add", BRIDGE, "type", "bridge", "forward_delay", "0", "stp_state", "0",
                 "mcast_snooping", "0", ns=sw)
        if self.topology == "routed":
            self._ip("link", "add", BACKEND_BRIDGE, "type", "bridge", "forward_delay", "0",
                     "stp_state", "0", "mcast_snooping", "0", ns=sw)
        for h in self.hosts.values():
            self._add_host_link(h)
        self._ip("link", "set", BRIDGE, "up", ns=sw)
        if self.topology == "routed":
            self._ip("link", "set", BACKEND_BRIDGE, "up", ns=sw)
            self._route()
        if self.offloads == "off":
            self._offloads_off()
        self._attach_lb_peer_stub()
        self._save_if_auto()

    def _add_netns(self, ns: str) -> None:
        if netns_exists(ns):
            raise LabError(f"network namespace {ns!r} already exists (another lab named "
                           f"{self.name!r}? try `xdplb lab down --name {self.name}`)")
        # registered before it exists so an interrupt right after `ip netns add` cannot leak it;
        # down() only deletes registered namespaces and tolerates missing ones
        self.created.append(ns)
        self._save_if_auto()
        self._ip("netns", "add", ns)
        self._ip("link", "set", "lo", "up", ns=ns)

    def _add_host_link(self, h: Host) -> None:
        sw = self.switch_ns
        bridge = BACKEND_BRIDGE if self.topology == "routed" and h.kind == "backend" else BRIDGE
        self._ip("link", "add", h.peer_ifname, "type", "veth", "peer", "name", h.ifname,
                 "netns", h.ns, ns=sw)
        self._ip("link", "set", h.peer_ifname, "master", bridge, "up", ns=sw)
        self._ip("link", "set", h.ifname, "address", h.mac, ns=h.ns)
        self._ip("addr", "add", h.ipv4_cidr, "dev", h.ifname, ns=h.ns)
        if h.ipv6_cidr:
            self._ip("addr", "add", h.ipv6_cidr, "dev", h.ifname, "nodad", ns=h.ns)
        self._ip("link", "set", h.ifname, "up", ns=h.ns)

    def _veth_ends(self) -> Iterator[tuple[str, str]]:
        for h in self.hosts.values():
            yield h.ns, h.ifname
            yield self.switch_ns, h.peer_ifname
        if self.topology == "routed":
            yield self.hosts[ROUTER_ROLE].ns, "eth1"
            yield self.switch_ns, "vrt1"

    def sysctl(self, host: str, **settings: str | int) -> None:
        """Set sysctls (dotted names, passed as ``**{"net.ipv4.ip_forward": 1}``) inside a
        host's namespace."""
        args = [f"{k}={v}" for k, v in settings.items()]
        p = self.run(host, ["sysctl", "-qw", *args])
        if p.returncode != 0:
            raise LabError(f"sysctl {' '.join(args)} in {self.ns(host)}: {p.stderr.strip()}")

    def _route(self) -> None:
        """The routed topology: a router between br0 (clients, LB) and br1 (backends);
        backends hold the VIP on their loopback and route back through the router, so their
        replies go straight to the client. Every sysctl it relies on is set here."""
        rt, sw, v6 = self.hosts[ROUTER_ROLE], self.switch_ns, self.ipv6
        self._ip("link", "add", "vrt1", "type", "veth", "peer", "name", "eth1", "netns", rt.ns,
                 ns=sw)
        self._ip("link", "set", "vrt1", "master", BACKEND_BRIDGE, "up", ns=sw)
        self._ip("link", "set", "eth1", "address", ROUTER["mac_b"], ns=rt.ns)
        self._ip("addr", "add", f"{ROUTER['ipv4_b']}/24", "dev", "eth1", ns=rt.ns)
        if v6:
            self._ip("addr", "add", f"{ROUTER['ipv6_b']}/64", "dev", "eth1", "nodad", ns=rt.ns)
        self._ip("link", "set", "eth1", "up", ns=rt.ns)
        fwd = {"net.ipv4.ip_forward": 1, "net.ipv6.conf.all.forwarding": 1 if v6 else 0,
               "net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.default.rp_filter": 0,
               "net.ipv4.conf.eth0.rp_filter": 0, "net.ipv4.conf.eth1.rp_filter": 0,
               "net.ipv4.conf.all.send_redirects": 0, "net.ipv4.conf.eth0.send_redirects": 0,
               "net.ipv4.conf.eth1.send_redirects": 0}
        self.sysctl(ROUTER_ROLE, **fwd)
        lb = self.lb
        # bpf_fib_lookup answers only on an interface that forwards
        self.sysctl("lb", **{"net.ipv4.ip_forward": 1,
                             "net.ipv6.conf.all.forwarding": 1 if v6 else 0})
        self._ip("route", "add", BACKEND_SUBNET4, "via", ROUTER["ipv4"], ns=lb.ns)
        self._ip("addr", "add", f"{ROUTED_VIP}/32", "dev", lb.ifname, ns=lb.ns)
        if v6:
            self._ip("-6", "route", "add", BACKEND_SUBNET6, "via", ROUTER["ipv6"], ns=lb.ns)
            # deprecated: never chosen as the LB's own source address (RFC 6724 rule 3)
            self._ip("addr", "add", f"{ROUTED_VIP6}/128", "dev", lb.ifname, "nodad",
                     "preferred_lft", "0", ns=lb.ns)
        for c in self.client_hosts:
            self.sysctl(c.role, **{"net.ipv4.ip_no_pmtu_disc": 0})
        for h in self.backend_hosts:
            self._ip("route", "add", "default", "via", ROUTER["ipv4_b"], ns=h.ns)
            self._ip("addr", "add", f"{ROUTED_VIP}/32", "dev", "lo", ns=h.ns)
            if v6:
                self._ip("-6", "route", "add", "default", "via", ROUTER["ipv6_b"], ns=h.ns)
                self._ip("addr", "add", f"{ROUTED_VIP6}/128", "dev", "lo", "nodad", ns=h.ns)
            # a backend's decapsulator sends second-chance packets back with XDP_TX: its
            # peer must take them (an XDP program on it, as for the LB's)
            self._accept_xdp_tx(h.peer_ifname)
            # the VIP on lo: never answer ARP for it (DSR/tunnel backends), never forward
            self.sysctl(h.role, **{"net.ipv4.conf.all.arp_ignore": 1,
                                   "net.ipv4.conf.all.arp_announce": 2,
                                   "net.ipv4.conf.all.rp_filter": 0,
                                   "net.ipv4.conf.default.rp_filter": 0,
                                   f"net.ipv4.conf.{h.ifname}.rp_filter": 0,
                                   "net.ipv4.ip_forward": 0,
                                   "net.ipv6.conf.all.forwarding": 0})

    def _offloads_off(self) -> None:
        if shutil.which("ethtool") is None:
            raise LabError("offloads=off needs ethtool")
        for ns, dev in self._veth_ends():
            p = subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-K", dev, "tx", "off",
                                "rx", "off"], capture_output=True, text=True, check=False)
            if p.returncode != 0:
                raise LabError(f"ethtool -K {dev} tx off rx off in {ns} failed: "
                               f"{p.stderr.strip()}")

    def _stub_object(self) -> Path | None:
        try:
            from .. import _bpf
            return Path(_bpf.object_path("stub"))
        except (ImportError, FileNotFoundError, AttributeError):
            return None

    def _accept_xdp_tx(self, dev: str) -> None:
        """An XDP_PASS stub on `dev` in the switch namespace (else GRO on): a veth peer
        drops XDP_TX frames otherwise."""
        obj = self._stub_object()
        if obj is not None and subprocess.run(
                ["ip", "-n", self.switch_ns, "link", "set", "dev", dev, "xdp", "obj", str(obj),
                 "sec", "xdp"], capture_output=True, check=False).returncode == 0:
            return
        subprocess.run(["ip", "netns", "exec", self.switch_ns, "ethtool", "-K", dev, "gro", "on"],
                       capture_output=True, check=False)

    def _attach_lb_peer_stub(self) -> None:
        """veth drops XDP_TX/REDIRECT frames unless its peer runs XDP (or has GRO on): put an
        XDP_PASS program on veth7.  Fallback when that fails: GRO on veth7.

        GRO is a weak fallback: it gives veth7 the NAPI ring, so frames are accepted, but
        veth_xdp_flush() only kicks the peer's NAPI when the peer has an XDP program, so XDP_TX
        frames can sit in veth7's ring until unrelated traffic arrives (XDP_REDIRECT flushes
        explicitly and is fine)."""
        sw, dev = self.switch_ns, self.lb_peer_ifname()
        obj = self._stub_object()
        err = "stub object not built (make -C bpf)"
        if obj is not None:
            self._ip("link", "set", "dev", dev, "xdpgeneric", "off", ns=sw, check=False)
            p = subprocess.run(["ip", "-n", sw, "link", "set", "dev", dev, "xdp", "obj", str(obj),
                                "sec", "xdp"], capture_output=True, text=True, check=False)
            if p.returncode == 0:
                self.lb_peer_mode, self.lb_peer_prog = "xdp", str(obj)
                return
            err = (p.stderr.strip().splitlines()[-1:] or [f"exit {p.returncode}"])[0]
        p = subprocess.run(["ip", "netns", "exec", sw, "ethtool", "-K", dev, "gro", "on"],
                           capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise LabError(f"cannot make {dev} accept XDP_TX frames: XDP stub failed ({err}), "
                           f"GRO failed ({p.stderr.strip()})")
        self.lb_peer_mode, self.lb_peer_prog = "gro", None
        print(f"xdplb: lab {self.name}: XDP stub on {dev} failed ({err}); turned GRO on instead, "
              "which carries XDP_REDIRECT but not dependably XDP_TX (build the stub: make -C bpf)",
              file=sys.stderr)

    def down(self) -> None:
        """Stop processes, delete the namespaces this lab created (newest first), forget the
        saved state.  Idempotent; works after a half-finished up() and from another process
        (``Lab.load(name).down()``)."""
        errors: list[str] = []
        with _deferred_signals():
            self._stop_procs()
            self._kill_ns_pids()
            for ns in reversed(self.created):
                if not netns_exists(ns):
                    continue
                p = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True,
                                   check=False)
                if p.returncode != 0 and netns_exists(ns):
                    errors.append(f"{ns}: {p.stderr.strip()}")
            self.created = [ns for ns in self.created if netns_exists(ns)]
            self._is_up = False
            if not self.created:
                with contextlib.suppress(FileNotFoundError):
                    self.state_path(self.name).unlink()
            else:
                self._save_if_auto()
        if errors:
            raise LabError(f"lab {self.name}: could not delete " + "; ".join(errors))

    def _stop_procs(self, timeout: float = 3.0) -> None:
        procs, self._procs = [p for p in self._procs if p.poll() is None], []
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for p in procs:
            log = getattr(p, "xdplb_log", None)
            if log is not None:
                log.close()

    def ns_pids(self, ns: str) -> list[int]:
        """Processes whose network namespace is ``ns`` (not ours, not our ancestors)."""
        if not netns_exists(ns):
            return []
        p = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                           check=False)
        mine = _ancestors()
        return [int(x) for x in p.stdout.split() if x.isdigit() and int(x) not in mine]

    def _kill_ns_pids(self, timeout: float = 3.0) -> None:
        """Anything still running in our namespaces keeps them alive after `ip netns del`
        (invisible, with their veths): TERM it (xdplb run detaches on TERM), then KILL."""
        pids = [pid for ns in self.created for pid in self.ns_pids(ns)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if _alive(pid)]
            time.sleep(0.05)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # ------------------------------------------------------------------ helpers for tests
    def start_http_servers(self, directory: str | os.PathLike, port: int = 8000,
                           bind: str | None = None, timeout: float = 5.0,
                           hosts: Sequence[str] | None = None) -> list[subprocess.Popen]:
        """``python3 -m http.server PORT`` in every backend (cwd=directory), returned once each
        listens.  Binds ``::`` (dual stack, http.server clears IPV6_V6ONLY) when the lab has
        IPv6, else ``0.0.0.0``.  down() stops them; so does ``stop_procs``-ing them yourself."""
        if bind is None:
            bind = "::" if self.ipv6 else "0.0.0.0"
        roles = list(hosts) if hosts is not None else [h.role for h in self.backend_hosts]
        procs = []
        for role in roles:
            log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by _stop_procs()
            p = self.popen(role, [sys.executable, "-m", "http.server", str(port), "--bind", bind],
                           cwd=str(directory), stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=log)
            p.xdplb_log = log  # type: ignore[attr-defined]
            p.xdplb_host = role  # type: ignore[attr-defined]
            procs.append(p)
        deadline = time.monotonic() + timeout
        for p in procs:
            while not _listening(p.pid, port):
                if p.poll() is not None or time.monotonic() > deadline:
                    why = (f"exited with {p.returncode}" if p.poll() is not None
                           else f"not listening after {timeout:g}s")
                    p.xdplb_log.seek(0)  # type: ignore[attr-defined]
                    tail = (p.xdplb_log.read()  # type: ignore[attr-defined]
                            .decode(errors="replace").strip().splitlines()[-1:])
                    host = p.xdplb_host  # type: ignore[attr-defined]
                    raise LabError(f"http.server on {host} port {port} {why}"
                                   + (f": {tail[0]}" if tail else ""))
                time.sleep(0.02)
        return procs

    def ping(self, host: str, addr: str, count: int = 1,
             timeout: float = 1.0) -> subprocess.CompletedProcess:
        """ICMP/ICMPv6 echo from a host (raw sockets; the machine may lack iputils' ping).
        returncode 0 when every request was answered; stdout has one line per request."""
        return self.run(host, [sys.executable, "-m", "xdplb.lab._ping", addr, str(count), str(timeout)],
                        timeout=count * (timeout + 1) + 10)

    def snmp(self, host: str) -> dict[str, dict[str, int]]:
        """/proc/net/snmp of a host's namespace as {"Tcp": {"InCsumErrors": n, ...}, ...}."""
        p = self.run(host, ["cat", "/proc/net/snmp"], check=True)
        out: dict[str, dict[str, int]] = {}
        lines = p.stdout.splitlines()
        for head, vals in zip(lines[::2], lines[1::2]):
            proto, keys = head.split(":", 1)
            _, nums = vals.split(":", 1)
            out[proto] = {k: int(v) for k, v in zip(keys.split(), nums.split())}
        return out

    def tcp_csum_errors(self, host: str) -> int:
        """TcpInCsumErrors + UdpInCsumErrors in a host's namespace."""
        s = self.snmp(host)
        return s.get("Tcp", {}).get("InCsumErrors", 0) + s.get("Udp", {}).get("InCsumErrors", 0)

    # ------------------------------------------------------------------ state
    @staticmethod
    def state_path(name: str) -> Path:
        return state_dir() / f"{check_name(name)}.json"

    def to_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "name": self.name,
            "backends": self.n_backends,
            "clients": self.n_clients,
            "offloads": self.offloads,
            "ipv6": self.ipv6,
            "topology": self.topology,
            "switch_ns": self.switch_ns,
            "bridge": BRIDGE,
            "hosts": {role: h.to_dict() for role, h in self.hosts.items()},
            "created": list(self.created),
            "lb_peer": {"ifname": self.lb_peer_ifname(), "mode": self.lb_peer_mode,
                        "prog": self.lb_peer_prog},
            "created_by": self.created_by,
            "created_at": self.created_at,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Lab:
        if d.get("version") != STATE_VERSION:
            raise LabError(f"lab state version {d.get('version')!r} not understood")
        extra = {} if d.get("topology", "tutorial") == "tutorial" else \
            {"topology": d["topology"]}  # (container labs have the tutorial's only)
        lab = cls(d["name"], backends=d["backends"], clients=d["clients"],
                  offloads=d["offloads"], ipv6=d["ipv6"], **extra)
        saved = {role: Host.from_dict(h) for role, h in d["hosts"].items()}
        if saved != lab.hosts:  # the plan changed since it was saved: trust the file
            lab.hosts = saved
        lab.created = list(d.get("created", []))
        lab.lb_peer_mode = d.get("lb_peer", {}).get("mode")
        lab.lb_peer_prog = d.get("lb_peer", {}).get("prog")
        lab.created_by = d.get("created_by", lab.created_by)
        lab.created_at = d.get("created_at")
        lab._is_up = bool(lab.created)
        return lab

    def save(self) -> Path:
        """Write /run/xdplb/lab/<name>.json (atomically) so other processes can find the lab."""
        path = self.state_path(self.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)
        return path

    def _save_if_auto(self) -> None:
        if self.autosave:
            self.save()

    @classmethod
    def load(cls, name: str) -> Lab:
        path = cls.state_path(name)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise LabNotFound(f"lab {name!r} does not exist") from None
        except (OSError, ValueError) as e:
            raise LabError(f"cannot read {path}: {e}") from None
        try:
            # a saved lab is loaded as the kind that saved it (ContainerLab: "containers")
            kind = d.get("kind", cls.kind) if isinstance(d, dict) else cls.kind
            return _KINDS.get(kind, cls).from_dict(d)
        except (KeyError, TypeError) as e:
            raise LabError(f"{path}: bad lab state ({e})") from None

    @staticmethod
    def saved() -> list[str]:
        """Names of saved labs."""
        d = state_dir()
        if not d.is_dir():
            return []
        return sorted(p.stem for p in d.glob("*.json") if not p.name.startswith("."))

    def status(self) -> dict:
        """What exists right now: per namespace whether it exists and what runs in it, and
        which XDP program (if any) is attached on the LB's interface and its peer."""
        out: dict[str, Any] = {"name": self.name, "namespaces": {}, "xdp": {}}
        for ns in self.namespaces:
            out["namespaces"][ns] = {"exists": netns_exists(ns), "pids": self.ns_pids(ns)}
        for ns, dev in ((self.lb.ns, self.lb.ifname), (self.switch_ns, self.lb_peer_ifname())):
            out["xdp"][f"{ns}/{dev}"] = _xdp_prog(ns, dev) if netns_exists(ns) else None
        return out

    def __repr__(self) -> str:
        return (f"Lab({self.name!r}, backends={self.n_backends}, clients={self.n_clients}, "
                f"offloads={self.offloads!r}, ipv6={self.ipv6}, topology={self.topology!r})")


_KINDS: dict[str, type[Lab]] = {Lab.kind: Lab}


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _listening(pid: int, port: int) -> bool:
    """Is anything in pid's network namespace listening on TCP ``port``?  (/proc/PID/net shows
    the namespace of PID, so no subprocess is needed.)"""
    want = f":{port:04X}"
    for fam in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{fam}") as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if len(parts) > 3 and parts[1].endswith(want) and parts[3] == "0A":
                        return True
        except OSError:
            continue
    return False


def _xdp_prog(ns: str, dev: str) -> dict | None:
    p = subprocess.run(["ip", "-n", ns, "-j", "-d", "link", "show", "dev", dev],
                       capture_output=True, text=True, check=False)
    if p.returncode != 0:
        return None
    try:
        info = json.loads(p.stdout)[0]
    except (ValueError, IndexError):
        return None
    xdp = info.get("xdp")
    if not xdp:
        return None
    prog = xdp.get("prog") or {}
    return {"mode": _XDP_MODES.get(xdp.get("mode"), xdp.get("mode")), "id": prog.get("id"), "name": prog.get("name")}
