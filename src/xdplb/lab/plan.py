"""The lab's address plan: pure functions, no privileges, no side effects.

The tutorial's topology (bridge ``br0`` with the client, the LB and two backends), every node a
network namespace named ``<lab>-<role>``:

======  ==================  =========  ==========  ==================  ============
role    netns               ifname     switch end  MAC                 IPv4 / IPv6
======  ==================  =========  ==========  ==================  ============
client  <lab>-client        veth0      veth1       de:ad:be:ef:00:01   10.0.0.1   fd00::1
lb      <lab>-lb            veth6      veth7       de:ad:be:ef:00:10   10.0.0.10  fd00::a
h2      <lab>-h2            veth3      veth2       de:ad:be:ef:00:02   10.0.0.2   fd00::2
h3      <lab>-h3            veth5      veth4       de:ad:be:ef:00:03   10.0.0.3   fd00::3
hN      <lab>-hN            eth0       vhN         de:ad:be:ef:00:NN   10.0.0.N   fd00::N
cK      <lab>-cK            eth0       vcK         de:ad:be:ef:01:KK   10.0.0.1K  fd00::..
======  ==================  =========  ==========  ==================  ============

The routed topology (``topology="routed"``) puts the backends in another subnet behind a router
namespace ``<lab>-rt`` (``eth0`` on br0: 10.0.0.254 fd00::fe; ``eth1`` on a second bridge
``br1``: 10.0.1.254 fd00:1::fe): backend hN is 10.0.1.N / fd00:1::N on br1, with the VIP on
its loopback; nothing else changes.

Extra backends are numbered so that the role, the last IPv4 octet and the last MAC byte agree
(h4 = 10.0.0.4 = ..:00:04).  Two numbers are skipped because they would collide with the LB:
10 (10.0.0.10 is the LB's address) and 16 (de:ad:be:ef:00:10 is the LB's MAC).  Extra clients
cK (K >= 2) take 10.0.0.(100+K) and MAC de:ad:be:ef:01:KK.
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, replace

SUBNET4 = "10.0.0.0/24"
PREFIX4 = 24
PREFIX6 = 64
SWITCH_ROLE = "sw"
BRIDGE = "br0"
BACKEND_BRIDGE = "br1"  # routed topology: the backends' subnet
TOPOLOGIES = ("tutorial", "routed")
ROUTER_ROLE = "rt"
ROUTER = {"ipv4": "10.0.0.254", "ipv6": "fd00::fe", "mac": "de:ad:be:ef:00:fe",
          "ipv4_b": "10.0.1.254", "ipv6_b": "fd00:1::fe", "mac_b": "de:ad:be:ef:01:fe"}
# routed topology: the VIP is not the LB's own address (backends hold the VIP on their
# loopback, so the LB's health checks must come from another one): 10.0.0.100 and
# fd00::64 on the LB's interface besides 10.0.0.10 / fd00::a (no client has these)
ROUTED_VIP, ROUTED_VIP6 = "10.0.0.100", "fd00::64"
BACKEND_SUBNET4 = "10.0.1.0/24"
BACKEND_SUBNET6 = "fd00:1::/64"

LB_ROLE = "lb"
CLIENT_ROLE = "client"

#: backend numbers that would collide with the LB (10.0.0.10, de:ad:be:ef:00:10)
_SKIP_BACKEND = frozenset({10, 16})
#: backend numbers stop below the clients' range (10.0.0.100+)
_MAX_BACKEND_NUM = 99
MAX_BACKENDS = len([n for n in range(2, _MAX_BACKEND_NUM + 1) if n not in _SKIP_BACKEND])
_MAX_CLIENT_NUM = 154  # 10.0.0.254

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.]{0,31}$")


class LabError(Exception):
    """Anything the lab cannot do; the message is one line meant for a human."""


@dataclass(frozen=True)
class Host:
    """One node of the lab: a namespace with one veth towards the switch."""

    role: str  # "client", "lb", "h2", ..., "c2", ...
    kind: str  # "client" | "lb" | "backend" | "router"
    ns: str  # network namespace name
    ifname: str  # interface inside ns
    peer_ifname: str  # its peer, a port of br0 in the switch namespace
    ipv4: str
    ipv6: str | None
    mac: str

    @property
    def ipv4_cidr(self) -> str:
        return f"{self.ipv4}/{PREFIX4}"

    @property
    def ipv6_cidr(self) -> str | None:
        return None if self.ipv6 is None else f"{self.ipv6}/{PREFIX6}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Host:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def default_name(pid: int | None = None) -> str:
    return f"xl{os.getpid() if pid is None else pid}"


def check_name(name: str) -> str:
    """A lab name becomes a prefix of netns names (files in /run/netns)."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise LabError(
            f"bad lab name {name!r}: use 1-32 characters [A-Za-z0-9_.], starting with a letter "
            "or digit"
        )
    return name


