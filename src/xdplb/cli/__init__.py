"""xdplb's command line: argparse in front of the public API. Nothing imports it.

Every failure prints one line, `xdplb: <what>: <why>`, and exits non-zero (2: bad input).
The `xdplb` program enters through `launch`, which arms Ctrl-C and SIGTERM before the
heavy imports; `build_parser` and `main` load on first use.
"""
from __future__ import annotations

import importlib
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .main import build_parser, main

__all__ = ["build_parser", "launch", "main"]


def _quit_while_loading(signum: int, frame: object) -> None:
    # nothing is loaded, attached or written yet: leave at once, as a shell expects
    os.write(2, b"xdplb: interrupted\n")
    os._exit(130 if signum == signal.SIGINT else 128 + signum)


def launch() -> int:
    """The `xdplb` program: a stop signal during the imports ends it quietly; after
    them each command handles its own (run and serve detach cleanly)."""
    old_hup = signal.getsignal(signal.SIGHUP)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _quit_while_loading)
    from .._signals import raise_stop
    from .main import main as real_main

    # from here a stop signal is a Stop (a KeyboardInterrupt): one line, exit 130, and
    # whatever was set up is undone on the way out
    signal.signal(signal.SIGINT, raise_stop)
    signal.signal(signal.SIGTERM, raise_stop)
    signal.signal(signal.SIGHUP, old_hup)
    try:
        return real_main()
    except KeyboardInterrupt:  # (between parsing and a command's own handling)
        print("xdplb: interrupted", file=sys.stderr)
        return 130


def __getattr__(name: str) -> Any:
    if name in ("build_parser", "main"):
        # (the submodule `main` and the function share a name: once loaded, the
        # function wins in this namespace, as before)
        module = importlib.import_module(".main", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'xdplb.cli' has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(launch())
