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

DSR entries go into the receiver's conntrack region.  A NAT entry keeps its sender's SNAT
address and port: the backend's replies go to the sender, which still has the flow (a drained
node keeps forwarding; a crashed node's NAT flows cannot survive, its address is gone).  The
receiver writes it into the NAT set of the same port and points it at a backend entry of its own
made for that (SNAT address, backend) pair, from a small range of backend ids reserved for
this (`FOREIGN_IDS`, at the top of the backends map): the data plane takes a NAT flow's source
address from its backend entry, so the moved flow leaves this node exactly as it left the other.
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
VERSION = 2
HEADER = struct.Struct("<4sBBHHHI")  # magic, version, flags, n_ids, n_entries, node, seq
F_NAT = 1  # header flags: the entries are NAT entries (client_ifindex carries the NAT port)
# backend id, family, pad, port (host order), address, the VIP's SNAT address (NAT; else 0)
ID_REC = struct.Struct("<IBBH16s16s")
ENTRY = 64
MAX_DATAGRAM = 1400
FOREIGN_IDS = 256  # backend ids reserved for peers' NAT flows (top of the backends map)
NAT_PROBES = 16  # flow.h: sets a NAT flow may spill over

# what a backend id means: VIP (addr16, port, proto), backend (family, addr16, port), SNAT16
BackendKey = tuple[bytes, int, int, int, bytes, int, bytes]
IdRec = tuple[int, bytes, int, bytes]  # family, addr16, port, snat16


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
    no_room: int = 0  # the set had no free or expired way (or no foreign id was left)
    bad: int = 0  # datagrams that were not ours


def entries_per_datagram(n_ids: int) -> int:
    return (MAX_DATAGRAM - HEADER.size - n_ids * ID_REC.size) // ENTRY


def encode(entries: np.ndarray, ids: Mapping[int, IdRec], node: int = 0, seq: int = 0,
           flags: int = 0) -> list[bytes]:
    """Flow entries (FLOW_DTYPE) -> datagrams, each with the id records its entries use."""
    out: list[bytes] = []
    i = 0
    while i < len(entries):
        chunk_ids: dict[int, IdRec] = {}
        j = i
        while j < len(entries):
            bid = int(entries[j]["backend_id"])
            need = 0 if bid in chunk_ids else 1
            if j - i + 1 > entries_per_datagram(len(chunk_ids) + need):
                break
            if need:
                chunk_ids[bid] = ids[bid]
            j += 1
        recs = b"".join(ID_REC.pack(bid, fam, 0, port, addr, snat)
                        for bid, (fam, addr, port, snat) in chunk_ids.items())
        body = entries[i:j].tobytes()
        out.append(HEADER.pack(MAGIC, VERSION, flags, len(chunk_ids), j - i, node & 0xFFFF,
                               (seq + len(out)) & 0xFFFFFFFF) + recs + body)
        i = j
    return out


def decode(data: bytes) -> tuple[int, int, dict[int, IdRec], np.ndarray]:
    """A datagram -> (flags, node, id records, entries as FLOW_DTYPE); SyncError if bad."""
    from ._bpf.dataplane import FLOW_DTYPE

    if len(data) < HEADER.size:
        raise SyncError("short datagram")
    magic, version, flags, n_ids, n_entries, node, _seq = HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise SyncError("not a flow-sync message of this version")
    want = HEADER.size + n_ids * ID_REC.size + n_entries * ENTRY
    if len(data) != want:
        raise SyncError(f"length {len(data)}, header says {want}")
    ids: dict[int, IdRec] = {}
    off = HEADER.size
    for _ in range(n_ids):
        bid, fam, _pad, port, addr, snat = ID_REC.unpack_from(data, off)
        ids[bid] = (fam, addr, port, snat)
        off += ID_REC.size
    entries = np.frombuffer(data, dtype=FLOW_DTYPE, count=n_entries, offset=off).copy()
    return flags, node, ids, entries


