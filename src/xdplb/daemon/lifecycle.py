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
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from .._signals import Stop, deferred, raise_stop
from ..config import Config
from ..errors import UsageError, XdplbError
from ..lb import read_map_state
from ..logfmt import Log
from .control import DEFAULT_RUN_DIR, MAX_REQUEST, Paths
from .controller import Controller
from .desired import RequestError

if TYPE_CHECKING:
    from .._bpf.dataplane import DataPlane
    from .._bpf.libbpf import Map
    from ..metrics import Exporter

PIN_ROOT = "/sys/fs/bpf/xdplb"


@dataclass
class ServeOptions:
    keep: bool = False  # exit leaves the program attached and the maps pinned
    metrics: tuple[str, int] | None = None  # overrides [lb] metrics
    xdp_mode: str = "auto"
    run_dir: str = DEFAULT_RUN_DIR
    pin_root: str = PIN_ROOT
    object_path: str | None = None  # the .bpf.o to load (default: the built one)



def pin_dir(pin_root: str, instance: str) -> str:
    return os.path.join(pin_root, instance)



class Daemon:
    """`xdplb serve`: set up (or take over) the data plane, run until stopped."""

    def __init__(self, config_path: str, cfg: Config, opts: ServeOptions, log: Log | None = None):
        self.config_path = config_path
        self.cfg = cfg
        self.opts = opts
        self.log = log or Log()
        self.instance = cfg.lb.instance
        self.paths = Paths(opts.run_dir, self.instance)
        self.pins = pin_dir(opts.pin_root, self.instance)
        self.dp: DataPlane | None = None
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

    # lifecycle -------------------------------------------------------------------------------
    def run(self) -> int:
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

        signal.signal(signal.SIGINT, raise_stop)
        signal.signal(signal.SIGTERM, raise_stop)
        signal.signal(signal.SIGHUP, lambda s, f: setattr(self, "_pending_reload", True))
        ok = False
        try:
            try:
                self._lock()
                self._setup()
            except Stop as e:
                self.log("interrupted", level="warning", signal=str(e), during="setup")
                return 1
            signal.signal(signal.SIGINT, lambda s, f: setattr(self, "_pending_stop", self.keep))
            signal.signal(signal.SIGTERM, lambda s, f: setattr(self, "_pending_stop", self.keep))
            asyncio.run(self._main())
            ok = True
            return 0
        finally:
            with deferred():
                self._teardown(ok)
            for s, h in old.items():
                signal.signal(s, h)

    def _lock(self) -> None:
        """One daemon per instance: a lock on the pid file, held until exit."""
        try:
            self.paths.run_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        except OSError as e:
            raise XdplbError(f"cannot create {self.paths.run_dir}: {e.strerror}") from None
        f = open(self.paths.pid, "a+")  # noqa: SIM115 - held for the daemon's life
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

    def _setup(self) -> None:
        from .._bpf import dataplane as dpm
        from .._bpf import object_path as default_object
        from .._bpf.libbpf import AttachError, BpfError, VerifierError, prog_name

        lb = self.cfg.lb
        try:
            ifindex = dpm.ifindex_of(lb.interface)
        except OSError:
            raise XdplbError(f"unknown interface {lb.interface!r} (in this network "
                             "namespace)") from None
        self.ifindex = ifindex
        try:
            dpm.ensure_bpffs()
        except OSError as e:
            raise XdplbError(f"{e.strerror or e}: pinned state needs bpffs") from None

        old_id, old_mode = dpm.xdp_attachment(ifindex)
        existing: dict = {}
        source = None
        if old_id:
            name = prog_name(old_id)
            if name != dpm.PROG_NAME:
                raise XdplbError(f"{lb.interface} already has an XDP program ({name!r}, id "
                                 f"{old_id}); xdplb will not replace it")
            holders = dpm.prog_holders(old_id)
            if holders:
                raise XdplbError(f"{lb.interface} is served by another xdplb process (pid "
                                 f"{', '.join(map(str, holders))}); stop it first")
            pinned: dict[str, Map]
            pinned, pinned_prog = ({}, 0)
            if os.path.isdir(self.pins):
                pinned, pinned_prog = dpm.open_pinned(self.pins)
            if pinned and pinned_prog == old_id:
                existing, source = pinned, "pins"
            else:
                for m in pinned.values():
                    m.close()
                existing, source = dpm.existing_maps(old_id), "attached program"
            if self.opts.xdp_mode not in ("auto", old_mode):
                self.log("xdp_mode_kept", level="warning", wanted=self.opts.xdp_mode,
                         attached=old_mode, why="an atomic replace keeps the attach mode")
        elif os.path.isdir(self.pins):
            dpm.DataPlane.unpin(self.pins)
            self.log("stale_pins_removed", level="warning", path=self.pins,
                     why="no program attached to the interface")

        sizes = dpm.Sizes(max_vips=lb.max_vips, max_backends=lb.max_backends,
                          conntrack=lb.conntrack_size)
        knobs = dpm.Knobs(hash_seed=lb.hash_seed, nat_port_min=lb.nat_ports[0],
                          nat_port_max=lb.nat_ports[1], frag_drop=lb.frag_policy == "drop")
        old_knobs_map = existing.pop(dpm.KNOBS_PIN, None)
        if old_knobs_map is not None:
            old_knobs = dpm.read_knobs(old_knobs_map)
            old_knobs_map.close()
            old_range = old_knobs and (old_knobs.nat_port_min, old_knobs.nat_port_max)
            new_format = dpm.object_flow_format(self.opts.object_path or default_object())
            if old_knobs and old_knobs.flow_format != new_format:
                for m in existing.values():
                    m.close()
                raise XdplbError(
                    f"cannot take over the xdplb on {lb.interface} (program id {old_id}): its "
                    f"flow table has format {old_knobs.flow_format}, this xdplb uses "
                    f"{new_format} (another flow hash or layout); `xdplb stop` it "
                    "first (its flows are dropped)")
            if old_knobs and old_knobs.ct_sets:  # the kept flow table's geometry
                knobs.ct_sets = old_knobs.ct_sets
            if old_range and old_range != lb.nat_ports:
                # live flows hold NAT ports of the old range: their replies must still
                # be recognised
                knobs.nat_port_min, knobs.nat_port_max = old_range
                self.log("takeover_note", level="warning",
                         what=f"lb.nat_ports stays {old_range[0]}-{old_range[1]} (configured "
                         f"{lb.nat_ports[0]}-{lb.nat_ports[1]}: takes effect after a full "
                         "stop)")
        try:
            self.dp = dpm.DataPlane.load(self.opts.object_path, sizes, knobs,
                                         reuse=existing or None)
        except dpm.UpgradeError as e:
            raise XdplbError(f"cannot take over the xdplb on {lb.interface} (program id "
                             f"{old_id}): {e}; `xdplb stop` it first (its flows are "
                             "dropped)") from None
        except VerifierError as e:
            raise XdplbError(f"the kernel's verifier rejected the data plane: {e}") from None
        except BpfError as e:
            raise XdplbError(f"cannot load the data plane: {e}") from None
        finally:
            for m in existing.values():
                m.close()
        self._took_over = bool(existing)
        for note in self.dp.reuse_notes:
            self.log("takeover_note", level="warning", what=note)

        info = {"instance": self.instance, "interface": lb.interface}
        self.ctl = Controller(self.dp, self.cfg, self.config_path, self.log, info=info)
        self.ctl.on_stop = self._request_stop
        if existing:
            self.ctl.start(read_map_state(self.dp))
        else:
            self.ctl.start()
        try:
            if old_id:
                old_fd = dpm.prog_fd_by_id(old_id)
                try:
                    self.dp.replace_attached(ifindex, old_fd, old_mode)
                finally:
                    os.close(old_fd)
            else:
                self.dp.attach(ifindex, self.opts.xdp_mode)
        except AttachError as e:
            raise XdplbError(f"cannot attach XDP to {lb.interface}: {e}") from None
        self._attached = True
        assert self.dp.program is not None  # loaded above
        prog_id = dpm.prog_id_of_fd(self.dp.program.fd)
        self.ctl.info["program_id"] = prog_id
        try:
            self.dp.pin(self.pins)
        except OSError as e:
            raise XdplbError(f"cannot pin state under {self.pins}: {e}") from None
        if old_id:
            self.log("took_over", interface=lb.interface, old_program=old_id,
                     program=prog_id, maps_from=source, reused=",".join(self.dp.reused))
        else:
            self.log("attached", interface=lb.interface, program=prog_id,
                     mode=self.opts.xdp_mode)

    def _teardown(self, clean: bool) -> None:
        """Keep (program attached, pins left) or detach and unpin; either way release the
        socket and pid file. An instance that was kept before we started is kept again if
        we fail after taking it over: traffic never loses its program because of us."""
        from .._bpf.dataplane import DataPlane

        keep = self._attached and (self.keep or (not clean and self._took_over))
        if self.dp is not None:
            try:
                self.dp.close(detach=not keep)
            except OSError as e:
                self.log("detach_failed", level="error", error=str(e))
            if keep:
                self.log("kept", interface=self.cfg.lb.interface, pins=self.pins,
                         program=self.ctl.info.get("program_id") if self.ctl else None)
            elif self._attached:  # (pins are made after attaching; a failed takeover
                DataPlane.unpin(self.pins)  # leaves the kept instance's pins alone)
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

    def _on_hup(self) -> None:
        self.log("signal", signal="SIGHUP", action="reload")
        try:
            assert self.ctl is not None  # set up before the event loop runs
            self.ctl.reload()
        except RequestError:
            pass  # logged by reload()
        except Exception as e:  # noqa: BLE001 - the daemon keeps serving the old state
            self.log("reload_failed", level="error", error=str(e))

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hup)
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
        assert self.ctl is not None  # set up before the event loop runs
        self.ctl.sync_health()
        metrics = self.opts.metrics or self.cfg.lb.metrics
        if metrics:
            from ..metrics import start_exporter

            try:
                self._exporter = start_exporter(metrics[0], metrics[1],
                                                self.ctl.metrics_snapshot)
            except OSError as e:
                self.log("metrics_failed", level="error", listen=f"{metrics[0]}:{metrics[1]}",
                         error=e.strerror or str(e))
            except ImportError:
                self.log("metrics_failed", level="error",
                         error="prometheus-client is not installed (pip install "
                         "'xdplb[metrics]')")
            else:
                self.log("metrics", listen=f"{metrics[0]}:{metrics[1]}")
        self._neigh_task = asyncio.ensure_future(self._resolve_neighbours())
        n_be = sum(len(v.backends) for v in self.cfg.vips)
        self.log("ready", instance=self.instance, interface=self.cfg.lb.interface,
                 vips=len(self.cfg.vips), backends=n_be, socket=str(sock),
                 pid=os.getpid(), keep=self.opts.keep)
        if self._pending_reload:
            self._on_hup()
        if self._pending_stop is not None:
            self._request_stop(self._pending_stop)
        try:
            await self._stop_event.wait()
        finally:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()
            self._neigh_task.cancel()
            await self.ctl.monitor.close()
            if self._exporter:
                self._exporter.close()

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
                self.ctl.neighbour_macs = known
                self.ctl.apply("neighbour")

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), 10)
                req = json.loads(line or b"null")
            except (ValueError, TimeoutError, asyncio.LimitOverrunError) as e:
                reply = {"ok": False, "error": f"bad request: {e}", "code": 2}
            else:
                assert self.ctl is not None  # set up before the event loop runs
                reply = self.ctl.handle(req)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def stop_kept(instance: str, iface: str | None, pin_root: str = PIN_ROOT) -> str:
    """Detach and unpin an instance that a `serve --keep` left behind (no process owns
    it); what was done, as one line."""
    from .._bpf import dataplane as dpm
    from .._bpf.libbpf import prog_name, xdp_detach

    dpm.ensure_bpffs()
    pins = pin_dir(pin_root, instance)
    done = []
    if iface:
        try:
            ifindex = dpm.ifindex_of(iface)
        except OSError:
            raise XdplbError(f"unknown interface {iface!r} (in this network namespace)") from None
        prog_id, mode = dpm.xdp_attachment(ifindex)
        if prog_id:
            if prog_name(prog_id) != dpm.PROG_NAME:
                raise XdplbError(f"the XDP program on {iface} (id {prog_id}) is not xdplb's")
            holders = dpm.prog_holders(prog_id)
            if holders:
                raise XdplbError(f"the xdplb on {iface} belongs to a running process (pid "
                                 f"{', '.join(map(str, holders))}): stop that instead")
            fd = dpm.prog_fd_by_id(prog_id)
            try:
                xdp_detach(ifindex, fd, mode)
            finally:
                os.close(fd)
            done.append(f"detached program id {prog_id} from {iface}")
    elif not os.path.isdir(pins):
        raise UsageError("give -c FILE or --iface IFACE to detach a kept instance")
    if dpm.DataPlane.unpin(pins):
        done.append(f"removed {pins}")
    if not done:
        raise XdplbError(f"nothing to stop: no xdplb attached{' to ' + iface if iface else ''} "
                         f"and no pins under {pins}")
    return f"stopped instance {instance}: " + ", ".join(done)
