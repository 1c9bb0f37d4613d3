"""`xdplb run IFACE BACKEND_IP BACKEND_MAC ...`: the tutorial's command line."""
from __future__ import annotations

import ipaddress
import signal
import time
from dataclasses import replace

from .._signals import Stop, deferred, stop_on
from ..config import DEFAULTS
from ..errors import UsageError
from ._common import info, require_root

DEFAULT_PORTS = (8000,)


def parse_backend_args(words: list[str]):
    """BACKEND_IP BACKEND_MAC pairs -> BackendSpec list (the tutorial's form)."""
    from ..config import parse_ip, parse_mac
    from ..lb import BackendSpec

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
        out.append(BackendSpec(address=ip, mac=mac))
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
    from ..lb import VipSpec
    from ..service import Service, ServiceOptions

    backends = parse_backend_args(args.backends)
    ports = _parse_ports(args.port)
    if args.mode == "dsr" and any(b.port for b in backends):
        raise UsageError("backend ports are a NAT-mode feature")
    require_root("xdplb run")
    if args.udp_stateless and (args.mode, args.proto) != ("dsr", "udp"):
        raise UsageError("--udp-stateless needs --mode dsr --proto udp")
    svc = Service.for_interface(args.iface, ServiceOptions(xdp_mode=args.xdp_mode,
                                                           conntrack=args.conntrack,
                                                           nat_ports=args.nat_ports,
                                                           frag_drop=args.frag == "drop",
                                                           egress=args.egress))
    vip_addr = args.vip or svc.interface_ipv4()
    snat = args.snat or svc.egress_ipv4()
    if svc.egress_ifindex:
        backends = [replace(b, ifindex=svc.egress_ifindex) for b in backends]
    try:
        vip_ip = ipaddress.ip_address(vip_addr)
    except ValueError:
        raise UsageError(f"--vip: {vip_addr!r} is not an IP address") from None
    if any(b.address.version != vip_ip.version for b in backends):
        raise UsageError(f"backends must be IPv{vip_ip.version} like the VIP {vip_ip}")
    specs = [VipSpec(address=vip_ip, port=p, protocol=args.proto, mode=args.mode,
                     backends=tuple(backends), on_backend_removed=args.on_removed,
                     udp_stateless=args.udp_stateless,
                     snat=ipaddress.ip_address(snat) if snat else None) for p in ports]
    with stop_on(signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        try:
            svc.start(specs, trace_rate=args.trace)
            print("XDP load balancer configured with backends:")
            for i, b in enumerate(backends, 1):
                mac = ":".join(f"{x:02x}" for x in b.mac)
                print(f"Backend {i} - IP: {b.address}, MAC: {mac}")
            # stdout carries exactly the tutorial's lines; what xdplb adds goes to stderr
            info(f"balancing {args.proto.upper()} {vip_addr} port(s) "
                 f"{','.join(str(p) if p else 'all' for p in ports)} ({args.mode}) on "
                 f"{args.iface}; other traffic goes to the host")
            if svc.interface_kind() == "veth":
                info(f"{args.iface} is a veth: XDP_TX frames reach its peer only if the peer "
                     "has an XDP program (the lab attaches an XDP_PASS stub to veth7)")
            print("Press Ctrl+C to exit...", flush=True)
            last = time.monotonic()
            while True:
                time.sleep(0.2)
                if args.stats_interval and time.monotonic() - last >= args.stats_interval:
                    last = time.monotonic()
                    print(svc.summary_line(), flush=True)
        except Stop:
            pass
        finally:
            with deferred():
                summary = svc.summary_line() if svc.started else ""
                svc.stop()
    if summary:
        info(f"detached from {args.iface}; {summary}")
    return 0


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
    r.add_argument("--xdp-mode", choices=("auto", "native", "generic"), default="auto")
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
    r.add_argument("--trace", type=int, default=0, metavar="N",
                   help="sample one packet in N to the trace ring (see `xdplb trace`)")
    r.add_argument("--stats-interval", type=float, default=0, metavar="S",
                   help="print counters every S seconds")
    r.set_defaults(func=cmd_run)
