"""L2 announcement: the VIPs answer ARP (IPv4) and NDP (IPv6) on the LB's interface.

For a single segment (clients, or their router, on the LB's own link) the VIP must be
resolvable to the LB's MAC. ``serve`` with ``[l2] announce = true`` does it from the data
plane's own state, by the same rule as the BGP announcement (``announce.wanted_routes``):
a VIP address answers while the data plane is attached, the node is not drained, and at least
one VIP on that address has ``announce = true`` and ``min_healthy`` backends up.

Mechanism: the VIP is added to the interface as a host address (``/32`` or ``/128``,
``noprefixroute``, IPv6 ``nodad``), so the kernel answers ARP requests and neighbour
solicitations for it (and joins the solicited-node group) the way it does for any address;
when a VIP is taken, ``serve`` sends ``gratuitous`` gratuitous ARPs (RFC 5227 announcements)
or unsolicited neighbour advertisements (RFC 4861 7.2.6, override flag) from a packet socket,
so that neighbours holding another MAC for it (a former owner) switch at once. Withdrawing
deletes the address: the kernel stops answering.

The kernel then also owns the VIP for traffic the data plane passes (ports and protocols no
VIP balances): TCP is answered with a reset, UDP with ICMP port unreachable, ping is answered,
and a host service listening on a wildcard address is reachable on the VIP (docs/operations.md).

A dead ``serve`` must not leave the addresses behind: a guard (``_l2guard.py``) runs as its
child and is told each address before it is added; when serve's pipe closes (any exit, SIGKILL
included) the guard deletes what is left. The list is also kept in a file in the run directory,
so a serve started after a crash that took the guard too removes the leftovers first.

Pure parts (frames, ``wanted_addresses``) are unit-tested; the announcer is tested with real
ARP/NDP in the lab (tests/e2e/test_l2_announce.py).
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .announce import VipHealth, wanted_routes
from .config import L2Settings
from .errors import XdplbError
from .frames import inet_csum, pseudo_header

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address
ETH_P_ARP, ETH_P_IPV6 = 0x0806, 0x86DD
BROADCAST = b"\xff" * 6
ALL_NODES = ipaddress.IPv6Address("ff02::1")
IP_TIMEOUT = 5.0
#: a stopping serve that was ready keeps forwarding this long after its track file says 1,
#: so that the peer has the VIP (and the clients its MAC) before the data plane detaches
HANDOVER_S = 0.5
_GUARD = Path(__file__).with_name("_l2guard.py")


class L2Error(XdplbError):
    """An address could not be added or removed, or a frame could not be sent."""


# --------------------------------------------------------------------------- frames (pure)
def mac_bytes(mac: str) -> bytes:
    b = bytes.fromhex(mac.replace(":", ""))
    if len(b) != 6:
        raise ValueError(f"{mac!r} is not an Ethernet MAC")
    return b


def format_mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def arp_frame(op: int, sha: bytes, spa: ipaddress.IPv4Address, tha: bytes,
              tpa: ipaddress.IPv4Address, dst: bytes = BROADCAST) -> bytes:
    """An Ethernet ARP frame (op 1 request, 2 reply)."""
    return (dst + sha + struct.pack("!H", ETH_P_ARP)
            + struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + sha + spa.packed + tha + tpa.packed)


def gratuitous_arp(mac: bytes, ip: ipaddress.IPv4Address) -> bytes:
    """RFC 5227 ARP announcement: a broadcast request with sender = target = the address.
    A neighbour holding an entry for it takes the new MAC (Linux: whatever the locktime)."""
    return arp_frame(1, mac, ip, b"\0" * 6, ip)


def _icmp6(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, body: bytes) -> bytes:
    """IPv6 header + ICMPv6 message (checksum filled), hop limit 255 as NDP requires."""
    csum = inet_csum(pseudo_header(src.packed, dst.packed, 58, len(body)) + body)
    body = body[:2] + struct.pack("!H", csum) + body[4:]
    return struct.pack("!IHBB", 6 << 28, len(body), 58, 255) + src.packed + dst.packed + body


def multicast_mac(ip: ipaddress.IPv6Address) -> bytes:
    return b"\x33\x33" + ip.packed[-4:]


def unsolicited_na(mac: bytes, ip: ipaddress.IPv6Address) -> bytes:
    """RFC 4861 7.2.6: a neighbour advertisement to all nodes, override set, solicited not,
    with the target link-layer address option."""
    body = struct.pack("!BBHI", 136, 0, 0, 0x20000000) + ip.packed + bytes([2, 1]) + mac
    return multicast_mac(ALL_NODES) + mac + struct.pack("!H", ETH_P_IPV6) + _icmp6(
        ip, ALL_NODES, body)


def solicited_node(ip: ipaddress.IPv6Address) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(b"\xff\x02" + b"\0" * 9 + b"\x01\xff" + ip.packed[-3:])


def neighbour_solicitation(mac: bytes, src: ipaddress.IPv6Address,
                           target: ipaddress.IPv6Address) -> bytes:
    dst = solicited_node(target)
    body = struct.pack("!BBHI", 135, 0, 0, 0) + target.packed + bytes([1, 1]) + mac
    return multicast_mac(dst) + mac + struct.pack("!H", ETH_P_IPV6) + _icmp6(src, dst, body)


def announcement(mac: bytes, ip: IPAddr) -> bytes:
    """The frame that tells the segment `ip` is at `mac`."""
    if isinstance(ip, ipaddress.IPv4Address):
        return gratuitous_arp(mac, ip)
    return unsolicited_na(mac, ip)


def parse_announcement(frame: bytes) -> tuple[str, IPAddr, bytes] | None:
    """("arp-request"|"arp-reply"|"na"|"ns", address, MAC) of an ARP or NDP frame, else None.
    For ARP the address is the sender's; for NA the target and its link-layer option; for NS
    the target (MAC = the frame's source)."""
    if len(frame) < 14:
        return None
    etype = struct.unpack("!H", frame[12:14])[0]
    if etype == ETH_P_ARP and len(frame) >= 42:
        op = struct.unpack("!H", frame[20:22])[0]
        kind = {1: "arp-request", 2: "arp-reply"}.get(op)
        if kind is None:
            return None
        return kind, ipaddress.IPv4Address(frame[28:32]), frame[22:28]
    if etype == ETH_P_IPV6 and len(frame) >= 14 + 40 + 24 and frame[20] == 58:
        icmp = frame[54:]
        if icmp[0] == 136:
            target = ipaddress.IPv6Address(icmp[8:24])
            opts = icmp[24:]
            while len(opts) >= 8 and opts[1]:
                if opts[0] == 2:
                    return "na", target, opts[2:8]
                opts = opts[opts[1] * 8:]
            return "na", target, frame[6:12]
        if icmp[0] == 135:
            return "ns", ipaddress.IPv6Address(icmp[8:24]), frame[6:12]
    return None


def host_prefix(ip: IPAddr) -> str:
    return f"{ip}/{ip.max_prefixlen}"


def wanted_addresses(vips: Iterable[VipHealth], attached: bool = True,
                     drained: bool = False) -> dict[IPAddr, str]:
    """VIP address -> the names of the VIPs it answers for, by the BGP rule (pure)."""
    routes = wanted_routes(vips, (), attached, drained)
    return {r.prefix.network_address: r.why for r in routes.values()}


def unready(vips: Iterable[VipHealth], attached: bool = True, drained: bool = False) -> list[str]:
    """Why this node cannot take the VIPs as a whole (a VRRP pair's master), [] when it can:
    it is attached, not drained, and one VIP with announce = true (if any) has min_healthy
    backends up. One VIP whose backends are down on both nodes must not take the others
    away: only a node with none to serve gives up (pure)."""
    if not attached:
        return ["the data plane is not attached"]
    if drained:
        return ["node drained (`xdplb node resume` to take traffic again)"]
    judged = [vh for vh in vips if vh.vip.announce]
    if judged and all(vh.healthy < vh.vip.min_healthy for vh in judged):
        return [f"{vh.vip.name} has {vh.healthy} of {vh.vip.min_healthy} backends up"
                for vh in judged]
    return []


# --------------------------------------------------------------------------- the announcer
@dataclass
class L2Announcer:
    """Host addresses on the LB's interface for the VIPs that should answer, and the
    gratuitous frames that announce a take-over. Driven like announce.Announcer."""

    settings: L2Settings
    interface: str
    run_dir: Path  # the state file (addresses added, for a crash's leftovers) lives here
    instance: str
    log: Callable[..., None] = field(default=lambda event, level="info", **kw: None)
    attached: bool = True
    drained: bool = False
    announced: dict[IPAddr, str] = field(default_factory=dict)  # added by us -> VIP names
    static: dict[IPAddr, str] = field(default_factory=dict)  # already the interface's own
    _vips: list[VipHealth] = field(default_factory=list)
    _guard: subprocess.Popen | None = None
    _guard_in: IO[str] | None = None
    _pending: dict[IPAddr, tuple[int, float]] = field(default_factory=dict)  # left, next
    _mac: bytes = b""
    sent: int = 0
    track_state: int | None = None  # what the track file says: 0 ready, 1 not

    @property
    def state_file(self) -> Path:
        return self.run_dir / f"{self.instance}.l2.json"

    # ------------------------------------------------------------------ process
    def start(self) -> None:
        """Remove what a crashed serve left, start the guard (L2Error if it cannot)."""
        try:
            self._mac = mac_bytes(_link(self.interface)["address"])
        except (KeyError, ValueError) as e:
            raise L2Error(f"{self.interface}: no Ethernet address ({e})") from None
        self._cleanup_leftovers()
        self._track(1)  # not ready until the first update says so
        self._spawn_guard()
        self.log("l2_started", interface=self.interface, guard=self.guard_pid,
                 mac=format_mac(self._mac), announce=self.settings.announce,
                 track_file=self.settings.track_file)

    def _cleanup_leftovers(self) -> None:
        try:
            left = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return
        mine = set(_addresses(self.interface))
        for a in left if isinstance(left, list) else []:
            with contextlib.suppress(ValueError):
                ip = ipaddress.ip_address(a)
                if ip in mine:
                    _ip("address", "del", host_prefix(ip), "dev", self.interface, check=False)
                    self.log("l2_leftover_removed", address=str(ip))
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()

    def _spawn_guard(self) -> None:
        argv = [sys.executable, "-I", "-S", str(_GUARD), self.interface]
        if self.settings.track_file:
            argv.append(self.settings.track_file)
        try:
            self._guard = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                start_new_session=True, close_fds=True)
        except OSError as e:
            raise L2Error(f"cannot start the L2 guard: {e.strerror}") from None
        self._guard_in = self._guard.stdin
        for ip in self.announced:  # a restarted guard learns what is held
            self._tell("+", ip)

    @property
    def guard_pid(self) -> int | None:
        return None if self._guard is None else self._guard.pid

    def running(self) -> bool:
        return self._guard is not None and self._guard.poll() is None

    def check(self) -> None:
        """Start the guard again if it died (without it a crash would leave the VIPs)."""
        if self._guard is not None and self._guard.poll() is not None:
            self.log("l2_guard_died", level="warning", rc=self._guard.returncode)
            self._close_guard()
            self._spawn_guard()

    def _tell(self, op: str, ip: IPAddr) -> None:
        if self._guard_in is None:
            return
        try:
            self._guard_in.write(f"{op} {host_prefix(ip)}\n")
            self._guard_in.flush()
        except (OSError, ValueError):  # guard gone: check() restarts it
            pass

    def _close_guard(self) -> None:
        g, f = self._guard, self._guard_in
        self._guard = self._guard_in = None
        if f is not None:
            with contextlib.suppress(OSError, ValueError):
                f.close()  # EOF: the guard deletes what it still holds, then exits
        if g is not None:
            try:
                g.wait(5)
            except subprocess.TimeoutExpired:
                g.kill()
                g.wait()

    def stop(self) -> None:
        """Give the VIPs up (track file first: the peer takes over while we withdraw),
        withdraw every address, then end the guard."""
        was_ready = self.track_state == 0
        with contextlib.suppress(L2Error):
            if self._track(1) and was_ready:
                time.sleep(HANDOVER_S)
        with contextlib.suppress(L2Error):
            self._apply({})
        self._close_guard()
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()

    # ------------------------------------------------------------------ addresses
    def update(self, vips: Iterable[VipHealth] | None = None) -> list[str]:
        """Answer for what the VIPs' state asks; returns the changes ("answer 10.0.0.100")."""
        if vips is not None:
            self._vips = list(vips)
        why = unready(self._vips, self.attached, self.drained)
        changes = self._track(1, why) if why else []  # give the VIPs up, then withdraw
        changes += self._apply(wanted_addresses(self._vips, self.attached, self.drained)
                               if self.settings.announce else {})
        if not why:
            changes += self._track(0)
        return changes

    def _track(self, state: int, why: list[str] | None = None) -> list[str]:
        """Write keepalived's track file when its value changes (in place: keepalived
        reads it on the inotify event of the write); the change, as a line."""
        path = self.settings.track_file
        if not path or state == self.track_state:
            return []
        try:
            with open(path, "w") as f:
                f.write(f"{state}\n")
        except OSError as e:
            raise L2Error(f"cannot write the track file {path}: {e.strerror}") from None
        self.track_state = state
        what = ("ready: may hold the VIPs" if state == 0 else "not ready: "
                + ("; ".join(why) if why else "starting or stopping"))
        self.log("l2_track", file=path, state=state, what=what)
        return [f"track file {path}: {state} ({what})"]

    def drain(self) -> list[str]:
        self.drained = True
        return self.update()

    def resume(self) -> list[str]:
        self.drained = False
        return self.update()

    def _apply(self, want: dict[IPAddr, str]) -> list[str]:
        changes: list[str] = []
        for ip in [ip for ip in self.announced if ip not in want]:
            _ip("address", "del", host_prefix(ip), "dev", self.interface, check=False)
            del self.announced[ip]
            self._pending.pop(ip, None)
            self._tell("-", ip)
            changes.append(f"withdraw {ip}")
            self.log("l2_withdraw", address=str(ip), interface=self.interface)
        for ip in [ip for ip in self.static if ip not in want]:
            del self.static[ip]
        new = [ip for ip in want if ip not in self.announced and ip not in self.static]
        own = set(_addresses(self.interface)) if new else set()
        for ip in new:
            if ip in own:  # the interface's own address: the kernel answers regardless
                self.static[ip] = want[ip]
                self.log("l2_static", level="warning", address=str(ip),
                         interface=self.interface, what="already an address of the interface "
                         "(not added by xdplb): answered whatever the VIP's state")
                continue
            self._tell("+", ip)  # before adding: a crash right after cannot leak it
            self._save([*self.announced, ip])
            flags = ["noprefixroute"] + (["nodad"] if ip.version == 6 else [])
            err = _ip("address", "add", host_prefix(ip), "dev", self.interface, *flags,
                      check=False)
            if err and "File exists" not in err:
                self._tell("-", ip)
                self._save(list(self.announced))
                raise L2Error(f"cannot add {host_prefix(ip)} to {self.interface}: {err}")
            self.announced[ip] = want[ip]
            changes.append(f"answer {ip}")
            self.log("l2_answer", address=str(ip), interface=self.interface, vips=want[ip])
            self._announce(ip)
            if self.settings.gratuitous > 1:
                self._pending[ip] = (self.settings.gratuitous - 1,
                                     time.monotonic() + self.settings.gratuitous_interval)
        if not self.announced:
            with contextlib.suppress(FileNotFoundError):
                self.state_file.unlink()
        else:
            self._save(list(self.announced))
        return changes

    def _save(self, ips: list[IPAddr]) -> None:
        tmp = self.state_file.with_name(f".{self.state_file.name}.tmp")
        try:
            tmp.write_text(json.dumps([str(i) for i in ips]) + "\n")
            os.replace(tmp, self.state_file)
        except OSError as e:  # the guard still holds them; say why the file is stale
            self.log("l2_state_file", level="warning", error=e.strerror or str(e))

    def _announce(self, ip: IPAddr) -> None:
        if self.settings.gratuitous < 1:
            return
        try:
            with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
                s.bind((self.interface, 0))
                s.send(announcement(self._mac, ip))
            self.sent += 1
        except OSError as e:  # the address answers requests anyway; say why
            self.log("l2_announce_failed", level="warning", address=str(ip),
                     error=e.strerror or str(e))

    def tick(self, now: float | None = None) -> None:
        """Send the repeated announcements that are due (called every ~0.1 s)."""
        now = time.monotonic() if now is None else now
        for ip, (left, due) in list(self._pending.items()):
            if now < due:
                continue
            self._announce(ip)
            if left <= 1:
                del self._pending[ip]
            else:
                self._pending[ip] = (left - 1, now + self.settings.gratuitous_interval)

    def status(self) -> dict[str, Any]:
        return {"interface": self.interface, "drained": self.drained,
                "attached": self.attached, "guard_pid": self.guard_pid,
                "guard_running": self.running(),
                "announce": self.settings.announce,
                "track_file": self.settings.track_file, "track_state": self.track_state,
                "answering": {str(ip): why for ip, why in self.announced.items()},
                "static": {str(ip): why for ip, why in self.static.items()},
                "announcements_sent": self.sent}


