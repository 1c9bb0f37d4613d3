"""`xdplb doctor` and `xdplb demo`."""
from __future__ import annotations

from ._common import require_root


def cmd_demo(args) -> int:
    from ..demo import run_demo

    require_root("xdplb demo")
    return run_demo(requests=args.requests, backends=args.backends)


def cmd_doctor(args) -> int:
    from ..doctor import run_doctor

    require_root("xdplb doctor")
    return run_doctor(args.iface)


def register(sub) -> None:
    dr = sub.add_parser("doctor", help="checks that explain 'it does not forward'")
    dr.add_argument("iface", nargs="?")
    dr.set_defaults(func=cmd_doctor)

    d = sub.add_parser("demo", help="lab up, LB on, curl traffic, summary, lab down")
    d.add_argument("--requests", type=int, default=20)
    d.add_argument("--backends", type=int, default=2)
    d.set_defaults(func=cmd_demo)
