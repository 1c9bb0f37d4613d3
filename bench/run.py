"""`make bench`: the micro-benchmark, the live benchmark (unless --micro-only), then the report.

    .venv/bin/python bench/run.py [--micro-only] [--quick] [--katran-obj PATH]

Results: bench/results/{micro,live}.json; page: docs/BENCHMARKS.md with docs/img/*.png.
A failed live run does not stop the report (it then says the live part was not run).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import live
import micro
import report

from xdplb.lab import LabError


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--micro-only", action="store_true", help="skip the live benchmark")
    ap.add_argument("--quick", action="store_true", help="short runs (a smoke test)")
    ap.add_argument("--katran-obj", help="a prebuilt Katran balancer.bpf.o to measure too")
    args = ap.parse_args()
    t0 = time.monotonic()
    margs = ["--quick"] if args.quick else []
    if args.katran_obj:
        margs += ["--katran-obj", args.katran_obj]
    rc = micro.main(margs)
    if rc:
        return rc
    if not args.micro_only:
        largs = ["--duration", "2", "--rounds", "1", "--iperf-duration", "2"] if args.quick \
            else []
        try:
            if live.main(largs):
                print("bench: live benchmark failed; the report covers the micro-benchmark",
                      file=sys.stderr)
                (live.RESULTS / "live.json").unlink(missing_ok=True)
        except (LabError, OSError, RuntimeError, subprocess.SubprocessError) as e:
            print(f"bench: live benchmark failed: {e}; the report covers the "
                  "micro-benchmark", file=sys.stderr)
            (live.RESULTS / "live.json").unlink(missing_ok=True)
    rc = report.main([])
    print(f"bench: done in {time.monotonic() - t0:.0f} s")
    return rc


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench: interrupted (everything created was removed)", file=sys.stderr)
        sys.exit(130)
