"""`xdplb doctor` and `xdplb demo`."""
from __future__ import annotations

from ..errors import UsageError, XdplbError
from ..lab.plan import MAX_BACKENDS as MAX_LAB_BACKENDS
from ._common import count_arg, require_root


def cmd_demo(args) -> int:
    from ..demo import run_demo
    from ..lab import LabError

    require_root("xdplb demo")
    if args.image and not args.containers:
        raise UsageError("--image needs --containers")
    if args.nodes is not None:
        from ..demo import run_ecmp_demo

        if args.containers:
            raise UsageError("--nodes and --containers do not go together")
        if not 1 <= args.nodes <= 8:
            raise UsageError(f"--nodes must be 1..8, not {args.nodes}")
        try:
            return run_ecmp_demo(nodes=args.nodes)
        except LabError as e:  # BIRD missing, a namespace in the way
            raise XdplbError(str(e)) from None
    if args.mode != "nat":
        if args.containers:
            raise UsageError("--mode ipip|gue runs in namespaces only (no --containers)")
        from ..tunnel_demo import run_tunnel_demo

        try:
            return run_tunnel_demo(args.mode, requests=args.requests, backends=args.backends)
        except LabError as e:
            raise XdplbError(str(e)) from None
    try:
        return run_demo(requests=args.requests, backends=args.backends,
                        containers=args.containers, image=args.image)
    except LabError as e:  # podman missing or refusing, no image, a namespace in the way
        raise XdplbError(str(e)) from None


def cmd_doctor(args) -> int:
    from ..doctor import run_doctor

    require_root("xdplb doctor")
    return run_doctor(args.iface)


def cmd_example_config(args) -> int:
    from importlib.resources import files

    print(files("xdplb").joinpath("example.toml").read_text(), end="")
    return 0


def register(sub) -> None:
    e = sub.add_parser("example-config", help="print a commented example config file "
                       "(`xdplb example-config > /etc/xdplb/edge.toml`)")
    e.set_defaults(func=cmd_example_config)

    dr = sub.add_parser("doctor", help="checks that explain 'it does not forward'")
    dr.add_argument("iface", nargs="?")
    dr.set_defaults(func=cmd_doctor)

    d = sub.add_parser("demo", help="lab up, LB on, curl traffic, summary, lab down")
    d.add_argument("--requests", type=count_arg(1, 100000), default=20)
    d.add_argument("--backends", type=count_arg(1, MAX_LAB_BACKENDS), default=2,
                   help=f"backend hosts in the lab, 1..{MAX_LAB_BACKENDS}")
    d.add_argument("--containers", action="store_true",
                   help="every host a podman container of the xdplb image (`make image`)")
    d.add_argument("--image", help="the image for --containers (default xdplb:VERSION)")
    d.add_argument("--nodes", type=int, default=None,
                   help="scale-out demo: N xdplb nodes announce one VIP over BGP to a router "
                   "with ECMP; traffic spreads; one node is drained without breaking "
                   "connections")
    d.add_argument("--mode", choices=("nat", "ipip", "gue"), default="nat",
                   help="ipip/gue: tunnel mode in the routed lab (backends behind a router, "
                   "xdplb decap on each, replies straight to the client); default: the "
                   "tutorial's NAT")
    d.set_defaults(func=cmd_demo)
