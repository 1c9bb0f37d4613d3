"""The daemon's process lifecycle: one instance per pid-file lock, load (or take over) and
attach the data plane, pin its state, then the event loop (control socket, health checks,
neighbour resolution, metrics exporter) until a stop; then detach and unpin, or keep."""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from .. import _signals as signals
from .._bpf import takeover
from .._bpf.dataplane import DataPlane, Knobs, Sizes, ensure_bpffs
from .._bpf.loader import Instance, LoadRequest, interface_index, open_instance
from .._bpf.netlink import interface_kind
from .._signals import Stop, deferred, raise_stop
from .._version import __version__
from ..config import DEFAULTS, Config, load_request
from ..errors import UsageError, XdplbError
from ..lb import read_map_state
from ..logfmt import Log
from .control import DEFAULT_RUN_DIR, MAX_REQUEST, Paths
from .controller import Controller
from .desired import RequestError

if TYPE_CHECKING:
    from ..announce import Announcer
    from ..l2 import L2Announcer
    from ..metrics import Exporter

PIN_ROOT = "/sys/fs/bpf/xdplb"


@dataclass
class ServeOptions:
    """How to serve. `xdplb serve` uses the defaults; `xdplb run` is a foreground serve
    without control socket, pid file or pins (control=False, pins=False)."""

    keep: bool = False  # exit leaves the program attached and the maps pinned
    metrics: tuple[str, int] | None = None  # overrides [lb] metrics
    xdp_mode: str = DEFAULTS.xdp_mode
    run_dir: str = DEFAULT_RUN_DIR
    pin_root: str = PIN_ROOT
    object_path: str | None = None  # the .bpf.o to load (default: the built one)
    control: bool = True  # the pid-file lock and the control socket
    pins: bool = True  # pin maps and program under pin_root/<instance> (keep implies it)
    egress: str | None = None  # two-armed: backends are reached through this interface
    trace_rate: int = 0  # sample one packet in N to the trace ring (0: off)
    takeover: bool = True  # take over a kept (or orphaned) xdplb on the interface


@dataclass
class Hooks:
    """What a foreground front end (`xdplb run`) adds: `ready` once attached and serving,
    `tick` every `every` seconds, `stopping` before the data plane is released."""

    ready: Callable[[Daemon], None] | None = None
    tick: Callable[[Daemon], None] | None = None
    every: float = 0
    stopping: Callable[[Daemon], None] | None = None



def pin_dir(pin_root: str, instance: str) -> str:
    return os.path.join(pin_root, instance)



