"""What every command shares: the one error-to-exit mapping, the root check, the
stderr note. Every failure prints one line, `xdplb: <what>: <why>`, and exits non-zero."""
from __future__ import annotations

import argparse
import os
import sys

from ..config import parse_listen
from ..errors import UsageError, XdplbError


def info(msg: str) -> None:
    """An informational line on stderr (stdout stays the tutorial's)."""
    print(f"xdplb: {msg}", file=sys.stderr, flush=True)


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise XdplbError(f"{what} needs root (CAP_BPF and CAP_NET_ADMIN); run it with sudo")


def exit_code(e: XdplbError | OSError | KeyboardInterrupt) -> int:
    """The exit status of a failure: 2 bad input, 130 Ctrl-C, 1 anything else."""
    if isinstance(e, UsageError):
        return 2
    return 130 if isinstance(e, KeyboardInterrupt) else 1


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command; a failure becomes one line on stderr and its exit status."""
    try:
        return args.func(args) or 0
    except (XdplbError, OSError, KeyboardInterrupt) as e:
        info("interrupted" if isinstance(e, KeyboardInterrupt) else str(e))
        return exit_code(e)


def listen_option(value: str | None) -> tuple[str, int] | None:
    """--metrics ADDR:PORT (None: not given)."""
    if not value:
        return None
    try:
        return parse_listen(value)
    except (ValueError, TypeError) as e:
        raise UsageError(f"--metrics: {e}") from None


def print_changes(changes: list[str], none: str = "no changes") -> None:
    if not changes:
        print(none)
    for c in changes:
        print(c)
