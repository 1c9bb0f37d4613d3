"""`xdplb decap IFACE [--gue-port N] [--remove | --status]`: the backends' decapsulator
for tunnel-mode VIPs (xdplb.decap)."""
from __future__ import annotations

import json

from ..decap import DEFAULT_GUE_PORT, attach, decap_status, remove
from ._common import require_root


def cmd_decap(args) -> int:
    require_root("xdplb decap")
    if args.remove:
        print(f"xdplb: {remove(args.iface)}")
        return 0
    if args.status:
        st = decap_status(args.iface)
        if args.json:
            print(json.dumps(st.__dict__, indent=2))
        elif not st.attached:
            print(f"{args.iface}: no decapsulator attached"
                  + (f" (XDP program {st.other!r} is)" if st.other else ""))
        else:
            print(f"{args.iface}: decapsulator attached (program id {st.prog_id}, {st.mode} XDP,"
                  f" GUE port {st.gue_port})")
            for n, (p, b) in st.counters.items():
                print(f"  {n:<16} {p:>12} pkts {b:>14} bytes")
        return 0 if st.attached else 3
    print(f"xdplb: {attach(args.iface, args.gue_port, args.xdp_mode)}")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "decap", help="on a backend: strip IPIP/GUE of tunnel-mode VIPs (XDP)",
        description="Attach xdplb's decapsulator to IFACE and return (it stays attached): "
        "IPIP and GUE (variants 0 and 1) on the GUE port are stripped for inner destinations "
        "of this host (the VIP on a loopback) and the inner packet goes to the stack. Run "
        "again to replace it; --remove detaches it; --status shows it and its counters "
        "(exit 3 when not attached).")
    p.add_argument("iface")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--remove", action="store_true", help="detach the decapsulator")
    g.add_argument("--status", action="store_true", help="attached? counters")
    p.add_argument("--gue-port", type=int, default=DEFAULT_GUE_PORT,
                   help=f"UDP port of GUE (the LB's [lb] gue_port; default {DEFAULT_GUE_PORT})")
    p.add_argument("--xdp-mode", choices=("auto", "native", "generic"), default="auto")
    p.add_argument("--json", action="store_true", help="with --status: JSON")
    p.set_defaults(func=cmd_decap)

