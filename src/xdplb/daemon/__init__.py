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

The parts, one concept each: `desired` (the file plus runtime overrides), `controller`
(desired state -> data plane; requests, status and metrics), `lifecycle` (lock, load and
attach, event loop, socket, neighbours, teardown) and `control` (the socket's protocol,
both sides). Log lines are logfmt (`xdplb.logfmt`). The command line is `xdplb.cli`.
"""
from .control import DEFAULT_RUN_DIR, Paths, call, request, run_dir_default
from .controller import Controller
from .desired import BKey, Desired, RequestError, parse_backend_ref, specs_from_config, vip_label
from .lifecycle import PIN_ROOT, Daemon, ServeOptions, pin_dir, stop_kept

__all__ = [
    "DEFAULT_RUN_DIR",
    "PIN_ROOT",
    "BKey",
    "Controller",
    "Daemon",
    "Desired",
    "Paths",
    "RequestError",
    "ServeOptions",
    "call",
    "parse_backend_ref",
    "pin_dir",
    "request",
    "run_dir_default",
    "specs_from_config",
    "stop_kept",
    "vip_label",
]
