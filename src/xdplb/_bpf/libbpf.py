"""ctypes over the system libbpf.so.1: objects, maps, programs, XDP attach, test runs.

Everything that can fail raises a BpfError subclass carrying errno and the kernel's
own words (verifier log lines, netlink extended ack) captured from libbpf's printer.
"""
from __future__ import annotations

import ctypes as C
import ctypes.util
import errno as _errno
import os
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import overload

import numpy as np

# --- errors -------------------------------------------------------------------------


class BpfError(OSError):
    """A libbpf/kernel failure: `errno`, a message and the kernel's detail lines."""

    def __init__(self, err: int, message: str, detail: list[str] | None = None):
        super().__init__(err, message)
        self.detail = detail or []

    def __str__(self) -> str:
        base = f"{self.strerror} ({os.strerror(self.errno)})" if self.errno else self.strerror
        assert base is not None  # __init__ always sets the message
        return base + (": " + " | ".join(self.detail) if self.detail else "")


class VerifierError(BpfError):
    """The verifier rejected the program; `detail` holds the relevant log lines."""


class AttachError(BpfError):
    """XDP attach refused; `detail` holds the kernel's extended ack."""


# --- library ------------------------------------------------------------------------

_lib = C.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)
_libc = C.CDLL(None, use_errno=True)
_libc.vsnprintf.argtypes = [C.c_char_p, C.c_size_t, C.c_char_p, C.c_void_p]

_PRINT_FN = C.CFUNCTYPE(C.c_int, C.c_int, C.c_char_p, C.c_void_p)
_messages: list[str] = []
_messages_lock = threading.Lock()


@_PRINT_FN
def _printer(level: int, fmt: bytes, args: int) -> int:
    try:
        buf = C.create_string_buffer(4096)
        _libc.vsnprintf(buf, len(buf), fmt, args)
        with _messages_lock:
            _messages.append(buf.value.decode(errors="replace").rstrip("\n"))
            del _messages[:-200]
    except BaseException:  # noqa: BLE001, S110 - a Ctrl-C raised in here cannot leave
        pass  # a ctypes callback (ctypes would print it and go on); _signals.checkpoint()
    return 0  # sees the signal after libbpf returns


_lib.libbpf_set_print.argtypes = [_PRINT_FN]
_lib.libbpf_set_print.restype = C.c_void_p
_lib.libbpf_set_print(_printer)


def _take_messages() -> list[str]:
    with _messages_lock:
        out = list(_messages)
        _messages.clear()
    return out


