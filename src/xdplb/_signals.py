"""Signal handling shared by the command line and the daemon: a stop signal as an
exception while setting up or running in the foreground, and signals held while cleaning
up (a second Ctrl-C must not leave the data plane half-detached)."""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stop(KeyboardInterrupt):
    """A stop signal arrived; the message is its name (SIGINT, SIGTERM, ...). A
    KeyboardInterrupt, so that no `except Exception` on the way swallows it."""


_pending: str | None = None  # the last stop signal raise_stop saw (see checkpoint)


def raise_stop(signum: int, frame: object) -> None:
    global _pending
    _pending = signal.Signals(signum).name
    raise Stop(_pending)


def clear() -> None:
    """Forget stop signals seen before (a new start-up begins)."""
    global _pending
    _pending = None


def checkpoint() -> None:
    """Raise Stop if a stop signal arrived since `clear()`, even one whose exception was
    swallowed: a signal that lands while libbpf calls back into Python (its print
    callback, a ring buffer's) raises inside the callback, where ctypes can only drop it.
    Start-up calls this between its steps, so a Ctrl-C at any point stops it."""
    if _pending is not None:
        raise Stop(_pending)


@contextlib.contextmanager
def handlers(handler, sigs: tuple[signal.Signals, ...] = STOP_SIGNALS) -> Iterator[None]:
    """Inside the block, `handler` handles each of `sigs`; the previous handlers come back
    after it."""
    old = {s: signal.signal(s, handler) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def stop_on(*sigs: signal.Signals) -> contextlib.AbstractContextManager[None]:
    """Inside the block, each of `sigs` (default SIGINT, SIGTERM) raises Stop."""
    return handlers(raise_stop, sigs or STOP_SIGNALS)


def deferred() -> contextlib.AbstractContextManager[None]:
    """Hold SIGINT/SIGTERM while cleaning up (a second Ctrl-C must not half-detach)."""
    return handlers(signal.SIG_IGN)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold stop signals inside the block, then deliver them. For calls into libbpf: it
    calls back into Python to print, and an exception raised by a signal handler inside
    that callback is lost (ctypes can only print it). Inside the block a stop signal is
    only noted (Python runs handlers in the main thread, whichever thread the OS chose,
    so masking is not enough); after it, it is raised again for the handlers that were
    in place, in ordinary code. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []
    try:
        with handlers(lambda signum, frame: noted.append(signum),
                      (*STOP_SIGNALS, signal.SIGHUP)):
            yield
    finally:
        for signum in dict.fromkeys(noted):
            signal.raise_signal(signum)
