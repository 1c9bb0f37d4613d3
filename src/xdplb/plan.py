"""Map writes as data: what is written + what is desired -> an ordered list of typed writes.

`plan(state, desired)` is pure: it returns the writes and the state they lead to and
changes nothing (ids come from the state's pools). `execute(dp, writes)` applies them in
order. The order is the invariant the data plane relies on: it never sees a half-made
VIP. A VIP becomes visible last (its backends, Maglev table, address entry and switches
first) and disappears first; backends that become usable are written before the table
that names them, backends that stop being usable (pulled, removed) after the table that
no longer does, so new flows never pick an inactive backend. Property-tested in
tests/unit/test_plan.py over random sequences of desired states.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ._bpf import abi
from ._bpf.contract import DataPlaneApi, StatsMap
from .config import IPAddress, VipKey
from .ring import Table, maglev, maglev_patch
from .spec import BackendSpec, VipSpec, backend_value, vip_addr_key, vip_info, vip_key

# --- the writes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PutBackend:
    backend_id: int
    value: abi.Backend


@dataclass(frozen=True)
class SwapRings:
    """New Maglev tables, each VIP's swap atomic, all in one batch (one RCU wait)."""

    tables: tuple[tuple[int, Table], ...]


@dataclass(frozen=True)
class PatchRings:
    """Changes to published Maglev tables, in place: (vip id, slots, new backend ids).
    Every slot names a usable backend before and after (backends that become usable are
    written first, those that stop being usable after), so a packet that reads a slot
    mid-patch gets the old or the new choice, both valid; the executor then waits for
    programs that read a slot before the patch (one RCU grace period), as a swap does."""

    patches: tuple[tuple[int, np.ndarray, np.ndarray], ...]


@dataclass(frozen=True)
class DropRings:
    vip_ids: tuple[int, ...]


@dataclass(frozen=True)
class PutVip:
    key: abi.VipKey
    info: abi.VipInfo


@dataclass(frozen=True)
class DelVip:
    key: abi.VipKey


@dataclass(frozen=True)
class PutVipSlot:
    """One entry of the direct-mapped VIP cache (None: empty it)."""

    idx: int
    slot: abi.VipSlot | None


@dataclass(frozen=True)
class PutVipAddr:
    """How many VIPs an address has (0: remove its entry)."""

    key: abi.VipKey
    count: int


@dataclass(frozen=True)
class SetSwitches:
    """The run-time switches that let the data plane skip lookups; the rest of the
    run-time state (timeouts, trace rate) is kept."""

    wildcard_vips: int
    nat_vips: int
    vip_spill: int
    addresses: frozenset[IPAddress]
    ports: frozenset[int]


@dataclass(frozen=True)
class ResetStats:
    """A fresh id starts its counters at zero (ids are reused)."""

    which: StatsMap
    idx: int


Write = (PutBackend | SwapRings | PatchRings | DropRings | PutVip | DelVip | PutVipSlot | PutVipAddr
         | SetSwitches | ResetStats)


def execute(dp: DataPlaneApi, writes: Iterable[Write]) -> None:
    """Apply writes in order. A run of backend entries and counter resets (no other
    write between them: they name no one another) goes in one batch per map: a start
    with 4,096 VIPs x 4 backends made 36,864 syscalls of them."""
    backends: dict[int, abi.Backend] = {}
    resets: dict[StatsMap, list[int]] = {}

    def flush() -> None:
        if backends:
            dp.put_backends(dict(backends))
            backends.clear()
        for which, ids in resets.items():
            dp.reset_obj_stats_many(which, ids)
        resets.clear()

    for w in writes:
        if isinstance(w, PutBackend):
            backends[w.backend_id] = w.value
            continue
        if isinstance(w, ResetStats):
            resets.setdefault(w.which, []).append(w.idx)
            continue
        flush()
        if isinstance(w, SwapRings):
            dp.swap_rings(dict(w.tables))
        elif isinstance(w, PatchRings):
            dp.patch_rings({vip_id: (idx, ids) for vip_id, idx, ids in w.patches})
        elif isinstance(w, DropRings):
            dp.drop_rings(list(w.vip_ids))
        elif isinstance(w, PutVip):
            dp.put_vip(w.key, w.info)
        elif isinstance(w, DelVip):
            dp.del_vip(w.key)
        elif isinstance(w, PutVipSlot):
            dp.put_vip_slot(w.idx, w.slot)
        elif isinstance(w, PutVipAddr):
            dp.put_vip_addr(w.key, w.count)
        elif isinstance(w, SetSwitches):
            rt = dp.runtime()
            rt.wildcard_vips, rt.nat_vips, rt.vip_spill = w.wildcard_vips, w.nat_vips, \
                w.vip_spill
            rt.set_filter(w.addresses, w.ports)
            dp.set_runtime(rt)
        else:  # pragma: no cover - Write is closed
            raise TypeError(f"not a write: {w!r}")
    flush()


