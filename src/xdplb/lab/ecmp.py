"""The scale-out lab: clients -> a BGP router with ECMP -> N xdplb nodes -> backends.

::

    client (10.1.0.1) --- cli0 [router 10.1.0.254 | 10.2.0.254 rt0] --- br0 (in <lab>-sw)
                                  BIRD 2, multipath, L4 hash                |
                  n1 10.2.0.11, n2 10.2.0.12, ... (xdplb serve + its BIRD)  |
                  b1 10.2.0.101, b2 10.2.0.102, ... (backends, VIP on lo)   |

Every host is a namespace ``<lab>-<role>``; the node segment is one bridge so that a node can
reach every backend at L2 (DSR) and the router sees every node as a directly connected BGP peer.
The router runs BIRD from the distribution inside its namespace, with its config, socket and
pidfile under the lab's own directory, and installs a multipath route per VIP from what the nodes
announce (``merge paths``).  Two facts of the veth lab are handled here:

- a router hashes a multipath route with the skb hash when one is set, and a frame sent by a
  local socket over veth carries the socket's hash (random per socket, rethought on
  retransmission): the router's client-facing ingress runs a tc program that clears it, so ECMP
  follows the 5-tuple (``fib_multipath_hash_policy = 1``) as it does with a physical NIC;
- XDP_TX into a veth is dropped unless the peer runs XDP: every node's switch-side peer gets the
  XDP_PASS stub.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .plan import Host, LabError, ns_name
from .topology import Lab, _listening, _xdp_prog, netns_exists, state_dir

_FLOWS = Path(__file__).with_name("_flows.py")

ROUTER_ROLE = "rtr"
CLIENT_ROLE = "client"
ROUTER_ASN = 65000
NODE_ASN = 65001
VIP4 = "10.9.0.1"
VIP6 = "fd09::1"
CLIENT_NET4, NODE_NET4 = "10.1.0", "10.2.0"
CLIENT_NET6, NODE_NET6 = "fd01:", "fd02:"
ROUTER_CLIENT4, ROUTER_NODE4 = "10.1.0.254", "10.2.0.254"
ROUTER_CLIENT6, ROUTER_NODE6 = "fd01::fe", "fd02::fe"
MAX_NODES = 80
MAX_BACKENDS = 99
MAX_CLIENTS = 99
#: BFD on this 2-core machine: 50 ms x 3 flapped every session at once under load; 100 ms held
BFD_INTERVAL_MS = 100
BFD_MULTIPLIER = 3
HOLD_TIME = 3
SYNC_PORT = 5789


@dataclass(frozen=True)
class EcmpPlan:
    nodes: int
    backends: int
    clients: int


def node_host(lab: str, i: int, ipv6: bool) -> Host:
    n = 10 + i
    return Host(role=f"n{i}", kind="node", ns=ns_name(lab, f"n{i}"), ifname="eth0",
                peer_ifname=f"vn{i}", ipv4=f"{NODE_NET4}.{n}",
                ipv6=f"{NODE_NET6}:{n:x}" if ipv6 else None, mac=f"de:ad:be:ef:02:{n:02x}")


def backend_host(lab: str, j: int, ipv6: bool) -> Host:
    n = 100 + j
    return Host(role=f"b{j}", kind="backend", ns=ns_name(lab, f"b{j}"), ifname="eth0",
                peer_ifname=f"vb{j}", ipv4=f"{NODE_NET4}.{n}",
                ipv6=f"{NODE_NET6}:{n:x}" if ipv6 else None, mac=f"de:ad:be:ef:02:{n:02x}")


def client_host(lab: str, k: int, ipv6: bool) -> Host:
    role = CLIENT_ROLE if k == 1 else f"c{k}"
    return Host(role=role, kind="client", ns=ns_name(lab, role), ifname="eth0",
                peer_ifname=f"cli{k}", ipv4=f"{CLIENT_NET4}.{k}",
                ipv6=f"{CLIENT_NET6}:{k:x}" if ipv6 else None, mac=f"de:ad:be:ef:01:{k:02x}")


def router_host(lab: str, ipv6: bool) -> Host:
    return Host(role=ROUTER_ROLE, kind="router", ns=ns_name(lab, ROUTER_ROLE), ifname="rt0",
                peer_ifname="vrt", ipv4=ROUTER_NODE4, ipv6=ROUTER_NODE6 if ipv6 else None,
                mac="de:ad:be:ef:02:fe")


def _count(what: str, v: object, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= hi:
        raise LabError(f"{what} must be an integer 1..{hi}, not {v!r}")
    return v


def router_bird_config(nodes: list[Host], ipv6: bool, bfd: bool = True,
                       bfd_interval_ms: int = BFD_INTERVAL_MS,
                       bfd_multiplier: int = BFD_MULTIPLIER, hold_time: int = HOLD_TIME) -> str:
    """BIRD 2 config of the lab's router: one eBGP session per node (and family), every route
    learned from the nodes into the kernel, equal paths merged into one multipath route."""
    out = [
        f"router id {ROUTER_NODE4};",
        "protocol device { scan time 10; }",
        "protocol kernel kernel4 { ipv4 { import none; export all; }; merge paths on; }",
    ]
    if ipv6:
        out.append(
            "protocol kernel kernel6 { ipv6 { import none; export all; }; merge paths on; }")
    if bfd:
        out.append(f'protocol bfd {{ interface "rt0" {{ min rx interval {bfd_interval_ms} ms; '
                   f'min tx interval {bfd_interval_ms} ms; multiplier {bfd_multiplier}; }}; }}')
    common = (f"local as {ROUTER_ASN}; hold time {hold_time}; keepalive time "
              f"{max(1, hold_time // 3)}; start delay time 1; connect retry time 1; "
              "error wait time 1, 4; "
              f"{'bfd on; ' if bfd else ''}")
    for h in nodes:
        out.append(f"protocol bgp {h.role}_4 {{ {common}neighbor {h.ipv4} as {NODE_ASN}; "
                   "ipv4 { import all; export none; }; }")
        if ipv6 and h.ipv6:
            out.append(f"protocol bgp {h.role}_6 {{ {common}neighbor {h.ipv6} as {NODE_ASN}; "
                       "ipv6 { import all; export none; }; }")
    return "\n".join(out) + "\n"


class EcmpLab(Lab):
    """``xdplb lab up --topology ecmp --nodes N``: see the module docstring.

    Namespaces: ``<lab>-sw`` (bridge), ``<lab>-rtr``, ``<lab>-client`` (and ``-cK``),
    ``<lab>-n1..nN``, ``<lab>-b1..bM``.
    """

    kind = "ecmp"

    def __init__(self, name: str | None = None, nodes: int = 3, backends: int = 2,
                 clients: int = 1, ipv6: bool = True, bfd: bool = True,
                 offloads: str = "default") -> None:
        _count("nodes", nodes, MAX_NODES)
        _count("backends", backends, MAX_BACKENDS)
        _count("clients", clients, MAX_CLIENTS)
        super().__init__(name, backends=backends, clients=clients, offloads=offloads, ipv6=ipv6)
        self.n_nodes = nodes
        self.bfd = bool(bfd)
        hosts: dict[str, Host] = {}
        for k in range(1, clients + 1):
            h = client_host(self.name, k, self.ipv6)
            hosts[h.role] = h
        hosts[ROUTER_ROLE] = router_host(self.name, self.ipv6)
        for i in range(1, nodes + 1):
            h = node_host(self.name, i, self.ipv6)
            hosts[h.role] = h
        for j in range(1, backends + 1):
            h = backend_host(self.name, j, self.ipv6)
            hosts[h.role] = h
        self.hosts = hosts

    # ------------------------------------------------------------------ naming
    @property
    def router(self) -> Host:
        return self.hosts[ROUTER_ROLE]

    @property
    def node_hosts(self) -> list[Host]:
        return [h for h in self.hosts.values() if h.kind == "node"]

    @property
    def vip(self) -> str:
        return VIP4

    @property
    def vip6(self) -> str | None:
        return VIP6 if self.ipv6 else None

    @property
    def run_dir(self) -> Path:
        """Per-lab files (the router's BIRD config and socket, node configs)."""
        return state_dir() / f"{self.name}.d"

    @property
    def router_socket(self) -> Path:
        return self.run_dir / "router" / "bird.ctl"

    def lb_peer_ifname(self) -> str:
        return self.node_hosts[0].peer_ifname

    def run_argv(self, prog: str = "xdplb") -> list[str]:
        return [prog, "serve", "-c", str(self.node_config_path(self.node_hosts[0].role))]

    def node_config_path(self, role: str) -> Path:
        return self.run_dir / role / "xdplb.toml"

    # ------------------------------------------------------------------ building
    def _up(self) -> None:
        if shutil.which("bird") is None or shutil.which("birdc") is None:
            raise LabError("the ecmp lab needs BIRD 2 (bird, birdc): run scripts/install-deps.sh")
        self.created_at = time.time()
        for ns in self.namespaces:
            self._add_netns(ns)
        sw, rtr = self.switch_ns, self.router.ns
        self._ip("link", "add", "br0", "type", "bridge", "forward_delay", "0", "stp_state", "0",
                 "mcast_snooping", "0", ns=sw)
        self._ip("link", "set", "br0", "up", ns=sw)
        for h in self.hosts.values():
            self._sysctls(h)
        for h in self.hosts.values():
            if h.kind == "client":
                self._add_client_link(h)
            else:
                self._add_host_link(h)
        self._router_addresses()
        for h in self.hosts.values():
            self._routes(h)
        for h in self.node_hosts:
            self._stub(sw, h.peer_ifname)
        self._rehash(rtr)
        self.lb_peer_mode = "xdp"
        self._start_router_bird()
        self._save_if_auto()

    def _sysctl(self, ns: str, key: str, value: str | int) -> None:
        p = subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}"],
                           capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise LabError(f"sysctl {key}={value} in {ns} failed: {p.stderr.strip()}")

    def _sysctls(self, h: Host) -> None:
        """Set every sysctl the lab relies on (a new netns copies some from the host)."""
        fwd = 1 if h.kind == "router" else 0
        for key, value in (("net.ipv4.ip_forward", fwd), ("net.ipv4.conf.all.rp_filter", 0),
                           ("net.ipv4.conf.default.rp_filter", 0)):
            self._sysctl(h.ns, key, value)
        if self.ipv6:
            self._sysctl(h.ns, "net.ipv6.conf.all.forwarding", fwd)
            self._sysctl(h.ns, "net.ipv6.conf.default.accept_dad", 0)
        if h.kind == "router":
            self._sysctl(h.ns, "net.ipv4.fib_multipath_hash_policy", 1)
            if self.ipv6:
                self._sysctl(h.ns, "net.ipv6.fib_multipath_hash_policy", 1)
        if h.kind == "backend":
            # the VIP lives on lo (DSR): never answer ARP for it or use it as an ARP source
            self._sysctl(h.ns, "net.ipv4.conf.all.arp_ignore", 1)
            self._sysctl(h.ns, "net.ipv4.conf.all.arp_announce", 2)

    def _add_client_link(self, h: Host) -> None:
        rtr = self.router.ns
        self._ip("link", "add", h.peer_ifname, "type", "veth", "peer", "name", h.ifname,
                 "netns", h.ns, ns=rtr)
        self._ip("link", "set", h.ifname, "address", h.mac, ns=h.ns)
        self._ip("addr", "add", f"{h.ipv4}/32", "peer", f"{ROUTER_CLIENT4}/32", "dev", h.ifname,
                 ns=h.ns)
        self._ip("addr", "add", f"{ROUTER_CLIENT4}/32", "peer", f"{h.ipv4}/32", "dev",
                 h.peer_ifname, ns=rtr)
        if h.ipv6:
            self._ip("addr", "add", f"{h.ipv6}/128", "dev", h.ifname, "nodad", ns=h.ns)
            self._ip("addr", "add", f"{ROUTER_CLIENT6}/128", "dev", h.peer_ifname, "nodad",
                     ns=rtr)
        self._ip("link", "set", h.ifname, "up", ns=h.ns)
        self._ip("link", "set", h.peer_ifname, "up", ns=rtr)
        if h.ipv6:
            self._ip("-6", "route", "add", f"{ROUTER_CLIENT6}/128", "dev", h.ifname, ns=h.ns)
            self._ip("-6", "route", "add", f"{h.ipv6}/128", "dev", h.peer_ifname, ns=rtr)

    def _add_host_link(self, h: Host) -> None:
        sw = self.switch_ns
        self._ip("link", "add", h.peer_ifname, "type", "veth", "peer", "name", h.ifname,
                 "netns", h.ns, ns=sw)
        self._ip("link", "set", h.peer_ifname, "master", "br0", "up", ns=sw)
        self._ip("link", "set", h.ifname, "address", h.mac, ns=h.ns)
        self._ip("addr", "add", f"{h.ipv4}/24", "dev", h.ifname, ns=h.ns)
        if h.ipv6:
            self._ip("addr", "add", f"{h.ipv6}/64", "dev", h.ifname, "nodad", ns=h.ns)
        self._ip("link", "set", h.ifname, "up", ns=h.ns)

    def _router_addresses(self) -> None:
        pass  # rt0 gets its addresses in _add_host_link (the router is a host of the segment)

    def _routes(self, h: Host) -> None:
        if h.kind == "client":
            self._ip("route", "add", "default", "via", ROUTER_CLIENT4, ns=h.ns)
            if h.ipv6:
                self._ip("-6", "route", "add", "default", "via", ROUTER_CLIENT6, ns=h.ns)
        elif h.kind in ("node", "backend"):
            self._ip("route", "add", "default", "via", ROUTER_NODE4, ns=h.ns)
            if h.ipv6:
                self._ip("-6", "route", "add", "default", "via", ROUTER_NODE6, ns=h.ns)
        if h.kind == "backend":
            self._ip("addr", "add", f"{VIP4}/32", "dev", "lo", ns=h.ns)
            if h.ipv6:
                self._ip("addr", "add", f"{VIP6}/128", "dev", "lo", ns=h.ns)

    def _stub(self, ns: str, dev: str) -> None:
        obj = self._stub_object()
        if obj is None:
            raise LabError("XDP stub object not built (make build)")
        p = subprocess.run(["ip", "-n", ns, "link", "set", "dev", dev, "xdp", "obj", str(obj),
                            "sec", "xdp"], capture_output=True, text=True, check=False)
        if p.returncode != 0:
            raise LabError(f"XDP stub on {dev} in {ns}: {p.stderr.strip()}")

    def _rehash(self, ns: str) -> None:
        """The tc program that clears the socket hash on every client-facing ingress."""
        try:
            from .. import _bpf
            obj = str(_bpf.object_path("rehash"))
        except (ImportError, FileNotFoundError) as e:
            raise LabError(f"rehash object not built (make build): {e}") from None
        for h in self.client_hosts:
            dev = h.peer_ifname
            for argv in (["qdisc", "add", "dev", dev, "clsact"],
                         ["filter", "add", "dev", dev, "ingress", "bpf", "direct-action",
                          "obj", obj, "sec", "tc"]):
                p = subprocess.run(["ip", "netns", "exec", ns, "tc", *argv], capture_output=True,
                                   text=True, check=False)
                if p.returncode != 0:
                    raise LabError(f"tc {' '.join(argv[:4])} in {ns}: {p.stderr.strip()}")

    def _start_router_bird(self) -> None:
        d = self.run_dir / "router"
        d.mkdir(parents=True, exist_ok=True)
        conf = d / "bird.conf"
        conf.write_text(router_bird_config(self.node_hosts, self.ipv6, bfd=self.bfd))
        sock, pidfile = d / "bird.ctl", d / "bird.pid"
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        # daemonized inside the namespace: the lab outlives `lab up`; down() kills what runs in
        # its namespaces, so nothing is left behind
        p = subprocess.run(["ip", "netns", "exec", self.router.ns, "bird", "-c", str(conf),
                            "-s", str(sock), "-P", str(pidfile)], capture_output=True, text=True,
                           check=False)
        if p.returncode != 0:
            raise LabError(f"bird in {self.router.ns}: {(p.stderr or p.stdout).strip()}")
        deadline = time.monotonic() + 5
        while not sock.exists():
            if time.monotonic() > deadline:
                raise LabError(f"bird in {self.router.ns}: no control socket after 5 s")
            time.sleep(0.05)

    # ------------------------------------------------------------------ running the nodes
    def node_config(self, role: str, mode: str = "dsr", port: int = 80,
                    backends: list[str] | None = None, health: bool = True,
                    bfd: bool | None = None, hold_time: int = HOLD_TIME,
                    extra_vip: str = "", sync: bool = False, min_age: float = 1.0) -> str:
        """A node's serve config: the lab's VIP(s) announced to the router, the backends
        (MACs from the neighbour table), a fast TCP health check.  Every node gets the same
        tables (hash seed, VIPs, backends): only the router id and, in NAT mode, the SNAT
        address (the node's own) differ."""
        h = self.hosts[role]
        bfd = self.bfd if bfd is None else bfd
        roles = backends if backends is not None else [b.role for b in self.backend_hosts]
        out = ["[lb]", 'interface = "eth0"', f'name = "{self.name}-{role}"', "",
               "[bgp]", f"asn = {NODE_ASN}", f'router_id = "{h.ipv4}"',
               f"hold_time = {hold_time}", f"bfd = {'true' if bfd else 'false'}",
               f"bfd_interval_ms = {BFD_INTERVAL_MS}", f"bfd_multiplier = {BFD_MULTIPLIER}",
               "[[bgp.peer]]", f'address = "{ROUTER_NODE4}"', f"asn = {ROUTER_ASN}"]
        if self.ipv6 and h.ipv6:
            out += ["[[bgp.peer]]", f'address = "{ROUTER_NODE6}"', f"asn = {ROUTER_ASN}"]
        if sync:  # every other node of the lab is a peer (a node not running drops them)
            peers = ", ".join(f'"{n.ipv4}:{SYNC_PORT}"' for n in self.node_hosts if n is not h)
            out += ["", "[sync]", f'listen = "{h.ipv4}:{SYNC_PORT}"', f"peers = [{peers}]",
                    "interval = 0.5", f"min_age = {min_age}", "resend = 2.0"]
        vips = [(VIP4, h.ipv4)] + ([(VIP6, h.ipv6)] if self.ipv6 and h.ipv6 else [])
        for vip, own in vips:
            v6 = ":" in vip
            out += ["", "[[vip]]", f'name = "web{6 if v6 else 4}"', f'address = "{vip}"',
                    f"port = {port}", f'mode = "{mode}"']
            if mode == "nat":
                out.append(f'snat = "{own}"')
            out.append(extra_vip)
            if health:
                out += ["[vip.health]", 'kind = "tcp"', "interval = 0.5", "timeout = 0.4",
                        "rise = 1", "fall = 2"]
            for r in roles:
                b = self.hosts[r]
                out += ["[[vip.backend]]", f'address = "{b.ipv6 if v6 else b.ipv4}"']
        return "\n".join(out) + "\n"

    def write_node_config(self, role: str, **kw) -> Path:
        path = self.node_config_path(role)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.node_config(role, **kw))
        return path

    def serve_argv(self, role: str, xdplb: str) -> list[str]:
        """``xdplb serve`` of a node, with its run directory (socket, pid, BIRD) in the lab's."""
        return [xdplb, "serve", "-c", str(self.node_config_path(role)), "--run-dir",
                str(self.run_dir / role)]

    def ctl_argv(self, role: str, xdplb: str, *cmd: str) -> list[str]:
        """A client command (status, node drain, ...) for a node's serve."""
        return [xdplb, *cmd, "-c", str(self.node_config_path(role)), "--run-dir",
                str(self.run_dir / role)]

    def start_echo_servers(self, port: int = 80, timeout: float = 5.0) -> list[subprocess.Popen]:
        """The long-lived-connection echo server (lab/_flows.py) on every backend."""
        procs = [self.popen(b.role, [sys.executable, str(_FLOWS), "server", str(port)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL) for b in self.backend_hosts]
        deadline = time.monotonic() + timeout
        for p in procs:
            while not _listening(p.pid, port):
                if p.poll() is not None or time.monotonic() > deadline:
                    raise LabError(f"echo server not listening on port {port}")
                time.sleep(0.02)
        return procs

    def flows_argv(self, addr: str, port: int, n: int, seconds: float,
                   interval: float = 0.1) -> list[str]:
        """Client side of lab/_flows.py: N long-lived connections for SECONDS."""
        return [sys.executable, str(_FLOWS), "client", addr, str(port), str(n), str(seconds),
                str(interval)]

    def fail_node(self, role: str) -> None:
        """The node silently stops answering: its switch port goes down (no BGP Cease, no
        withdrawal; the router must notice by BFD or its hold timer)."""
        self._ip("link", "set", self.hosts[role].peer_ifname, "down", ns=self.switch_ns)

    # ------------------------------------------------------------------ the router's view
    def birdc(self, *cmd: str) -> str:
        """A birdc command on the router; its output."""
        p = subprocess.run(["birdc", "-s", str(self.router_socket), *cmd],
                           capture_output=True, text=True, check=False, timeout=10)
        if p.returncode != 0:
            raise LabError(f"birdc {' '.join(cmd)}: {(p.stderr or p.stdout).strip()}")
        return p.stdout

    def router_nexthops(self, prefix: str | None = None) -> list[str]:
        """Next hops the router's kernel has for a VIP prefix (ECMP: one per announcing node)."""
        net = ipaddress.ip_network(prefix or f"{VIP4}/32")
        fam = "-6" if net.version == 6 else "-4"
        p = subprocess.run(["ip", fam, "-n", self.router.ns, "-j", "route", "show", str(net)],
                           capture_output=True, text=True, check=False)
        if p.returncode != 0 or not p.stdout.strip():
            return []
        hops: list[str] = []
        for r in json.loads(p.stdout):
            if r.get("dst") not in (str(net), str(net.network_address)):
                continue
            if "nexthops" in r:
                hops += [h["gateway"] for h in r["nexthops"] if "gateway" in h]
            elif "gateway" in r:
                hops.append(r["gateway"])
        return sorted(hops, key=lambda a: ipaddress.ip_address(a))

    def wait_nexthops(self, want: int, prefix: str | None = None, timeout: float = 15.0) -> list[str]:
        """Wait until the router has exactly `want` next hops for the prefix; LabError if not."""
        deadline = time.monotonic() + timeout
        hops = self.router_nexthops(prefix)
        while len(hops) != want:
            if time.monotonic() > deadline:
                raise LabError(f"router has {len(hops)} next hops for {prefix or VIP4} "
                               f"({', '.join(hops) or 'none'}) after {timeout:g} s, not {want}")
            time.sleep(0.05)
            hops = self.router_nexthops(prefix)
        return hops

    # ------------------------------------------------------------------ lifecycle
    def down(self) -> None:
        super().down()
        if not self.created:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def status(self) -> dict:
        out: dict = {"name": self.name, "namespaces": {}, "xdp": {}}
        for ns in self.namespaces:
            out["namespaces"][ns] = {"exists": netns_exists(ns), "pids": self.ns_pids(ns)}
        for h in self.node_hosts:
            out["xdp"][f"{h.ns}/{h.ifname}"] = (_xdp_prog(h.ns, h.ifname)
                                                if netns_exists(h.ns) else None)
        return out

    def to_dict(self) -> dict:
        d = super().to_dict()
        d.update(kind=self.kind, nodes=self.n_nodes, bfd=self.bfd)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EcmpLab:
        lab = cls(d["name"], nodes=d["nodes"], backends=d["backends"], clients=d["clients"],
                  ipv6=d["ipv6"], bfd=d.get("bfd", True))
        lab.created = list(d.get("created", []))
        lab.lb_peer_mode = d.get("lb_peer", {}).get("mode")
        lab.created_by = d.get("created_by", lab.created_by)
        lab.created_at = d.get("created_at")
        lab._is_up = bool(lab.created)
        return lab

    def __repr__(self) -> str:
        return (f"EcmpLab({self.name!r}, nodes={self.n_nodes}, backends={self.n_backends}, "
                f"clients={self.n_clients}, ipv6={self.ipv6})")
