"""The L2 failover lab: two xdplb nodes on one segment, keepalived (VRRP) holding the VIP.

::

    client 10.0.0.1 --+
    lb1 10.0.0.11  ---+  br0 (in <lab>-sw)      VIP 10.0.0.100 / fd00::64: held by the
    lb2 10.0.0.12  ---+                         VRRP master (keepalived in lb1 and lb2)
    h2 10.0.0.2, h3 10.0.0.3 (backends, VIP on lo: DSR)

Both nodes run ``xdplb serve`` with the same tables (DSR, same hash seed, VIPs and backends),
so a flow that moves to the other node reaches the same backend. keepalived runs in each node's
namespace from the distribution, with its config, pid files and log under the lab's directory;
its ``track_file`` is the node's serve ``[l2] track_file``: a node whose serve is gone (its guard
writes the file), that is drained, or that has no VIP with healthy backends goes to FAULT and
gives the VIP up at once. Nothing runs in the machine's own namespace.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .plan import LB_ROLE, Host, LabError, ns_name
from .topology import Lab, _xdp_prog, netns_exists, state_dir

VIP4 = "10.0.0.100"
VIP6 = "fd00::64"
NODES = ("lb1", "lb2")
MAX_BACKENDS = 8  # h2..h9: below the nodes' 10.0.0.11/12
VRID = 51
#: VRRPv3 advertisement interval; the backup takes over ~3 of them after the master goes
#: silent (a killed keepalived); a master that fails its tracking gives the VIP up at once
ADVERT_INT = 0.2
PRIORITY = {"lb1": 150, "lb2": 100}


def _xdplb() -> list[str]:
    """This same xdplb, to start in a namespace."""
    exe = Path(sys.executable).parent / "xdplb"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "xdplb.cli"]


def node_host(lab: str, i: int, ipv6: bool) -> Host:
    n = 10 + i
    return Host(role=f"lb{i}", kind="lb", ns=ns_name(lab, f"lb{i}"), ifname="eth0",
                peer_ifname=f"vl{i}", ipv4=f"10.0.0.{n}", ipv6=f"fd00::{n:x}" if ipv6 else None,
                mac=f"de:ad:be:ef:03:{i:02x}")


def keepalived_config(role: str, iface: str, track_file: str, ipv6: bool,
                      advert_int: float = ADVERT_INT) -> str:
    """keepalived.conf of one node (docs/operations.md shows the same text): both nodes
    start as BACKUP, the higher priority wins; serve's [l2] track_file puts a node that
    cannot serve (drained, no VIP with its backends, serve stopped or dead) in FAULT, which
    gives the VIP up at once (a priority-0 advertisement)."""
    v6 = f"  virtual_ipaddress_excluded {{\n    {VIP6}/128 dev {iface}\n  }}\n" if ipv6 else ""
    return (
        "global_defs {\n"
        f"  router_id xdplb_{role}\n"
        "  vrrp_version 3\n"
        "  vrrp_garp_master_repeat 3\n"
        "}\n"
        "track_file xdplb_ready {\n"
        f'  file "{track_file}"\n'
        "  weight 0\n"
        "  init_file 1\n"
        "}\n"
        "vrrp_instance xdplb {\n"
        "  state BACKUP\n"
        f"  interface {iface}\n"
        f"  virtual_router_id {VRID}\n"
        f"  priority {PRIORITY[role]}\n"
        f"  advert_int {advert_int:g}\n"
        "  virtual_ipaddress {\n"
        f"    {VIP4}/32 dev {iface}\n"
        "  }\n"
        f"{v6}"
        "  track_file {\n    xdplb_ready\n  }\n"
        "}\n")


class PairLab(Lab):
    """``xdplb lab up --topology pair``: see the module docstring.

    Namespaces: ``<lab>-sw`` (bridge), ``<lab>-client``, ``<lab>-lb1``, ``<lab>-lb2``,
    ``<lab>-h2``, ``<lab>-h3`` (...).
    """

    kind = "pair"

    def __init__(self, name: str | None = None, backends: int = 2, clients: int = 1,
                 ipv6: bool = True, offloads: str = "default") -> None:
        if not isinstance(backends, int) or not 1 <= backends <= MAX_BACKENDS:
            raise LabError(f"backends must be an integer 1..{MAX_BACKENDS}, not {backends!r}")
        super().__init__(name, backends=backends, clients=clients, offloads=offloads, ipv6=ipv6)
        hosts: dict[str, Host] = {}
        for role, h in self.hosts.items():
            if role == LB_ROLE:
                for i in (1, 2):
                    n = node_host(self.name, i, self.ipv6)
                    hosts[n.role] = n
            else:
                hosts[role] = h
        self.hosts = hosts
        self._serve: dict[str, subprocess.Popen] = {}
        self._keepalived: dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------------ naming
    @property
    def lb(self) -> Host:
        return self.hosts["lb1"]

    @property
    def node_hosts(self) -> list[Host]:
        return [self.hosts[r] for r in NODES]

    @property
    def vip(self) -> str:
        return VIP4

    @property
    def vip6(self) -> str | None:
        return VIP6 if self.ipv6 else None

    @property
    def run_dir(self) -> Path:
        return state_dir() / f"{self.name}.d"

    def node_dir(self, role: str) -> Path:
        return self.run_dir / role

    def node_config_path(self, role: str) -> Path:
        return self.node_dir(role) / "xdplb.toml"

    def run_argv(self, prog: str = "xdplb") -> list[str]:
        return [prog, "serve", "-c", str(self.node_config_path("lb1")), "--run-dir",
                str(self.node_dir("lb1"))]

    # ------------------------------------------------------------------ building
    def _up(self) -> None:
        if shutil.which("keepalived") is None:
            raise LabError("the pair lab needs keepalived: run scripts/install-deps.sh")
        super()._up()
        for h in self.hosts.values():
            self._sysctls(h)
        for h in self.backend_hosts:  # DSR: the VIP on lo, never answered for on the link
            self._ip("addr", "add", f"{VIP4}/32", "dev", "lo", ns=h.ns)
            if self.ipv6:
                self._ip("addr", "add", f"{VIP6}/128", "dev", "lo", ns=h.ns)
        for role in NODES:
            self.write_node_files(role)
        self._save_if_auto()

    def _attach_lb_peer_stub(self) -> None:
        """Both nodes send with XDP_TX: the stub on both switch-side peers."""
        obj = self._stub_object()
        if obj is None:
            raise LabError("XDP stub object not built (make build)")
        for h in self.node_hosts:
            p = subprocess.run(["ip", "-n", self.switch_ns, "link", "set", "dev", h.peer_ifname,
                                "xdp", "obj", str(obj), "sec", "xdp"], capture_output=True,
                               text=True, check=False)
            if p.returncode != 0:
                raise LabError(f"XDP stub on {h.peer_ifname}: {p.stderr.strip()}")
        self.lb_peer_mode, self.lb_peer_prog = "xdp", str(obj)

    def _sysctl(self, ns: str, key: str, value: str | int) -> None:
        p = subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}"],
                           capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise LabError(f"sysctl {key}={value} in {ns}: {p.stderr.strip()}")

    def _sysctls(self, h: Host) -> None:
        """Every sysctl the lab relies on, set in each namespace (a new netns copies some)."""
        for key, value in (("net.ipv4.ip_forward", 0), ("net.ipv4.conf.all.rp_filter", 0),
                           ("net.ipv4.conf.default.rp_filter", 0)):
            self._sysctl(h.ns, key, value)
        if self.ipv6:
            self._sysctl(h.ns, "net.ipv6.conf.all.forwarding", 0)
            self._sysctl(h.ns, "net.ipv6.conf.all.accept_dad", 0)
            self._sysctl(h.ns, "net.ipv6.conf.default.accept_dad", 0)
        if h.kind == "backend":
            self._sysctl(h.ns, "net.ipv4.conf.all.arp_ignore", 1)
            self._sysctl(h.ns, "net.ipv4.conf.all.arp_announce", 2)

    # ------------------------------------------------------------------ the nodes
    def node_config(self, role: str, port: int = 80, health: bool = True) -> str:
        """The same tables on both nodes: DSR, the lab's VIP(s), every backend (MAC given)."""
        out = ["[lb]", f'interface = "{self.hosts[role].ifname}"', f'name = "{self.name}-{role}"',
               "hash_seed = 7", "", "[l2]", "announce = false  # keepalived holds the VIP",
               f'track_file = "{self.track_file(role)}"']
        vips = [("web4", VIP4, "ipv4")] + ([("web6", VIP6, "ipv6")] if self.ipv6 else [])
        for name, vip, fam in vips:
            out += ["", "[[vip]]", f'name = "{name}"', f'address = "{vip}"', f"port = {port}",
                    'mode = "dsr"']
            if health:
                out += ["[vip.health]", 'kind = "tcp"', "interval = 0.5", "timeout = 0.4",
                        "rise = 1", "fall = 3"]
            for b in self.backend_hosts:
                out += ["[[vip.backend]]", f'address = "{getattr(b, fam)}"', f'mac = "{b.mac}"']
        return "\n".join(out) + "\n"

    def track_file(self, role: str) -> Path:
        return self.node_dir(role) / "ready"

    def serve_argv(self, role: str) -> list[str]:
        """xdplb serve of a node, with its run directory in the lab's."""
        return [*_xdplb(), "serve", "-c", str(self.node_config_path(role)), "--run-dir",
                str(self.node_dir(role))]

    def ctl_argv(self, role: str, *cmd: str) -> list[str]:
        return [*_xdplb(), *cmd, "-c", str(self.node_config_path(role)), "--run-dir",
                str(self.node_dir(role))]

    def keepalived_conf_path(self, role: str) -> Path:
        return self.node_dir(role) / "keepalived.conf"

    def keepalived_argv(self, role: str) -> list[str]:
        d = self.node_dir(role)
        return ["keepalived", "--dont-fork", "--log-console", "--vrrp", "--use-file",
                str(self.keepalived_conf_path(role)), "--pid", str(d / "keepalived.pid"),
                "--vrrp_pid", str(d / "vrrp.pid")]

    def write_node_files(self, role: str, advert_int: float = ADVERT_INT, **kw) -> None:
        """The node's serve config and keepalived.conf, under the lab's directory."""
        d = self.node_dir(role)
        d.mkdir(parents=True, exist_ok=True)
        self.node_config_path(role).write_text(self.node_config(role, **kw))
        self.keepalived_conf_path(role).write_text(keepalived_config(
            role, self.hosts[role].ifname, str(self.track_file(role)), self.ipv6, advert_int))

    def start_serve(self, role: str, timeout: float = 30.0) -> subprocess.Popen:
        d = self.node_dir(role)
        log = open(d / "serve.log", "ab")  # noqa: SIM115 - closed by _stop_procs
        p = self.popen(role, self.serve_argv(role), stdin=subprocess.DEVNULL, stdout=log,
                       stderr=subprocess.STDOUT)
        p.xdplb_log = log  # type: ignore[attr-defined]
        deadline = time.monotonic() + timeout
        while b"event=ready" not in (d / "serve.log").read_bytes():
            if p.poll() is not None or time.monotonic() > deadline:
                tail = (d / "serve.log").read_text(errors="replace").strip().splitlines()[-3:]
                raise LabError(f"serve on {role} did not start: {' | '.join(tail)}")
            time.sleep(0.05)
        self._serve[role] = p
        return p

    def start_keepalived(self, role: str) -> subprocess.Popen:
        log = open(self.node_dir(role) / "keepalived.log", "ab")  # noqa: SIM115 - see down()
        p = self.popen(role, self.keepalived_argv(role), stdin=subprocess.DEVNULL, stdout=log,
                       stderr=subprocess.STDOUT)
        p.xdplb_log = log  # type: ignore[attr-defined]
        self._keepalived[role] = p
        return p

    def kill_keepalived(self, role: str, sig: int = signal.SIGKILL) -> None:
        """Every keepalived process of the node (parent and its VRRP child)."""
        for pid in self.ns_pids(self.hosts[role].ns):
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if comm == "keepalived":
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)

    def vip_holder(self) -> list[str]:
        """The nodes that have the VIP on their interface now."""
        out = []
        for h in self.node_hosts:
            p = subprocess.run(["ip", "-n", h.ns, "-j", "address", "show", "dev", h.ifname],
                               capture_output=True, text=True, check=False)
            try:
                infos = json.loads(p.stdout)[0].get("addr_info", [])
            except (ValueError, IndexError):
                continue
            if any(a.get("local") == VIP4 for a in infos):
                out.append(h.role)
        return out

    def wait_ready(self, role: str, timeout: float = 15.0) -> float:
        """Wait until the node's serve says it can take the VIPs (its track file is 0: every
        backend had its first verdict); seconds waited, LabError after timeout."""
        t0 = time.monotonic()
        while True:
            try:
                if self.track_file(role).read_text().strip() == "0":
                    return time.monotonic() - t0
            except OSError:
                pass
            if time.monotonic() - t0 > timeout:
                raise LabError(f"{role} not ready after {timeout:g} s (track file)")
            time.sleep(0.02)

    def wait_holder(self, want: list[str], timeout: float = 15.0) -> float:
        t0 = time.monotonic()
        while (got := self.vip_holder()) != want:
            if time.monotonic() - t0 > timeout:
                raise LabError(f"VIP held by {got or 'nobody'} after {timeout:g} s, not {want}")
            time.sleep(0.01)
        return time.monotonic() - t0

    # ------------------------------------------------------------------ lifecycle
    def down(self) -> None:
        super().down()
        if not self.created:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def status(self) -> dict:
        out: dict = {"name": self.name, "namespaces": {}, "xdp": {}, "vip_holder": []}
        for ns in self.namespaces:
            out["namespaces"][ns] = {"exists": netns_exists(ns), "pids": self.ns_pids(ns)}
        for h in self.node_hosts:
            out["xdp"][f"{h.ns}/{h.ifname}"] = (_xdp_prog(h.ns, h.ifname)
                                                if netns_exists(h.ns) else None)
        if all(netns_exists(h.ns) for h in self.node_hosts):
            out["vip_holder"] = self.vip_holder()
        return out

    def to_dict(self) -> dict:
        d = super().to_dict()
        d.update(kind=self.kind)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PairLab:
        lab = cls(d["name"], backends=d["backends"], clients=d["clients"], ipv6=d["ipv6"],
                  offloads=d.get("offloads", "default"))
        lab.created = list(d.get("created", []))
        lab.lb_peer_mode = d.get("lb_peer", {}).get("mode")
        lab.created_by = d.get("created_by", lab.created_by)
        lab.created_at = d.get("created_at")
        lab._is_up = bool(lab.created)
        return lab

    def __repr__(self) -> str:
        return f"PairLab({self.name!r}, backends={self.n_backends}, ipv6={self.ipv6})"