# --------------------------------------------------------------------------- ip(8)
def _ip(*args: str, check: bool = True) -> str:
    """Run `ip ARGS`; its error text ("" on success). L2Error when check and it failed."""
    try:
        p = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT,
                           check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise L2Error(f"ip {' '.join(args)}: {e}") from None
    err = "" if p.returncode == 0 else (p.stderr.strip() or f"exit {p.returncode}")
    if err and check:
        raise L2Error(f"ip {' '.join(args)}: {err}")
    return err


def _link(iface: str) -> dict:
    out = subprocess.run(["ip", "-j", "link", "show", "dev", iface], capture_output=True,
                         text=True, timeout=IP_TIMEOUT, check=False)
    try:
        return json.loads(out.stdout)[0]
    except (ValueError, IndexError):
        raise L2Error(f"no interface {iface!r}: {out.stderr.strip()}") from None


def _addresses(iface: str) -> list[IPAddr]:
    out = subprocess.run(["ip", "-j", "address", "show", "dev", iface], capture_output=True,
                         text=True, timeout=IP_TIMEOUT, check=False)
    try:
        infos = json.loads(out.stdout)[0].get("addr_info", [])
    except (ValueError, IndexError):
        return []
    return [ipaddress.ip_address(a["local"]) for a in infos if "local" in a]
