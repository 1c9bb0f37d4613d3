"""`xdplb serve`: the operator's daemon.

serve -c FILE
    validate the file, load the data plane sized from [lb], fill the maps, attach to
    lb.interface, pin maps and program under /sys/fs/bpf/xdplb/<instance>/, then run:
    health checks (asyncio), SIGHUP / `xdplb reload` (re-read the file, apply only the
    diff), a control socket /run/xdplb/<instance>.sock (one JSON request per connection:
    status, reload, stop, backend and vip overrides) and a Prometheus exporter.
    Exit on SIGINT/SIGTERM detaches and unpins; with --keep the program stays attached
    and the maps pinned, and the next `serve` takes them over (same conntrack, same ids)
    and swaps its program in atomically.

`xdplb run` is the same daemon in the foreground, built from its arguments (run_config)
without control socket, pid file or pins.

The parts, one concept each: `desired` (the file plus runtime overrides), `controller`
(desired state -> data plane; requests, status and metrics), `lifecycle` (lock, load and
attach through the one loader `_bpf.loader`, event loop, socket, neighbours, teardown),
`control` (the socket's protocol, both sides) and `run_config` (run's arguments as a
Config). Log lines are logfmt (`xdplb.logfmt`). The command line is `xdplb.cli`.
"""
from .control import DEFAULT_RUN_DIR, Paths, call, lock_holder, request, run_dir_default
from .controller import Controller
from .desired import BKey, Desired, RequestError, parse_backend_ref, specs_from_config, vip_label
from .lifecycle import PIN_ROOT, Daemon, Hooks, ServeOptions, pin_dir, stop_kept
from .run_config import interface_ipv4, run_config

__all__ = [
    "DEFAULT_RUN_DIR",
    "PIN_ROOT",
    "BKey",
    "Controller",
    "Daemon",
    "Desired",
    "Hooks",
    "Paths",
    "RequestError",
    "ServeOptions",
    "call",
    "interface_ipv4",
    "lock_holder",
    "parse_backend_ref",
    "pin_dir",
    "request",
    "run_config",
    "run_dir_default",
    "specs_from_config",
    "stop_kept",
    "vip_label",
]
