"""The xdplb command line: one parser made of each command's `register`, one
error-to-exit mapping (`_common.run_command`)."""
from __future__ import annotations

import argparse
import io
import sys
from typing import cast

from .. import __version__
from ..lab import register_cli as register_lab
from . import decap, observe, run, serve, tools, top
from ._common import Parser, run_command


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="xdplb", description="XDP layer-4 load balancer")
    p.add_argument("--version", action="version", version=f"xdplb {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run.register(sub)
    observe.register(sub)
    tools.register(sub)
    serve.register(sub)
    top.register(sub)
    decap.register(sub)
    register_lab(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    cast(io.TextIOWrapper, sys.stdout).reconfigure(line_buffering=True)
    args = build_parser().parse_args(argv)
    return run_command(args)
