"""Flow-state sync between the nodes of an ECMP group (batched, bounded, loss-tolerant).

Every node has the same tables, so a packet that ECMP moves to another node finds the same
backend by Maglev while the backend set is unchanged.  After a backend change that is no longer
true for the flows that began before it: the node that receives a moved flow must know its
entry.  Like the IPVS sync daemon or conntrackd, each node sends the entries of its established
flows to its peers, and a peer writes them into its own flow table:

- read from the mmapped flow table (no syscall per entry), every ``interval`` seconds;
- only flows older than ``min_age`` (most flows end before any node change, and a short flow
  that moves is re-balanced by Maglev to the same backend anyway), each re-sent every
  ``resend`` seconds while it lives, so a lost datagram costs one round, nothing more;
- bounded: at most ``max_bytes_per_s`` sent per node (entries beyond the budget wait for the
  next round, oldest-unsent first); a datagram is at most 1,400 bytes (no fragmentation);
- UDP datagrams: a 16-byte header, the sender's backend ids with their addresses (24 bytes
  each: ids are per node, so the receiver maps them to its own by VIP, address and port), then
  fixed 64-byte flow entries exactly as in the table;
- the receiver writes an entry only into a free or expired way of the flow's set and never
  replaces a flow it has itself: a local entry is at least as fresh as a synced one.

DSR (and other non-NAT) entries are synced.  NAT entries are not: the data plane takes a NAT
flow's SNAT address from its VIP, not from the entry, so a copy would translate with the wrong
address on another node (a flow-entry format change, left for the flow-table work).
"""
from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from . import model
from ._bpf import abi
from .config import SyncSettings

MAGIC = b"XLSY"
VERSION = 1
HEADER = struct.Struct("<4sBBHHHI")  # magic, version, flags, n_ids, n_entries, node, seq
ID_REC = struct.Struct("<IBBH16s")  # backend id, family, pad, port (host order), address
ENTRY = 64
MAX_DATAGRAM = 1400

BackendKey = tuple[bytes, int, int, int, bytes, int]  # VIP (addr16, port, proto), backend


class SyncError(ValueError):
    """A datagram that is not a flow-sync message of this version."""


@dataclass
class SyncStats:
    sent_entries: int = 0
    sent_datagrams: int = 0
    sent_bytes: int = 0
    deferred: int = 0  # entries over the bandwidth bound, sent in a later round
    received_entries: int = 0
    received_bytes: int = 0
    written: int = 0  # entries written into the local table
    known: int = 0  # already there (ours or synced before)
    no_backend: int = 0  # backend not known here (config differs)
    no_room: int = 0  # the set had no free or expired way
    bad: int = 0  # datagrams that were not ours


def entries_per_datagram(n_ids: int) -> int:
    return (MAX_DATAGRAM - HEADER.size - n_ids * ID_REC.size) // ENTRY


def encode(entries: np.ndarray, ids: Mapping[int, tuple[int, bytes, int]], node: int = 0,
           seq: int = 0) -> list[bytes]:
    """Flow entries (FLOW_DTYPE) -> datagrams, each with the id records its entries use.
    `ids`: backend id -> (family, addr16, port host order)."""
    out: list[bytes] = []
    i = 0
    while i < len(entries):
        chunk_ids: dict[int, tuple[int, bytes, int]] = {}
        j = i
        while j < len(entries):
            bid = int(entries[j]["backend_id"])
            need = 0 if bid in chunk_ids else 1
            if j - i + 1 > entries_per_datagram(len(chunk_ids) + need):
                break
            if need:
                chunk_ids[bid] = ids[bid]
            j += 1
        recs = b"".join(ID_REC.pack(bid, fam, 0, port, addr)
                        for bid, (fam, addr, port) in chunk_ids.items())
        body = entries[i:j].tobytes()
        out.append(HEADER.pack(MAGIC, VERSION, 0, len(chunk_ids), j - i, node & 0xFFFF,
                               (seq + len(out)) & 0xFFFFFFFF) + recs + body)
        i = j
    return out


def decode(data: bytes) -> tuple[int, dict[int, tuple[int, bytes, int]], np.ndarray]:
    """A datagram -> (node, id records, entries as FLOW_DTYPE); SyncError if malformed."""
    from ._bpf.dataplane import FLOW_DTYPE

    if len(data) < HEADER.size:
        raise SyncError("short datagram")
    magic, version, _flags, n_ids, n_entries, node, _seq = HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise SyncError("not a flow-sync message of this version")
    want = HEADER.size + n_ids * ID_REC.size + n_entries * ENTRY
    if len(data) != want:
        raise SyncError(f"length {len(data)}, header says {want}")
    ids = {}
    off = HEADER.size
    for _ in range(n_ids):
        bid, fam, _pad, port, addr = ID_REC.unpack_from(data, off)
        ids[bid] = (fam, addr, port)
        off += ID_REC.size
    entries = np.frombuffer(data, dtype=FLOW_DTYPE, count=n_entries, offset=off).copy()
    return node, ids, entries


