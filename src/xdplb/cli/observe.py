"""`xdplb stats IFACE` and `xdplb trace IFACE`: read the LB attached to an interface
from another process."""
from __future__ import annotations

import json
import signal

from .._signals import Stop, stop_on
from ._common import count_arg, require_root, seconds_arg


def cmd_stats(args) -> int:
    from ..attached import attached_report

    require_root("xdplb stats")
    report = attached_report(args.iface)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"xdplb on {args.iface} (program id {report['prog_id']})")
    print("  packets by outcome:")
    for name, (pk, by) in report["stats"].items():
        if pk:
            print(f"    {name:<18} {pk:>12} pkts {by:>14} bytes")
    f = report["flows"]
    print(f"  flow table: NAT {f['nat_live']} live / {f['nat_used']} used / {f['nat_size']} "
          f"entries, conntrack {f['ct_live']} / {f['ct_used']} / {f['ct_size']}")
    for v in report["vips"]:
        print(f"  VIP {v['vip']} ({v['mode']}): {v['packets']} pkts, {v['new_flows']} flows, "
              f"{v['dropped']['packets']} dropped")
        for b in v["backends"]:
            traffic = {"new": "serving", "established": "draining", "none": "removed"}[
                b["traffic"]]
            print(f"    backend {b['id']:>4} {b['backend']:<24} {traffic:<8} "
                  f"{b['active_flows']:>6} active {b['packets']:>10} pkts "
                  f"{b['new_flows']:>8} flows")
    return 0


def cmd_trace(args) -> int:
    from ..attached import trace_events

    require_root("xdplb trace")
    try:
        # a hangup (the ssh session gone) stops it cleanly too; SIGKILL leaves the lease
        # to expire (the instance's process turns sampling off within seconds)
        with stop_on(signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            for line in trace_events(args.iface, rate=args.rate, count=args.count,
                                     duration=args.duration):
                print(line, flush=True)
    except Stop:
        pass
    return 0


def cmd_flows(args) -> int:
    from ..attached import open_interface
    from ..flows import list_flows

    require_root("xdplb flows")
    dp = open_interface(args.iface)
    try:
        flows = list_flows(dp)
    finally:
        dp.close()

    def match(ep: str, ref: str | None) -> bool:
        return ref is None or ep == ref or ep.rsplit(":", 1)[0].strip("[]") == ref

    flows = [f for f in flows if match(f.vip, args.vip) and match(f.backend, args.backend)]
    if args.limit:
        flows = flows[:args.limit]
    if args.json:
        print(json.dumps([f.as_dict() for f in flows], indent=2))
        return 0
    print(f"{'proto':<5} {'client':<24} {'vip':<22} {'backend':<22} {'nat port':>8} "
          f"{'idle s':>7}  state")
    for f in flows:
        print(f"{f.proto:<5} {f.client:<24} {f.vip:<22} {f.backend:<22} "
              f"{f.nat_port if f.nat_port is not None else '-':>8} {f.age:>7.1f}  {f.state}")
    print(f"{len(flows)} live flow(s)")
    return 0


def register(sub) -> None:
    f = sub.add_parser("flows", help="live flows of the LB running on IFACE (client, VIP, "
                       "backend, NAT port, idle time, state), most recently active first")
    f.add_argument("iface")
    f.add_argument("--vip", help="only this VIP (ADDRESS or ADDRESS:PORT)")
    f.add_argument("--backend", help="only this backend (ADDRESS or ADDRESS:PORT)")
    f.add_argument("--limit", type=count_arg(0), default=0, help="at most N flows")
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_flows)

    s = sub.add_parser("stats", help="counters of the LB running on IFACE")
    s.add_argument("iface")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_stats)

    t = sub.add_parser("trace", help="live sampled decisions of the LB running on IFACE")
    t.add_argument("iface")
    t.add_argument("--rate", type=count_arg(1, 1 << 30), default=1,
                   help="one event per N packets (default 1)")
    t.add_argument("--count", type=count_arg(0), default=0,
                   help="stop after N events (default 0: no limit)")
    t.add_argument("--duration", type=seconds_arg, default=0,
                   help="stop after S seconds (default 0: no limit)")
    t.set_defaults(func=cmd_trace)
