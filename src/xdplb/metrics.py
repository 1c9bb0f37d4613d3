"""Prometheus exporter for `xdplb serve`: GET /metrics, nothing else.

Counters are read from the data plane's per-CPU maps at scrape time, so a scrape always
sees the kernel's current numbers; labels come from the daemon's current view (VIP name
and address, backend address:port).

    xdplb_vip_packets_total{vip,address}        xdplb_backend_packets_total{vip,backend}
    xdplb_vip_bytes_total{vip,address}          xdplb_backend_bytes_total{vip,backend}
    xdplb_vip_new_flows_total{vip,address}      xdplb_backend_new_flows_total{vip,backend}
    xdplb_vip_dropped_packets_total{vip,address}   xdplb_vip_dropped_bytes_total{vip,address}
    xdplb_packets_total{reason}                 xdplb_backend_up{vip,backend}  (1/0)
    xdplb_bytes_total{reason}                   xdplb_backend_weight{vip,backend}
    xdplb_health_checks_total{vip,backend,result}
    xdplb_reloads_total{result}                 xdplb_info{instance,interface,program_id}
"""
from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from ._version import __version__
from .errors import XdplbError

__all__ = ["Exporter", "MetricsError", "MetricsSnapshot", "start_exporter"]


class MetricsError(XdplbError):
    """The exporter cannot start (address in use, not available, ...)."""


@dataclass
class MetricsSnapshot:
    """Everything one scrape reports (built by daemon.Controller.metrics_snapshot)."""

    info: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, tuple[int, int]] = field(default_factory=dict)  # packets, bytes
    # (vip name, address label, {"packets", "bytes", "new_flows", "dropped_packets",
    #  "dropped_bytes"})
    vips: list[tuple[str, str, dict[str, int]]] = field(default_factory=list)
    # (vip name, backend, counters, up, weight)
    backends: list[tuple[str, str, dict[str, int], bool, int]] = field(default_factory=list)
    checks: dict[tuple[str, str, str], int] = field(default_factory=dict)  # vip, be, result
    reloads: dict[str, int] = field(default_factory=dict)  # result -> count
    flows: dict[str, int] = field(default_factory=dict)  # DataPlane.flow_counts()


