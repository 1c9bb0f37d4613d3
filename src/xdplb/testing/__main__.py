"""The packet-case table from the command line: list its cases, or write them as pcaps.

    python -m xdplb.testing --list [PATTERN]
    python -m xdplb.testing --pcap DIR [PATTERN]

Each case becomes DIR/NN-<slug>.pcap: for every step, the frame sent to the program, then
the frame it must send (the input again for XDP_PASS/DROP steps whose output is the input),
so tcpdump -r or Wireshark shows what the data plane does, case by case. PATTERN keeps the
cases whose name contains it (case-insensitive).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from ..frames import write_pcap
from .cases import Evict, table


def slug(name: str, n: int = 60) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:n].rstrip("-")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xdplb.testing", description=__doc__.split("\n")[0])
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--list", action="store_true", help="print the cases' names")
    what.add_argument("--pcap", metavar="DIR", type=Path, help="write each case as a pcap")
    ap.add_argument("pattern", nargs="?", default="", help="only cases whose name has this")
    args = ap.parse_args(argv)
    chosen = [(i, c) for i, c in enumerate(table(), 1)
              if args.pattern.lower() in c.name.lower()]
    if not chosen:
        print(f"xdplb.testing: no case name contains {args.pattern!r}", file=sys.stderr)
        return 2
    if args.list:
        for i, c in chosen:
            print(f"{i:3d}  {c.name}")
        return 0
    args.pcap.mkdir(parents=True, exist_ok=True)
    for i, c in chosen:
        frames = [f for s in c.rendered if not isinstance(s, Evict) for f in (s.input, s.output)]
        path = args.pcap / f"{i:02d}-{slug(c.name)}.pcap"
        write_pcap(path, frames)
        print(f"{path}: {len(frames) // 2} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
