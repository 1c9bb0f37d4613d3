"""An in-memory data plane implementing the whole kernel contract (contract.py), for unit
tests of the control plane (no root, no kernel). Counters stay zero: nothing forwards."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from . import abi
from .contract import StatsMap


class FakeDataPlane:
    def __init__(self, max_vips: int = 1 << 20, max_backends: int = 1 << 24) -> None:
        self.vips: dict[bytes, abi.VipInfo] = {}
        self.vip_slots: dict[int, abi.VipSlot] = {}
        self.prev_rings: dict[int, np.ndarray] = {}  # the table before the last swap
        self.vip_addrs: dict[bytes, int] = {}
        self.backends: dict[int, abi.Backend] = {}
        self.rings: dict[int, np.ndarray] = {}
        self.rt = abi.LbRuntime()
        self.writes: list[tuple] = []  # (op, key) in order, to check write ordering
        self.resets: list[tuple[str, int]] = []  # counters zeroed for a reused id
        self.max_vips, self.max_backends = max_vips, max_backends

    # writes -------------------------------------------------------------------------------
    def put_vip(self, key: abi.VipKey, info: abi.VipInfo) -> None:
        self.vips[bytes(key)] = info
        self.writes.append(("put_vip", bytes(key)))

    def del_vip(self, key: abi.VipKey) -> None:
        self.vips.pop(bytes(key), None)
        self.writes.append(("del_vip", bytes(key)))

    def put_vip_slot(self, idx: int, slot: abi.VipSlot | None) -> None:
        if slot is None:
            self.vip_slots.pop(idx, None)
        else:
            self.vip_slots[idx] = abi.VipSlot.from_buffer_copy(bytes(slot))
        self.writes.append(("put_vip_slot", idx))

    def put_vip_addr(self, key: abi.VipKey, count: int) -> None:
        if count:
            self.vip_addrs[bytes(key)] = count
        else:
            self.vip_addrs.pop(bytes(key), None)
        self.writes.append(("put_vip_addr", bytes(key)))

    def put_backend(self, backend_id: int, be: abi.Backend) -> None:
        self.backends[backend_id] = be
        self.writes.append(("put_backend", backend_id))

    def put_backends(self, entries: dict[int, abi.Backend]) -> None:
        for i, be in entries.items():
            self.put_backend(i, be)

    def swap_rings(self, tables: Mapping[int, npt.ArrayLike]) -> None:
        for vip_id, table in tables.items():
            if vip_id in self.rings:  # the replaced table becomes the previous one
                self.prev_rings[vip_id] = self.rings[vip_id]
            self.rings[vip_id] = np.array(table, dtype=np.uint32)
            self.writes.append(("swap_ring", vip_id))

    def patch_rings(self, patches: dict[int, tuple[np.ndarray, np.ndarray]]) -> None:
        for vip_id, (idx, ids) in patches.items():
            self.rings[vip_id][idx] = ids
            self.writes.append(("patch_ring", vip_id))

    def drop_rings(self, vip_ids: list[int]) -> None:
        for vip_id in vip_ids:
            self.rings.pop(vip_id, None)
            self.prev_rings.pop(vip_id, None)
            self.writes.append(("drop_ring", vip_id))

    def set_runtime(self, rt: abi.LbRuntime) -> None:
        self.rt = abi.LbRuntime.from_buffer_copy(bytes(rt))
        self.writes.append(("set_runtime", None))

    def reset_obj_stats(self, which: StatsMap, idx: int) -> None:
        self.resets.append((which, idx))

    def reset_obj_stats_many(self, which: StatsMap, ids: list[int]) -> None:
        for i in ids:
            self.reset_obj_stats(which, i)

    # reads --------------------------------------------------------------------------------
    def runtime(self) -> abi.LbRuntime:
        return abi.LbRuntime.from_buffer_copy(bytes(self.rt))

    def id_limits(self) -> tuple[int, int]:
        return self.max_vips, self.max_backends

    def vip_entries(self) -> list[tuple[abi.VipKey, abi.VipInfo]]:
        return [(abi.VipKey.from_buffer_copy(k), v) for k, v in self.vips.items()]

    def vip_addr_keys(self) -> list[abi.VipKey]:
        return [abi.VipKey.from_buffer_copy(k) for k in self.vip_addrs]

    def backend_entries(self) -> dict[int, abi.Backend]:
        return {i: b for i, b in self.backends.items() if b.family}

    def ring_table(self, vip_id: int) -> np.ndarray | None:
        t = self.rings.get(vip_id)
        return None if t is None else t.copy()

    def ring_members(self, vip_id: int) -> set[int] | None:
        t = self.rings.get(vip_id)
        return None if t is None else set(np.unique(t).tolist()) - {abi.NO_BACKEND}

    def stats(self) -> dict[str, tuple[int, int]]:
        return {st.name.lower(): (0, 0) for st in abi.Stat}

    def obj_stats(self, which: StatsMap, idx: int) -> dict[str, int]:
        return {"packets": 0, "bytes": 0, "new_flows": 0}

    def obj_stats_many(self, which: StatsMap, ids: list[int]) -> np.ndarray:
        rows = [self.obj_stats(which, i) for i in ids]
        return np.array([[r["packets"], r["bytes"], r["new_flows"]] for r in rows],
                        dtype=np.uint64).reshape(len(ids), 3)

    def flow_counts(self) -> dict[str, int]:
        return {"nat_size": 0, "nat_used": 0, "nat_live": 0, "ct_size": 0, "ct_used": 0,
                "ct_live": 0}

    def live_flows_by_backend(self) -> dict[int, int]:
        return {}