@dataclass
class FlowSync:
    """One node's sender and receiver over its data plane's flow table.

    `backends()` returns what this node's backend ids mean (`backend_map`); the sender
    describes its ids with it, the receiver maps them back to its own.  NAT flows need the
    data plane's backends map (`foreign_base`: the first id reserved for peers' NAT flows)."""

    dp: object  # DataPlane (flow_table(), runtime(), put_backend(), maps["backends"])
    settings: SyncSettings
    backends: Callable[[], Mapping[int, BackendKey]]
    nat_entries: int = 0  # entries of the NAT region (first in the table)
    nat_port_min: int = 0
    hash_seed: int = 0
    ct_sets: int = 1
    foreign_base: int = 0  # 0: NAT entries are neither sent nor received
    node: int = 0  # this node's id in datagrams (logs only)
    stats: SyncStats = field(default_factory=SyncStats)
    _first_seen: dict[int, tuple[int, float]] = field(default_factory=dict)
    _last_sent: dict[int, float] = field(default_factory=dict)
    #: ways we wrote from a peer: table index -> (digest, last_seen as written)
    _written: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: (SNAT16, local backend id) -> the foreign backend id made for it
    _foreign: dict[tuple[bytes, int], int] = field(default_factory=dict)
    _seq: int = 0

    # ------------------------------------------------------------------ sender
    def collect(self, now: float | None = None) -> list[bytes]:
        """The datagrams of one round (within the bandwidth bound)."""
        now = time.monotonic() if now is None else now
        t = self.dp.flow_table()  # type: ignore[attr-defined]
        rt = self.dp.runtime()  # type: ignore[attr-defined]
        jnow = np.uint32(_jiffies(rt.hz or 1000))
        # one pass over a byte column of the whole table, the rest on the used ways only
        idx = np.flatnonzero(t["family"])
        if not self.foreign_base:
            idx = idx[idx >= self.nat_entries]
        rows = t[idx]
        age = (jnow - rows["last_seen"]).astype(np.uint64)
        live = ((rows["proto"] != 0) & ((rows["flags"] & _NOT_ESTABLISHED) == 0)
                & (age <= np.where(rows["proto"] == 6, rt.tcp_timeout, rt.udp_timeout)))
        if self.foreign_base:  # a peer's NAT flow is the peer's to send
            live &= rows["backend_id"] < self.foreign_base
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
        pick = np.array([i for _, i in due[:budget]], dtype=np.int64)
        if not len(pick):
            return []
        known = self.backends()
        ids = {bid: (k[3], k[4], k[5], k[6]) for bid, k in known.items()}
        sel = t[pick]
        ok = np.array([int(b) in known for b in sel["backend_id"]], dtype=bool)
        pick, sel = pick[ok], sel[ok]
        nat = pick < self.nat_entries
        out: list[bytes] = []
        if (~nat).any():
            out += encode(sel[~nat], ids, self.node, self._seq)
        if nat.any():
            wire = sel[nat].copy()  # the NAT port travels in client_ifindex
            wire["client_ifindex"] = self.nat_port_min + pick[nat] // abi.FLOW_WAYS
            wire["client_mac"] = 0
            out += encode(wire, ids, self.node, self._seq + len(out), flags=F_NAT)
        self._seq += len(out)
        for i in pick.tolist():
            self._last_sent[i] = now
        self.stats.sent_entries += len(sel)
        self.stats.sent_datagrams += len(out)
        self.stats.sent_bytes += sum(len(d) for d in out)
        return out

    # ------------------------------------------------------------------ receiver
    def receive(self, data: bytes) -> int:
        """Write a datagram's entries into our table; how many were written."""
        try:
            flags, _node, ids, entries = decode(data)
        except SyncError:
            self.stats.bad += 1
            return 0
        self.stats.received_entries += len(entries)
        self.stats.received_bytes += len(data)
        nat = bool(flags & F_NAT)
        if nat and not self.foreign_base:
            self.stats.no_backend += len(entries)
            return 0
        local = {k[:6]: bid for bid, k in self.backends().items()}
        t = self.dp.flow_table()  # type: ignore[attr-defined]
        rt = self.dp.runtime()  # type: ignore[attr-defined]
        jnow = int(_jiffies(rt.hz or 1000)) & 0xFFFFFFFF or 1
        written = 0
        for e in entries:
            rec = ids.get(int(e["backend_id"]))
            bid = None
            if rec is not None:
                vaddr, vport, proto = e["dst"].tobytes(), abi.ntohs(int(e["dport"])), int(
                    e["proto"])
                for p in (vport, 0):
                    bid = local.get((vaddr, p, proto, rec[0], rec[1], rec[2]))
                    if bid is not None:
                        break
            if bid is not None and nat:
                assert rec is not None
                bid = self._foreign_backend(rec[3], bid)
                if bid is None:
                    self.stats.no_room += 1
                    continue
            if bid is None:
                self.stats.no_backend += 1
                continue
            written += self._write_nat(t, e, bid, jnow, rt) if nat else \
                self._write_ct(t, e, bid, jnow, rt)
        self.stats.written += written
        return written

    def _foreign_backend(self, snat: bytes, local_id: int) -> int | None:
        """The backend id whose entry is `local_id`'s with a peer's SNAT address (made or
        refreshed from the local entry: same address, MAC, health)."""
        m = self.dp.maps["backends"]  # type: ignore[attr-defined]
        raw = m.lookup(local_id)
        if raw is None:
            return None
        be = abi.Backend.from_buffer_copy(bytes(raw))
        be.snat_addr = abi.Addr.from_buffer_copy(snat)
        fid = self._foreign.get((snat, local_id))
        if fid is None:
            if len(self._foreign) >= FOREIGN_IDS:
                return None
            fid = self.foreign_base + len(self._foreign)
            self._foreign[(snat, local_id)] = fid
        if bytes(m.lookup(fid) or b"") != bytes(be):
            self.dp.put_backend(fid, be)  # type: ignore[attr-defined]
        return fid

    @staticmethod
    def _same_flow(x: np.void, e: np.void) -> bool:
        return bool(x["proto"] == e["proto"] and x["sport"] == e["sport"]
                    and x["dport"] == e["dport"] and (x["src"] == e["src"]).all()
                    and (x["dst"] == e["dst"]).all())

    @staticmethod
    def _free(x: np.void, jnow: int, rt) -> bool:
        """A way the data plane would give to a new flow (never used, or expired)."""
        if not x["family"]:
            return not x["last_seen"]  # else: being published by the data plane
        age = (jnow - int(x["last_seen"])) & 0xFFFFFFFF
        tmo = rt.syn_timeout if x["flags"] & abi.FLOW_F_EMBRYONIC else (
            rt.closing_timeout if x["flags"] & abi.FLOW_F_CLOSING else (
                rt.tcp_timeout if x["proto"] == 6 else rt.udp_timeout))
        return not x["proto"] or age > tmo

    def _pick_way(self, t: np.ndarray, first: int, e: np.void, jnow: int, rt,
                  ways: int = abi.FLOW_WAYS) -> int | None:
        pick = None
        for w in range(ways):
            x = t[first + w]
            if x["family"] and self._same_flow(x, e):
                self.stats.known += 1
                return None
            if pick is None and self._free(x, jnow, rt):
                pick = first + w
        if pick is None:
            self.stats.no_room += 1
        return pick

    def _publish(self, t: np.ndarray, i: int, e: np.void, bid: int, jnow: int,
                 reply_tag: int) -> None:
        slot = t[i:i + 1]
        # like the data plane: the way claimed (last_seen, family 0), the fields, the family
        slot["family"] = 0
        slot["last_seen"] = jnow
        for f in ("src", "dst", "sport", "dport", "proto"):
            slot[f] = e[f]
        slot["flags"] = 0
        slot["backend_id"] = bid
        slot["reply_tag"] = reply_tag
        slot["client_ifindex"] = 0
        slot["client_mac"] = 0
        slot["ack_check"] = 0
        slot["family"] = e["family"]
        self._written[i] = (int(_digest(slot)[0]), jnow)

    def _hash(self, e: np.void) -> int:
        return model._hash_raw(e["src"].tobytes(), e["dst"].tobytes(),
                               abi.ntohs(int(e["sport"])), abi.ntohs(int(e["dport"])),
                               int(e["proto"]), self.hash_seed)

    def _write_ct(self, t: np.ndarray, e: np.void, bid: int, jnow: int, rt) -> int:
        """Into the flow's first conntrack bucket, else its second (marking the first
        spilled, as the data plane does, so a lookup goes on to it)."""
        b1, b2 = model.ct_buckets(self._hash(e), self.ct_sets)
        first1 = self.nat_entries + b1 * abi.CT_WAYS
        first2 = self.nat_entries + b2 * abi.CT_WAYS
        if b2 != b1 and any(t[first2 + w]["family"] and self._same_flow(t[first2 + w], e)
                            for w in range(abi.CT_WAYS)):
            self.stats.known += 1
            return 0
        known = self.stats.known
        i = self._pick_way(t, first1, e, jnow, rt, abi.CT_WAYS)
        if i is None and self.stats.known == known and b2 != b1:
            self.stats.no_room -= 1  # (counted once, below, if the second has none either)
            i = self._pick_way(t, first2, e, jnow, rt, abi.CT_WAYS)
            if i is not None:
                t[first1:first1 + 1]["set_flags"] |= abi.SET_F_SPILL
        if i is None:
            return 0
        self._publish(t, i, e, bid, jnow, 0)
        return 1

    def _write_nat(self, t: np.ndarray, e: np.void, bid: int, jnow: int, rt) -> int:
        """Into the NAT set of the sender's port (the backend knows the flow by it), with the
        spill marks a lookup from the flow's own set needs to get there."""
        sets = self.nat_entries // abi.FLOW_WAYS
        target = int(e["client_ifindex"]) - self.nat_port_min
        if not 0 <= target < sets:
            self.stats.no_room += 1
            return 0
        home = self._hash(e) % sets
        steps = (target - home) % sets
        if steps >= NAT_PROBES:
            self.stats.no_room += 1
            return 0
        i = self._pick_way(t, target * abi.FLOW_WAYS, e, jnow, rt)
        if i is None:
            return 0
        self._publish(t, i, e, bid, jnow, int(e["reply_tag"]))
        for k in range(steps):
            s = (home + k) % sets
            t[s * abi.FLOW_WAYS:s * abi.FLOW_WAYS + 1]["set_flags"] |= abi.SET_F_SPILL
        return 1


#: flows not (or no longer) established are not synced
_NOT_ESTABLISHED = abi.FLOW_F_CLOSING | getattr(abi, "FLOW_F_EMBRYONIC", 0)


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
    """What each backend id of a LoadBalancer means for the VIPs (lb.VipSpec) it serves:
    {id: (vip addr16, vip port, proto, family, backend addr16, port, SNAT16 or zeros)}."""
    out: dict[int, BackendKey] = {}
    for spec in specs:
        try:
            ids = lb.backend_ids(spec.key)
        except KeyError:
            continue
        vip16 = spec.address.packed.ljust(16, b"\0")
        pnum = socket.IPPROTO_TCP if spec.protocol == "tcp" else socket.IPPROTO_UDP
        snat16 = bytes(16)
        if spec.mode == "nat":
            snat16 = (spec.snat or spec.address).packed.ljust(16, b"\0")
        for b in spec.backends:
            bid = ids.get(b.key)
            if bid is None:
                continue
            fam = abi.AF_INET if b.address.version == 4 else abi.AF_INET6
            out[bid] = (vip16, spec.port, pnum, fam, b.address.packed.ljust(16, b"\0"),
                        b.port, snat16)
    return out
