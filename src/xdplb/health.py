"""Backend health checks for `xdplb serve`: a rise/fall state machine and asyncio probes.

A backend starts in its check's `initial` state ("down" by default: no traffic before
`rise` checks pass), goes down after `fall` consecutive failures and up again after `rise`
consecutive successes. Probes run from the daemon's own network namespace (the LB's):

    tcp   a connect
    http  a GET: the status must be in `expect_status` (default any 2xx or 3xx), the body
          must hold `expect_body` when given; `host` sets the Host header
    udp   a datagram (`send`) to the port: a reply must come back (holding `expect` when
          given); an ICMP port unreachable fails at once
    dns   a query for `query`/`qtype`: the reply must be NOERROR with an answer record
    exec  a command (absolute argv) that must exit 0 within the timeout; it finds the
          backend in XDPLB_BACKEND_ADDRESS and XDPLB_BACKEND_PORT

What a down backend means for traffic (drain or reset) is the controller's business.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import random
import struct
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .config import DNS_QTYPES, HealthCheck, IPAddress

__all__ = ["HealthMonitor", "HealthState", "Probe", "Target", "make_probe", "probe_dns",
           "probe_exec", "probe_http", "probe_tcp", "probe_udp"]

#: probe(address, port) -> (ok, detail); detail says why on failure ("connection refused")
Probe = Callable[[IPAddress, int], Awaitable[tuple[bool, str]]]

K = TypeVar("K", bound=Hashable)  # a target's key (the daemon's: (VIP key, backend key))

MAX_BODY = 64 * 1024  # http: bytes of the body searched for expect_body


@dataclass
class HealthState:
    """Rise/fall hysteresis for one backend of one VIP."""

    rise: int = 2
    fall: int = 3
    up: bool = True
    streak: int = 0  # consecutive results that disagree with `up`
    checks: int = 0
    failures: int = 0  # total failed probes
    last_ok: bool | None = None
    last_detail: str = ""
    since: float = field(default_factory=time.time)  # wall time of the last change

    def record(self, ok: bool, detail: str = "") -> bool:
        """Count one probe result; True when the state flips (up -> down or back)."""
        self.checks += 1
        self.last_ok = ok
        self.last_detail = "" if ok else detail
        if not ok:
            self.failures += 1
        if ok == self.up:
            self.streak = 0
            return False
        self.streak += 1
        if self.streak >= (self.rise if ok else self.fall):
            self.up = ok
            self.streak = 0
            self.since = time.time()
            return True
        return False

    def as_dict(self) -> dict:
        return {"up": self.up, "streak": self.streak, "checks": self.checks,
                "failures": self.failures, "last_ok": self.last_ok,
                "last_error": self.last_detail, "since": round(self.since, 3)}


# --- probes ------------------------------------------------------------------------------


def _why(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, OSError) and e.errno:
        return os.strerror(e.errno).lower()  # asyncio's own text names the address
    return str(e) or type(e).__name__


def _hostport(address: IPAddress, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


async def probe_tcp(address: IPAddress, port: int, timeout: float) -> tuple[bool, str]:
    """Connect, then close: ok when the handshake completes within `timeout`."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(str(address), port), timeout)
    except (OSError, TimeoutError) as e:
        return False, _why(e)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, ""


async def probe_http(address: IPAddress, port: int, path: str, timeout: float,
                     expect_status: tuple[int, ...] = (), host: str | None = None,
                     expect_body: str | None = None) -> tuple[bool, str]:
    """GET `path` (HTTP/1.0, Connection: close): ok on an expected status (default 2xx or
    3xx) and, with `expect_body`, a body holding that text (first 64 KiB)."""
    host = host or _hostport(address, port)

    async def get() -> tuple[bool, str]:
        reader, writer = await asyncio.open_connection(str(address), port)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n"
                         "User-Agent: xdplb-health\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            line = await reader.readline()
            parts = line.decode("latin-1").split()
            if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
                return False, f"not an HTTP response: {line[:40]!r}"
            code = int(parts[1])
            if not (code in expect_status if expect_status else 200 <= code < 400):
                return False, f"HTTP {code}"
            if expect_body is None:
                return True, ""
            rest = await reader.read(MAX_BODY + 8192)
            body = rest.partition(b"\r\n\r\n")[2]
            if expect_body.encode() not in body[:MAX_BODY]:
                return False, f"HTTP {code}, body without {expect_body!r}"
            return True, ""
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    try:
        return await asyncio.wait_for(get(), timeout)
    except (OSError, TimeoutError, UnicodeError) as e:
        return False, _why(e)


