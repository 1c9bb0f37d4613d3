"""`xdplb run IFACE BACKEND_IP BACKEND_MAC ...`: the tutorial's command line, a foreground
serve built from its arguments (no control socket, no pins unless --keep)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import DEFAULTS, IPAddress, format_mac, parse_ip, parse_mac
from ..errors import UsageError
from ..logfmt import Notes
from ._common import count_arg, info, listen_option, require_root, seconds_arg

if TYPE_CHECKING:
    from ..daemon import Daemon

DEFAULT_PORTS = (8000,)


def parse_backend_args(words: list[str]) -> list[tuple[IPAddress, bytes]]:
    """BACKEND_IP BACKEND_MAC pairs -> (address, MAC) list (the tutorial's form)."""
    if not words:
        raise UsageError("at least one BACKEND_IP BACKEND_MAC pair is needed")
    if len(words) % 2:
        raise UsageError(f"backends come in BACKEND_IP BACKEND_MAC pairs; got {len(words)} "
                         f"words (last: {words[-1]!r})")
    out = []
    for i in range(0, len(words), 2):
        try:
            ip = parse_ip(words[i])
        except ValueError as e:
            raise UsageError(f"backend {i // 2 + 1}: {e}") from None
        try:
            mac = parse_mac(words[i + 1])
        except ValueError as e:
            raise UsageError(f"backend {i // 2 + 1}: {e}") from None
        out.append((ip, mac))
    return out


def _parse_ports(values: list[str] | None) -> list[int]:
    if not values:
        return list(DEFAULT_PORTS)
    ports = []
    for v in values:
        for part in v.split(","):
            try:
                p = int(part)
            except ValueError:
                raise UsageError(f"--port: {part!r} is not a port number") from None
            if not 0 <= p <= 65535:
                raise UsageError(f"--port: {p} is out of range 0-65535")
            ports.append(p)
    return sorted(set(ports))



def cmd_run(args) -> int:
    from ..daemon import Daemon, Hooks, ServeOptions, run_config

    backends = parse_backend_args(args.backends)
    ports = _parse_ports(args.port)
    require_root("xdplb run")
    if args.udp_stateless and (args.mode, args.proto) != ("dsr", "udp"):
        raise UsageError("--udp-stateless needs --mode dsr --proto udp")
    metrics = listen_option(args.metrics)
    cfg = run_config(args.iface, backends, ports=ports, protocol=args.proto, mode=args.mode,
                     vip=args.vip, snat=args.snat, egress=args.egress,
                     conntrack_size=args.conntrack, nat_ports=args.nat_ports,
                     frag_policy=args.frag, on_backend_removed=args.on_removed,
                     udp_stateless=args.udp_stateless)
    # a plain run refuses an xdplb left attached (kill -9: `xdplb stop --iface`); with
    # --keep it takes over what a `run --keep` or `serve --keep` left, as serve does
    opts = ServeOptions(control=False, pins=False, keep=args.keep, takeover=args.keep,
                        xdp_mode=args.xdp_mode,
                        egress=args.egress, trace_rate=args.trace, metrics=metrics)
    vip = cfg.vips[0].address
    summary: list[str] = []

    ready_seen: list[bool] = []

    def ready(d: Daemon) -> None:
        ready_seen.append(True)
        # stdout carries exactly the tutorial's lines; what xdplb adds goes to stderr
        print("XDP load balancer configured with backends:")
        for i, (addr, mac) in enumerate(backends, 1):
            print(f"Backend {i} - IP: {addr}, MAC: {format_mac(mac)}")
        info(f"balancing {args.proto.upper()} {vip} port(s) "
             f"{','.join(str(p) if p else 'all' for p in ports)} ({args.mode}) on "
             f"{args.iface}; other traffic goes to the host")
        if d.interface_kind == "veth":
            info(f"{args.iface} is a veth: XDP_TX frames reach its peer only if the peer "
                 "has an XDP program (the lab attaches an XDP_PASS stub to veth7)")
        print("Press Ctrl+C to exit...", flush=True)

    def tick(d: Daemon) -> None:
        info(summary_line(d))  # stdout stays the tutorial's lines

    def stopping(d: Daemon) -> None:
        if ready_seen:  # (a start cut short says so in its one line)
            summary.append(summary_line(d))

    hooks = Hooks(ready=ready, tick=tick if args.stats_interval else None,
                  every=args.stats_interval, stopping=stopping)
    rc = Daemon(None, cfg, opts, log=Notes(), hooks=hooks).run()
    if summary:
        info(f"{'kept on' if args.keep else 'detached from'} {args.iface}; {summary[0]}")
    return rc


def summary_line(d: Daemon) -> str:
    """One line of counters for `run`'s terminal."""
    st = d.dp.stats() if d.dp else {}
    if not st:
        return ""
    dropped = sum(v[0] for k, v in st.items() if k.startswith("drop"))
    passed = sum(v[0] for k, v in st.items() if k.startswith("pass"))
    return (f"flows {st['fwd_new'][0]}, to backends {st['fwd_new'][0] + st['fwd_est'][0]} "
            f"pkts, replies {st['reply'][0]} pkts, to host {passed}, dropped {dropped}")


def register(sub) -> None:
    r = sub.add_parser("run", help="balance IFACE's address over backends (the tutorial's form)",
                       description="Balance traffic to IFACE's IPv4 address (TCP port 8000 by "
                       "default) over the given backends with full NAT. Everything else "
                       "reaches the host untouched.")
    r.add_argument("iface")
    r.add_argument("backends", nargs="*", metavar="BACKEND_IP BACKEND_MAC")
    r.add_argument("--port", "-p", action="append",
                   help="VIP port(s), repeatable or comma-separated; 0 = every port "
                   "(default: 8000)")
    r.add_argument("--proto", choices=("tcp", "udp"), default="tcp")
    r.add_argument("--mode", choices=("nat", "dsr"), default="nat")
    r.add_argument("--vip", help="VIP address (default: IFACE's first IPv4 address)")
    r.add_argument("--xdp-mode", choices=("auto", "native", "generic"),
                   default=DEFAULTS.xdp_mode)
    r.add_argument("--conntrack", type=int, default=DEFAULTS.conntrack_size,
                   help="flow table entries for non-NAT (DSR) flows; NAT flows get 4 a NAT port")
    r.add_argument("--nat-ports", default="{}-{}".format(*DEFAULTS.nat_ports),
                   help="source ports used towards backends (default %(default)s: below the "
                   "kernel's ephemeral range, above common service ports; VIP ports are "
                   "skipped)")
    r.add_argument("--egress", metavar="IFACE",
                   help="two-armed: backends are reached through IFACE (XDP_REDIRECT); xdplb "
                   "attaches there too to catch the replies")
    r.add_argument("--snat", metavar="ADDR",
                   help="NAT source address towards backends (default: the VIP, or the "
                   "--egress interface's IPv4 address)")
    r.add_argument("--frag", choices=("pass", "drop"), default="pass",
                   help="IP fragments to the VIP: pass to the host stack (default) or drop")
    r.add_argument("--on-removed", choices=("reselect", "reset"), default="reselect",
                   help="flows of a removed backend: re-select a backend or drop")
    r.add_argument("--udp-stateless", action="store_true",
                   help="DSR+UDP: pick the backend by hash per packet, no conntrack entry")
    r.add_argument("--trace", type=count_arg(0, 1 << 30), default=0, metavar="N",
                   help="sample one packet in N to the trace ring (see `xdplb trace`)")
    r.add_argument("--keep", action="store_true",
                   help="on exit leave the program attached and its state pinned under "
                   "/sys/fs/bpf/xdplb/IFACE, for a `serve` (or `run`) to take over")
    r.add_argument("--metrics", metavar="ADDR:PORT", help="serve Prometheus metrics")
    r.add_argument("--stats-interval", type=seconds_arg, default=0, metavar="S",
                   help="print counters every S seconds")
    r.set_defaults(func=cmd_run)