class Daemon:
    """`xdplb serve`: set up (or take over) the data plane, run until stopped."""

    def __init__(self, config_path: str | None, cfg: Config, opts: ServeOptions,
                 log: Log | None = None, hooks: Hooks | None = None):
        self.config_path = config_path  # None: built from arguments, nothing to reload
        self.cfg = cfg
        self.opts = opts
        self.log = log or Log()
        self.instance = cfg.lb.instance
        self.paths = Paths(opts.run_dir, self.instance)
        self.pins = pin_dir(opts.pin_root, self.instance)
        self.hooks = hooks or Hooks()
        self.dp: DataPlane | None = None
        self.inst: Instance | None = None
        self.interface_kind: str | None = None  # "veth", ... (netlink's kind)
        self.ctl: Controller | None = None
        self.keep = opts.keep
        self._pidfile: IO[str] | None = None
        self._owns_socket = False
        self._attached = False
        self._took_over = False
        self._pending_stop: bool | None = None  # keep flag of a stop asked during setup
        self._pending_reload = False
        self._stop_event: asyncio.Event | None = None
        self._exporter: Exporter | None = None
        self.announcer: Announcer | None = None
        self.l2: L2Announcer | None = None

    # lifecycle -------------------------------------------------------------------------------
    def run(self) -> int:
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

        signal.signal(signal.SIGINT, raise_stop)
        signal.signal(signal.SIGTERM, raise_stop)
        if self.config_path is None:  # nothing to reload: a hangup stops, as for any command
            signal.signal(signal.SIGHUP, raise_stop)
        else:
            signal.signal(signal.SIGHUP, lambda s, f: setattr(self, "_pending_reload", True))
        ok = False
        signals.clear()
        try:
            try:
                if self.opts.control:
                    self._lock()
                self._start_metrics()  # before attaching: an address that cannot be
                # bound stops the start with nothing attached. libbpf prints through a
                # Python callback, where a Ctrl-C would be lost: stop signals are held
                # during the set-up and delivered after it, which then undoes it
                with signals.held():
                    self._setup()
                signals.checkpoint()
            except Stop as e:
                self.log("interrupted", level="warning", signal=str(e), during="setup")
                return 1
            signal.signal(signal.SIGINT, lambda s, f: setattr(self, "_pending_stop", self.keep))
            signal.signal(signal.SIGTERM, lambda s, f: setattr(self, "_pending_stop", self.keep))
            if self.config_path is None:
                signal.signal(signal.SIGHUP,
                              lambda s, f: setattr(self, "_pending_stop", self.keep))
            asyncio.run(self._main())
            ok = True
            return 0
        finally:
            with deferred():
                if self._attached and self.hooks.stopping:
                    self.hooks.stopping(self)
                self._teardown(ok)
            for s, h in old.items():
                signal.signal(s, h)

    def _lock(self) -> None:
        """One daemon per instance: a lock on the pid file, held until exit."""
        try:
            self.paths.run_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        except OSError as e:
            raise XdplbError(f"cannot create {self.paths.run_dir}: {e.strerror}") from None
        # 0644 whatever the umask: anyone may read it, only root may write it
        fd = os.open(self.paths.pid, os.O_RDWR | os.O_CREAT, 0o644)
        os.fchmod(fd, 0o644)
        f = open(fd, "a+")  # noqa: SIM115 - held for the daemon's life
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            pid = f.read().strip() or "?"
            f.close()
            raise XdplbError(f"instance {self.instance} is already served (pid {pid}, "
                             f"{self.paths.pid})") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._pidfile = f

    def _start_metrics(self) -> None:
        """The Prometheus exporter, bound before anything is attached: MetricsError (one
        line, exit 1) when its address cannot be bound."""
        metrics = self.opts.metrics or self.cfg.lb.metrics
        if not metrics:
            return
        from ..metrics import MetricsSnapshot, start_exporter

        def snapshot() -> MetricsSnapshot:
            return self.ctl.metrics_snapshot() if self.ctl else MetricsSnapshot()

        self._exporter = start_exporter(metrics[0], metrics[1], snapshot)
        host, port = self._exporter.address
        self.log("metrics", listen=f"{host}:{port}")

    def _setup(self) -> None:
        """Load (taking over what is attached), fill the maps, attach, pin: traffic meets
        the new program only once its maps are complete."""
        lb = self.cfg.lb
        req = LoadRequest(
            interface=lb.interface, egress=self.opts.egress, xdp_mode=self.opts.xdp_mode,
            sizes=Sizes(max_vips=lb.max_vips, max_backends=lb.max_backends,
                        conntrack=lb.conntrack_size, verified=lb.verified_size),
            knobs=Knobs(hash_seed=lb.hash_seed, nat_port_min=lb.nat_ports[0],
                        nat_port_max=lb.nat_ports[1], frag_drop=lb.frag_policy == "drop",
                        syn_timeout_s=lb.syn_timeout, tcp_timeout_s=lb.tcp_timeout,
                        closing_timeout_s=lb.closing_timeout, udp_timeout_s=lb.udp_timeout,
                        nonsyn_budget=lb.nonsyn_budget, syn_challenge=lb.syn_challenge,
                        syn_challenge_rate=lb.syn_challenge_rate,
                        verified_timeout_s=lb.verified_timeout, rst_rate=lb.rst_rate,
                        gue_port=lb.gue_port),
            pins=self.pins if self.opts.pins or self.keep else None,
            object_path=self.opts.object_path, trace_rate=self.opts.trace_rate,
            takeover=self.opts.takeover)
        self.inst = inst = open_instance(req, self.log)
        self.dp = inst.dp
        signals.checkpoint()
        self.interface_kind = interface_kind(inst.ifindex)
        self._took_over = inst.took_over
        info = {"instance": self.instance, "interface": lb.interface, "version": __version__}
        self.ctl = Controller(self.dp, self.cfg, self.config_path, self.log, info=info,
                              egress_ifindex=inst.egress_ifindex)
        self.ctl.on_stop = self._request_stop
        saved = None
        if self.opts.control:  # serve: runtime overrides survive a restart
            self.ctl.overrides_path = str(self.paths.overrides)
            saved = self._saved_overrides()
        self.ctl.start(read_map_state(self.dp) if inst.took_over else None, saved)
        signals.checkpoint()
        prog_id = inst.attach()
        self._attached = True
        self.ctl.info["program_id"] = prog_id
        inst.pin()
        if inst.took_over:
            self.log("took_over", interface=lb.interface, old_program=inst.old_id,
                     program=prog_id, maps_from=inst.source, reused=",".join(self.dp.reused))
        else:
            self.log("attached", interface=lb.interface, program=prog_id,
                     mode=self.opts.xdp_mode)
        if self.cfg.bgp is not None:
            self._start_announcer()
        if self.cfg.l2 is not None and (self.cfg.l2.announce or self.cfg.l2.track_file):
            self._start_l2()

    def _start_l2(self) -> None:
        """The VIPs answer ARP/NDP on the interface from now on (while healthy)."""
        from ..l2 import L2Announcer, L2Error

        assert self.cfg.l2 is not None and self.ctl is not None
        l2 = L2Announcer(self.cfg.l2, self.cfg.lb.interface, self.paths.run_dir,
                         self.instance, log=self.log)
        try:
            self.paths.run_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
            l2.start()
        except (L2Error, OSError) as e:
            raise XdplbError(f"cannot start the L2 announcer: {e}") from None
        self.l2 = l2
        self.ctl.l2 = l2
        self.ctl.announce()

    def _start_announcer(self) -> None:
        """BIRD as our child (from the main thread: its parent-death signal is tied to the
        thread that forks it), then the first announcement from the current health."""
        from ..announce import AnnounceError, Announcer

        assert self.cfg.bgp is not None and self.ctl is not None
        ann = Announcer(self.cfg.bgp, self.paths.run_dir / f"{self.instance}.bird",
                        log=self.log)
        if self.cfg.sync is not None:
            # a new node takes traffic only once its peers' flows are in its table: each is
            # sent again every `resend`, so one resend (and a round) after sync starts
            ann.attached = False
        try:
            ann.start()
        except AnnounceError as e:
            raise XdplbError(f"cannot start the routing daemon: {e}") from None
        self.announcer = ann
        self.ctl.announcer = ann
        self.ctl.announce()

    def _teardown(self, clean: bool) -> None:
        """Keep (program attached, pins left) or detach and unpin; either way release the
        socket and pid file. An instance that was kept before we started is kept again if
        we fail after taking it over: traffic never loses its program because of us."""
        keep = self._attached and (self.keep or (not clean and self._took_over))
        if self.announcer is not None:  # withdraw before detaching (and before exiting)
            self.announcer.stop()
            self.log("bgp_stopped")
            self.announcer = None
        if self.l2 is not None:  # the VIPs stop answering ARP/NDP before we detach
            self.l2.stop()
            self.log("l2_stopped")
            self.l2 = None
            if self.ctl is not None:
                self.ctl.l2 = None
        if self._exporter is not None:
            self._exporter.close()
            self._exporter = None
        if self.dp is not None:
            try:
                self.dp.close(detach=not keep)
            except OSError as e:
                self.log("detach_failed", level="error", error=str(e))
            if keep:
                self.log("kept", interface=self.cfg.lb.interface, pins=self.pins,
                         program=self.ctl.info.get("program_id") if self.ctl else None)
            elif self._attached and self.inst and self.inst.req.pins:  # (pins are made
                DataPlane.unpin(self.pins)  # after attaching; a failed takeover leaves the
                # kept instance's pins alone)
                self.log("detached", interface=self.cfg.lb.interface)
            self.dp = None
        with contextlib.suppress(FileNotFoundError):
            if self._owns_socket:
                self.paths.sock.unlink()
        if self._pidfile is not None:
            with contextlib.suppress(FileNotFoundError):
                self.paths.pid.unlink()
            self._pidfile.close()
            self._pidfile = None

    def _request_stop(self, keep: bool) -> None:
        self.keep = keep
        if self._stop_event is not None:
            self._stop_event.set()

    def _on_signal_stop(self, signum: int) -> None:
        self.log("signal", signal=signal.Signals(signum).name,
                 action="keep attached and exit" if self.opts.keep else "detach and exit")
        self._request_stop(self.opts.keep)

    def _saved_overrides(self) -> list[dict] | None:
        """The runtime overrides the previous serve of this instance kept (None: none)."""
        try:
            data = json.loads(self.paths.overrides.read_text())
            changes = data["overrides"]
            if not isinstance(changes, list):
                raise TypeError("overrides is not a list")
            return changes
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:  # start from the file
            self.log("overrides_unreadable", level="warning", path=str(self.paths.overrides),
                     error=str(e), what="serving the file without runtime overrides")
            return None

    def _on_hup(self) -> None:
        self.log("signal", signal="SIGHUP", action="reload")
        assert self.ctl is not None  # set up before the event loop runs
        self.ctl.run_change(self._reload)

    def _reload(self) -> None:
        try:
            assert self.ctl is not None
            self.ctl.reload()
        except RequestError:
            pass  # logged by reload()
        except Exception as e:  # noqa: BLE001 - the daemon keeps serving the old state
            self.log("reload_failed", level="error", error=str(e))

    # changes run in one worker thread, one at a time, so that the event loop keeps
    # answering `status`, checking health and syncing while thousands of tables change
    def _in_worker(self, fn: Callable[[], Any]) -> Any:
        assert self.ctl is not None
        self.ctl.applying = threading.get_ident()
        try:
            return fn()
        finally:
            self.ctl.applying = None
            self.ctl.current_view()  # rebuilt here, not by the next status

    def _submit(self, fn: Callable[[], Any]) -> None:
        """Run a change the controller started (health, max_drain_time, SIGHUP) in the
        worker; its health checks (re)start on the loop when it is done."""
        fut = asyncio.get_running_loop().run_in_executor(self._worker, self._in_worker, fn)
        fut.add_done_callback(self._after_change)

    def _after_change(self, fut: asyncio.Future) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            self.log("apply_failed", level="error", error=str(fut.exception()))
        if self.ctl is not None:
            self.ctl.sync_health()  # start the probes of new targets (loop thread)

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal_stop, sig)
        if self.config_path is None:
            loop.add_signal_handler(signal.SIGHUP, self._on_signal_stop, signal.SIGHUP)
        else:
            loop.add_signal_handler(signal.SIGHUP, self._on_hup)
        assert self.ctl is not None  # set up before the event loop runs
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="xdplb-apply")
        self.ctl.submit = self._submit
        server = await self._open_socket() if self.opts.control else None
        self.ctl.sync_health()
        self._neigh_task = asyncio.ensure_future(self._resolve_neighbours())
        self._bgp_task = asyncio.ensure_future(self._watch_announcer())
        self._l2_task = asyncio.ensure_future(self._run_l2()) if self.l2 else None
        self._sync_task = asyncio.ensure_future(self._run_sync()) if self.cfg.sync else None
        self._trace_task = asyncio.ensure_future(self._expire_trace())
        self._flow_task = asyncio.ensure_future(self._watch_flows())
        n_be = sum(len(v.backends) for v in self.cfg.vips)
        self.log("ready", instance=self.instance, interface=self.cfg.lb.interface,
                 vips=len(self.cfg.vips), backends=n_be,
                 socket=str(self.paths.sock) if server else None, pid=os.getpid(),
                 keep=self.opts.keep)
        if self.hooks.ready:
            self.hooks.ready(self)
        ticker = asyncio.ensure_future(self._tick()) if self.hooks.tick else None
        if self._pending_reload:
            self._on_hup()
        if self._pending_stop is not None:
            self._request_stop(self._pending_stop)
        try:
            await self._stop_event.wait()
        finally:
            if server is not None:
                server.close()
                with contextlib.suppress(Exception):
                    await server.wait_closed()
            if ticker is not None:
                ticker.cancel()
            self._neigh_task.cancel()
            self._bgp_task.cancel()
            if self._l2_task is not None:
                self._l2_task.cancel()
            if self._sync_task is not None:
                self._sync_task.cancel()
            self._trace_task.cancel()
            self._flow_task.cancel()
            self.ctl.submit = None
            # a change under way finishes (its maps must not be left half written)
            await asyncio.get_running_loop().run_in_executor(None, self._worker.shutdown)
            await self.ctl.monitor.close()

    async def _open_socket(self) -> asyncio.Server:
        sock = self.paths.sock
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()  # stale: the pid file lock says no daemon owns it
        old_umask = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(self._client, path=str(sock),
                                                     limit=MAX_REQUEST)
        finally:
            os.umask(old_umask)
        self._owns_socket = True
        return server

    async def _tick(self) -> None:
        assert self.hooks.tick is not None
        while True:
            await asyncio.sleep(self.hooks.every)
            self.hooks.tick(self)

    async def _run_sync(self) -> None:
        """Flow-state sync with the peers of [sync]: our established flows out every
        interval, theirs into our table (only datagrams from a configured peer address)."""
        import ipaddress

        from .._bpf.dataplane import KNOBS_PIN, read_knobs
        from ..sync import FlowSync, backend_map

        s = self.cfg.sync
        assert s is not None and self.dp is not None and self.ctl is not None
        ctl = self.ctl
        k = read_knobs(self.dp.maps[KNOBS_PIN])
        fs = FlowSync(self.dp, s, backends=lambda: backend_map(ctl.lb, ctl.desired.specs()),
                      nat_entries=self.dp._nat_entries(), hash_seed=k.hash_seed if k else 0,
                      ct_sets=k.ct_sets if k else 1, nat_port_min=k.nat_port_min if k else 0,
                      foreign_base=ctl.foreign_base)
        ctl.flow_sync = fs
        peers = {ipaddress.ip_address(h) for h, _ in s.peers}

        class Receiver(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr) -> None:
                with contextlib.suppress(ValueError):
                    if ipaddress.ip_address(addr[0].split("%")[0]) in peers:
                        fs.receive(data)
                        return
                fs.stats.bad += 1

        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(Receiver, local_addr=s.listen)
        except OSError as e:
            self.log("sync_failed", level="error", listen=f"{s.listen[0]}:{s.listen[1]}",
                     error=e.strerror or str(e))
            if self.announcer is not None:  # serve without sync rather than not at all
                self.announcer.attached = True
                ctl.announce()
            return
        self.log("sync", listen=f"{s.listen[0]}:{s.listen[1]}", peers=len(s.peers),
                 min_age=s.min_age, max_bytes_per_s=s.max_bytes_per_s)
        hold_until = loop.time() + s.resend + 2 * s.interval
        try:
            while True:
                if self.announcer is not None and not self.announcer.attached and \
                        loop.time() >= hold_until:
                    self.announcer.attached = True  # the peers' flows are in: announce
                    self.log("sync_ready", received=fs.stats.received_entries,
                             written=fs.stats.written)
                    ctl.announce()
                await asyncio.sleep(s.interval)
                try:
                    for d in fs.collect():
                        for peer in s.peers:
                            transport.sendto(d, peer)
                except (OSError, ValueError) as e:  # keep syncing; say why
                    self.log("sync_error", level="error", error=repr(e))
        finally:
            transport.close()

    async def _watch_announcer(self, every: float = 1.0) -> None:
        """A routing daemon that died is started again (nothing is announced meanwhile)."""
        from ..announce import AnnounceError

        while self.announcer is not None:
            await asyncio.sleep(every)
            try:
                if self.announcer is not None and not self.announcer.running():
                    self.announcer.check()
                    assert self.ctl is not None
                    self.ctl.announce()
            except AnnounceError as e:
                self.log("bgp_restart_failed", level="error", error=str(e))

    async def _run_l2(self, every: float = 0.1) -> None:
        """Repeated gratuitous ARPs / unsolicited NAs, and a guard that died restarted."""
        n = 0
        while self.l2 is not None:
            await asyncio.sleep(every)
            n += 1
            try:
                if self.l2 is not None:
                    self.l2.tick()
                    if n % 10 == 0:
                        self.l2.check()
            except XdplbError as e:
                self.log("l2_error", level="error", error=str(e))

    async def _watch_flows(self, every: float = 1.0) -> None:
        """Say when flood protection engages and ends (NAT SYNs are answered with the
        stateless challenge: `syn_challenge` rises; or new flows recycle the ways of
        unconfirmed ones: `evict_embryonic` rises) and when the flow table turns new
        flows away (`drop_nat_full`, `rst_nat_full`) or evicts confirmed ones (`ct_full`)."""
        watched = ("evict_embryonic", "drop_nat_full", "ct_full", "drop_not_syn",
                   "nonsyn_stateless", "syn_challenge", "syn_verified", "rst_not_syn",
                   "rst_nat_full")
        last: dict[str, int] = {}
        engaged = False
        while True:
            await asyncio.sleep(every)
            if self.dp is None:
                continue
            try:
                st = self.dp.stats()
            except OSError:
                continue
            now = {k: st[k][0] for k in watched if k in st}
            d = {k: v - last[k] for k, v in now.items() if k in last}
            last = now
            if not d:
                continue
            active = d["evict_embryonic"] or d["syn_challenge"]
            if active and not engaged:
                engaged = True
                self.log("flood_protection", level="warning", state="engaged",
                         syn_challenge=d["syn_challenge"], syn_verified=d["syn_verified"],
                         evicted_embryonic=d["evict_embryonic"],
                         drop_not_syn=d["drop_not_syn"], why="NAT SYNs from unverified "
                         "addresses are answered with a challenge (a SYN rate above "
                         "syn_challenge_rate, or handshakes losing their ways: a SYN flood, "
                         "or a full table)")
            elif engaged and not active:
                engaged = False
                self.log("flood_protection", state="ended")
            if d["drop_nat_full"] or d["ct_full"] or d["rst_nat_full"]:
                self.log("flow_table_full", level="warning", drop_nat_full=d["drop_nat_full"],
                         rst_nat_full=d["rst_nat_full"], ct_full=d["ct_full"],
                         why="every way holds a confirmed flow: widen nat_ports / raise "
                         "conntrack_size")

    async def _expire_trace(self, every: float = 1.0) -> None:
        """Sampling that an `xdplb trace` switched on goes back to this instance's own
        rate once the trace stops renewing its lease (killed, or its ssh session gone)."""
        from ..attached import expire_trace

        while True:
            await asyncio.sleep(every)
            try:
                if self.dp is not None and expire_trace(self.dp, self.opts.trace_rate):
                    self.log("trace_lease_expired", level="warning",
                             what=f"sampling back to {self.opts.trace_rate or 'off'}")
            except OSError as e:  # keep serving; say why
                self.log("trace_lease_error", level="error", error=str(e))

    async def _resolve_neighbours(self, every: float = 1.0) -> None:
        """Backends configured without a MAC get the one the kernel's neighbour table
        knows (written into the backend entry: no per-packet FIB lookup, and no need for
        forwarding on the interface). A datagram to the discard port makes the kernel
        resolve and refresh the entry (ARP/ND); a changed MAC is applied at once."""
        from .._bpf.netlink import neighbour_macs

        while True:
            try:
                await self._refresh_neighbours(neighbour_macs)
            except (OSError, RuntimeError, ValueError) as e:  # keep resolving; say why
                self.log("neighbour_error", level="error", error=repr(e))
            await asyncio.sleep(every)

    async def _refresh_neighbours(self, neighbour_macs) -> None:
        """One round: poke each MAC-less backend, apply what the table now knows (an
        entry resolved by this round's poke shows up in the next round)."""
        assert self.ctl is not None  # set up before the event loop runs
        wanted = {b.address for spec in self.ctl.desired.specs() for b in spec.backends
                  if b.mac is None}
        for addr in wanted:
            fam = socket.AF_INET if addr.version == 4 else socket.AF_INET6
            with contextlib.suppress(OSError), socket.socket(fam, socket.SOCK_DGRAM) as s:
                s.setblocking(False)
                s.sendto(b"", (str(addr), 9))
        if wanted:  # pyroute2's sync API cannot run inside this event loop: a thread
            known = await asyncio.to_thread(neighbour_macs, wanted)
            if known != self.ctl.neighbour_macs:
                ctl = self.ctl
                ctl.run_change(lambda: _apply_macs(ctl, known))

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), 10)
                req = load_request(line or b"null")  # bounded depth, no NUL bytes
            except (ValueError, TimeoutError, asyncio.LimitOverrunError) as e:
                reply = {"ok": False, "error": f"bad request: {e}", "code": 2}
                await _discard(reader)  # so that closing does not reset the reply away
            else:
                assert self.ctl is not None  # set up before the event loop runs
                ctl = self.ctl
                if isinstance(req, dict) and req.get("cmd") in _CHANGES:
                    reply = await asyncio.get_running_loop().run_in_executor(
                        self._worker, self._in_worker, lambda: ctl.handle(req))
                    ctl.sync_health()  # start the probes of new targets (loop thread)
                else:  # status, stop, node: at once, even while a change runs
                    reply = ctl.handle(req)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


