"""Prometheus exporter for `xdplb serve`: GET /metrics, nothing else.

Counters are read from the data plane's per-CPU maps at scrape time, so a scrape always
sees the kernel's current numbers; labels come from the daemon's current view. A VIP is
labelled vip (its name), address, port and protocol; a backend vip, address and port.

    xdplb_packets_total{outcome}  xdplb_bytes_total{outcome}  (outcomes sum to all packets)
    xdplb_events_total{event}     (side events: reselect, csum_full, ct_full, ...)
    xdplb_vip_{packets,bytes,new_flows,dropped_packets,dropped_bytes}_total{vip,address,port,protocol}
    xdplb_backend_{packets,bytes,new_flows}_total{vip,address,port}
    xdplb_backend_up / _weight / _active_flows {vip,address,port}
    xdplb_health_checks_total{vip,address,port,result}   xdplb_reloads_total{result}
    xdplb_config_last_reload_successful  xdplb_config_last_reload_success_timestamp_seconds
    xdplb_vip_lost_last_backend_total{vip}  xdplb_flow_table_{size,entries}
    xdplb_info{instance,interface,version,program_id}  xdplb_build_info{version}
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
    last_reload: tuple[float, bool] | None = None  # (time of the last success, last ok?)
    lost_last_backend: dict[str, int] = field(default_factory=dict)  # VIP name -> times


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

    # outcomes partition the packets (sum them); side events happen to packets that also
    # have an outcome (a re-selected flow is still forwarded): never add the two
    pk = CounterMetricFamily("xdplb_packets", "Packets by what the data plane did with them "
                             "(one outcome per packet)", labels=["outcome"])
    by = CounterMetricFamily("xdplb_bytes", "Bytes by what the data plane did with them",
                             labels=["outcome"])
    ev = CounterMetricFamily("xdplb_events", "Things that happened to packets besides their "
                             "outcome (re-selected flow, full checksum, table pressure)",
                             labels=["event"])
    for reason, (p, b) in snap.reasons.items():
        if is_outcome(reason):
            pk.add_metric([reason], p)
            by.add_metric([reason], b)
        else:
            ev.add_metric([reason], p)
    yield pk
    yield by
    yield ev

    vl = ["vip", "address", "port", "protocol"]
    bl = ["vip", "address", "port"]
    for what, doc in (("packets", "Packets"), ("bytes", "Bytes"), ("new_flows", "New flows")):
        v = CounterMetricFamily(f"xdplb_vip_{what}", f"{doc} to and from a VIP (its current "
                                "backends' plus what it dropped)", labels=vl)
        for name, label, c in snap.vips:
            v.add_metric([name, *vip_labels(label)], c[what])
        yield v
        bf = CounterMetricFamily(f"xdplb_backend_{what}", f"{doc} to and from a backend",
                                 labels=bl)
        for vip, be, c, _, _ in snap.backends:
            bf.add_metric([vip, *endpoint_labels(be)], c[what])
        yield bf
    for what in ("packets", "bytes"):
        d = CounterMetricFamily(f"xdplb_vip_dropped_{what}", f"{what.capitalize()} to a VIP "
                                "dropped for want of a backend", labels=vl)
        for name, label, c in snap.vips:
            d.add_metric([name, *vip_labels(label)], c.get(f"dropped_{what}", 0))
        yield d

    up = GaugeMetricFamily("xdplb_backend_up", "1 when the backend passes its health check "
                           "(or has none), 0 when down", labels=bl)
    weight = GaugeMetricFamily("xdplb_backend_weight", "Maglev weight in use (0: draining)",
                               labels=bl)
    active = GaugeMetricFamily("xdplb_backend_active_flows", "Live flows in the flow table "
                               "going to a backend", labels=bl)
    for vip, be, c, is_up, w in snap.backends:
        up.add_metric([vip, *endpoint_labels(be)], 1 if is_up else 0)
        weight.add_metric([vip, *endpoint_labels(be)], w)
        active.add_metric([vip, *endpoint_labels(be)], c.get("active_flows", 0))
    yield up
    yield weight
    yield active

    checks = CounterMetricFamily("xdplb_health_checks", "Health check results",
                                 labels=["vip", "address", "port", "result"])
    for (vip, be, result), n in snap.checks.items():
        checks.add_metric([vip, *endpoint_labels(be), result], n)
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
    if snap.last_reload:  # (start counts as the first successful load, as in Prometheus)
        ok_at, ok = snap.last_reload
        yield GaugeMetricFamily("xdplb_config_last_reload_successful", "1 when the last "
                                "reload (or the start) succeeded", value=1 if ok else 0)
        yield GaugeMetricFamily("xdplb_config_last_reload_success_timestamp_seconds",
                                "When the configuration was last loaded successfully",
                                value=ok_at)
    lost = CounterMetricFamily("xdplb_vip_lost_last_backend", "Times a VIP was left with no "
                               "backend taking new flows", labels=["vip"])
    for name, n in snap.lost_last_backend.items():
        lost.add_metric([name], n)
    yield lost


OUTCOME_PREFIXES = ("fwd_", "reply", "pass_", "drop_", "icmp_", "tx_", "rst_", "syn_")


def is_outcome(reason: str) -> bool:
    """fwd_new, reply, pass_not_vip, drop_no_backend, syn_challenge, rst_not_syn, ...: what
    became of a packet; the rest (reselect, csum_full, ct_full, evict_*, ...) are side
    events."""
    return reason.startswith(OUTCOME_PREFIXES)


def endpoint_labels(key: str) -> tuple[str, str]:
    """'10.0.0.2:8000' or '[fd00::2]:80' -> (address, port)."""
    host, _, port = key.rpartition(":")
    return host.strip("[]"), port


def vip_labels(label: str) -> tuple[str, str, str]:
    """'10.0.0.10:8000/tcp' -> (address, port, protocol)."""
    endpoint, _, proto = label.rpartition("/")
    return (*endpoint_labels(endpoint), proto)


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