def _families(snap: MetricsSnapshot):
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    info = GaugeMetricFamily("xdplb_info", "The running xdplb instance",
                             labels=list(snap.info))
    info.add_metric(list(snap.info.values()), 1)
    yield info
    build = GaugeMetricFamily("xdplb_build_info", "The xdplb version serving",
                              labels=["version"])
    build.add_metric([__version__], 1)
    yield build

    pk = CounterMetricFamily("xdplb_packets", "Packets by what the data plane did with them",
                             labels=["reason"])
    by = CounterMetricFamily("xdplb_bytes", "Bytes by what the data plane did with them",
                             labels=["reason"])
    for reason, (p, b) in snap.reasons.items():
        pk.add_metric([reason], p)
        by.add_metric([reason], b)
    yield pk
    yield by

    for what, doc in (("packets", "Packets"), ("bytes", "Bytes"), ("new_flows", "New flows")):
        v = CounterMetricFamily(f"xdplb_vip_{what}", f"{doc} to and from a VIP (its current "
                                "backends' plus what it dropped)", labels=["vip", "address"])
        for name, addr, c in snap.vips:
            v.add_metric([name, addr], c[what])
        yield v
        bf = CounterMetricFamily(f"xdplb_backend_{what}", f"{doc} to and from a backend",
                                 labels=["vip", "backend"])
        for vip, be, c, _, _ in snap.backends:
            bf.add_metric([vip, be], c[what])
        yield bf
    for what in ("packets", "bytes"):
        d = CounterMetricFamily(f"xdplb_vip_dropped_{what}", f"{what.capitalize()} to a VIP "
                                "dropped for want of a backend", labels=["vip", "address"])
        for name, addr, c in snap.vips:
            d.add_metric([name, addr], c.get(f"dropped_{what}", 0))
        yield d

    up = GaugeMetricFamily("xdplb_backend_up", "1 when the backend passes its health check "
                           "(or has none), 0 when pulled", labels=["vip", "backend"])
    weight = GaugeMetricFamily("xdplb_backend_weight", "Maglev weight in use (0: draining)",
                               labels=["vip", "backend"])
    for vip, be, _, is_up, w in snap.backends:
        up.add_metric([vip, be], 1 if is_up else 0)
        weight.add_metric([vip, be], w)
    yield up
    yield weight

    active = GaugeMetricFamily("xdplb_backend_active_flows", "Live flows in the flow table "
                               "going to a backend", labels=["vip", "backend"])
    for vip, be, c, _, _ in snap.backends:
        active.add_metric([vip, be], c.get("active_flows", 0))
    yield active

    checks = CounterMetricFamily("xdplb_health_checks", "Health check results",
                                 labels=["vip", "backend", "result"])
    for (vip, be, result), n in snap.checks.items():
        checks.add_metric([vip, be, result], n)
    yield checks

    if snap.flows:
        size = GaugeMetricFamily("xdplb_flow_table_size", "Entries of the flow table",
                                 labels=["region"])
        fill = GaugeMetricFamily("xdplb_flow_table_entries", "Flow table entries in use "
                                 "(live: not idle beyond their timeout)",
                                 labels=["region", "state"])
        for region in ("nat", "ct"):
            size.add_metric([region], snap.flows.get(f"{region}_size", 0))
            for state in ("used", "live"):
                fill.add_metric([region, state], snap.flows.get(f"{region}_{state}", 0))
        yield size
        yield fill

    reloads = CounterMetricFamily("xdplb_reloads", "Configuration reloads", labels=["result"])
    for result, n in snap.reloads.items():
        reloads.add_metric([result], n)
    yield reloads


class _Collector:
    def __init__(self, snapshot: Callable[[], MetricsSnapshot]):
        self.snapshot = snapshot

    def collect(self):
        yield from _families(self.snapshot())


class Exporter:
    """The HTTP side: GET /metrics (and HEAD) answers the exposition; any other path 404."""

    def __init__(self, server: ThreadingHTTPServer, thread: threading.Thread):
        self._server = server
        self._thread = thread

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def make_registry(snapshot: Callable[[], MetricsSnapshot]):
    from prometheus_client import CollectorRegistry

    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Collector(snapshot))
    return reg


def _handler(registry) -> type[BaseHTTPRequestHandler]:
    from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

    class Handler(BaseHTTPRequestHandler):
        server_version = "xdplb"

        def _answer(self, body: bool) -> None:
            if urlsplit(self.path).path != "/metrics":
                self.send_error(404, "only /metrics is served here")
                return
            try:
                data = generate_latest(registry)
            except Exception as e:  # noqa: BLE001 - a failed scrape is a 500, not a dead thread
                self.send_error(500, f"scrape failed: {e}")
                return
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_GET(self) -> None:
            self._answer(True)

        def do_HEAD(self) -> None:
            self._answer(False)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes are not events worth a log line

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def start_exporter(host: str, port: int, snapshot: Callable[[], MetricsSnapshot]) -> Exporter:
    """Serve /metrics on host:port from a thread. MetricsError (one line) when the address
    cannot be bound, so the daemon refuses to start rather than run unobserved."""
    try:
        handler = _handler(make_registry(snapshot))
    except ImportError as e:
        raise MetricsError(f"metrics need prometheus-client ({e})") from None
    cls = _Server6 if ":" in host else _Server
    try:
        server = cls((host, port), handler)
    except OSError as e:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise MetricsError(f"cannot serve metrics on {where}: {e.strerror or e}") from None
    thread = threading.Thread(target=server.serve_forever, name="xdplb-metrics", daemon=True)
    thread.start()
    return Exporter(server, thread)
