"""Backend health checks for `xdplb serve`: a rise/fall state machine and asyncio probes.

A backend is *up* until `fall` consecutive probes fail, then *down* until `rise`
consecutive probes succeed. Probes run from the daemon's own network namespace (the
LB's): a TCP connect, or an HTTP GET whose status must be 2xx or 3xx. The daemon pulls a
down backend out of its VIP's Maglev table (see daemon.Controller).
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from .config import HealthCheck, IPAddress

__all__ = ["HealthMonitor", "HealthState", "Probe", "Target", "make_probe", "probe_http",
           "probe_tcp"]

#: probe(address, port) -> (ok, detail); detail says why on failure ("connection refused")
Probe = Callable[[IPAddress, int], Awaitable[tuple[bool, str]]]

K = TypeVar("K", bound=Hashable)  # a target's key (the daemon's: (VIP key, backend key))


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


async def probe_http(address: IPAddress, port: int, path: str, timeout: float
                     ) -> tuple[bool, str]:
    """GET `path` (HTTP/1.0, Connection: close): ok on a 2xx or 3xx status line."""
    host = f"[{address}]" if address.version == 6 else str(address)

    async def get() -> tuple[bool, str]:
        reader, writer = await asyncio.open_connection(str(address), port)
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\n"
                         "User-Agent: xdplb-health\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        parts = line.decode("latin-1").split()
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            return False, f"not an HTTP response: {line[:40]!r}"
        code = int(parts[1])
        return (200 <= code < 400), f"HTTP {code}"

    try:
        ok, detail = await asyncio.wait_for(get(), timeout)
    except (OSError, TimeoutError, UnicodeError) as e:
        return False, _why(e)
    return ok, "" if ok else detail


def make_probe(check: HealthCheck) -> Probe | None:
    """The probe a [vip.health] table asks for; None for kind 'none'."""
    if check.kind == "tcp":
        return lambda addr, port: probe_tcp(addr, port, check.timeout)
    if check.kind == "http":
        return lambda addr, port: probe_http(addr, port, check.path, check.timeout)
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
    (reloads) and calls `on_change(key, state)` when a target flips."""

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
        """Start a target in a known state (e.g. down, as found by a restart)."""
        self.states[key] = HealthState(rise=check.rise, fall=check.fall, up=up)

    def is_up(self, key: K) -> bool:
        st = self.states.get(key)
        return True if st is None else st.up

    def update(self, targets: dict[K, Target]) -> None:
        """Check exactly `targets` from now on (call from the event loop)."""
        for key in [k for k in self._targets if k not in targets]:
            self._stop(key)
            self.states.pop(key, None)
        for key, t in targets.items():
            if self._targets.get(key) == t and key in self._tasks:
                continue
            self._stop(key)
            probe = self.probe_factory(t.check)
            st = self.states.get(key)
            if probe is None:  # kind none: always up
                self.states.pop(key, None)
                self._targets[key] = t
                continue
            if st is None:
                st = self.states[key] = HealthState(rise=t.check.rise, fall=t.check.fall)
            st.rise, st.fall = t.check.rise, t.check.fall
            self._targets[key] = t
            self._tasks[key] = asyncio.get_running_loop().create_task(
                self._run(key, t, probe, st), name=f"health {key}")

    def _stop(self, key: K) -> None:
        task = self._tasks.pop(key, None)
        if task:
            task.cancel()
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