# --- what is written ----------------------------------------------------------------------


class IdPool:
    """Ids handed out in order; released ids are reused last (oldest first), so a
    stale conntrack entry is unlikely to find its id given to another backend."""

    def __init__(self, size: int):
        self.size = size
        self._next = 0
        self._free: deque[int] = deque()

    def take(self) -> int:
        if self._next < self.size:
            self._next += 1
            return self._next - 1
        if self._free:
            return self._free.popleft()
        raise RuntimeError(f"all {self.size} ids are in use")

    def give(self, i: int) -> None:
        self._free.append(i)

    def clone(self) -> IdPool:
        out = IdPool(self.size)
        out._next, out._free = self._next, deque(self._free)
        return out

    def reserve(self, used: set[int], stale: Sequence[int] = ()) -> None:
        """Start from ids already in the maps (adoption): `used` stay taken; ids never
        used below the highest seen are free first, `stale` ones (inactive entries
        that old flows may still name) are reused last."""
        seen = set(used) | set(stale)
        self._next = min(self.size, max(seen) + 1) if seen else 0
        gaps = [i for i in range(self._next) if i not in seen]
        self._free = deque(gaps + [i for i in stale if i not in used])


@dataclass
class VipState:
    spec: VipSpec
    vip_id: int
    backend_ids: dict[str, int] = field(default_factory=dict)  # BackendSpec.key -> id
    has_prev: bool = False  # prev_rings holds its table before the last change, same size


@dataclass
class State:
    """What the planner knows the maps hold (after the writes it planned)."""

    vip_ids: IdPool
    be_ids: IdPool
    vips: dict[VipKey, VipState] = field(default_factory=dict)
    slot_owner: dict[int, VipKey] = field(default_factory=dict)  # vip_slots idx -> VIP
    # vip_addrs: address -> count written (None: present, count unknown: adopted)
    addr_counts: dict[IPAddress, int | None] = field(default_factory=dict)

    @classmethod
    def empty(cls, max_vips: int, max_backends: int) -> State:
        return cls(IdPool(max_vips), IdPool(max_backends))

    def clone(self) -> State:
        """A copy the planner may change: VIPs are shared, and the planner replaces one
        before changing it (a deepcopy of thousands of VIPs took longer than the plan)."""
        return State(self.vip_ids.clone(), self.be_ids.clone(), dict(self.vips),
                     dict(self.slot_owner), dict(self.addr_counts))


@dataclass
class MapState:
    """What the data plane's maps hold, as read back for adoption."""

    vips: dict[VipKey, abi.VipInfo] = field(default_factory=dict)
    vip_addrs: set[IPAddress] = field(default_factory=set)  # addresses with an entry
    backends: dict[int, abi.Backend] = field(default_factory=dict)  # id -> entry in use
    # vip id -> its Maglev table (slot -> backend id); read_map_state reads a kept data
    # plane's tables when asked, one at a time (4,096 of them are 1 GiB)
    tables: Mapping[int, np.ndarray] = field(default_factory=dict)

    def members(self, vip_id: int) -> set[int]:
        """Backend ids in a VIP's table."""
        t = self.tables.get(vip_id)
        if t is None:
            return set()
        ids = t[t != abi.NO_BACKEND]
        if not len(ids):
            return set()
        lo = int(ids.min())
        return {lo + int(i) for i in np.flatnonzero(np.bincount(ids - lo))}


# --- helpers ------------------------------------------------------------------------------


def same_backend(be: abi.Backend, want: abi.Backend) -> bool:
    return (be.family == want.family and bytes(be.addr) == bytes(want.addr)
            and be.port == want.port)


def _entry_of(v: VipSpec) -> tuple:
    """What of a VipSpec its VIP entry holds (vip_info), and what the switches count."""
    return (v.address, v.port, v.protocol, v.mode, v.snat, v.ring_size, v.on_backend_removed,
            v.udp_stateless)