class _OneReply(asyncio.DatagramProtocol):
    """The first datagram (or ICMP error) a connected UDP socket receives."""

    def __init__(self) -> None:
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr) -> None:
        if not self.done.done():
            self.done.set_result(data)

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable, as ECONNREFUSED
        if not self.done.done():
            self.done.set_exception(exc)


async def _udp_exchange(address: IPAddress, port: int, payload: bytes, timeout: float,
                        accept: Callable[[bytes], bool] = lambda d: True) -> bytes:
    """Send one datagram, return the first reply `accept` takes (TimeoutError, OSError)."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        _OneReply, remote_addr=(str(address), port))
    try:
        async def wait() -> bytes:
            p = proto
            while True:
                data = await p.done
                if accept(data):
                    return data
                p.done = loop.create_future()  # not ours (stale id): keep listening

        transport.sendto(payload)
        return await asyncio.wait_for(wait(), timeout)
    finally:
        transport.close()


async def probe_udp(address: IPAddress, port: int, timeout: float, send: bytes = b"",
                    expect: bytes | None = None) -> tuple[bool, str]:
    """Send `send`; ok when a reply comes back within `timeout` (holding `expect`)."""
    try:
        data = await _udp_exchange(address, port, send, timeout)
    except TimeoutError:
        return False, "no reply"
    except OSError as e:
        return False, _why(e)
    if expect is not None and expect not in data:
        return False, f"reply without {expect!r}: {data[:40]!r}"
    return True, ""


_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def dns_query(name: str, qtype: str, ident: int) -> bytes:
    """A standard recursive query (RFC 1035 4.1) for one name and type, class IN."""
    labels = [x for x in name.rstrip(".").split(".") if x]
    qname = b"".join(bytes([len(x)]) + x.encode("ascii") for x in labels) + b"\0"
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + qname + \
        struct.pack("!HH", DNS_QTYPES[qtype], 1)


async def probe_dns(address: IPAddress, port: int, timeout: float, query: str,
                    qtype: str = "A") -> tuple[bool, str]:
    """Ask for `query`/`qtype` over UDP: ok on a NOERROR reply with an answer record."""
    ident = random.getrandbits(16)

    def ours(d: bytes) -> bool:
        return len(d) >= 12 and struct.unpack("!H", d[:2])[0] == ident and bool(d[2] & 0x80)

    try:
        data = await _udp_exchange(address, port, dns_query(query, qtype, ident), timeout, ours)
    except TimeoutError:
        return False, "no reply"
    except OSError as e:
        return False, _why(e)
    rcode = data[3] & 0x0F
    ancount = struct.unpack("!H", data[6:8])[0]
    if rcode:
        return False, f"{query} {qtype}: {_RCODES.get(rcode, f'rcode {rcode}')}"
    if not ancount:
        return False, f"{query} {qtype}: no answer"
    return True, ""


async def probe_exec(address: IPAddress, port: int, timeout: float,
                     command: tuple[str, ...]) -> tuple[bool, str]:
    """Run `command` (no shell); ok on exit status 0 within `timeout`, else killed."""
    env = {**os.environ, "XDPLB_BACKEND_ADDRESS": str(address),
           "XDPLB_BACKEND_PORT": str(port)}
    try:
        proc = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True)
    except OSError as e:
        return False, f"{command[0]}: {_why(e)}"
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return False, "timed out"
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        raise
    if proc.returncode == 0:
        return True, ""
    first = err.decode(errors="replace").strip().splitlines()[:1]
    why = f"exit status {proc.returncode}" if proc.returncode and proc.returncode > 0 \
        else f"killed by signal {-(proc.returncode or 0)}"
    return False, why + (f": {first[0][:120]}" if first else "")


def make_probe(check: HealthCheck) -> Probe | None:
    """The probe a [vip.health] table asks for; None for kind 'none'."""
    c = check
    if c.kind == "tcp":
        return lambda addr, port: probe_tcp(addr, port, c.timeout)
    if c.kind == "http":
        return lambda addr, port: probe_http(addr, port, c.path, c.timeout, c.expect_status,
                                             c.host, c.expect_body)
    if c.kind == "udp":
        return lambda addr, port: probe_udp(addr, port, c.timeout, c.send, c.expect)
    if c.kind == "dns":
        return lambda addr, port: probe_dns(addr, port, c.timeout, c.query, c.qtype)
    if c.kind == "exec":
        return lambda addr, port: probe_exec(addr, port, c.timeout, c.command)
    return None


# --- the monitor ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One thing to check: a backend of a VIP, with that VIP's check settings."""

    address: IPAddress
    port: int  # backend port (or the check's own port)
    check: HealthCheck


