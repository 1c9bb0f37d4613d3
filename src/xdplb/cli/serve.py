"""`xdplb serve` and the commands that talk to a running serve (reload, status, stop,
backend, vip) through its control socket."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from .._proc import alive as _alive
from ..config import DEFAULTS, Config, ConfigError, load_config
from ..daemon import (
    DEFAULT_RUN_DIR,
    PIN_ROOT,
    Daemon,
    Paths,
    RequestError,
    ServeOptions,
    call,
    lock_holder,
    parse_backend_ref,
    request,
    run_dir_default,
    stop_kept,
)
from ..errors import UsageError, XdplbError
from ._common import listen_option, print_changes, require_root


def _config_or_usage(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as e:
        raise UsageError(str(e)) from None


def _target(args) -> tuple[Paths, Config | None]:
    """Which instance a client command talks to: -c FILE, --instance, --iface, or the
    only socket in the run directory."""
    run_dir = args.run_dir or run_dir_default()
    cfg = None
    if getattr(args, "config", None):
        cfg = _config_or_usage(args.config)
        instance = cfg.lb.instance
    elif getattr(args, "instance", None):
        instance = args.instance
    elif getattr(args, "iface", None):
        instance = args.iface
    else:
        socks = sorted(Path(run_dir).glob("*.sock")) if Path(run_dir).is_dir() else []
        if len(socks) != 1:
            which = ", ".join(p.stem for p in socks) if socks else "none running"
            raise UsageError(f"which instance? ({which} in {run_dir}): give -c FILE or "
                             "--instance NAME")
        instance = socks[0].stem
    if getattr(args, "instance", None):
        instance = args.instance
    return Paths(run_dir, instance), cfg


def cmd_serve(args) -> int:
    cfg = _config_or_usage(args.config)
    metrics = listen_option(args.metrics)
    require_root("xdplb serve")
    opts = ServeOptions(keep=args.keep, metrics=metrics, xdp_mode=args.xdp_mode,
                        run_dir=args.run_dir or run_dir_default(), object_path=args.object,
                        egress=args.egress, trace_rate=args.trace)
    return Daemon(os.path.abspath(args.config), cfg, opts).run()


def cmd_check(args) -> int:
    """Validate FILE; with its instance running, print what a reload would change."""
    cfg = _config_or_usage(args.config)
    paths, _ = _target(args)
    if not paths.sock.exists():
        print(f"{args.config}: valid ({len(cfg.vips)} VIPs, "
              f"{sum(len(v.backends) for v in cfg.vips)} backends); instance "
              f"{paths.instance} is not running: nothing to compare")
        return 0
    reply = request(paths, {"cmd": "check", "config": os.path.abspath(args.config)})
    print(f"{args.config}: valid; against instance {paths.instance} (serving "
          f"{reply['serving']}):")
    print_changes(["  " + c for c in reply["changes"]], "  no changes")
    if reply.get("kept_overrides"):
        print(f"  a reload keeps {len(reply['kept_overrides'])} runtime override(s): "
              + "; ".join(reply["kept_overrides"]))
    if reply.get("dropped_overrides"):
        print(f"  a reload drops {len(reply['dropped_overrides'])} runtime override(s) that "
              "no longer apply: " + "; ".join(reply["dropped_overrides"]))
    return 0


def cmd_reload(args) -> int:
    paths, _ = _target(args)
    if paths.sock.exists():
        req: dict[str, Any] = {"cmd": "reload"}
        if args.config:  # the daemon refuses a file other than the one it serves
            req["config"] = os.path.abspath(args.config)
        reply = request(paths, req)
        print_changes(reply["changes"])
        if reply.get("kept_overrides"):
            print(f"kept {len(reply['kept_overrides'])} runtime override(s) "
                  "(`xdplb backend reset-overrides` drops them): "
                  + "; ".join(reply["kept_overrides"]))
        if reply.get("dropped_overrides"):
            print(f"dropped {len(reply['dropped_overrides'])} runtime override(s) that no "
                  "longer apply: " + "; ".join(reply["dropped_overrides"]))
        for k in reply.get("needs_restart", []):
            print(f"{k} changed: takes effect after `xdplb stop` and a new `xdplb serve`")
        return 0
    # no socket yet: a serve still starting holds the lock and reloads after setup; a pid
    # file that no process holds names a pid that may be anything now: never signal it
    pid = lock_holder(paths)
    if pid is None:
        raise XdplbError(f"no xdplb serve is running for instance {paths.instance} "
                         f"(no answer on {paths.sock}, no process holds {paths.pid})")
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as e:
        raise XdplbError(f"cannot signal pid {pid}: {e.strerror}") from None
    print(f"sent SIGHUP to pid {pid}")
    return 0


def cmd_status(args) -> int:
    paths, _ = _target(args)
    st = request(paths, {"cmd": "status"})["status"]
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    print(f"xdplb {st.get('version', '?')} instance {st['instance']} on {st['interface']} "
          f"(pid {st['pid']}, program id {st.get('program_id', '?')}, up {st['uptime']:.0f} s), "
          f"config {st['config']}")
    for v in st["vips"]:
        h = v["health"]
        check = "no health check" if not h else (
            f"{h['kind']}{' ' + h['path'] if h.get('path') else ''} every {h['interval']:g} s, "
            f"rise {h['rise']} fall {h['fall']}, on_down {h.get('on_down', 'drain')}")
        print(f"VIP {v['name']} {v['vip']} {v['mode']}: {v['packets']} pkts, "
              f"{v['new_flows']} flows; {check}")
        for b in v["backends"]:
            extra = ""
            if b["health"] and b["health"]["last_error"]:
                extra = f"  last check: {b['health']['last_error']}"
            # what it gets: all = new flows too, established = only its own (drain)
            traffic = {"new": "", "established": " (draining)", "none": " (flows moved)"}.get(
                b.get("traffic", "new"), "")
            print(f"  {b['backend']:<24} {b['state'] + traffic:<20} weight {b['weight']:<5} "
                  f"{b.get('active_flows', 0):>6} active {b['packets']:>10} pkts "
                  f"{b['new_flows']:>8} flows{extra}")
    bgp = st.get("bgp")
    if bgp:
        state = "drained (nothing announced)" if bgp["drained"] else (
            f"offering {', '.join(bgp['offered']) or 'nothing'}")
        print(f"BGP: BIRD pid {bgp['pid'] or '-'}"
              f"{'' if bgp['running'] else ' (not running)'}; {state}")
        for s in bgp["sessions"]:
            print(f"  peer {s['peer']} AS {s['asn']}: {s['state']} {s['info']}".rstrip()
                  + (f"; announced {', '.join(s['announced'])}" if s["announced"] else ""))
    l2 = st.get("l2")
    if l2:
        if not l2.get("announce", True):
            state = "ARP/NDP left to others ([l2] announce = false)"
        elif l2["drained"]:
            state = "drained (answering nothing)"
        else:
            state = f"answering ARP/NDP for {', '.join(l2['answering']) or 'nothing'}"
        track = ""
        if l2.get("track_file"):
            ready = "ready" if l2["track_state"] == 0 else "not ready"
            track = f"; track file {l2['track_file']}: {l2['track_state']} ({ready})"
        print(f"L2: {l2['interface']}: {state}"
              + (f"; the interface's own {', '.join(l2['static'])}" if l2["static"] else "")
              + track + f"; guard pid {l2['guard_pid'] or '-'}"
              + ("" if l2["guard_running"] else " (not running)"))
    elif st.get("drained"):
        print("node drained (`xdplb node check` fails)")
    if st["overrides"]:
        print("runtime overrides (kept across reloads and restarts; `xdplb backend reset-overrides` drops them):")
        for o in st["overrides"]:
            print(f"  {o}")
    return 0


def cmd_stop(args) -> int:
    """Stop a running daemon (detaching), or detach and unpin a kept instance."""
    paths, cfg = _target(args)
    iface = cfg.lb.interface if cfg else args.iface
    pid = None
    with contextlib.suppress(OSError, ValueError):
        pid = int(paths.pid.read_text().strip())
    if paths.sock.exists():
        try:
            reply = call(paths.sock, {"cmd": "stop", "keep": False}, 10)
        except (FileNotFoundError, ConnectionRefusedError):
            reply = None
        if reply is not None:
            if not reply.get("ok"):
                raise XdplbError(reply.get("error", "stop refused"))
            deadline = time.monotonic() + 15
            while pid and _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid and _alive(pid):
                raise XdplbError(f"pid {pid} did not exit within 15 s")
            print(f"stopped xdplb serve (pid {pid}) of instance {paths.instance}: detached")
            return 0
    require_root("xdplb stop")
    print(stop_kept(paths.instance, iface, args.pin_root))
    return 0


def _backend_table(args) -> dict:
    addr, port = parse_backend_ref(args.backend)
    t: dict[str, Any] = {"address": str(addr)}
    if port is not None:
        t["port"] = port
    if args.mac:
        t["mac"] = args.mac
    if args.weight is not None:
        t["weight"] = args.weight
    return t


def cmd_backend(args) -> int:
    paths, _ = _target(args)
    if args.op == "reset-overrides":
        print_changes(request(paths, {"cmd": "backend", "op": "reset-overrides"})["changes"])
        return 0
    req: dict[str, Any] = {"cmd": "backend", "op": args.op, "vip": args.vip}
    if args.op == "add":
        try:
            req["backend"] = _backend_table(args)
        except RequestError as e:
            raise UsageError(str(e)) from None
    else:
        req["backend"] = args.backend
    if args.op == "weight":
        req["weight"] = args.weight_value
    print_changes(request(paths, req)["changes"])
    return 0


def cmd_vip(args) -> int:
    paths, _ = _target(args)
    if args.op == "remove":
        print_changes(request(paths, {"cmd": "vip", "op": "remove", "vip": args.vip})
                       ["changes"])
        return 0
    host, sep, port = args.vip.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"{args.vip!r}: give the VIP as ADDRESS:PORT ([IPV6]:PORT)")
    t: dict[str, Any] = {"address": host.strip("[]"), "port": int(port),
                         "protocol": args.proto, "mode": args.mode}
    for k in ("name", "snat", "ring_size", "on_backend_removed"):
        if getattr(args, k) is not None:
            t[k] = getattr(args, k)
    backends = []
    for ref in args.backend or []:
        spec, _, mac = ref.partition("@")
        addr, bport = parse_backend_ref(spec)
        b: dict[str, Any] = {"address": str(addr)}
        if bport is not None:
            b["port"] = bport
        if mac:
            b["mac"] = mac
        backends.append(b)
    t["backend"] = backends
    print_changes(request(paths, {"cmd": "vip", "op": "add", "vip": t})["changes"])
    return 0



def cmd_node(args) -> int:
    paths, _ = _target(args)
    print_changes(request(paths, {"cmd": "node", "op": args.op})["changes"])
    return 0


# --- command line ------------------------------------------------------------------------------


def _add_target(p: argparse.ArgumentParser, iface: bool = False) -> None:
    g = p.add_argument_group("which instance (default: the only one running)")
    g.add_argument("-c", "--config", metavar="FILE", help="the instance of this config file")
    g.add_argument("--instance", metavar="NAME", help="[lb] name, else the interface name")
    if iface:
        g.add_argument("--iface", metavar="IFACE", help="the instance on this interface")
    g.add_argument("--run-dir", metavar="DIR", default=None,
                   help=f"pid files and control sockets (default $XDPLB_RUN_DIR or "
                   f"{DEFAULT_RUN_DIR})")


def register(sub) -> None:
    """Add serve, reload, stop, status, backend and vip to the xdplb command line."""
    s = sub.add_parser(
        "serve", help="run the load balancer from a config file (the operator's daemon)",
        description="Validate FILE, load and attach the data plane (or take over a kept "
        "one without dropping flows), then run health checks, reloads (SIGHUP or `xdplb "
        "reload`), the control socket and the Prometheus exporter until SIGINT/SIGTERM.")
    s.add_argument("-c", "--config", required=True, metavar="FILE")
    s.add_argument("--keep", action="store_true",
                   help="on exit leave the program attached and the maps pinned, for a "
                   "restart or upgrade that keeps every connection")
    s.add_argument("--metrics", metavar="ADDR:PORT",
                   help="serve Prometheus metrics (overrides [lb] metrics)")
    s.add_argument("--xdp-mode", choices=("auto", "native", "generic"),
                   default=DEFAULTS.xdp_mode)
    s.add_argument("--egress", metavar="IFACE",
                   help="two-armed: backends are reached through IFACE (XDP_REDIRECT); xdplb "
                   "attaches there too to catch the replies (give each VIP's snat an "
                   "address of IFACE)")
    s.add_argument("--trace", type=int, default=0, metavar="N",
                   help="sample one packet in N to the trace ring (see `xdplb trace`)")
    s.add_argument("--run-dir", metavar="DIR", default=None,
                   help=f"pid file and control socket (default $XDPLB_RUN_DIR or "
                   f"{DEFAULT_RUN_DIR})")
    s.add_argument("--object", metavar="PATH", default=None, help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_serve)

    r = sub.add_parser("reload", help="re-read the config file of a running serve and apply "
                       "the difference")
    _add_target(r)
    r.set_defaults(func=cmd_reload)

    c = sub.add_parser("check", help="validate a config file and show what a reload of it "
                       "would change on the running instance (applies nothing)",
                       description="Exit 0 when FILE is valid (whether or not it differs "
                       "from what runs), 2 with one line when it is not.")
    c.add_argument("-c", "--config", required=True, metavar="FILE")
    c.add_argument("--instance", metavar="NAME", help="compare with this instance "
                   "(default: the file's [lb] name or interface)")
    c.add_argument("--run-dir", metavar="DIR", default=None,
                   help=f"pid files and control sockets (default $XDPLB_RUN_DIR or "
                   f"{DEFAULT_RUN_DIR})")
    c.set_defaults(func=cmd_check)

    st = sub.add_parser("status", help="VIPs, backends (health, weight) and counters of a "
                        "running serve")
    _add_target(st)
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    sp = sub.add_parser("stop", help="stop a running serve, or detach and unpin a kept one")
    _add_target(sp, iface=True)
    sp.add_argument("--pin-root", default=PIN_ROOT, help=argparse.SUPPRESS)
    sp.set_defaults(func=cmd_stop)

    b = sub.add_parser("backend", help="runtime backend changes on a running serve "
                       "(kept across reloads and restarts until reset-overrides)")
    bsub = b.add_subparsers(dest="op", required=True)
    for op, hlp in (("drain", "no new flows (weight 0); established flows stay"),
                    ("undrain", "back to its weight"),
                    ("remove", "remove; its flows re-select or reset (VIP policy)"),
                    ("weight", "set the Maglev weight"),
                    ("add", "add a backend to a VIP")):
        p = bsub.add_parser(op, help=hlp)
        p.add_argument("backend", metavar="BACKEND", help="ADDRESS, ADDRESS:PORT or [IPV6]:PORT")
        p.add_argument("--vip", help="VIP name or ADDRESS:PORT[/PROTO] (default: every VIP "
                       "with that backend" + ("; required with several VIPs)" if op == "add"
                                              else ")"))
        if op == "weight":
            p.add_argument("weight_value", metavar="WEIGHT", type=int)
        if op == "add":
            p.add_argument("--mac", help="next-hop MAC (default: from the kernel's FIB)")
            p.add_argument("--weight", type=int, default=None)
        _add_target(p)
        p.set_defaults(func=cmd_backend)
    r = bsub.add_parser("reset-overrides", help="drop every runtime change (backend and "
                        "VIP requests): serve the file as it is")
    _add_target(r)
    r.set_defaults(func=cmd_backend)

    v = sub.add_parser("vip", help="runtime VIP changes on a running serve (kept across "
                       "reloads and restarts until `backend reset-overrides`)")
    vsub = v.add_subparsers(dest="op", required=True)
    a = vsub.add_parser("add", help="add a VIP")
    a.add_argument("vip", metavar="ADDRESS:PORT")
    a.add_argument("--proto", choices=("tcp", "udp"), default="tcp")
    a.add_argument("--mode", choices=("nat", "dsr", "ipip", "gue"), default="nat")
    a.add_argument("--name")
    a.add_argument("--snat")
    a.add_argument("--ring-size", type=int)
    a.add_argument("--on-backend-removed", choices=("reselect", "reset"))
    a.add_argument("--backend", action="append", metavar="IP[:PORT][@MAC]")
    _add_target(a)
    a.set_defaults(func=cmd_vip)
    n = sub.add_parser("node", help="this node in an ECMP group or an L2 pair: drain (withdraw "
                       "every route and L2 answer, keep forwarding established flows), resume "
                       "(announce again) or check (exit 0 when it can take the VIPs)")
    nsub = n.add_subparsers(dest="op", required=True)
    for op, hlp in (("drain", ("withdraw every VIP from the routers and stop answering ARP/NDP "
                     "for them; the data plane stays attached, so flows still arriving are "
                     "forwarded")),
                    ("resume", "announce the healthy VIPs again"),
                    ("check", ("exit 0 when serve runs, the node is not drained and every "
                               "announced VIP has min_healthy backends up; else say why, exit 1 "
                               "(a keepalived track script)"))):
        p = nsub.add_parser(op, help=hlp)
        _add_target(p)
        p.set_defaults(func=cmd_node)

    rm = vsub.add_parser("remove", help="remove a VIP")
    rm.add_argument("vip", metavar="VIP", help="name or ADDRESS:PORT[/PROTO]")
    _add_target(rm)
    rm.set_defaults(func=cmd_vip)