def ns_name(lab: str, role: str) -> str:
    return f"{lab}-{role}"


def ipv6_for(ipv4: str) -> str:
    """fd00::<last IPv4 octet in hex>: 10.0.0.10 -> fd00::a."""
    return f"fd00::{int(ipv4.rsplit('.', 1)[1]):x}"


def backend_numbers(count: int) -> list[int]:
    """Host numbers of ``count`` backends: 2, 3, ... skipping 10 and 16."""
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise LabError(f"backends must be an integer >= 1, not {count!r}")
    nums = [n for n in range(2, _MAX_BACKEND_NUM + 1) if n not in _SKIP_BACKEND]
    if count > len(nums):
        raise LabError(f"at most {len(nums)} backends fit in {SUBNET4}, not {count}")
    return nums[:count]


def client_numbers(count: int) -> list[int]:
    """Client numbers: 1 is the tutorial's client, 2.. are the extra clients cK."""
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise LabError(f"clients must be an integer >= 1, not {count!r}")
    if count > _MAX_CLIENT_NUM:
        raise LabError(f"at most {_MAX_CLIENT_NUM} clients fit in {SUBNET4}, not {count}")
    return list(range(1, count + 1))


def _host(lab: str, role: str, kind: str, ifname: str, peer: str, ipv4: str, mac: str,
          ipv6: bool) -> Host:
    return Host(role=role, kind=kind, ns=ns_name(lab, role), ifname=ifname, peer_ifname=peer,
                ipv4=ipv4, ipv6=ipv6_for(ipv4) if ipv6 else None, mac=mac)


def plan_hosts(lab: str, backends: int = 2, clients: int = 1, ipv6: bool = True,
               topology: str = "tutorial") -> dict[str, Host]:
    """All hosts of a lab, in creation order: clients, lb, (router,) backends."""
    check_name(lab)
    if topology not in TOPOLOGIES:
        raise LabError(f"topology must be one of {', '.join(TOPOLOGIES)}, not {topology!r}")
    hosts: dict[str, Host] = {}
    for k in client_numbers(clients):
        if k == 1:
            h = _host(lab, CLIENT_ROLE, "client", "veth0", "veth1", "10.0.0.1",
                      "de:ad:be:ef:00:01", ipv6)
        else:
            h = _host(lab, f"c{k}", "client", "eth0", f"vc{k}", f"10.0.0.{100 + k}",
                      f"de:ad:be:ef:01:{k:02x}", ipv6)
        hosts[h.role] = h
    hosts[LB_ROLE] = _host(lab, LB_ROLE, "lb", "veth6", "veth7", "10.0.0.10",
                           "de:ad:be:ef:00:10", ipv6)
    routed = topology == "routed"
    if routed:
        hosts[ROUTER_ROLE] = Host(role=ROUTER_ROLE, kind="router", ns=ns_name(lab, ROUTER_ROLE),
                                  ifname="eth0", peer_ifname="vrt0", ipv4=ROUTER["ipv4"],
                                  ipv6=ROUTER["ipv6"] if ipv6 else None, mac=ROUTER["mac"])
    for n in backend_numbers(backends):
        if n == 2:
            ifname, peer = "veth3", "veth2"
        elif n == 3:
            ifname, peer = "veth5", "veth4"
        else:
            ifname, peer = "eth0", f"vh{n}"
        h = _host(lab, f"h{n}", "backend", ifname, peer, f"10.0.{1 if routed else 0}.{n}",
                  f"de:ad:be:ef:00:{n:02x}", ipv6)
        if routed and h.ipv6:
            h = replace(h, ipv6=f"fd00:1::{n:x}")
        hosts[h.role] = h
    return hosts