def _proto(name: str, restype, *argtypes):
    fn = getattr(_lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


vp, u32, i32, sz = C.c_void_p, C.c_uint32, C.c_int, C.c_size_t
_open_file = _proto("bpf_object__open_file", vp, C.c_char_p, vp)
_obj_load = _proto("bpf_object__load", i32, vp)
_obj_close = _proto("bpf_object__close", None, vp)
_find_map = _proto("bpf_object__find_map_by_name", vp, vp, C.c_char_p)
_find_prog = _proto("bpf_object__find_program_by_name", vp, vp, C.c_char_p)
_next_map = _proto("bpf_object__next_map", vp, vp, vp)
_map_name = _proto("bpf_map__name", C.c_char_p, vp)
_map_fd = _proto("bpf_map__fd", i32, vp)
_map_set_max = _proto("bpf_map__set_max_entries", i32, vp, u32)
_map_set_init = _proto("bpf_map__set_initial_value", i32, vp, vp, sz)
_map_reuse_fd = _proto("bpf_map__reuse_fd", i32, vp, i32)
_prog_fd = _proto("bpf_program__fd", i32, vp)
_prog_set_log = _proto("bpf_program__set_log_buf", i32, vp, C.c_char_p, sz)
_prog_set_log_level = _proto("bpf_program__set_log_level", i32, vp, u32)
_update = _proto("bpf_map_update_elem", i32, i32, vp, vp, C.c_uint64)
_lookup = _proto("bpf_map_lookup_elem", i32, i32, vp, vp)
_delete = _proto("bpf_map_delete_elem", i32, i32, vp)
_next_key = _proto("bpf_map_get_next_key", i32, i32, vp, vp)
_map_create = _proto("bpf_map_create", i32, i32, C.c_char_p, u32, u32, u32, vp)
_test_run = _proto("bpf_prog_test_run_opts", i32, i32, vp)
_xdp_attach = _proto("bpf_xdp_attach", i32, i32, i32, u32, vp)
_xdp_detach = _proto("bpf_xdp_detach", i32, i32, u32, vp)
_xdp_query_id = _proto("bpf_xdp_query_id", i32, i32, i32, C.POINTER(u32))
_prog_by_id = _proto("bpf_prog_get_fd_by_id", i32, u32)
_map_by_id = _proto("bpf_map_get_fd_by_id", i32, u32)
_info_by_fd = _proto("bpf_obj_get_info_by_fd", i32, i32, vp, C.POINTER(u32))
_num_cpus = _proto("libbpf_num_possible_cpus", i32)
_lookup_batch = _proto("bpf_map_lookup_batch", i32, i32, vp, vp, vp, vp, C.POINTER(u32), vp)
_update_batch = _proto("bpf_map_update_batch", i32, i32, vp, vp, C.POINTER(u32), vp)
_map_type = _proto("bpf_map__type", u32, vp)
_map_key_size = _proto("bpf_map__key_size", u32, vp)
_map_value_size = _proto("bpf_map__value_size", u32, vp)
_map_max_entries = _proto("bpf_map__max_entries", u32, vp)
_map_flags = _proto("bpf_map__map_flags", u32, vp)
_obj_pin = _proto("bpf_obj_pin", i32, i32, C.c_char_p)
_obj_get = _proto("bpf_obj_get", i32, C.c_char_p)
_RB_FN = C.CFUNCTYPE(C.c_int, C.c_void_p, C.c_void_p, C.c_size_t)
_rb_new = _proto("ring_buffer__new", vp, i32, _RB_FN, vp, vp)
_rb_poll = _proto("ring_buffer__poll", i32, vp, i32)
_rb_free = _proto("ring_buffer__free", None, vp)

NCPUS = _num_cpus()

# map types and flags used here
MAP_ARRAY = 2
MAP_PERCPU_HASH = 5
MAP_PERCPU_ARRAY = 6
MAP_LRU_PERCPU_HASH = 10
MAP_PERCPU_CGROUP_STORAGE = 21
F_INNER_MAP = 1 << 12
F_MMAPABLE = 1 << 10
_PERCPU_TYPES = {MAP_PERCPU_HASH, MAP_PERCPU_ARRAY, MAP_LRU_PERCPU_HASH, MAP_PERCPU_CGROUP_STORAGE}

BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_REPLACE = 1 << 4

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)
XDP_ACTIONS = {0: "ABORTED", 1: "DROP", 2: "PASS", 3: "TX", 4: "REDIRECT"}


def _last_errno() -> int:
    return C.get_errno() or _errno.EIO


def _check(rc: int, what: str, exc: type[BpfError] = BpfError) -> int:
    if rc < 0:
        err = -rc if rc != -1 else _last_errno()
        raise exc(err, what, _kernel_lines(_take_messages()))
    return rc


def _kernel_lines(msgs: list[str]) -> list[str]:
    """The kernel's extended ack lines from libbpf's output."""
    out = []
    for m in msgs:
        mm = re.search(r"Kernel error message: (.*)", m)
        if mm:
            out.append(mm.group(1).strip())
    return out


# --- map info -------------------------------------------------------------------------


class _BatchOpts(C.Structure):
    _fields_ = [("sz", C.c_size_t), ("elem_flags", C.c_uint64), ("flags", C.c_uint64)]


class _MapInfo(C.Structure):
    _fields_ = [
        ("type", u32),
        ("id", u32),
        ("key_size", u32),
        ("value_size", u32),
        ("max_entries", u32),
        ("map_flags", u32),
        ("name", C.c_char * 16),
        ("rest", C.c_uint8 * 64),
    ]


class _ProgInfo(C.Structure):
    _fields_ = [
        ("type", u32),
        ("id", u32),
        ("tag", C.c_uint8 * 8),
        ("jited_prog_len", u32),
        ("xlated_prog_len", u32),
        ("jited_prog_insns", C.c_uint64),
        ("xlated_prog_insns", C.c_uint64),
        ("load_time", C.c_uint64),
        ("created_by_uid", u32),
        ("nr_map_ids", u32),
        ("map_ids", C.c_uint64),
        ("name", C.c_char * 16),
        ("rest", C.c_uint8 * 160),
    ]


