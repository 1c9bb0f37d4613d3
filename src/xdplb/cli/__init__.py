"""xdplb's command line: argparse in front of the public API. Nothing imports it.

Every failure prints one line, `xdplb: <what>: <why>`, and exits non-zero (2: bad input).
"""
from .main import build_parser, main

__all__ = ["build_parser", "main"]
