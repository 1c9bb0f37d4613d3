"""TOML configuration -> validated, frozen dataclasses.

Every problem raises `ConfigError` whose message reads ``FILE: KEY: reason``, e.g.
``lb.toml: vip[0].backend[1].mac: 'zz' is not a MAC address``. The format is described
in docs/config.md. `parse_ip` and `parse_mac` are shared with the command line.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import json
import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar, cast, get_args

from .errors import XdplbError
from .ring import DEFAULT_SIZE, is_prime, next_prime

__all__ = [
    "DEFAULTS",
    "Backend",
    "BgpAggregate",
    "BgpPeer",
    "BgpSettings",
    "ChallengeMode",
    "Config",
    "ConfigError",
    "Defaults",
    "FragPolicy",
    "HealthCheck",
    "IPAddress",
    "L4Proto",
    "LbSettings",
    "Mode",
    "RemovedPolicy",
    "SyncSettings",
    "Vip",
    "VipKey",
    "XdpMode",
    "backend_from_table",
    "check_document",
    "config_from_dict",
    "format_mac",
    "load_config",
    "load_request",
    "parse_config",
    "parse_ip",
    "parse_listen",
    "parse_mac",
    "vip_from_table",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
L4Proto = Literal["tcp", "udp"]
# full NAT (SNAT towards backends), L2 direct server return, or a tunnel to the backend
Mode = Literal["nat", "dsr", "ipip", "gue"]
RemovedPolicy = Literal["reselect", "reset"]  # flows of a removed backend
FragPolicy = Literal["pass", "drop"]  # IP fragments addressed to a VIP
XdpMode = Literal["auto", "native", "generic"]
ChallengeMode = Literal["auto", "off", "always"]  # the NAT SYN challenge (bpf/guard.h)


class VipKey(NamedTuple):
    """What identifies a VIP: (address, port, protocol); port 0 = every port."""

    address: IPAddress
    port: int
    protocol: L4Proto



@dataclass(frozen=True)
class Defaults:
    """The one table of defaults. The [lb] settings, `xdplb run`'s options, the data
    plane's load-time sizes and knobs (`_bpf.dataplane.Sizes`, `Knobs`) and the
    compiled-in values of bpf/maps.h (checked by tests/unit/test_defaults.py) come from
    here; docs/config.md names the same values."""

    hash_seed: int = 0x5EED1B0B  # u32; every node behind one ECMP group shares it
    nat_ports: tuple[int, int] = (10000, 32767)  # below Linux's default ip_local_port_range
    conntrack_size: int = 1 << 20  # flows of non-NAT VIPs (NAT flows: a set per NAT port)
    max_vips: int = 4096
    max_backends: int = 65536
    ring_size: int = DEFAULT_SIZE  # Maglev table slots per VIP (prime)
    frag_policy: FragPolicy = "pass"  # IP fragments to a VIP: "pass" to the host or "drop"
    xdp_mode: XdpMode = "auto"
    # flow timeouts, seconds (the loader writes them in jiffies); docs/config.md says why
    syn_timeout_s: float = 5.0  # embryonic TCP flow: SYN seen, handshake not confirmed
    tcp_timeout_s: float = 900.0  # confirmed TCP flow (IPVS's established timeout)
    closing_timeout_s: float = 10.0  # after FIN or RST (conntrack's and IPVS's CLOSE)
    udp_timeout_s: float = 30.0  # (conntrack's unreplied UDP)
    refresh_s: float = 1.0  # how often an established flow's last_seen is written
    # not NAT: entries non-SYN misses (flows ECMP moved here) may create, per CPU and second
    nonsyn_budget: int = 8192
    # NAT: the stateless SYN challenge (docs/dataplane.md, bpf/guard.h): "auto" engages it per
    # CPU above syn_challenge_rate SYN misses a second or when a handshake in flight loses its
    # way, for syn_challenge_hold_s after the last trigger; "off"; "always"
    syn_challenge: ChallengeMode = "auto"
    syn_challenge_rate: int = 10000
    syn_challenge_hold_s: float = 5.0
    verified_size: int = 65536  # client addresses that answered a challenge (LRU)
    verified_timeout_s: float = 300.0  # how long such an address skips the challenge
    rst_rate: int = 1000  # NAT: RST answers (non-SYN miss, full table) per CPU and second
    gue_port: int = 6080  # GUE (tunnel mode) UDP port: Katran's and the GUE drafts' usual
    pmtu_rate: int = 100  # tunnel modes: ICMP frag-needed/packet-too-big per second and CPU


DEFAULTS = Defaults()
# flow ages are 32-bit jiffies: 2^31 at HZ 1000 (the highest common HZ) is 24.8 days
MAX_FLOW_TIMEOUT = 2_000_000.0
MAX_RING_SIZE = 1 << 24
MAX_WEIGHT = 0xFFFF
DEFAULT_HOLD_TIME = 9  # seconds; keepalive every hold/3 (BGP's minimum hold is 3)
DEFAULT_BFD_INTERVAL_MS = 100  # 50 ms x 3 flapped on a loaded 2-core machine; 100 ms held
DEFAULT_BFD_MULTIPLIER = 3
MAX_ASN = 0xFFFFFFFF
TUNNEL_MODES = ("ipip", "gue")


class ConfigError(XdplbError, ValueError):
    """A configuration problem: where (source, key) and why (reason)."""

    def __init__(self, source: str, key: str | None, reason: str) -> None:
        self.source = source
        self.key = key
        self.reason = reason
        where = ": ".join(x for x in (source, key) if x)
        super().__init__(f"{where}: {reason}" if where else reason)


# --- value parsers shared with the CLI -----------------------------------------------

_MAC_RE = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}")


def parse_mac(s: str) -> bytes:
    """'de:ad:be:ef:00:02' (any case) -> 6 bytes; ValueError for any other string."""
    if not isinstance(s, str):
        raise TypeError(f"{s!r} is not a MAC address (expected a string)")
    if not _MAC_RE.fullmatch(s):
        raise ValueError(
            f"{s!r} is not a MAC address (expected six hex pairs like de:ad:be:ef:00:02)"
        )
    return bytes.fromhex(s.replace(":", ""))


def format_mac(mac: bytes) -> str:
    """6 bytes -> 'de:ad:be:ef:00:02'."""
    return ":".join(f"{b:02x}" for b in mac)


def parse_ip(s: str) -> IPAddress:
    """'10.0.0.2' or '2001:db8::2' -> ipaddress object; ValueError (for a bad string) says why."""
    if not isinstance(s, str):
        raise TypeError(f"{s!r} is not an IPv4 or IPv6 address (expected a string)")
    if "%" in s:
        raise ValueError(f"{s!r}: scoped IPv6 addresses (with %zone) are not supported")
    try:
        return ipaddress.ip_address(s)
    except ValueError:
        raise ValueError(f"{s!r} is not an IPv4 or IPv6 address") from None


# --- the model -------------------------------------------------------------------------


@dataclass(frozen=True)
class LbSettings:
    """The [lb] table: one data plane instance."""

    interface: str
    hash_seed: int = DEFAULTS.hash_seed  # u32; every node behind one ECMP group shares it
    nat_ports: tuple[int, int] = DEFAULTS.nat_ports  # inclusive source-port range for NAT
    conntrack_size: int = DEFAULTS.conntrack_size
    max_vips: int = DEFAULTS.max_vips
    max_backends: int = DEFAULTS.max_backends
    frag_policy: FragPolicy = DEFAULTS.frag_policy
    # flow timeouts (seconds) and the non-SYN entry budget: docs/config.md
    syn_timeout: float = DEFAULTS.syn_timeout_s
    tcp_timeout: float = DEFAULTS.tcp_timeout_s
    closing_timeout: float = DEFAULTS.closing_timeout_s
    udp_timeout: float = DEFAULTS.udp_timeout_s
    nonsyn_budget: int = DEFAULTS.nonsyn_budget
    # the NAT SYN challenge and RST answers: docs/config.md
    syn_challenge: ChallengeMode = DEFAULTS.syn_challenge
    syn_challenge_rate: int = DEFAULTS.syn_challenge_rate
    verified_size: int = DEFAULTS.verified_size
    verified_timeout: float = DEFAULTS.verified_timeout_s
    rst_rate: int = DEFAULTS.rst_rate
    name: str | None = None  # instance name (pins, control socket); None: the interface's
    metrics: tuple[str, int] | None = None  # Prometheus exporter (host, port); None: off
    gue_port: int = DEFAULTS.gue_port  # UDP destination port of GUE-mode VIPs' packets

    @property
    def instance(self) -> str:
        """Names the pinned state and the control socket: `name`, else the interface."""
        return self.name or self.interface


@dataclass(frozen=True)
class Backend:
    """A [[vip.backend]] entry."""

    address: IPAddress
    port: int  # nat: destination port; 0 = keep the client's (VIP port 0); dsr: the VIP's
    weight: int = 1  # 0 = draining: keeps its flows, gets no new ones
    mac: bytes | None = None  # None: next hop from the kernel FIB

    @functools.cached_property  # asked for every backend by every apply and status
    def key(self) -> str:
        """Stable identity for the Maglev ring: '10.0.0.2:8000', '[2001:db8::2]:80'."""
        return _host_port(self.address, self.port)


HEALTH_KINDS = ("tcp", "http", "udp", "dns", "exec", "none")
MIN_HEALTH_INTERVAL = 0.1  # seconds: a floor, so a typo cannot make the daemon spin
MAX_HEALTH_INTERVAL = 3600.0
MIN_HEALTH_TIMEOUT = 0.01
DNS_QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16,
              "AAAA": 28, "SRV": 33}


@dataclass(frozen=True)
class HealthCheck:
    """A [vip.health] table; kind 'none' (the default) means backends are always up.

    A backend that fails `fall` checks is *down*: by default (`on_down = "drain"`) it gets
    no new flows and keeps its established ones, for at most `max_drain_time` seconds
    (0: no limit); `on_down = "reset"` ends them at once. New backends start `initial`
    ("down": no traffic before `rise` checks pass)."""

    kind: str = "none"  # one of HEALTH_KINDS
    port: int | None = None  # None: each backend's port
    path: str = "/"  # http only
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    on_down: str = "drain"  # "drain" | "reset"
    max_drain_time: float = 0.0  # seconds; 0 = no limit
    initial: str = "down"  # "up" | "down": state of a backend before its first checks
    expect_status: tuple[int, ...] = ()  # http: accepted codes; () = any 2xx or 3xx
    host: str | None = None  # http: Host header (default: the backend's address:port)
    expect_body: str | None = None  # http: a substring the body must contain
    send: bytes = b""  # udp: the datagram sent
    expect: bytes | None = None  # udp: a substring the reply must hold; None = any reply
    query: str = "."  # dns: the name asked for (required for kind dns)
    qtype: str = "A"  # dns: the record type asked for
    command: tuple[str, ...] = ()  # exec: argv, run with XDPLB_BACKEND_ADDRESS/PORT set


@dataclass(frozen=True)
class Vip:
    """A [[vip]] entry: (address, port, protocol) and how to balance it."""

    name: str
    address: IPAddress
    port: int  # 0 = every port of the protocol
    protocol: L4Proto = "tcp"
    mode: Mode = "nat"
    snat: IPAddress | None = None  # nat: source address towards backends; None in dsr
    ring_size: int = DEFAULTS.ring_size
    on_backend_removed: RemovedPolicy = "reselect"
    udp_stateless: bool = False
    backends: tuple[Backend, ...] = ()
    health: HealthCheck = HealthCheck()
    announce: bool = True  # over [bgp] and [l2], while at least min_healthy backends are up
    min_healthy: int = 1
    communities: tuple[str, ...] = ()  # "65000:100" (standard) or "65000:1:2" (large)
    med: int | None = None
    # ipip/gue: outer source address(es), at most one per family; () = the interface's first
    # global address of the backend's family (resolved when the LB starts)
    tunnel_source: tuple[IPAddress, ...] = ()

    @property
    def key(self) -> VipKey:
        return VipKey(self.address, self.port, self.protocol)


@dataclass(frozen=True)
class BgpPeer:
    """A [[bgp.peer]]: a router this node announces its VIPs to."""

    address: IPAddress
    asn: int
    password: str | None = None  # TCP MD5 (RFC 2385)


@dataclass(frozen=True)
class BgpAggregate:
    """A [[bgp.aggregate]]: announced instead of the VIPs inside it while any is healthy."""

    prefix: ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class BgpSettings:
    """The [bgp] table: announcing VIPs through a routing daemon (BIRD 2)."""

    asn: int
    router_id: ipaddress.IPv4Address
    peers: tuple[BgpPeer, ...]
    hold_time: int = DEFAULT_HOLD_TIME
    bfd: bool = False
    bfd_interval_ms: int = DEFAULT_BFD_INTERVAL_MS
    bfd_multiplier: int = DEFAULT_BFD_MULTIPLIER
    aggregates: tuple[BgpAggregate, ...] = ()


@dataclass(frozen=True)
class SyncSettings:
    """The [sync] table: flow-state sync with the other nodes of an ECMP group."""

    listen: tuple[str, int]
    peers: tuple[tuple[str, int], ...]
    interval: float = 0.5  # seconds between rounds
    min_age: float = 1.0  # flows younger than this are not synced
    resend: float = 5.0  # a live flow is sent again this often (loss tolerance)
    max_bytes_per_s: int = 2_000_000  # bandwidth bound of what this node sends


@dataclass(frozen=True)
class L2Settings:
    """The [l2] table: the VIPs answer ARP/NDP on the LB's interface (single segment)."""

    announce: bool = False
    gratuitous: int = 3  # gratuitous ARPs / unsolicited NAs sent when a VIP is taken
    gratuitous_interval: float = 0.5  # seconds between them
    #: keepalived's track_file: "0" while this node can take the VIPs, "1" when it cannot
    #: (drained, no VIP with its backends, serve stopped or dead)
    track_file: str | None = None


