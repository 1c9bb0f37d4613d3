"""Desired state -> the data plane: `LoadBalancer` keeps a data plane equal to a list of
VipSpec. What to write, and in which order, is plan.py's (a pure function, property-
tested: the data plane never sees a half-made VIP); this module runs its plans and reads
kept maps back for adoption."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import replace

import numpy as np

from ._bpf import abi
from ._bpf.contract import DataPlaneApi
from .config import DEFAULTS, IPAddress, VipKey
from .plan import IdPool, MapState, State, execute, plan, plan_adoption
from .spec import PROTOCOLS, BackendSpec, VipSpec, backend_value, vip_addr_key, vip_key

__all__ = [
    "PROTOCOLS",
    "BackendSpec",
    "IdPool",
    "LoadBalancer",
    "MapState",
    "VipSpec",
    "backend_value",
    "read_map_state",
    "vip_addr_key",
    "vip_key",
]


class LoadBalancer:
    """Keeps the data plane equal to a list of VipSpec."""

    def __init__(self, dp: DataPlaneApi, max_vips: int = DEFAULTS.max_vips,
                 max_backends: int = DEFAULTS.max_backends):
        self.dp = dp
        self.state = State.empty(max_vips, max_backends)

    # queries ------------------------------------------------------------------------
    @property
    def vips(self) -> list[VipSpec]:
        return [s.spec for s in self.state.vips.values()]

    def vip_id(self, key: tuple) -> int:
        return self.state.vips[VipKey(*key)].vip_id

    def backend_ids(self, key: tuple) -> dict[str, int]:
        return dict(self.state.vips[VipKey(*key)].backend_ids)

    # changes ------------------------------------------------------------------------
    def apply(self, desired: list[VipSpec]) -> list[str]:
        """Make the data plane serve exactly `desired`; returns what changed."""
        p = plan(self.state, desired)
        # the plan's state is taken before the writes run: after a failed write, the next
        # plan (a rollback) rewrites whatever differs from it, written or not
        self.state = p.state
        execute(self.dp, p.writes)
        return list(p.log)

    def adopt(self, desired: list[VipSpec], found: MapState) -> list[str]:
        """Take over maps an earlier LoadBalancer wrote (a restart or an upgrade that kept
        the data plane attached) and make them serve `desired`: VIPs and backends keep
        their ids, so established flows keep their backend. Returns what happened."""
        p = plan_adoption(self.state, desired, found)
        self.state = p.state
        execute(self.dp, p.writes)
        return list(p.log)

    def set_backend(self, key: tuple, address: IPAddress, **changes) -> list[str]:
        """Change one backend of a VIP (weight=..., or remove=True)."""
        spec = self.state.vips[VipKey(*key)].spec
        remove = changes.pop("remove", False)
        backends = []
        found = False
        for b in spec.backends:
            if b.address == address:
                found = True
                if not remove:
                    backends.append(replace(b, **changes))
            else:
                backends.append(b)
        if not found:
            raise KeyError(f"{address} is not a backend of {spec.label}")
        return self.apply([replace(s, backends=tuple(backends)) if s.key == key else s
                           for s in self.vips])


_PROTO_NAMES = {v: k for k, v in PROTOCOLS.items()}


def _vip_key_tuple(k: abi.VipKey) -> VipKey:
    return VipKey(abi.unpack_addr(k.addr, k.family), abi.ntohs(k.port),
                  _PROTO_NAMES.get(k.proto, str(k.proto)))  # type: ignore[arg-type]


class _KeptTables(Mapping[int, np.ndarray]):
    """A kept data plane's Maglev tables, each read when asked (not all at once: 4,096
    tables of 65,537 slots are 1 GiB)."""

    def __init__(self, dp: DataPlaneApi, vip_ids: list[int]):
        self.dp, self.ids = dp, vip_ids

    def __getitem__(self, vip_id: int) -> np.ndarray:
        t = self.dp.ring_table(vip_id) if vip_id in self.ids else None
        if t is None:
            raise KeyError(vip_id)
        return t

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)


def read_map_state(dp: DataPlaneApi) -> MapState:
    """Read what a data plane's maps hold, for adopt()."""
    st = MapState()
    for k, info in dp.vip_entries():
        st.vips[_vip_key_tuple(k)] = info
    st.tables = _KeptTables(dp, sorted({info.vip_id for info in st.vips.values()}))
    st.vip_addrs = {abi.unpack_addr(k.addr, k.family) for k in dp.vip_addr_keys()}
    st.backends = {i: b for i, b in dp.backend_entries().items() if b.family}
    return st