_CHANGES = ("reload", "backend", "vip", "check")  # requests run in the worker


def _apply_macs(ctl: Controller, known: dict) -> None:
    ctl.neighbour_macs = known
    ctl.apply("neighbour")


async def _discard(reader: asyncio.StreamReader, most: int = 16 * MAX_REQUEST,
                   within: float = 2.0) -> None:
    """Read and drop what a client still sends (bounded in bytes and time)."""
    async def drain() -> None:
        left = most
        while left > 0 and (chunk := await reader.read(min(left, 1 << 16))):
            left -= len(chunk)

    with contextlib.suppress(TimeoutError, OSError, ValueError):
        await asyncio.wait_for(drain(), within)


def stop_kept(instance: str, iface: str | None, pin_root: str = PIN_ROOT) -> str:
    """Detach and unpin an instance that a `serve --keep` left behind (no process owns
    it); what was done, as one line."""
    pins = pin_dir(pin_root, instance)
    ifindex = interface_index(iface) if iface else 0
    ensure_bpffs()
    if not iface and not os.path.isdir(pins):
        raise UsageError("give -c FILE or --iface IFACE to detach a kept instance")
    done = takeover.release(iface, ifindex, pins)
    if not done:
        raise XdplbError(f"nothing to stop: no xdplb attached{' to ' + iface if iface else ''} "
                         f"and no pins under {pins}")
    return f"stopped instance {instance}: " + ", ".join(done)
