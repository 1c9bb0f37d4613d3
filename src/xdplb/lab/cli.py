"""``xdplb lab up|down|status|exec``: the lab from the command line.

Wired into the main parser with ``register_cli(sub)``; every subcommand sets ``func`` and
``args.func(args)`` returns the exit code.  Errors: one line on stderr, exit code 1.
"""
from __future__ import annotations

import argparse
import os
import sys

from .containers import ContainerLab
from .ecmp import NODE_ASN, ROUTER_ASN, EcmpLab
from .pair import PairLab
from .plan import LabError
from .topology import Lab, sigterm_as_interrupt

PROG = "xdplb"


def _err(msg: str) -> int:
    print(f"{PROG}: {msg}", file=sys.stderr)
    return 1


def _need_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces); run with sudo")


def _resolve(name: str | None) -> Lab:
    if name is not None:
        return Lab.load(name)
    saved = Lab.saved()
    if not saved:
        raise LabError("no lab is up (start one with `xdplb lab up`)")
    if len(saved) > 1:
        raise LabError(f"several labs are up ({', '.join(saved)}); choose one with --name")
    return Lab.load(saved[0])


def hosts_table(lab: Lab) -> str:
    rows = [("host", "netns", "iface", "peer", "MAC", "IPv4", "IPv6")]
    for h in lab.hosts.values():
        rows.append((h.role, h.ns, h.ifname, h.peer_ifname, h.mac, h.ipv4, h.ipv6 or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def usage_hint(lab: Lab) -> str:
    exe = sys.argv[0] if os.path.basename(sys.argv[0]) == PROG else ".venv/bin/xdplb"
    run = " ".join(lab.run_argv(exe))
    b = lab.backend_hosts[0]
    peer = (f"XDP_PASS stub on {lab.lb_peer_ifname()}" if lab.lb_peer_mode == "xdp"
            else f"GRO on {lab.lb_peer_ifname()}")
    return "\n".join([
        f"switch: netns {lab.switch_ns}, bridge br0, {peer} (veth needs it for XDP_TX)",
        "",
        "run the load balancer:",
        f"  ip netns exec {lab.lb.ns} {run}",
        "serve and ask:",
        f"  ip netns exec {b.ns} python3 -m http.server 8000   # in each backend",
        f"  ip netns exec {lab.client.ns} curl http://{lab.vip}:8000/",
        "or:",
        f"  {PROG} lab exec --name {lab.name} client -- curl http://{lab.vip}:8000/",
        f"remove it: {PROG} lab down --name {lab.name}",
    ])


def container_hint(lab: ContainerLab) -> str:
    run = " ".join(["xdplb", *lab.run_argv()[1:]])
    return "\n".join([
        (f"hosts: containers of {lab.image} in their namespaces "
        f"(podman ps --filter label=xdplb.lab={lab.name})"),
        f"switch: netns {lab.switch_ns}, bridge br0",
        "",
        "run the load balancer (its container has CAP_NET_ADMIN and CAP_SYS_ADMIN):",
        f"  {PROG} lab exec --name {lab.name} lb -- {run}",
        "serve and ask:",
        f"  {PROG} lab exec --name {lab.name} h2 -- python3 -m http.server 8000   # each backend",
        f"  {PROG} lab exec --name {lab.name} client -- curl http://{lab.vip}:8000/",
        f"remove it: {PROG} lab down --name {lab.name}",
    ])


def ecmp_hint(lab: EcmpLab) -> str:
    n1 = lab.node_hosts[0]
    return "\n".join([
        (f"router: netns {lab.router.ns}, BIRD 2 (socket {lab.router_socket}), multipath "
         "with L4 hash, client-facing ingress hash cleared (tc)"),
        f"VIP for the nodes to announce: {lab.vip}" + (f", {lab.vip6}" if lab.vip6 else ""),
        f"BGP: router AS {ROUTER_ASN} at {lab.router.ipv4}; nodes AS {NODE_ASN}",
        "",
        f"  ip netns exec {n1.ns} xdplb serve -c NODE.toml    (each node, with a [bgp] table)",
        f"  birdc -s {lab.router_socket} show route    (what the router learned)",
        f"  {PROG} lab exec --name {lab.name} client -- curl http://{lab.vip}:80/",
        f"remove it: {PROG} lab down --name {lab.name}",
    ])


def pair_hint(lab: PairLab) -> str:
    lines = [f"VIP {lab.vip}" + (f", {lab.vip6}" if lab.vip6 else "")
             + ": held by the VRRP master (keepalived in lb1, priority 150, and lb2, 100); "
             "backends have it on lo (DSR)", "", "start each node (serve first, then keepalived):"]
    for h in lab.node_hosts:
        lines += [f"  ip netns exec {h.ns} {' '.join(lab.serve_argv(h.role))} &",
                  f"  ip netns exec {h.ns} {' '.join(lab.keepalived_argv(h.role))} &"]
    lines += [f"  ip netns exec {lab.hosts['h2'].ns} python3 -m http.server 80   # each backend",
              f"  {PROG} lab exec --name {lab.name} client -- curl http://{lab.vip}/",
              f"  {PROG} lab status --name {lab.name}    (which node holds the VIP)",
              f"remove it: {PROG} lab down --name {lab.name}"]
    return "\n".join(lines)


def cmd_up(args: argparse.Namespace) -> int:
    _need_root()
    lab: Lab
    if args.topology in ("ecmp", "pair") and (args.containers or args.image):
        raise LabError("--containers is for the tutorial's topology")
    if args.topology == "ecmp":
        lab = EcmpLab(args.name, nodes=args.nodes or 3, backends=args.backends,
                      clients=args.clients, ipv6=not args.no_ipv6, bfd=not args.no_bfd)
    elif args.topology == "pair":
        if args.nodes is not None:
            raise LabError("--nodes is for --topology ecmp (a pair has two)")
        lab = PairLab(args.name, backends=args.backends, clients=args.clients,
                      ipv6=not args.no_ipv6, offloads=args.offloads)
    else:
        if args.nodes is not None:
            raise LabError("--nodes is for --topology ecmp")
        kw = {"backends": args.backends, "clients": args.clients, "offloads": args.offloads,
              "ipv6": not args.no_ipv6}
        if args.containers and args.topology != "tutorial":
            raise LabError("--topology routed is not available with --containers")
        if args.image and not args.containers:
            raise LabError("--image needs --containers")
        lab = (ContainerLab(args.name, image=args.image, **kw) if args.containers
               else Lab(args.name, topology=args.topology, **kw))
    if lab.state_path(lab.name).exists():
        raise LabError(f"lab {lab.name!r} already exists (`{PROG} lab down --name {lab.name}`)")
    lab.autosave = True  # state on disk from the first namespace on: `lab down` can always find it
    try:
        with sigterm_as_interrupt():
            lab.up()
            lab.save()
    except KeyboardInterrupt:
        lab.down()  # up() already rolled back; this is for an interrupt during save()
        print(f"{PROG}: lab up interrupted; removed lab {lab.name}", file=sys.stderr)
        return 130
    print(f"lab {lab.name} is up (state: {lab.state_path(lab.name)})\n")
    print(hosts_table(lab))
    print()
    if isinstance(lab, EcmpLab):
        print(ecmp_hint(lab))
    elif isinstance(lab, PairLab):
        print(pair_hint(lab))
    else:
        print(container_hint(lab) if isinstance(lab, ContainerLab) else usage_hint(lab))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    _need_root()
    if args.all:
        names = Lab.saved()
    else:
        names = [_resolve(args.name).name]
    rc = 0
    for name in names:
        try:
            lab = Lab.load(name)
            with sigterm_as_interrupt():
                lab.down()
            print(f"lab {name} removed")
        except LabError as e:
            rc = _err(str(e))
    return rc


def cmd_status(args: argparse.Namespace) -> int:
    if args.name is None and len(Lab.saved()) != 1:
        names = Lab.saved()
        if not names:
            print("no lab is up")
            return 0
    else:
        names = [_resolve(args.name).name]
    for i, name in enumerate(names):
        lab = Lab.load(name)
        st = lab.status()
        up = sum(v["exists"] for v in st["namespaces"].values())
        total = len(st["namespaces"])
        state = "up" if up == total else ("down" if up == 0 else f"partial ({up}/{total})")
        if i:
            print()
        extra = f"topology=ecmp nodes={lab.n_nodes} " if isinstance(lab, EcmpLab) else ""
        if isinstance(lab, PairLab):
            extra = f"topology=pair vip-holder={','.join(st.get('vip_holder', [])) or '-'} "
        print(f"lab {name}: {state}; {extra}backends={lab.n_backends} clients={lab.n_clients} "
              f"offloads={lab.offloads} ipv6={'on' if lab.ipv6 else 'off'} "
              f"lb-peer={lab.lb_peer_mode}")
        print(hosts_table(lab))
        if isinstance(lab, ContainerLab):
            print(f"containers ({lab.image}): {' '.join(lab.containers) or '-'}")
        for where, prog in st["xdp"].items():
            desc = "none" if not prog else f"{prog['name']} (id {prog['id']}, {prog['mode']})"
            print(f"xdp {where}: {desc}")
        for ns, v in st["namespaces"].items():
            if not v["exists"]:
                print(f"missing netns {ns}")
            elif v["pids"]:
                print(f"processes in {ns}: {' '.join(map(str, v['pids']))}")
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    _need_root()
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    lab = _resolve(args.name)
    if not cmd:
        cmd = ["/bin/sh"] if isinstance(lab, ContainerLab) else [os.environ.get("SHELL",
                                                                                "/bin/sh")]
    argv = lab.interactive_argv(args.host, cmd)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        raise LabError(f"cannot run {argv[0]}: {e}") from None
    return 1  # not reached


def _wrap(fn):
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except LabError as e:
            return _err(str(e))
    return run


def register_cli(subparsers) -> argparse.ArgumentParser:
    """Add ``lab up|down|status|exec`` to a top-level ``add_subparsers()`` object."""
    lab_p = subparsers.add_parser(
        "lab", help="the tutorial's topology as network namespaces",
        description="The tutorial's topology (client, LB, backends h2/h3 on bridge br0) built "
                    "entirely inside network namespaces it creates, removed on `down`.")
    lab_p.set_defaults(func=lambda args: (lab_p.print_help(sys.stderr), 1)[1])
    sub = lab_p.add_subparsers(dest="lab_command", metavar="{up,down,status,exec}")

    up = sub.add_parser("up", help="create a lab and print how to use it")
    up.add_argument("--name", help="lab name (default xl<pid>); namespaces are NAME-<host>")
    up.add_argument("--topology", choices=("tutorial", "ecmp", "pair", "routed"),
                    default="tutorial",
                    help="tutorial (client, lb, backends on one bridge), ecmp (clients -> "
                         "BGP router with ECMP -> N nodes -> backends), pair (two nodes "
                         "on one segment, keepalived (VRRP) holding the VIP) or routed "
                         "(backends in 10.0.1.0/24 behind a router namespace rt, the VIP "
                         "10.0.0.100 on their loopback: for tunnel-mode VIPs)")
    up.add_argument("--nodes", type=int, help="ecmp: number of xdplb nodes (default 3)")
    up.add_argument("--no-bfd", action="store_true", help="ecmp: router without BFD")
    up.add_argument("--backends", type=int, default=2, help="number of backends (default 2)")
    up.add_argument("--clients", type=int, default=1, help="number of clients (default 1)")
    up.add_argument("--offloads", choices=("default", "off"), default="default",
                    help="veth offloads: kernel defaults (like the tutorial) or tx/rx csum off")
    up.add_argument("--no-ipv6", action="store_true", help="no fd00::/64 addresses")
    up.add_argument("--containers", action="store_true",
                    help="run client, LB and backends as podman containers of the xdplb image "
                    "(`make image`), each joined to its namespace")
    up.add_argument("--image", help="the image for --containers (default xdplb:VERSION)")
    up.set_defaults(func=_wrap(cmd_up))

    down = sub.add_parser("down", help="remove a lab (namespaces, processes, state)")
    g = down.add_mutually_exclusive_group()
    g.add_argument("--name", help="lab to remove (optional when only one is up)")
    g.add_argument("--all", action="store_true", help="remove every saved lab")
    down.set_defaults(func=_wrap(cmd_down))

    status = sub.add_parser("status", help="show labs, hosts, XDP programs, processes")
    status.add_argument("--name")
    status.set_defaults(func=_wrap(cmd_status))

    ex = sub.add_parser("exec", help="run a command in a host's namespace",
                        usage="%(prog)s [--name NAME] HOST [-- CMD ...]")
    ex.add_argument("--name")
    ex.add_argument("host", help="client, lb, h2, h3, ..., c2, ..., or sw")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="command (default: $SHELL)")
    ex.set_defaults(func=_wrap(cmd_exec))
    return lab_p


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m xdplb.lab``) until the main CLI wires us in."""
    parser = argparse.ArgumentParser(prog=PROG)
    sub = parser.add_subparsers(dest="command")
    register_cli(sub)
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return 1
    return args.func(args)