@dataclass(frozen=True)
class Config:
    lb: LbSettings
    vips: tuple[Vip, ...] = ()
    source: str = "<string>"
    bgp: BgpSettings | None = None
    sync: SyncSettings | None = None
    l2: L2Settings | None = None


# --- loading ---------------------------------------------------------------------------


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML file; ConfigError names the file, key and reason."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(source, None, f"cannot read: {e.strerror} (errno {e.errno})") from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(source, None, f"not UTF-8 text (byte {e.start})") from e
    return parse_config(text, source)


MAX_DEPTH = 16  # tables and arrays nested deeper than any valid file needs


def parse_config(text: str, source: str = "<string>") -> Config:
    """Parse and validate TOML text; `source` names it in error messages."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", msg, re.DOTALL)
        if m:
            raise ConfigError(source, f"line {m[2]}, column {m[3]}", m[1]) from None
        raise ConfigError(source, "syntax", msg) from None
    except RecursionError:  # tomllib recurses once per nesting level
        raise ConfigError(source, None, f"nested more than {MAX_DEPTH} levels deep") from None
    return config_from_dict(doc, source)


def config_from_dict(doc: dict[str, Any], source: str = "<dict>") -> Config:
    """Validate a parsed document (TOML, JSON or built by the command line) with the
    same rules as a file."""
    check_document(doc, source)
    return _Parser(source).config(doc)


def check_document(doc: Any, source: str = "request", key: str = "") -> None:
    """Reject what no valid document holds and what would break a parser downstream:
    NUL bytes in strings or keys, and nesting deeper than MAX_DEPTH (iterative, so a
    100,000-deep document costs no recursion)."""
    stack: list[tuple[Any, str, int]] = [(doc, key, 0)]
    while stack:
        value, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ConfigError(source, where or None, f"nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, str):
            if "\x00" in value:
                raise ConfigError(source, where or None, "contains a NUL byte")
        elif isinstance(value, dict):
            for k, v in value.items():
                if not isinstance(k, str) or "\x00" in k:
                    raise ConfigError(source, where or None, f"key {k!r} contains a NUL byte")
                stack.append((v, f"{where}.{k}" if where else k, depth + 1))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                stack.append((v, f"{where}[{i}]", depth + 1))


def load_request(line: bytes | str, source: str = "request") -> Any:
    """One JSON control request, checked like a config document: ValueError (one line)
    for bad JSON, a NUL byte or nesting deeper than MAX_DEPTH."""
    try:
        req = json.loads(line)
    except RecursionError:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as e:
        raise ValueError(f"not JSON: {e}") from None
    try:
        check_document(req, source)
    except ConfigError as e:
        raise ValueError(str(e)) from None
    return req


def vip_from_table(data: dict[str, Any], source: str = "request", key: str = "vip") -> Vip:
    """One [[vip]] table given as a dict (a runtime `xdplb vip add`), validated exactly
    like a file's; ConfigError keys start with `key`."""
    p = _Parser(source)
    if not isinstance(data, dict):
        raise ConfigError(source, key, "expected a table")
    check_document(data, source, key)
    return p.vip(_Table(p, key, data))