@dataclass
class FlowSync:
    """One node's sender and receiver over its data plane's flow table.

    `backends()` returns the current mapping of this node's backends:
    {id: (vip addr16, vip port, proto, family, backend addr16, backend port)}; the sender
    describes its ids with it, the receiver maps them back to its own."""

    dp: object  # DataPlane (flow_table(), runtime(), maps["flows"])
    settings: SyncSettings
    backends: Callable[[], Mapping[int, BackendKey]]
    nat_entries: int = 0  # entries of the NAT region (first in the table): never synced
    hash_seed: int = 0
    ct_sets: int = 1
    node: int = 0  # this node's id in datagrams (logs only)
    stats: SyncStats = field(default_factory=SyncStats)
    _first_seen: dict[int, tuple[int, float]] = field(default_factory=dict)
    _last_sent: dict[int, float] = field(default_factory=dict)
    #: ways we wrote from a peer: index -> (digest, last_seen as written)
    _written: dict[int, tuple[int, int]] = field(default_factory=dict)
    _seq: int = 0

    # ------------------------------------------------------------------ sender
    def collect(self, now: float | None = None) -> list[bytes]:
        """The datagrams of one round (within the bandwidth bound)."""
        now = time.monotonic() if now is None else now
        t = self.dp.flow_table()  # type: ignore[attr-defined]
        ct = t[self.nat_entries:]
        rt = self.dp.runtime()  # type: ignore[attr-defined]
        jnow = np.uint32(_jiffies(rt.hz or 1000))
        # one pass over a byte column of the whole table, the rest on the used ways only
        idx = np.flatnonzero(ct["family"])
        rows = ct[idx]
        age = (jnow - rows["last_seen"]).astype(np.uint64)
        live = ((rows["proto"] != 0) & ((rows["flags"] & abi.FLOW_F_CLOSING) == 0)
                & (age <= np.where(rows["proto"] == 6, rt.tcp_timeout, rt.udp_timeout)))
        idx, rows = idx[live], rows[live]
        digest = _digest(rows)
        seen: dict[int, tuple[int, float]] = {}
        due: list[tuple[float, int]] = []
        for i, d, ls in zip(idx.tolist(), digest.tolist(), rows["last_seen"].tolist()):
            first = self._first_seen.get(i)
            t0 = first[1] if first and first[0] == d else now
            seen[i] = (d, t0)
            if self._written.get(i) == (d, ls):
                continue  # a peer's flow we wrote and never forwarded: not ours to send
            if now - t0 < self.settings.min_age:
                continue
            last = self._last_sent.get(i)
            if last is not None and first and first[0] == d and now - last < self.settings.resend:
                continue
            due.append((-1.0 if last is None else last, i))
        self._first_seen = seen
        self._last_sent = {i: s for i, s in self._last_sent.items() if i in seen}
        self._written = {i: w for i, w in self._written.items() if i in seen}
        budget = int(self.settings.max_bytes_per_s * self.settings.interval) // ENTRY
        due.sort()  # never sent first, then the longest unsent
        self.stats.deferred += max(0, len(due) - budget)
        pick = [i for _, i in due[:budget]]
        if not pick:
            return []
        sel = ct[np.array(pick, dtype=np.int64)]
        known = self.backends()
        ok = np.array([int(b) in known for b in sel["backend_id"]], dtype=bool)
        sel = sel[ok]
        ids = {bid: (k[3], k[4], k[5]) for bid, k in known.items()}
        out = encode(sel, ids, self.node, self._seq)
        self._seq += len(out)
        for i in np.array(pick)[ok].tolist():
            self._last_sent[i] = now
        self.stats.sent_entries += len(sel)
        self.stats.sent_datagrams += len(out)
        self.stats.sent_bytes += sum(len(d) for d in out)
        return out

    # ------------------------------------------------------------------ receiver
    def receive(self, data: bytes) -> int:
        """Write a datagram's entries into our table; how many were written."""
        try:
            _node, ids, entries = decode(data)
        except SyncError:
            self.stats.bad += 1
            return 0
        self.stats.received_entries += len(entries)
        self.stats.received_bytes += len(data)
        local = {k: bid for bid, k in self.backends().items()}
        t = self.dp.flow_table()  # type: ignore[attr-defined]
        rt = self.dp.runtime()  # type: ignore[attr-defined]
        jnow = int(_jiffies(rt.hz or 1000)) & 0xFFFFFFFF or 1
        written = 0
        for e in entries:
            rec = ids.get(int(e["backend_id"]))
            bid = None
            if rec is not None:
                vip = (e["dst"].tobytes(), int(e["dport"]), int(e["proto"]))
                for vport in (abi.ntohs(vip[1]), 0):
                    bid = local.get((vip[0], vport, vip[2], *rec))
                    if bid is not None:
                        break
            if bid is None:
                self.stats.no_backend += 1
                continue
            written += self._write(t, e, bid, jnow, rt)
        self.stats.written += written
        return written

    def _write(self, t: np.ndarray, e: np.void, bid: int, jnow: int, rt) -> int:
        h = model._hash_raw(e["src"].tobytes(), e["dst"].tobytes(), abi.ntohs(int(e["sport"])),
                            abi.ntohs(int(e["dport"])), int(e["proto"]), self.hash_seed)
        first = self.nat_entries + (h & (self.ct_sets - 1)) * abi.FLOW_WAYS
        ways = t[first:first + abi.FLOW_WAYS]
        pick = None
        for w in range(abi.FLOW_WAYS):
            x = ways[w]
            if not x["family"]:
                if x["last_seen"]:
                    continue  # being published by the data plane
                if pick is None:
                    pick = w
                continue
            if (x["proto"] == e["proto"] and x["sport"] == e["sport"]
                    and x["dport"] == e["dport"] and (x["src"] == e["src"]).all()
                    and (x["dst"] == e["dst"]).all()):
                self.stats.known += 1
                return 0
            age = (jnow - int(x["last_seen"])) & 0xFFFFFFFF
            tmo = rt.closing_timeout if x["flags"] & abi.FLOW_F_CLOSING else (
                rt.tcp_timeout if x["proto"] == 6 else rt.udp_timeout)
            if pick is None and (not x["proto"] or age > tmo):
                pick = w
        if pick is None:
            self.stats.no_room += 1
            return 0
        slot = t[first + pick:first + pick + 1]
        # publish like the data plane: the way claimed (last_seen, family 0), fields, family
        slot["family"] = 0
        slot["last_seen"] = jnow
        for f in ("src", "dst", "sport", "dport", "proto"):
            slot[f] = e[f]
        slot["flags"] = 0
        slot["backend_id"] = bid
        slot["reply_tag"] = 0
        slot["client_ifindex"] = 0
        slot["family"] = e["family"]
        self._written[first + pick - self.nat_entries] = (int(_digest(slot)[0]), jnow)
        return 1


