"""An in-memory data plane with DataPlane's write interface, for unit tests of the
control plane (no root, no kernel)."""
from __future__ import annotations

import numpy as np

from . import abi


class FakeDataPlane:
    def __init__(self) -> None:
        self.vips: dict[bytes, abi.VipInfo] = {}
        self.vip_slots: dict[int, abi.VipSlot] = {}
        self.vip_addrs: dict[bytes, int] = {}
        self.backends: dict[int, abi.Backend] = {}
        self.rings: dict[int, np.ndarray] = {}
        self.rt = abi.LbRuntime()
        self.writes: list[tuple] = []  # (op, key) in order, to check write ordering

    def put_vip(self, key, info):
        self.vips[bytes(key)] = info
        self.writes.append(("put_vip", bytes(key)))

    def del_vip(self, key):
        self.vips.pop(bytes(key), None)
        self.writes.append(("del_vip", bytes(key)))

    def put_vip_slot(self, idx, slot):
        if slot is None:
            self.vip_slots.pop(idx, None)
        else:
            self.vip_slots[idx] = abi.VipSlot.from_buffer_copy(bytes(slot))
        self.writes.append(("put_vip_slot", idx))

    def put_vip_addr(self, key, count):
        if count:
            self.vip_addrs[bytes(key)] = count
        else:
            self.vip_addrs.pop(bytes(key), None)
        self.writes.append(("put_vip_addr", bytes(key)))

    def put_backend(self, backend_id, be):
        self.backends[backend_id] = be
        self.writes.append(("put_backend", backend_id))

    def swap_ring(self, vip_id, table):
        self.rings[vip_id] = np.array(table, dtype=np.uint32)
        self.writes.append(("swap_ring", vip_id))

    def swap_rings(self, tables):
        for vip_id, table in tables.items():
            self.swap_ring(vip_id, table)

    def drop_rings(self, vip_ids):
        for vip_id in vip_ids:
            self.drop_ring(vip_id)

    def drop_ring(self, vip_id):
        self.rings.pop(vip_id, None)
        self.writes.append(("drop_ring", vip_id))

    def set_runtime(self, rt):
        self.rt = abi.LbRuntime.from_buffer_copy(bytes(rt))
        self.writes.append(("set_runtime", None))

    def runtime(self):
        return abi.LbRuntime.from_buffer_copy(bytes(self.rt))