def backend_from_table(data: dict[str, Any], vip: Vip, source: str = "request",
                       key: str = "backend") -> Backend:
    """One [[vip.backend]] table given as a dict, validated for `vip` like a file's."""
    if not isinstance(data, dict):
        raise ConfigError(source, key, "expected a table")
    check_document(data, source, key)
    return _Parser(source).backend(_Table(_Parser(source), key, data), vip.address, vip.port,
                                   vip.mode)


# --- validation --------------------------------------------------------------------------

_REQUIRED: Any = object()
T = TypeVar("T")


def _host_port(address: IPAddress, port: int) -> str:
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"{host}:{port}"


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"{type(value).__name__} {value}"


class _Table:
    """One TOML table being read: tracks its key path and which keys were used."""

    def __init__(self, parser: _Parser, path: str, data: dict[str, Any]) -> None:
        self.p = parser
        self.path = path
        self.data = data
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def fail(self, name: str | None, reason: str) -> ConfigError:
        return ConfigError(self.p.source, self.key(name) if name else self.path, reason)

    def has(self, name: str) -> bool:
        return name in self.data

    def get(self, name: str, check: Callable[[Any], T], what: str, default: Any = _REQUIRED) -> T:
        self.used.add(name)
        if name not in self.data:
            if default is _REQUIRED:
                raise self.fail(name, "required")
            return default  # type: ignore[no-any-return]
        value = self.data[name]
        try:
            return check(value)
        except _WrongType:
            raise self.fail(name, f"expected {what}, got {_describe(value)}") from None
        except ValueError as e:
            raise self.fail(name, str(e)) from None

    def integer(self, name: str, lo: int, hi: int, default: Any = _REQUIRED) -> int:
        def check(v: Any) -> int:
            if not isinstance(v, int) or isinstance(v, bool):
                raise _WrongType
            if not lo <= v <= hi:
                raise ValueError(f"{v} is out of range {lo}..{hi}")
            return v

        return self.get(name, check, "an integer", default)

    def number(self, name: str, default: Any = _REQUIRED) -> float:
        def check(v: Any) -> float:
            if not isinstance(v, int | float) or isinstance(v, bool):
                raise _WrongType
            if not math.isfinite(v) or v <= 0:
                raise ValueError(f"{v} must be a finite number of seconds > 0")
            return float(v)

        return self.get(name, check, "a number of seconds", default)

    def string(self, name: str, default: Any = _REQUIRED) -> str:
        def check(v: Any) -> str:
            if not isinstance(v, str):
                raise _WrongType
            return v

        return self.get(name, check, "a string", default)

    def boolean(self, name: str, default: Any = _REQUIRED) -> bool:
        def check(v: Any) -> bool:
            if not isinstance(v, bool):
                raise _WrongType
            return v

        return self.get(name, check, "true or false", default)

    def choice(self, name: str, choices: tuple[str, ...], default: Any = _REQUIRED) -> str:
        def check(v: Any) -> str:
            if not isinstance(v, str):
                raise _WrongType
            if v not in choices:
                raise ValueError(f"{v!r} is not one of " + ", ".join(repr(c) for c in choices))
            return v

        return self.get(name, check, "one of " + ", ".join(repr(c) for c in choices), default)

    def ip(self, name: str, default: Any = _REQUIRED) -> IPAddress:
        def check(v: Any) -> IPAddress:
            if not isinstance(v, str):
                raise _WrongType
            return _unicast(parse_ip(v))

        return self.get(name, check, "an IP address string", default)

    def table(self, name: str) -> _Table | None:
        def check(v: Any) -> dict[str, Any]:
            if not isinstance(v, dict):
                raise _WrongType
            return v

        data = self.get(name, check, "a table", None)
        return None if data is None else _Table(self.p, self.key(name), data)

    def tables(self, name: str) -> list[_Table]:
        def check(v: Any) -> list[dict[str, Any]]:
            if not isinstance(v, list) or not all(isinstance(t, dict) for t in v):
                raise _WrongType
            return v

        what = f"an array of tables ([[{self.key(name)}]])"
        items = self.get(name, check, what, [])
        return [_Table(self.p, f"{self.key(name)}[{i}]", t) for i, t in enumerate(items)]

    def done(self) -> None:
        """Reject keys nobody asked for, naming the first and suggesting a near match."""
        for name in self.data:
            if name not in self.used:
                near = [k for k in sorted(self.used) if k.startswith(name) or name.startswith(k)]
                near = near or difflib.get_close_matches(name, sorted(self.used), n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise self.fail(name, "unknown key" + hint)


class _WrongType(Exception):
    pass


def _unicast(addr: IPAddress) -> IPAddress:
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback:
        raise ValueError(f"{addr} is not a unicast host address")
    if addr.version == 4 and addr == ipaddress.IPv4Address("255.255.255.255"):
        raise ValueError(f"{addr} is not a unicast host address")
    return addr


def _family(addr: IPAddress) -> str:
    return f"IPv{addr.version}"


_IFNAME_BAD = re.compile(r"[/:\s]")


def _ifname(v: Any) -> str:
    if not isinstance(v, str):
        raise _WrongType
    # Linux dev_valid_name(): 1..15 bytes, not "." or "..", no '/', ':' or whitespace.
    if not v or len(v.encode()) > 15 or v in (".", "..") or _IFNAME_BAD.search(v):
        raise ValueError(f"{v!r} is not a valid interface name")
    return v


def _port_range(v: Any) -> tuple[int, int]:
    if not isinstance(v, str):
        raise _WrongType
    m = re.fullmatch(r"(\d{1,5})-(\d{1,5})", v)
    if not m:
        raise ValueError(f'{v!r} is not a port range like "61000-65535"')
    lo, hi = int(m[1]), int(m[2])
    if not (1024 <= lo <= 65535 and 1024 <= hi <= 65535):
        raise ValueError(f"{v!r}: ports must be within 1024..65535")
    if lo > hi:
        raise ValueError(f"{v!r}: the first port is above the last")
    return lo, hi


def _mac(v: Any) -> bytes:
    if not isinstance(v, str):
        raise _WrongType
    mac = parse_mac(v)
    if mac[0] & 1:
        raise ValueError(f"{v!r} is a multicast or broadcast MAC, not a host's")
    if mac == bytes(6):
        raise ValueError(f"{v!r} is the all-zero MAC, not a host's")
    return mac


def _name(v: Any) -> str:
    if not isinstance(v, str):
        raise _WrongType
    if not v or len(v) > 64 or not v.isascii() or not v.isprintable() or " " in v:
        raise ValueError(f"{v!r} is not a valid name (1..64 printable ASCII, no spaces)")
    return v


_INSTANCE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _instance(v: Any) -> str:
    if not isinstance(v, str):
        raise _WrongType
    if not _INSTANCE_RE.fullmatch(v) or v.endswith("."):
        raise ValueError(f"{v!r} is not a valid instance name (1..64 of A-Z a-z 0-9 _ . -, "
                         "starting with a letter or digit)")
    return v


def parse_listen(v: Any) -> tuple[str, int]:
    """'127.0.0.1:9100', '[::1]:9100', '10.0.0.1:9100'; ':9100' (no address) listens on
    loopback only: metrics reach other hosts only where the operator says so."""
    if not isinstance(v, str):
        raise _WrongType
    m = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]|([0-9.]*)):(\d{1,5})", v)
    if not m:
        raise ValueError(f'{v!r} is not an address like "127.0.0.1:9100" or "[::1]:9100"')
    host = m[1] or m[2] or "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{v!r}: {host!r} is not an IP address") from None
    port = int(m[3])
    if not 1 <= port <= 65535:
        raise ValueError(f"{v!r}: port {port} is out of range 1..65535")
    return host, port