def _jiffies(hz: int) -> int:
    from ._bpf.dataplane import jiffies_now

    return int(jiffies_now(hz))


def _digest(rows: np.ndarray) -> np.ndarray:
    """A 64-bit digest of each entry's tuple (to tell a reused way from the same flow)."""
    s = rows["src"].astype(np.uint64)
    d = rows["dst"].astype(np.uint64)
    x = (s[:, 0] << np.uint64(32)) ^ d[:, 0] ^ (s[:, 3] << np.uint64(7)) ^ (d[:, 3] << np.uint64(13))
    x ^= rows["sport"].astype(np.uint64) << np.uint64(40)
    x ^= rows["dport"].astype(np.uint64) << np.uint64(24)
    x ^= rows["proto"].astype(np.uint64) << np.uint64(56)
    return x


def backend_map(lb, specs: Iterable) -> dict[int, BackendKey]:
    """{local backend id: (vip addr16, vip port, proto, family, backend addr16, port)} of the
    VIPs (lb.VipSpec) a LoadBalancer serves: what a backend id means on this node."""
    out: dict[int, BackendKey] = {}
    for spec in specs:
        try:
            ids = lb.backend_ids(spec.key)
        except KeyError:
            continue
        vip16 = spec.address.packed.ljust(16, b"\0")
        pnum = socket.IPPROTO_TCP if spec.protocol == "tcp" else socket.IPPROTO_UDP
        for b in spec.backends:
            bid = ids.get(b.key)
            if bid is None:
                continue
            fam = abi.AF_INET if b.address.version == 4 else abi.AF_INET6
            out[bid] = (vip16, spec.port, pnum, fam, b.address.packed.ljust(16, b"\0"), b.port)
    return out
