"""What every command shares: the one error-to-exit mapping, the root check, the
stderr note. Every failure prints one line, `xdplb: <what>: <why>`, and exits non-zero."""
from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from ..config import parse_listen
from ..errors import UsageError, XdplbError


class Parser(argparse.ArgumentParser):
    """argparse with xdplb's one-line errors: `xdplb: run: argument --count: ...` on
    stderr, exit 2 (argparse's default is a usage block and the error)."""

    def error(self, message: str) -> NoReturn:
        where = self.prog.removeprefix("xdplb").strip()
        info(f"{where + ': ' if where else ''}{message} (see `{self.prog} --help`)")
        raise SystemExit(2)


def count_arg(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in lo..hi."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(
                f"{v} is out of range {lo}..{hi}" if hi is not None else f"{v} is below {lo}")
        return v
    return parse


def seconds_arg(text: str) -> float:
    """An argparse type: a finite number of seconds >= 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds >= 0")
    return v


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
    except BrokenPipeError:  # `xdplb status | head`: the reader left, nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
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