def _path(v: Any) -> str:
    if not isinstance(v, str):
        raise _WrongType
    if not v.startswith("/") or not v.isascii() or not v.isprintable() or " " in v:
        raise ValueError(f"{v!r} is not an HTTP path (must start with '/', no spaces)")
    return v


def _password(v: Any) -> str:
    if not isinstance(v, str):
        raise _WrongType
    # it goes into the routing daemon's config between quotes
    if not 1 <= len(v) <= 80 or not v.isascii() or not v.isprintable() or any(
            c in v for c in "\"\\"):
        raise ValueError("must be 1..80 printable ASCII characters without quotes or backslashes")
    return v


def _prefix(v: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(v, str):
        raise _WrongType
    try:
        return ipaddress.ip_network(v, strict=True)
    except ValueError as e:
        raise ValueError(f"{v!r} is not a prefix like \"10.9.0.0/24\" ({e})") from None


_COMMUNITY_RE = re.compile(r"(\d{1,10}):(\d{1,10})(?::(\d{1,10}))?")


def _communities(v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(c, str) for c in v):
        raise _WrongType
    for c in v:
        m = _COMMUNITY_RE.fullmatch(c)
        if not m:
            raise ValueError(f"{c!r} is not a community like \"65000:100\" or \"65000:1:2\"")
        parts = [int(x) for x in m.groups() if x is not None]
        hi = 0xFFFF if len(parts) == 2 else 0xFFFFFFFF
        if any(x > hi for x in parts):
            raise ValueError(f"{c!r}: each part must be within 0..{hi}")
    return tuple(v)


def _seconds(t: _Table, name: str, lo: float, hi: float, default: float) -> float:
    """A number of seconds in [lo, hi]."""
    v = t.number(name, default)
    if not lo <= v <= hi:
        raise t.fail(name, f"{v:g} s is outside {lo:g} .. {hi:g} s")
    return v


def _abs_path(v: Any) -> str:
    if not isinstance(v, str):
        raise _WrongType
    if not v.startswith("/") or "\0" in v or v.endswith("/"):
        raise ValueError(f"{v!r} is not an absolute file path")
    return v


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source

    def config(self, doc: dict[str, Any]) -> Config:
        root = _Table(self, "", doc)
        lb_table = root.table("lb")
        vip_tables = root.tables("vip")
        bgp_table = root.table("bgp")
        sync_table = root.table("sync")
        l2_table = root.table("l2")
        root.done()
        if lb_table is None:
            raise ConfigError(self.source, "lb", "required table missing ([lb] with interface)")
        lb = self.lb(lb_table)
        bgp = None if bgp_table is None else self.bgp(bgp_table)
        sync = None if sync_table is None else self.sync(sync_table)
        l2 = None if l2_table is None else self.l2(l2_table)

        vips: list[Vip] = []
        by_key: dict[tuple[IPAddress, int, str], str] = {}
        by_name: dict[str, str] = {}
        total_backends = 0
        for t in vip_tables:
            vip = self.vip(t)
            if vip.key in by_key:
                where = f"{_host_port(vip.address, vip.port)}/{vip.protocol}"
                raise t.fail(None, f"duplicate of {by_key[vip.key]} ({where})")
            if vip.name in by_name:
                raise t.fail("name", f"{vip.name!r} is already used by {by_name[vip.name]}")
            lo, hi = lb.nat_ports
            if vip.mode == "nat" and vip.port and lo <= vip.port <= hi:
                raise t.fail("port", f"{vip.port} lies in lb.nat_ports {lo}-{hi} (the LB's "
                             "source ports towards backends)")
            by_key[vip.key] = by_name[vip.name] = t.path
            total_backends += len(vip.backends)
            if bgp is not None and vip.announce and vip.mode == "nat" and vip.snat == vip.address:
                # replies to the VIP would reach whichever node ECMP picks, not the one that
                # holds the flow's NAT port
                raise t.fail("snat", f"{vip.snat} is the VIP itself, but a VIP announced over "
                             "BGP runs on several nodes: give each node its own SNAT address "
                             "(e.g. the node's address) or set announce = false")
            vips.append(vip)

        if len(vips) > lb.max_vips:
            raise ConfigError(
                self.source,
                "lb.max_vips",
                f"{len(vips)} VIPs configured, max_vips is {lb.max_vips}",
            )
        if total_backends > lb.max_backends:
            raise ConfigError(
                self.source,
                "lb.max_backends",
                f"{total_backends} backends configured over all VIPs, "
                f"max_backends is {lb.max_backends}",
            )
        return Config(lb=lb, vips=tuple(vips), source=self.source, bgp=bgp, sync=sync, l2=l2)

    def l2(self, t: _Table) -> L2Settings:
        s = L2Settings(announce=t.boolean("announce", False),
                       gratuitous=t.integer("gratuitous", 0, 10, 3),
                       gratuitous_interval=_seconds(t, "gratuitous_interval", 0.01, 10.0, 0.5),
                       track_file=t.get("track_file", _abs_path, "an absolute path string",
                                        None))
        t.done()
        return s

    def sync(self, t: _Table) -> SyncSettings:
        what = 'a string like "10.2.0.11:5789"'
        listen = t.get("listen", parse_listen, what)

        def peers(v: Any) -> tuple[tuple[str, int], ...]:
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise _WrongType
            out = tuple(parse_listen(x) for x in v)
            if not out:
                raise ValueError("at least one peer")
            if len(set(out)) != len(out):
                raise ValueError("a peer is listed twice")
            return out

        s = SyncSettings(
            listen=listen,
            peers=t.get("peers", peers, f"an array of {what}"),
            interval=t.number("interval", 0.5),
            min_age=t.number("min_age", 1.0),
            resend=t.number("resend", 5.0),
            max_bytes_per_s=t.integer("max_bytes_per_s", 10_000, 1 << 34, 2_000_000),
        )
        if s.resend < s.interval:
            raise t.fail("resend", f"{s.resend:g} s is shorter than the interval "
                         f"({s.interval:g} s)")
        t.done()
        return s

    def bgp(self, t: _Table) -> BgpSettings:
        asn = t.integer("asn", 1, MAX_ASN)

        def router_id(v: Any) -> ipaddress.IPv4Address:
            if not isinstance(v, str):
                raise _WrongType
            try:
                return ipaddress.IPv4Address(v)
            except ValueError:
                raise ValueError(f"{v!r} is not an IPv4 address (BGP router ids are 32-bit, "
                                 "written like one)") from None

        rid = t.get("router_id", router_id, "an IPv4 address string")
        hold = t.integer("hold_time", 3, 65535, DEFAULT_HOLD_TIME)
        bfd = t.boolean("bfd", False)
        interval = t.integer("bfd_interval_ms", 10, 10000, DEFAULT_BFD_INTERVAL_MS)
        mult = t.integer("bfd_multiplier", 1, 255, DEFAULT_BFD_MULTIPLIER)
        peers: list[BgpPeer] = []
        seen: dict[IPAddress, str] = {}
        for pt in t.tables("peer"):
            address = pt.ip("address")
            if address in seen:
                raise pt.fail("address", f"{address} is already {seen[address]}")
            seen[address] = pt.path
            peers.append(BgpPeer(address=address, asn=pt.integer("asn", 1, MAX_ASN),
                                 password=pt.get("password", _password, "a string", None)))
            pt.done()
        if not peers:
            raise t.fail("peer", "at least one [[bgp.peer]] (address, asn) is required")
        aggregates: list[BgpAggregate] = []
        for at in t.tables("aggregate"):
            aggregates.append(BgpAggregate(at.get("prefix", _prefix, "a prefix string")))
            at.done()
        t.done()
        return BgpSettings(asn=asn, router_id=rid, peers=tuple(peers), hold_time=hold, bfd=bfd,
                           bfd_interval_ms=interval, bfd_multiplier=mult,
                           aggregates=tuple(aggregates))

    def lb(self, t: _Table) -> LbSettings:
        interface = t.get("interface", _ifname, "an interface name string")
        s = LbSettings(
            interface=interface,
            hash_seed=t.integer("hash_seed", 0, 0xFFFFFFFF, DEFAULTS.hash_seed),
            nat_ports=t.get(
                "nat_ports", _port_range, 'a string like "61000-65535"', DEFAULTS.nat_ports
            ),
            conntrack_size=t.integer("conntrack_size", 1024, 1 << 27, DEFAULTS.conntrack_size),
            max_vips=t.integer("max_vips", 1, 1 << 20, DEFAULTS.max_vips),
            max_backends=t.integer("max_backends", 1, 1 << 24, DEFAULTS.max_backends),
            frag_policy=cast(FragPolicy, t.choice("frag_policy", get_args(FragPolicy),
                                                  DEFAULTS.frag_policy)),
            syn_timeout=_seconds(t, "syn_timeout", 0.1, 600.0, DEFAULTS.syn_timeout_s),
            tcp_timeout=_seconds(t, "tcp_timeout", 1.0, MAX_FLOW_TIMEOUT,
                                 DEFAULTS.tcp_timeout_s),
            closing_timeout=_seconds(t, "closing_timeout", 0.1, 3600.0,
                                     DEFAULTS.closing_timeout_s),
            udp_timeout=_seconds(t, "udp_timeout", 1.0, MAX_FLOW_TIMEOUT,
                                 DEFAULTS.udp_timeout_s),
            nonsyn_budget=t.integer("nonsyn_budget", 0, 1 << 31, DEFAULTS.nonsyn_budget),
            syn_challenge=cast(ChallengeMode, t.choice("syn_challenge", get_args(ChallengeMode),
                                                      DEFAULTS.syn_challenge)),
            syn_challenge_rate=t.integer("syn_challenge_rate", 0, 1 << 31,
                                         DEFAULTS.syn_challenge_rate),
            verified_size=t.integer("verified_size", 16, 1 << 24, DEFAULTS.verified_size),
            verified_timeout=_seconds(t, "verified_timeout", 1.0, 86400.0,
                                      DEFAULTS.verified_timeout_s),
            rst_rate=t.integer("rst_rate", 0, 1 << 24, DEFAULTS.rst_rate),
            name=t.get("name", _instance, "a string", None),
            metrics=t.get("metrics", parse_listen, 'a string like "127.0.0.1:9100"', None),
            gue_port=t.integer("gue_port", 1, 65535, DEFAULTS.gue_port),
        )
        t.done()
        return s

    def vip(self, t: _Table) -> Vip:
        address = t.ip("address")
        port = t.integer("port", 0, 65535)
        protocol = cast(L4Proto, t.choice("protocol", get_args(L4Proto), "tcp"))
        mode = cast(Mode, t.choice("mode", get_args(Mode), "nat"))
        default_name = f"{_host_port(address, port)}/{protocol}"
        name = t.get("name", _name, "a string", default_name)

        snat: IPAddress | None = None
        if mode == "nat":
            snat = t.ip("snat", address)
            if snat.version != address.version:
                raise t.fail("snat", f"{snat} is {_family(snat)} but the VIP is {_family(address)}")
        elif t.has("snat"):
            raise t.fail("snat", f"only for mode = 'nat' ({mode} keeps the client's source "
                         "address)")
        tunnel_source = self.tunnel_source(t, mode)

        ring_size = t.integer("ring_size", 2, MAX_RING_SIZE, DEFAULTS.ring_size)
        if not is_prime(ring_size):
            raise t.fail("ring_size", f"{ring_size} is not prime (try {next_prime(ring_size)})")
        on_removed = cast(RemovedPolicy, t.choice("on_backend_removed", get_args(RemovedPolicy),
                                                  "reselect"))
        udp_stateless = t.boolean("udp_stateless", False)
        if udp_stateless and not (mode == "dsr" and protocol == "udp"):
            raise t.fail("udp_stateless", "only allowed with mode = 'dsr' and protocol = 'udp'")

        backends: list[Backend] = []
        seen: dict[tuple[IPAddress, int], str] = {}
        for bt in t.tables("backend"):
            b = self.backend(bt, address, port, mode)
            if tunnel_source and b.address.version not in {a.version for a in tunnel_source}:
                raise t.fail("tunnel_source", f"no {_family(b.address)} address for backend "
                             f"{b.address} ({bt.path})")
            if (b.address, b.port) in seen:
                raise bt.fail(None, f"duplicate of {seen[b.address, b.port]} ({b.key})")
            seen[b.address, b.port] = bt.path
            backends.append(b)
        if backends and ring_size < len(backends):
            raise t.fail(
                "ring_size",
                f"{ring_size} slots for {len(backends)} backends; use at least "
                f"{next_prime(100 * len(backends))}",
            )

        health_table = t.table("health")
        health = (HealthCheck() if health_table is None
                  else self.health(health_table, port, protocol))
        announce = t.boolean("announce", True)
        min_healthy = t.integer("min_healthy", 1, 1 << 16, 1)
        communities = t.get("communities", _communities, "an array of strings like \"65000:100\"",
                            ())
        med = t.integer("med", 0, 0xFFFFFFFF, None)
        t.done()
        return Vip(
            name=name,
            address=address,
            port=port,
            protocol=protocol,
            mode=mode,
            snat=snat,
            ring_size=ring_size,
            on_backend_removed=on_removed,
            udp_stateless=udp_stateless,
            backends=tuple(backends),
            health=health,
            announce=announce,
            min_healthy=min_healthy,
            communities=communities,
            med=med,
            tunnel_source=tunnel_source,
        )

    def tunnel_source(self, t: _Table, mode: str) -> tuple[IPAddress, ...]:
        """`tunnel_source`: an address or an array of them (one per family), ipip/gue only."""
        if not t.has("tunnel_source"):
            return ()
        if mode not in TUNNEL_MODES:
            t.used.add("tunnel_source")
            raise t.fail("tunnel_source", "only for mode = 'ipip' or 'gue'")

        def check(v: Any) -> tuple[IPAddress, ...]:
            items = v if isinstance(v, list) else [v]
            if not items or not all(isinstance(x, str) for x in items):
                raise _WrongType
            addrs = tuple(_unicast(parse_ip(x)) for x in items)
            fams = [a.version for a in addrs]
            if len(set(fams)) != len(fams):
                raise ValueError("at most one address per family (IPv4, IPv6)")
            return addrs

        return t.get("tunnel_source", check, "an IP address string or an array of them")

    def backend(self, t: _Table, vip_address: IPAddress, vip_port: int, mode: str) -> Backend:
        address = t.ip("address")
        # GUE carries either family in either family; IPIP here stays 4-in-4 and 6-in-6
        if address.version != vip_address.version and mode != "gue":
            hint = " (mode = 'gue' carries either family in either)" if mode == "ipip" else ""
            raise t.fail(
                "address", f"{address} is {_family(address)} but the VIP is "
                f"{_family(vip_address)}{hint}"
            )
        mac = t.get("mac", _mac, "a MAC address string", None)
        port = vip_port
        if t.has("port"):
            if mode != "nat":
                t.used.add("port")
                raise t.fail("port", f"only for mode = 'nat' ({mode} keeps the VIP's port)")
            if vip_port == 0:
                t.used.add("port")
                raise t.fail(
                    "port",
                    "the VIP has port 0 (all ports), so backends keep the client's "
                    "destination port; remove this key",
                )
            port = t.integer("port", 1, 65535)
        weight = t.integer("weight", 0, MAX_WEIGHT, 1)
        t.done()
        return Backend(address=address, port=port, weight=weight, mac=mac)

    def health(self, t: _Table, vip_port: int, protocol: str) -> HealthCheck:
        kind = t.choice("kind", HEALTH_KINDS, "udp" if protocol == "udp" else "tcp")
        port = t.integer("port", 1, 65535, None)
        if kind not in ("none", "exec") and port is None:
            if vip_port == 0:
                raise t.fail("port", "required when the VIP's port is 0 (all ports)")
            # a check speaks one protocol to the backend's port: on the VIP's own port it
            # must be the VIP's protocol (a TCP connect to a UDP service always fails)
            own = "udp" if kind in ("udp", "dns") else "tcp"
            if own != protocol:
                raise t.fail("kind", f"{kind!r} checks a {own.upper()} port but the VIP is "
                             f"{protocol.upper()}: use " + ("'udp' or 'dns'" if protocol == "udp"
                                                             else "'tcp' or 'http'")
                             + f", or give the {own.upper()} port to check (port = N)")
        only = {"path": "http", "expect_status": "http", "host": "http", "expect_body": "http",
                "send": "udp", "expect": "udp", "query": "dns", "qtype": "dns",
                "command": "exec"}
        for key, owner in only.items():
            if t.has(key) and kind != owner:
                t.used.add(key)
                raise t.fail(key, f"only for kind = {owner!r}")
        path = t.get("path", _path, "a string", "/")
        expect_status = tuple(t.get("expect_status", _status_list,
                                    "an array of HTTP status codes", ()))
        host = t.get("host", _header_value, "a string", None)
        expect_body = t.get("expect_body", _nonempty, "a string", None)
        send = t.get("send", _payload, "a string", "").encode()
        expect_s = t.get("expect", _payload, "a string", None)
        query = t.get("query", _dns_name, "a domain name string",
                      _REQUIRED if kind == "dns" else ".")
        qtype = t.choice("qtype", tuple(DNS_QTYPES), "A")
        command: tuple[str, ...] = ()
        if kind == "exec":
            command = tuple(t.get("command", _argv, "an array of strings (argv)"))
        interval = t.number("interval", 2.0)
        if not MIN_HEALTH_INTERVAL <= interval <= MAX_HEALTH_INTERVAL:
            raise t.fail("interval", f"{interval:g} s is out of range {MIN_HEALTH_INTERVAL:g}.."
                         f"{MAX_HEALTH_INTERVAL:g} s")
        timeout = t.number("timeout", min(1.0, interval))
        if timeout < MIN_HEALTH_TIMEOUT:
            raise t.fail("timeout", f"{timeout:g} s is below {MIN_HEALTH_TIMEOUT:g} s")
        if timeout > interval:
            raise t.fail("timeout", f"{timeout:g} s is longer than the interval ({interval:g} s)")
        rise = t.integer("rise", 1, 1000, 2)
        fall = t.integer("fall", 1, 1000, 3)
        on_down = t.choice("on_down", ("drain", "reset"), "drain")
        max_drain_time = t.get("max_drain_time", _seconds_or_zero,
                               "a number of seconds", 0.0)
        initial = t.choice("initial", ("up", "down"), "down")
        t.done()
        return HealthCheck(
            kind=kind,
            port=port,
            path=path,
            interval=interval,
            timeout=timeout,
            rise=rise,
            fall=fall,
            on_down=on_down,
            max_drain_time=max_drain_time,
            initial=initial,
            expect_status=expect_status,
            host=host,
            expect_body=expect_body,
            send=send,
            expect=None if expect_s is None else expect_s.encode(),
            query=query,
            qtype=qtype,
            command=command,
        )


def _status_list(v: Any) -> list[int]:
    if not isinstance(v, list) or not all(isinstance(x, int) and not isinstance(x, bool)
                                          for x in v):
        raise _WrongType
    if not v:
        raise ValueError("empty: list the accepted codes, e.g. [200, 204]")
    for x in v:
        if not 100 <= x <= 599:
            raise ValueError(f"{x} is not an HTTP status code (100..599)")
    return v


def _header_value(v: Any) -> str:
    if not isinstance(v, str):
        raise _WrongType
    if not v or not v.isascii() or not v.isprintable():
        raise ValueError(f"{v!r} is not a header value (printable ASCII)")
    return v


def _nonempty(v: Any) -> str:
    if not isinstance(v, str):
        raise _WrongType
    if not v:
        raise ValueError("empty (leave the key out instead)")
    return v


def _payload(v: Any) -> str:
    if not isinstance(v, str):
        raise _WrongType
    if len(v.encode()) > 1400:
        raise ValueError(f"{len(v.encode())} bytes: a check datagram is at most 1400")
    return v


_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def _dns_name(v: Any) -> str:
    if not isinstance(v, str):
        raise _WrongType
    name = v.rstrip(".")
    if v != "." and (not name or len(name) > 253
                     or not all(_LABEL.fullmatch(x) for x in name.split("."))):
        raise ValueError(f"{v!r} is not a domain name")
    return v


def _argv(v: Any) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise _WrongType
    if not v or not v[0]:
        raise ValueError("empty: give the program and its arguments, e.g. "
                         '["/usr/local/bin/check", "--quick"]')
    if not v[0].startswith("/"):
        raise ValueError(f"{v[0]!r}: give the program's absolute path")
    return v


def _seconds_or_zero(v: Any) -> float:
    if not isinstance(v, int | float) or isinstance(v, bool):
        raise _WrongType
    if not math.isfinite(v) or v < 0 or v > 86400 * 7:
        raise ValueError(f"{v} must be a number of seconds 0..604800 (0 = no limit)")
    return float(v)