@dataclass(frozen=True)
class MapDef:
    """A map's shape: what must match for a new program to share an old one's map."""

    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


def map_info(fd: int) -> _MapInfo:
    info = _MapInfo()
    n = u32(C.sizeof(info))
    _check(_info_by_fd(fd, C.byref(info), C.byref(n)), "map info")
    return info


# --- maps -----------------------------------------------------------------------------


class Map:
    """A BPF map as a mapping of bytes-like keys/values; typed with ctypes classes.

    Per-CPU maps return a list (one value per possible CPU) from `lookup_percpu`,
    and `reduce(key, fn)` folds them; `__getitem__` on a per-CPU map returns the
    per-CPU list.
    """

    def __init__(self, fd: int, name: str, key_type=None, value_type=None, owned: bool = False):
        info = map_info(fd)
        self.fd = fd
        self.name = name or info.name.decode()
        self.type = info.type
        self.key_size = info.key_size
        self.value_size = info.value_size
        self.max_entries = info.max_entries
        self.flags = info.map_flags
        self.id = info.id
        self.percpu = info.type in _PERCPU_TYPES
        self.key_type = key_type
        self.value_type = value_type
        self._owned = owned

    # raw -----------------------------------------------------------------
    def _kbuf(self, key) -> C.Array:
        if isinstance(key, int):
            key = key.to_bytes(self.key_size, "little")
        raw = bytes(key)
        if len(raw) != self.key_size:
            raise ValueError(f"map {self.name}: key of {len(raw)} bytes, want {self.key_size}")
        return C.create_string_buffer(raw, self.key_size)

    @property
    def value_bytes(self) -> int:
        """Bytes of one value as the syscalls pass it (per-CPU: all CPUs' copies)."""
        return self._vsize()

    def _vsize(self) -> int:
        return ((self.value_size + 7) // 8) * 8 * NCPUS if self.percpu else self.value_size

    def lookup(self, key) -> bytes | None:
        k = self._kbuf(key)
        v = C.create_string_buffer(self._vsize())
        if _lookup(self.fd, k, v) < 0:
            err = _last_errno()
            if err == _errno.ENOENT:
                return None
            raise BpfError(err, f"lookup in map {self.name}")
        return v.raw

    def update(self, key, value, flags: int = BPF_ANY) -> None:
        raw = bytes(value)
        if self.percpu and len(raw) == self.value_size:
            stride = ((self.value_size + 7) // 8) * 8
            raw = b"".join(raw.ljust(stride, b"\0") for _ in range(NCPUS))
        if len(raw) != self._vsize():
            raise ValueError(f"map {self.name}: value of {len(raw)} bytes, want {self._vsize()}")
        if _update(self.fd, self._kbuf(key), C.create_string_buffer(raw, len(raw)), flags) < 0:
            raise BpfError(_last_errno(), f"update of map {self.name}")

    def delete(self, key) -> bool:
        if _delete(self.fd, self._kbuf(key)) < 0:
            err = _last_errno()
            if err == _errno.ENOENT:
                return False
            raise BpfError(err, f"delete from map {self.name}")
        return True

    def keys(self) -> Iterator[bytes]:
        cur = None
        nxt = C.create_string_buffer(self.key_size)
        while True:
            rc = _next_key(self.fd, cur, nxt)
            if rc < 0:
                err = _last_errno()
                if err == _errno.ENOENT:
                    return
                raise BpfError(err, f"iterating map {self.name}")
            yield nxt.raw
            cur = C.create_string_buffer(nxt.raw, self.key_size)

    # typed ---------------------------------------------------------------
    def _val(self, raw: bytes):
        if self.percpu:
            stride = ((self.value_size + 7) // 8) * 8
            vals = [raw[i * stride : i * stride + self.value_size] for i in range(NCPUS)]
            return [self.value_type.from_buffer_copy(v) for v in vals] if self.value_type else vals
        return self.value_type.from_buffer_copy(raw) if self.value_type else raw

    def __getitem__(self, key):
        raw = self.lookup(key)
        if raw is None:
            raise KeyError(key)
        return self._val(raw)

    def get(self, key, default=None):
        raw = self.lookup(key)
        return default if raw is None else self._val(raw)

    def __setitem__(self, key, value) -> None:
        self.update(key, value)

    def __delitem__(self, key) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def __contains__(self, key) -> bool:
        return self.lookup(key) is not None

    def __iter__(self) -> Iterator[bytes]:
        return self.keys()

    def items(self):
        for k in list(self.keys()):
            raw = self.lookup(k)
            if raw is not None:
                yield (self.key_type.from_buffer_copy(k) if self.key_type else k), self._val(raw)

    def __len__(self) -> int:
        return sum(1 for _ in self.keys())

    def clear(self) -> None:
        for k in list(self.keys()):
            self.delete(k)

    def read_all(self) -> bytes:
        """All values of an array map, with bpf_map_lookup_batch (one call per 64k); a
        per-CPU map's values are each one per possible CPU, 8-byte aligned."""
        n_all = self.max_entries
        vsize = self._vsize()
        keys = (u32 * n_all)()
        vals = C.create_string_buffer(n_all * vsize)
        opts = _BatchOpts(sz=C.sizeof(_BatchOpts))
        out_batch = u32(0)
        in_batch = u32(0)
        done = 0
        first = True
        while done < n_all:
            count = u32(min(65536, n_all - done))
            rc = _lookup_batch(self.fd, None if first else C.byref(in_batch),
                               C.byref(out_batch), C.byref(keys, done * 4),
                               C.byref(vals, done * vsize), C.byref(count),
                               C.byref(opts))
            done += count.value
            if rc < 0:
                err = C.get_errno() or -rc
                if err == _errno.ENOENT:
                    break
                raise BpfError(err, f"batch lookup of {self.name}")
            first = False
            in_batch.value = out_batch.value
        return vals.raw

    def update_batch(self, values: np.ndarray, keys: np.ndarray | None = None) -> None:
        """bpf_map_update_batch: `values` at `keys` (default 0..n-1), u32 each, 64k a
        call."""
        if keys is None:
            keys = np.arange(len(values), dtype=np.uint32)
        opts = _BatchOpts(sz=C.sizeof(_BatchOpts))
        done = 0
        while done < len(values):
            n = u32(min(65536, len(values) - done))
            rc = _update_batch(self.fd, keys[done:].ctypes.data, values[done:].ctypes.data,
                               C.byref(n), C.byref(opts))
            if rc < 0:
                raise BpfError(-rc, f"batch update of {self.name}")
            done += n.value

    def update_batch_raw(self, keys: list[int], values: bytes) -> None:
        """bpf_map_update_batch of u32 keys and their values laid end to end (a per-CPU
        map's value: one per possible CPU, each 8-byte aligned), 64k a call."""
        vsize = self._vsize()
        if len(values) != vsize * len(keys):
            raise ValueError(f"map {self.name}: {len(values)} bytes for {len(keys)} values "
                             f"of {vsize}")
        karr = np.array(keys, dtype=np.uint32)
        vbuf = C.create_string_buffer(values, len(values))
        opts = _BatchOpts(sz=C.sizeof(_BatchOpts))
        done = 0
        while done < len(keys):
            n = u32(min(65536, len(keys) - done))
            rc = _update_batch(self.fd, karr[done:].ctypes.data,
                               C.addressof(vbuf) + done * vsize, C.byref(n), C.byref(opts))
            if rc < 0:
                raise BpfError(-rc, f"batch update of {self.name}")
            done += n.value

    @overload
    def reduce(self, key, fields: None = None) -> int: ...
    @overload
    def reduce(self, key, fields: tuple[str, ...]) -> dict[str, int]: ...

    def reduce(self, key, fields: tuple[str, ...] | None = None) -> dict[str, int] | int:
        """Sum a per-CPU value over CPUs: a dict of the named fields, or an int."""
        vals = self[key]
        if fields is None:
            return sum(int.from_bytes(bytes(v)[:8], "little") for v in vals)
        return {f: sum(getattr(v, f) for v in vals) for f in fields}

    def close(self) -> None:
        if self._owned and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def create_map(map_type: int, key_size: int, value_size: int, max_entries: int,
               name: str = "", flags: int = 0, inner_fd: int = 0) -> Map:
    """A new map owned by the caller (closed with Map.close)."""

    class _Opts(C.Structure):
        _fields_ = [("sz", sz), ("btf_fd", u32), ("btf_key_type_id", u32),
                    ("btf_value_type_id", u32), ("btf_vmlinux_value_type_id", u32),
                    ("inner_map_fd", u32), ("map_flags", u32), ("map_extra", C.c_uint64),
                    ("numa_node", u32), ("map_ifindex", u32)]

    opts = _Opts(sz=C.sizeof(_Opts), inner_map_fd=inner_fd, map_flags=flags)
    fd = _check(_map_create(map_type, name.encode()[:15], key_size, value_size, max_entries,
                            C.byref(opts)), f"creating map {name}")
    return Map(fd, name, owned=True)


# --- programs -------------------------------------------------------------------------


class _TestRunOpts(C.Structure):
    _fields_ = [("sz", sz), ("data_in", vp), ("data_out", vp), ("data_size_in", u32),
                ("data_size_out", u32), ("ctx_in", vp), ("ctx_out", vp), ("ctx_size_in", u32),
                ("ctx_size_out", u32), ("retval", u32), ("repeat", C.c_int), ("duration", u32),
                ("flags", u32), ("cpu", u32), ("batch_size", u32)]


class _XdpMd(C.Structure):
    _fields_ = [("data", u32), ("data_end", u32), ("data_meta", u32), ("ingress_ifindex", u32),
                ("rx_queue_index", u32), ("egress_ifindex", u32)]


class Program:
    def __init__(self, fd: int, name: str):
        self.fd = fd
        self.name = name

    def test_run(self, frame: bytes, repeat: int = 1, ingress_ifindex: int = 0
                 ) -> tuple[int, bytes, int]:
        """BPF_PROG_TEST_RUN: (XDP action, output frame, average ns per run)."""
        din = C.create_string_buffer(bytes(frame), len(frame))
        dout = C.create_string_buffer(len(frame) + 4096)
        opts = _TestRunOpts(sz=C.sizeof(_TestRunOpts), data_in=C.cast(din, vp),
                            data_out=C.cast(dout, vp), data_size_in=len(frame),
                            data_size_out=len(dout), repeat=repeat)
        ctx = None
        if ingress_ifindex:
            ctx = _XdpMd(data=0, data_end=len(frame), ingress_ifindex=ingress_ifindex)
            opts.ctx_in = C.cast(C.pointer(ctx), vp)
            opts.ctx_size_in = C.sizeof(ctx)
        _check(_test_run(self.fd, C.byref(opts)), f"test run of {self.name}")
        return opts.retval, dout.raw[: opts.data_size_out], opts.duration


# --- objects --------------------------------------------------------------------------


def _verifier_summary(log: str, limit: int = 12) -> list[str]:
    """The lines of a verifier log that explain a rejection."""
    lines = [ln for ln in log.splitlines() if ln.strip()]
    if not lines:
        return []
    tail = [ln for ln in lines if not ln.startswith(("mark_precise", ";"))]
    return tail[-limit:]


class BpfObject:
    """An opened (then loaded) .bpf.o: maps by name, programs by name."""

    def __init__(self, path: str | Path, max_entries: dict[str, int] | None = None,
                 rodata: bytes | Callable[[bytes], bytes] | None = None,
                 reuse_maps: dict[str, int] | None = None):
        """`rodata`: the load-time knobs, or a function of the compiled ones."""
        self.path = Path(path)
        _take_messages()
        self._obj = _open_file(str(self.path).encode(), None)
        if not self._obj:
            raise BpfError(_last_errno(), f"cannot open BPF object {self.path}",
                           _take_messages()[-3:])
        self._log = C.create_string_buffer(4 * 1024 * 1024)
        self._maps: dict[str, Map] = {}
        try:
            for name, n in (max_entries or {}).items():
                _check(_map_set_max(self._mapptr(name), n), f"sizing map {name}")
            if rodata is not None:
                m = self._mapptr_suffix(".rodata")
                if callable(rodata):
                    rodata = rodata(self.initial_value(".rodata"))
                _check(_map_set_init(m, C.create_string_buffer(rodata, len(rodata)),
                                     len(rodata)), "setting load-time knobs")
            for name, fd in (reuse_maps or {}).items():
                _check(_map_reuse_fd(self._mapptr(name), fd), f"reusing pinned map {name}")
        except Exception:
            self.close()
            raise

    def _mapptr(self, name: str):
        m = _find_map(self._obj, name.encode())
        if not m:
            raise BpfError(_errno.ENOENT, f"no map {name!r} in {self.path.name}")
        return m

    def _mapptr_suffix(self, suffix: str):
        m = _next_map(self._obj, None)
        while m:
            if _map_name(m).decode().endswith(suffix):
                return m
            m = _next_map(self._obj, m)
        raise BpfError(_errno.ENOENT, f"no {suffix} map in {self.path.name}")

    def map_def(self, name: str) -> MapDef:
        """How the opened object would create map `name` (a ".bss"/".rodata" suffix names
        a global-data map)."""
        ptr = self._mapptr_suffix(name) if name.startswith(".") else self._mapptr(name)
        return MapDef(_map_type(ptr), _map_key_size(ptr), _map_value_size(ptr),
                      _map_max_entries(ptr), _map_flags(ptr))

    def initial_value(self, suffix: str) -> bytes:
        """The initial contents of a global-data map (".rodata", ".bss") of the opened
        object, as compiled (or as set before load)."""
        fn = _lib.bpf_map__initial_value
        fn.restype = C.c_void_p
        fn.argtypes = [C.c_void_p, C.POINTER(C.c_size_t)]
        size = C.c_size_t(0)
        ptr = fn(self._mapptr_suffix(suffix), C.byref(size))
        if not ptr:
            raise BpfError(_errno.ENOENT, f"no initial value for {suffix} in {self.path.name}")
        return C.string_at(ptr, size.value)

    def load(self, prog_names: tuple[str, ...] = ()) -> BpfObject:
        for name in prog_names:
            p = _find_prog(self._obj, name.encode())
            if p:
                _prog_set_log(p, self._log, len(self._log))
        _take_messages()
        rc = _obj_load(self._obj)
        if rc < 0:
            err = -rc
            msgs = _take_messages()
            log = self._log.value.decode(errors="replace")
            detail = _verifier_summary(log) if log.strip() else _kernel_lines(msgs) or msgs[-4:]
            exc = VerifierError if log.strip() or err in (_errno.EACCES, _errno.EINVAL) else BpfError
            raise exc(err, f"kernel refused to load {self.path.name}", detail)
        return self

    def map(self, name: str, key_type=None, value_type=None) -> Map:
        if name not in self._maps or key_type or value_type:
            m = self._mapptr(name) if not name.startswith(".") else self._mapptr_suffix(name)
            self._maps[name] = Map(_map_fd(m), name, key_type, value_type)
        return self._maps[name]

    def program(self, name: str) -> Program:
        p = _find_prog(self._obj, name.encode())
        if not p:
            raise BpfError(_errno.ENOENT, f"no program {name!r} in {self.path.name}")
        return Program(_prog_fd(p), name)

    def close(self) -> None:
        if self._obj:
            _obj_close(self._obj)
            self._obj = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- XDP attach -----------------------------------------------------------------------


class _XdpAttachOpts(C.Structure):
    _fields_ = [("sz", sz), ("old_prog_fd", C.c_int)]


def xdp_attach(ifindex: int, prog_fd: int, mode: str = "auto", replace_fd: int = 0) -> None:
    """Attach without replacing whatever is there, unless `replace_fd` names it."""
    flags = {"auto": 0, "native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}[mode]
    opts = None
    if replace_fd:
        flags |= XDP_FLAGS_REPLACE
        opts = _XdpAttachOpts(sz=C.sizeof(_XdpAttachOpts), old_prog_fd=replace_fd)
    else:
        flags |= XDP_FLAGS_UPDATE_IF_NOEXIST
    _take_messages()
    rc = _xdp_attach(ifindex, prog_fd, flags, C.byref(opts) if opts else None)
    if rc < 0:
        detail = _kernel_lines(_take_messages())
        if -rc == _errno.EBUSY and not detail:
            detail = ["another XDP program is already attached"]
        raise AttachError(-rc, "XDP attach refused", detail)


def xdp_detach(ifindex: int, prog_fd: int, mode: str = "auto") -> None:
    """Detach our program only (XDP_FLAGS_REPLACE with our fd as the expected one)."""
    flags = {"auto": 0, "native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}[mode]
    opts = _XdpAttachOpts(sz=C.sizeof(_XdpAttachOpts), old_prog_fd=prog_fd)
    rc = _xdp_detach(ifindex, flags | XDP_FLAGS_REPLACE, C.byref(opts))
    if rc < 0 and -rc not in (_errno.ENOENT, _errno.ENODEV):
        raise AttachError(-rc, "XDP detach failed", _kernel_lines(_take_messages()))


def xdp_prog_id(ifindex: int) -> int:
    """Id of the XDP program attached to `ifindex` (0 if none)."""
    pid = u32(0)
    _check(_xdp_query_id(ifindex, 0, C.byref(pid)), "XDP query")
    return pid.value


def prog_maps(prog_id: int) -> dict[str, Map]:
    """The maps of a loaded program, by name (kernel names: first 15 chars)."""
    pfd = _check(_prog_by_id(prog_id), f"opening program id {prog_id}")
    try:
        info = _ProgInfo()
        n = u32(C.sizeof(info))
        _check(_info_by_fd(pfd, C.byref(info), C.byref(n)), "program info")
        count = info.nr_map_ids
        ids = (u32 * count)()
        info2 = _ProgInfo(nr_map_ids=count, map_ids=C.cast(ids, vp).value or 0)
        n = u32(C.sizeof(info2))
        _check(_info_by_fd(pfd, C.byref(info2), C.byref(n)), "program info")
        out = {}
        for mid in ids[: info2.nr_map_ids]:
            mfd = _check(_map_by_id(mid), f"opening map id {mid}")
            m = Map(mfd, "", owned=True)
            out[m.name] = m
        return out
    finally:
        os.close(pfd)


def xdp_attachment(ifindex: int) -> tuple[int, str]:
    """(program id, mode) of the XDP program on `ifindex`: mode "native" or "generic"
    (what replace/detach must name), (0, "") when nothing is attached."""
    for mode, flag in (("native", XDP_FLAGS_DRV_MODE), ("generic", XDP_FLAGS_SKB_MODE)):
        pid = u32(0)
        _check(_xdp_query_id(ifindex, flag, C.byref(pid)), "XDP query")
        if pid.value:
            return pid.value, mode
    return 0, ""


def prog_fd_by_id(prog_id: int) -> int:
    """A new file descriptor of program `prog_id` (close it)."""
    return _check(_prog_by_id(prog_id), f"opening program id {prog_id}")


def map_fd_by_id(map_id: int) -> int:
    """A new file descriptor of map `map_id` (close it)."""
    return _check(_map_by_id(map_id), f"opening map id {map_id}")


def prog_id_of_fd(fd: int) -> int:
    info = _ProgInfo()
    n = u32(C.sizeof(info))
    _check(_info_by_fd(fd, C.byref(info), C.byref(n)), "program info")
    return info.id


def prog_name(prog_id: int) -> str:
    pfd = _check(_prog_by_id(prog_id), f"opening program id {prog_id}")
    try:
        info = _ProgInfo()
        n = u32(C.sizeof(info))
        _check(_info_by_fd(pfd, C.byref(info), C.byref(n)), "program info")
        return info.name.decode()
    finally:
        os.close(pfd)


def pin(fd: int, path: str) -> None:
    _check(_obj_pin(fd, path.encode()), f"pinning {path}")


def get_pinned(path: str) -> int:
    return _check(_obj_get(path.encode()), f"opening pinned {path}")


# --- ring buffer ----------------------------------------------------------------------


class RingBuffer:
    """Poll a BPF ring buffer map; `callback(bytes)` per record."""

    def __init__(self, map_fd: int, callback: Callable[[bytes], None]):
        def _cb(_ctx, data, size):
            callback(C.string_at(data, size))
            return 0

        self._cb = _RB_FN(_cb)
        self._rb = _rb_new(map_fd, self._cb, None, None)
        if not self._rb:
            raise BpfError(_last_errno(), "ring buffer setup")

    def poll(self, timeout_ms: int = 100) -> int:
        rc = _rb_poll(self._rb, timeout_ms)
        if rc < 0 and -rc != _errno.EINTR:
            raise BpfError(-rc, "ring buffer poll")
        return max(rc, 0)

    def close(self) -> None:
        if self._rb:
            _rb_free(self._rb)
            self._rb = None
