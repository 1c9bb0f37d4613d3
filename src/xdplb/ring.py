"""Maglev consistent hashing: the per-VIP lookup table, pure and deterministic.

`maglev_table` maps every slot of a prime-sized table to a backend id. The data plane
picks ``table[hash(5-tuple) % size]``. Every node that builds a table from the same
backends gets the same table, whatever order the backends were listed in, so ECMP
spreading a flow over several xdplb nodes still lands it on one backend.

Permutations (Maglev paper, §3.4): each backend walks its own permutation of the slots,
``offset + j * skip (mod size)``, with offset and skip taken from a BLAKE2b hash of the
backend's key (its stable identity, e.g. "10.0.0.2:8000"), never from Python's salted
``hash()``. ``size`` is prime, so every skip in ``1 .. size-1`` visits every slot.

Weights: a backend of weight w makes its k-th claim (of its next preferred free slot)
at virtual time ``k / w``; claims happen in virtual-time order, ties in key order.
Every claim fills exactly one slot, so a backend's share of the table is
``w / sum(weights)`` to within a slot or two. A backend's claim times depend on its
own weight only (unlike a credit scheme normalised by the largest weight), so adding,
removing or re-weighting one backend moves about the slots it gains or loses and
little else, as in unweighted Maglev. The claim order is computed up front with
numpy; the walk itself is a tight loop over plain lists.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from numbers import Integral

import numpy as np

__all__ = ["DEFAULT_SIZE", "MAX_WEIGHT", "NO_BACKEND", "Table", "is_prime", "maglev",
           "maglev_patch", "maglev_table", "next_prime"]

NO_BACKEND = 0xFFFFFFFF  # empty slot; XDPLB_NO_BACKEND in bpf/abi.h
DEFAULT_SIZE = 65537
MAX_WEIGHT = 0xFFFFFFFF
_MAX_SIZE = 1 << 31  # keeps round * weight inside int64
_HASH_PERSON = b"xdplb-maglev"  # domain separation for the key hash

# Deterministic Miller-Rabin witnesses for every n < 3.3e24.
_MR_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)


def is_prime(n: int) -> bool:
    """True if n is prime (deterministic Miller-Rabin; exact for n < 3.3e24)."""
    if not isinstance(n, Integral) or isinstance(n, bool):
        raise TypeError(f"is_prime() needs an integer, got {type(n).__name__}")
    return _is_prime(int(n))


@functools.lru_cache(maxsize=64)  # every table build checks its (one or few) sizes
def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    for p in _MR_BASES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in _MR_BASES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def next_prime(n: int) -> int:
    """The smallest prime >= n."""
    if not isinstance(n, Integral) or isinstance(n, bool):
        raise TypeError(f"next_prime() needs an integer, got {type(n).__name__}")
    n = max(int(n), 2)
    while not is_prime(n):
        n += 1
    return n


def _offset_skip(key: str, size: int) -> tuple[int, int]:
    digest = hashlib.blake2b(key.encode(), digest_size=16, person=_HASH_PERSON).digest()
    h1 = int.from_bytes(digest[:8], "little")
    h2 = int.from_bytes(digest[8:], "little")
    return h1 % size, h2 % (size - 1) + 1


def _check_backends(
    backends: Sequence[tuple[int, str, int]],
) -> list[tuple[str, int, int]]:
    """Validate; return the (key, id, weight) of backends with weight > 0, by key."""
    seen_ids: set[int] = set()
    seen_keys: set[str] = set()
    live: list[tuple[str, int, int]] = []
    for i, entry in enumerate(backends):
        try:
            backend_id, key, weight = entry
        except (TypeError, ValueError):
            raise ValueError(
                f"backends[{i}]: expected (backend_id, key, weight), got {entry!r}"
            ) from None
        if type(backend_id) is not int and (  # (the ABC check is slow: ints first)
                not isinstance(backend_id, Integral) or isinstance(backend_id, bool)):
            raise TypeError(f"backends[{i}]: backend_id must be an integer, got {backend_id!r}")
        if not 0 <= backend_id < NO_BACKEND:
            raise ValueError(
                f"backends[{i}]: backend_id {backend_id} out of range 0..{NO_BACKEND - 1}"
            )
        if not isinstance(key, str) or not key:
            raise ValueError(f"backends[{i}]: key must be a non-empty string, got {key!r}")
        if type(weight) is not int and (
                not isinstance(weight, Integral) or isinstance(weight, bool)):
            raise TypeError(f"backends[{i}]: weight must be an integer, got {weight!r}")
        if not 0 <= weight <= MAX_WEIGHT:
            raise ValueError(f"backends[{i}]: weight {weight} out of range 0..{MAX_WEIGHT}")
        if backend_id in seen_ids:
            raise ValueError(f"backends[{i}]: duplicate backend_id {backend_id}")
        if key in seen_keys:
            raise ValueError(f"backends[{i}]: duplicate key {key!r}")
        seen_ids.add(int(backend_id))
        seen_keys.add(key)
        if weight > 0:
            live.append((key, int(backend_id), int(weight)))
    live.sort()
    return live


def _claim_order(weights: np.ndarray, size: int) -> np.ndarray:
    """Backend index of each of the `size` claims, in the order they are made.

    Backend i makes its k-th claim at virtual time k / w_i; ties go to the lower index
    (key order). Generates enough claims per backend to cover the first `size`.
    """
    n = len(weights)
    total = int(weights.sum())
    counts = ((size + n) * weights + total - 1) // total + 1
    owner = np.repeat(np.arange(n, dtype=np.int64), counts)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    k = np.arange(len(owner), dtype=np.int64) - starts + 1
    t = k / weights[owner].astype(np.float64)
    order = np.lexsort((owner, t))
    return owner[order[:size]]


class Table:
    """A Maglev table not yet laid out: each slot's owner (shared by every VIP with the
    same backends and weights) and this VIP's ids for them. ``np.asarray(table)`` gives
    the uint32 array; a writer fills a map straight from it, so 4,096 tables are never
    all in memory at once (1 GiB)."""

    __slots__ = ("ids", "size", "slots")

    def __init__(self, ids: np.ndarray, slots: np.ndarray | None, size: int):
        self.ids, self.slots, self.size = ids, slots, size

    def __len__(self) -> int:
        return self.size

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        if self.slots is None:
            out = np.full(self.size, NO_BACKEND, dtype=np.uint32)
        else:
            out = self.ids.take(self.slots)
        return out if dtype is None else out.astype(dtype)  # type: ignore[call-overload]

    def __repr__(self) -> str:
        return f"Table(size={self.size}, ids={self.ids.tolist()})"


def maglev(backends: Sequence[tuple[int, str, int]], size: int = DEFAULT_SIZE) -> Table:
    """maglev_table() as a Table (the same checks; nothing laid out yet)."""
    if not isinstance(size, Integral) or isinstance(size, bool):
        raise TypeError(f"size must be an integer, got {size!r}")
    size = int(size)
    if not is_prime(size):
        raise ValueError(f"size {size} is not prime (next prime: {next_prime(size)})")
    if size > _MAX_SIZE:
        raise ValueError(f"size {size} is larger than {_MAX_SIZE}")
    live = _check_backends(backends)
    if not live:
        return Table(np.zeros(0, dtype=np.uint32), None, size)
    return Table(np.array([backend_id for _, backend_id, _ in live], dtype=np.uint32),
                 _slots(size, tuple((key, w) for key, _, w in live)), size)


def maglev_table(backends: Sequence[tuple[int, str, int]], size: int = DEFAULT_SIZE) -> np.ndarray:
    """Build a Maglev lookup table.

    backends: (backend_id, key, weight) triples. key is the backend's stable identity
    (e.g. "10.0.0.2:8000"); it alone decides where the backend sits, so keep it the same
    across nodes and restarts. weight >= 0; weight 0 leaves the backend out (draining).
    size: prime number of slots.

    Returns a uint32 array of `size` backend ids, all NO_BACKEND when no weight is > 0.
    Raises ValueError for a non-prime size, duplicate ids or keys, or out-of-range values.
    """
    return np.asarray(maglev(backends, size))


def maglev_patch(old: Sequence[tuple[int, str, int]], new: Sequence[tuple[int, str, int]],
                 size: int = DEFAULT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """What turns ``maglev_table(old, size)`` into ``maglev_table(new, size)``: the slots
    that differ (ascending) and the backend ids they get. A backend in both lists must
    keep its id. The slot difference depends on keys and weights only, so VIPs that go
    through the same change (one address drained across thousands of VIPs) share one
    computation and each maps it to its own ids."""
    if not isinstance(size, Integral) or isinstance(size, bool) or not is_prime(int(size)):
        raise ValueError(f"size {size!r} is not a prime")
    lo, ln = _check_backends(old), _check_backends(new)
    ids_old = {key: i for key, i, _ in lo}
    for key, i, _ in ln:
        if ids_old.get(key, i) != i:
            raise ValueError(f"backend {key!r} changes its id ({ids_old[key]} -> {i})")
    idx, pos = _slot_diff(int(size), tuple((k, w) for k, _, w in lo),
                          tuple((k, w) for k, _, w in ln))
    if not ln:
        return idx, np.full(len(idx), NO_BACKEND, dtype=np.uint32)
    return idx, np.array([i for _, i, _ in ln], dtype=np.uint32).take(pos)


@functools.lru_cache(maxsize=64)
def _slot_diff(size: int, old: tuple[tuple[str, int], ...], new: tuple[tuple[str, int], ...]
               ) -> tuple[np.ndarray, np.ndarray]:
    """(slots whose owner changes, the new owner's position in `new` there)."""
    keys = {k: n for n, k in enumerate(sorted({k for k, _ in old} | {k for k, _ in new}))}

    def owners(live: tuple[tuple[str, int], ...]) -> np.ndarray:
        if not live:
            return np.full(size, -1, dtype=np.intp)
        return np.array([keys[k] for k, _ in live], dtype=np.intp).take(_slots(size, live))

    idx = np.flatnonzero(owners(old) != owners(new))
    pos = _slots(size, new)[idx] if new else np.zeros(len(idx), dtype=np.intp)
    idx.setflags(write=False)
    pos.setflags(write=False)
    return idx, pos


@functools.lru_cache(maxsize=256)
def _slots(size: int, live: tuple[tuple[str, int], ...]) -> np.ndarray:
    """Which of the `live` (key, weight) backends, in key order, owns each slot. It
    depends on keys, weights and size only, not on ids: VIPs with the same backends and
    weights (one pool behind many ports or addresses) share one computation, and each
    gets its table by mapping positions to its own ids (a numpy take)."""
    params = [_offset_skip(key, size) for key, _ in live]
    cursor = [offset for offset, _ in params]  # next slot each backend would like
    skips = [skip for _, skip in params]
    weights = np.array([w for _, w in live], dtype=np.int64)

    slots = [-1] * size
    for b in _claim_order(weights, size).tolist():
        c = cursor[b]
        s = skips[b]
        while slots[c] >= 0:  # a free slot is ahead: every slot passed is taken
            c += s
            if c >= size:
                c -= size
        slots[c] = b
        c += s
        if c >= size:
            c -= size
        cursor[b] = c
    # the smallest index type (4,096 distinct tables of 8-byte indexes were 2 GiB while
    # a plan held them); `ids.take(out)` is as fast with it
    out = np.array(slots, dtype=np.uint8 if len(live) <= 256 else np.uint16
                   if len(live) <= 65536 else np.intp)
    out.setflags(write=False)  # shared through the cache
    return out