def _entry_fields(b: BackendSpec) -> tuple:
    """What of a BackendSpec its backend entry holds (backend_value)."""
    return (b.address, b.mac, b.port, b.ifindex, b.active)


def label(key: VipKey) -> str:
    return f"{key.address}:{key.port}/{key.protocol}"


# --- the planner ------------------------------------------------------------------------------


@dataclass
class _Change:
    """A VIP added or changed: what its publication writes once the tables are in."""

    st: VipState
    new_address: bool = False  # write its vip_addrs entry before the VIP
    later: list[tuple[int, abi.Backend]] = field(default_factory=list)  # after the VIP
    removed: list[tuple[int, abi.Backend]] = field(default_factory=list)  # inactive, freed
    entry: bool = True  # its VIP entry changes (not when only its backends do)


class _Planner:
    def __init__(self, state: State):
        self.s = state
        self.writes: list[Write] = []
        self.log: list[str] = []

    def emit(self, w: Write) -> None:
        self.writes.append(w)

    # ids -----------------------------------------------------------------------------------
    def take_vip_id(self) -> int:
        i = self.s.vip_ids.take()
        self.emit(ResetStats("vip_stats", i))
        return i

    def take_backend_id(self) -> int:
        i = self.s.be_ids.take()
        self.emit(ResetStats("be_stats", i))
        return i

    # VIP entries: hash map + direct-mapped cache ------------------------------------------
    def put_vip(self, key: VipKey, info: abi.VipInfo) -> None:
        """Publish a VIP: in `vips`, and in its vip_slots entry unless another VIP has it
        (then it is found through the hash map: runtime.vip_spill > 0)."""
        k = vip_key(*key)
        self.emit(PutVip(k, info))
        idx = abi.vip_slot(k)
        if self.s.slot_owner.setdefault(idx, key) == key:
            self.emit(PutVipSlot(idx, abi.VipSlot(key=k, info=info)))

    def del_vip(self, key: VipKey) -> None:
        k = vip_key(*key)
        idx = abi.vip_slot(k)
        if self.s.slot_owner.get(idx) == key:
            del self.s.slot_owner[idx]
            self.emit(PutVipSlot(idx, None))
        self.emit(DelVip(k))

    def promote_spilled(self) -> None:
        """Give free slots to VIPs that had spilled into the hash map."""
        for key, st in self.s.vips.items():
            k = vip_key(*key)
            idx = abi.vip_slot(k)
            if idx not in self.s.slot_owner:
                self.s.slot_owner[idx] = key
                self.emit(PutVipSlot(idx, abi.VipSlot(key=k, info=vip_info(
                    st.vip_id, st.spec, st.has_prev))))

    def switches(self, specs: Iterable[VipSpec]) -> None:
        """Switches that let the data plane skip lookups (on before a VIP needing them
        is visible): over the current VIPs and `specs`, a changed VIP counted by both its
        versions (a NAT VIP becoming DSR stays NAT until its entry says otherwise)."""
        both = [st.spec for st in self.s.vips.values()] + list(specs)
        keys = list(dict.fromkeys(s.key for s in both))
        owners = dict(self.s.slot_owner)
        spilled = sum(1 for key in keys
                      if owners.setdefault(abi.vip_slot(vip_key(*key)), key) != key)
        self.emit(SetSwitches(
            wildcard_vips=sum(1 for key in keys if key.port == 0),
            nat_vips=len({s.key for s in both if s.mode == "nat"}), vip_spill=spilled,
            addresses=frozenset({s.address for s in both} | {s.snat for s in both if s.snat}),
            ports=frozenset(key.port for key in keys)))

    def addr_counts(self) -> None:
        """vip_addrs = number of VIPs per address; writes only what changed."""
        counts: dict[IPAddress, int | None] = {}
        for key in self.s.vips:
            counts[key.address] = (counts.get(key.address) or 0) + 1
        for addr, n in counts.items():
            if self.s.addr_counts.get(addr) != n:
                self.emit(PutVipAddr(vip_addr_key(addr), n or 0))
        for addr in set(self.s.addr_counts) - set(counts):
            self.emit(PutVipAddr(vip_addr_key(addr), 0))
        self.s.addr_counts = counts

    @staticmethod
    def ring_input(st: VipState, spec: VipSpec) -> list[tuple[int, str, int]]:
        return [(st.backend_ids[b.key], b.key, b.weight) for b in spec.backends if b.active]

    def table(self, st: VipState, spec: VipSpec) -> Table:
        return maglev(self.ring_input(st, spec), spec.ring_size)

    # one VIP -------------------------------------------------------------------------------
    def add_vip(self, spec: VipSpec, tables: dict[int, Table]) -> _Change:
        """Its backends now, its table into `tables`; published by `publish`."""
        st = VipState(spec, self.take_vip_id())
        for b in spec.backends:
            st.backend_ids[b.key] = self.take_backend_id()
            self.emit(PutBackend(st.backend_ids[b.key], backend_value(spec, b, vip_id=st.vip_id)))
        tables[st.vip_id] = self.table(st, spec)
        self.s.vips[spec.key] = st
        return _Change(st, new_address=spec.address not in self.s.addr_counts)

    def update_vip(self, st: VipState, spec: VipSpec, tables: dict[int, Table],
                   patches: list[tuple[int, np.ndarray, np.ndarray]]) -> _Change:
        """Backends that become usable now, the table's change into `patches` (or a new
        table into `tables` when its size changes), the rest when the change is
        published."""
        change = _Change(st, entry=_entry_of(st.spec) != _entry_of(spec))
        old_ring = self.ring_input(st, st.spec)
        old = {b.key: b for b in st.spec.backends}
        new = {b.key: b for b in spec.backends}
        # what a backend's entry holds of its VIP; a weight is only in the table, so a
        # drain or weight change leaves the entries alone
        vip_same = (st.spec.mode, st.spec.snat or st.spec.address) == \
            (spec.mode, spec.snat or spec.address)
        for k, b in new.items():
            if k not in st.backend_ids:
                st.backend_ids[k] = self.take_backend_id()
                self.log.append(f"{spec.label}: added backend {k} weight {b.weight}")
            elif old[k] != b:
                if old[k].weight != b.weight:
                    self.log.append(f"{spec.label}: backend {k} weight {old[k].weight} -> "
                                    f"{b.weight}")
                if old[k].active != b.active:
                    self.log.append(f"{spec.label}: backend {k} "
                                    + ("back in service" if b.active else "pulled (inactive)"))
            if vip_same and k in old and _entry_fields(old[k]) == _entry_fields(b):
                continue
            value = backend_value(spec, b, vip_id=st.vip_id)
            if k in old and old[k].active and not b.active:
                change.later.append((st.backend_ids[k], value))
            else:
                self.emit(PutBackend(st.backend_ids[k], value))
        if [(b.key, b.weight, b.active) for b in st.spec.backends] != \
                [(b.key, b.weight, b.active) for b in spec.backends] \
                or st.spec.ring_size != spec.ring_size:
            was = st.has_prev
            if st.spec.ring_size != spec.ring_size or spec.mode == "gue":
                # gue: a new table, the replaced one kept as the previous (second chance)
                tables[st.vip_id] = self.table(st, spec)
                st.has_prev = spec.mode == "gue" and st.spec.ring_size == spec.ring_size
            else:
                idx, ids = maglev_patch(old_ring, self.ring_input(st, spec), spec.ring_size)
                if len(idx):
                    patches.append((st.vip_id, idx, ids))
            if st.has_prev != was:  # its entry's VIP_F_PREV_RING flag changes
                change.entry = True
        for k in [k for k in st.backend_ids if k not in new]:
            bid = st.backend_ids.pop(k)
            change.removed.append((bid, backend_value(st.spec, old[k], active=False,
                                                      vip_id=st.vip_id)))
            self.log.append(f"{spec.label}: removed backend {k}")
        st.spec = spec
        return change

    def publish(self, c: _Change) -> None:
        st = c.st
        if c.new_address and st.spec.address not in self.s.addr_counts:
            # the address must be known before the VIP
            self.emit(PutVipAddr(vip_addr_key(st.spec.address), 1))
            self.s.addr_counts[st.spec.address] = 1
        if c.entry:
            self.put_vip(st.spec.key, vip_info(st.vip_id, st.spec, st.has_prev))
        for bid, value in c.later:
            self.emit(PutBackend(bid, value))
        for bid, value in c.removed:
            self.emit(PutBackend(bid, value))
            self.s.be_ids.give(bid)

    def remove_vip(self, key: VipKey) -> None:
        """After its entry and table are gone: mark its backends inactive, free ids."""
        st = self.s.vips.pop(key)
        for k, bid in st.backend_ids.items():
            b = next(b for b in st.spec.backends if b.key == k)
            self.emit(PutBackend(bid, backend_value(st.spec, b, active=False,
                                                    vip_id=st.vip_id)))
            self.s.be_ids.give(bid)
        self.s.vip_ids.give(st.vip_id)

    # whole plans ------------------------------------------------------------------------
    def apply(self, desired: Sequence[VipSpec]) -> None:
        want = _by_key(desired)
        gone = [k for k in self.s.vips if k not in want]
        # only backends change (a drain, a weight, a health flip): VIP entries, address
        # counts, cache slots and switches stay as they are, unread and unwritten
        entries = bool(gone) or any(
            (cur := self.s.vips.get(key)) is None or _entry_of(cur.spec) != _entry_of(spec)
            for key, spec in want.items())
        for key in gone:  # 1. removed VIPs disappear: entries, then tables
            self.del_vip(key)
        if gone:
            self.emit(DropRings(tuple(self.s.vips[k].vip_id for k in gone)))
        for key in gone:
            self.remove_vip(key)
            self.log.append(f"removed VIP {label(key)}")
        if entries:
            self.switches(want.values())  # 2. switches for the union of old and new
        tables: dict[int, Table] = {}
        patches: list[tuple[int, np.ndarray, np.ndarray]] = []
        changes = []
        for key, spec in want.items():  # 3. backends that become usable, new tables
            cur = self.s.vips.get(key)
            if cur is None:
                changes.append(self.add_vip(spec, tables))
                self.log.append(f"added VIP {spec.label} with {len(spec.backends)} backends")
            elif cur.spec != spec:
                # copied before it changes: the state's VIPs are shared with the plan's
                # input (State.clone)
                cur = self.s.vips[key] = VipState(cur.spec, cur.vip_id, dict(cur.backend_ids))
                changes.append(self.update_vip(cur, spec, tables, patches))
        if tables:  # 4. every new table in one batch, the changed ones in place
            self.emit(SwapRings(tuple(tables.items())))
        if patches:
            self.emit(PatchRings(tuple(patches)))
        for c in changes:  # 5. VIP entries, then what stopped being usable
            self.publish(c)
        if entries:
            self.addr_counts()  # 6. address counts, free slots, switches for `desired`
            self.promote_spilled()
            self.switches(())

    def adopt(self, desired: Sequence[VipSpec], found: MapState) -> None:
        """Take over maps an earlier planner wrote (a restart or upgrade that kept the
        data plane attached) and make them serve `desired`. VIPs keep their ids
        (matched by address, port and protocol) and backends keep theirs (matched by
        address and port, preferring ids found in the VIP's Maglev table, then active
        ones), so established flows keep their backend. What the maps already hold as
        wanted (entries, tables) is not written again; the tables that change are
        published in one batch."""
        if self.s.vips:
            raise RuntimeError("adopt() needs a planner without state")
        want = _by_key(desired)
        used: set[int] = set()
        adopted: dict[VipKey, VipState] = {}
        # (family, address, port, vip id) -> ids: an index, not a scan per backend
        # (4,096 VIPs x 4 backends made that 16,384 x 16,384 comparisons); entries of
        # another VIP are a fallback (a VIP whose id changed)
        by_vip: dict[tuple[int, bytes, int, int], list[int]] = {}
        by_endpoint: dict[tuple[int, bytes, int], list[int]] = {}
        for i, be in found.backends.items():
            ep = (be.family, bytes(be.addr), be.port)
            by_vip.setdefault((*ep, be.vip_id), []).append(i)
            by_endpoint.setdefault(ep, []).append(i)
        for key, info in sorted(found.vips.items(), key=lambda kv: kv[1].vip_id):
            spec = want.get(key)
            if spec is None:
                continue
            st = VipState(spec, info.vip_id)
            members: set[int] | None = None
            for b in spec.backends:
                value = backend_value(spec, b, vip_id=st.vip_id)
                ep = (value.family, bytes(value.addr), value.port)
                ids = [i for i in by_vip.get((*ep, info.vip_id), ()) if i not in used]
                if not ids:
                    ids = [i for i in by_endpoint.get(ep, ()) if i not in used]
                if len(ids) > 1:
                    if members is None:  # read only when it decides
                        members = found.members(info.vip_id)
                    in_table = members
                    ids.sort(key=lambda i: (
                        found.backends[i].vip_id != info.vip_id, i not in in_table,
                        not found.backends[i].flags & abi.BE_F_ACTIVE, i))
                if ids:
                    st.backend_ids[b.key] = ids[0]
                    used.add(ids[0])
            adopted[key] = st
        self.s.vip_ids.reserve({info.vip_id for info in found.vips.values()})
        stale = sorted(i for i in found.backends if i not in used)
        self.s.be_ids.reserve(used, stale)
        self.s.addr_counts = dict.fromkeys(found.vip_addrs)

        for key, info in found.vips.items():  # VIPs no longer wanted disappear first
            if key not in want:
                self.del_vip(key)
                self.emit(DropRings((info.vip_id,)))
                self.s.vip_ids.give(info.vip_id)
                self.log.append(f"removed VIP {label(key)}")
        self.switches(desired)

        def put_backend(i: int, value: abi.Backend) -> None:
            old = found.backends.get(i)
            if old is None or bytes(old) != bytes(value):
                self.emit(PutBackend(i, value))

        tables: dict[int, Table] = {}
        later: list[tuple[int, abi.Backend]] = []
        for key, st in adopted.items():  # 1. usable backends, changed tables
            spec = st.spec
            kept = len(st.backend_ids)
            for b in spec.backends:
                if b.key not in st.backend_ids:
                    st.backend_ids[b.key] = self.take_backend_id()
                    self.log.append(f"{spec.label}: added backend {b.key} weight {b.weight}")
                value = backend_value(spec, b, vip_id=st.vip_id)
                if b.active:
                    put_backend(st.backend_ids[b.key], value)
                else:
                    later.append((st.backend_ids[b.key], value))
            table = self.table(st, spec)
            kept_table = found.tables.get(st.vip_id)
            if kept_table is None or not np.array_equal(kept_table, table):
                tables[st.vip_id] = table
            self.s.vips[key] = st
            self.log.append(f"adopted VIP {spec.label} (id {st.vip_id}): {kept} of "
                            f"{len(spec.backends)} backends kept their ids")
        if tables:
            self.emit(SwapRings(tuple(tables.items())))
        for key, st in adopted.items():  # 2. their entries, 3. what stopped being usable
            info = vip_info(st.vip_id, st.spec)
            if bytes(found.vips[key]) != bytes(info):
                self.emit(PutVip(vip_key(*key), info))
            idx = abi.vip_slot(vip_key(*key))
            if self.s.slot_owner.setdefault(idx, key) == key:
                self.emit(PutVipSlot(idx, abi.VipSlot(key=vip_key(*key), info=info)))
        for bid, value in later:
            put_backend(bid, value)
        added: list[_Change] = []
        new_tables: dict[int, Table] = {}
        for key, spec in want.items():
            if key not in self.s.vips:
                added.append(self.add_vip(spec, new_tables))
                self.log.append(f"added VIP {spec.label} with {len(spec.backends)} backends")
        if new_tables:
            self.emit(SwapRings(tuple(new_tables.items())))
        for c in added:
            self.publish(c)
        # entries nobody adopted: inactive, so flows still naming them re-select or reset
        taken = {i for st in self.s.vips.values() for i in st.backend_ids.values()}
        for i in stale:
            be = found.backends[i]
            if i not in taken and be.flags & abi.BE_F_ACTIVE:
                gone = abi.Backend.from_buffer_copy(bytes(be))
                gone.flags &= ~abi.BE_F_ACTIVE
                self.emit(PutBackend(i, gone))
                self.log.append(f"backend id {i} ({abi.unpack_addr(be.addr, be.family)}) is "
                                "not configured any more: inactive")
        self.addr_counts()
        self.promote_spilled()
        self.switches(())


def _by_key(desired: Sequence[VipSpec]) -> dict[VipKey, VipSpec]:
    want = {v.key: v for v in desired}
    if len(want) != len(desired):
        raise ValueError("duplicate VIP (address, port, protocol)")
    return want


@dataclass(frozen=True)
class Plan:
    writes: tuple[Write, ...]
    state: State  # what the maps hold once every write is done
    log: tuple[str, ...]  # what changed, for people


def plan(state: State, desired: Sequence[VipSpec]) -> Plan:
    """The writes that make the data plane serve exactly `desired` (pure: `state` is
    left as it was)."""
    p = _Planner(state.clone())
    p.apply(desired)
    return Plan(tuple(p.writes), p.s, tuple(p.log))


def plan_adoption(state: State, desired: Sequence[VipSpec], found: MapState) -> Plan:
    """The writes that adopt maps found holding `found` and make them serve `desired`."""
    p = _Planner(state.clone())
    p.adopt(desired, found)
    return Plan(tuple(p.writes), p.s, tuple(p.log))