class HealthMonitor(Generic[K]):
    """One asyncio task per target; keeps each target's HealthState across `update()`s
    (reloads) and calls `on_change(key, state)` when a target flips.

    `update()` sets the states at once (a new target starts in its check's `initial`
    state, a removed one is forgotten), so a caller can decide what to serve from
    `is_up()` right after it, before any probe ran; probe tasks start when an event
    loop runs (`update()` inside it, or `start()`)."""

    def __init__(self, on_change: Callable[[K, HealthState], None],
                 probe_factory: Callable[[HealthCheck], Probe | None] = make_probe,
                 on_result: Callable[[K, bool, str], None] | None = None):
        self.on_change = on_change
        self.on_result = on_result
        self.probe_factory = probe_factory
        self.states: dict[K, HealthState] = {}
        self._targets: dict[K, Target] = {}
        self._tasks: dict[K, asyncio.Task] = {}

    def seed(self, key: K, check: HealthCheck, up: bool) -> None:
        """Start a target in a known state (e.g. as found by a restart)."""
        self.states[key] = HealthState(rise=check.rise, fall=check.fall, up=up)

    def is_up(self, key: K) -> bool:
        st = self.states.get(key)
        return True if st is None else st.up

    def update(self, targets: dict[K, Target]) -> None:
        """Check exactly `targets` from now on."""
        for key in [k for k in self._targets if k not in targets]:
            self._stop(key)
            self.states.pop(key, None)
        for key in [k for k in self.states if k not in targets]:
            self.states.pop(key)  # seeded but no longer checked
        for key, t in targets.items():
            if self._targets.get(key) == t and (key in self._tasks or not _loop_running()):
                continue
            self._stop(key)
            st = self.states.get(key)
            if self.probe_factory(t.check) is None:  # kind none: always up
                self.states.pop(key, None)
                self._targets[key] = t
                continue
            if st is None:
                st = self.states[key] = HealthState(rise=t.check.rise, fall=t.check.fall,
                                                    up=t.check.initial == "up")
            st.rise, st.fall = t.check.rise, t.check.fall
            self._targets[key] = t
        self.start()

    def start(self) -> None:
        """Start the probe tasks of targets without one (needs a running event loop)."""
        if not _loop_running():
            return
        loop = asyncio.get_running_loop()
        for key, t in self._targets.items():
            st = self.states.get(key)
            probe = self.probe_factory(t.check)
            if key in self._tasks or st is None or probe is None:
                continue
            self._tasks[key] = loop.create_task(self._run(key, t, probe, st),
                                                name=f"health {key}")

    def _stop(self, key: K) -> None:
        task = self._tasks.pop(key, None)
        if task:
            try:
                on_loop = asyncio.get_running_loop() is task.get_loop()
            except RuntimeError:  # a worker thread (the daemon applies changes there)
                on_loop = False
            if on_loop:
                task.cancel()
            else:
                task.get_loop().call_soon_threadsafe(task.cancel)
        self._targets.pop(key, None)

    async def _run(self, key: K, t: Target, probe: Probe, st: HealthState) -> None:
        # spread the first probes over one interval so checks do not go out in bursts
        await asyncio.sleep(random.uniform(0, min(t.check.interval, 1.0)))
        while True:
            start = time.monotonic()
            try:
                ok, detail = await probe(t.address, t.port)
            except Exception as e:  # noqa: BLE001 - a probe bug must not stop checking
                ok, detail = False, f"probe error: {e}"
            if self.on_result:
                self.on_result(key, ok, detail)
            if st.record(ok, detail):
                self.on_change(key, st)
            await asyncio.sleep(max(0.0, t.check.interval - (time.monotonic() - start)))

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        for key in list(self._tasks):
            self._stop(key)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
