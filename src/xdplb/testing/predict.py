"""What a freshly loaded data plane decides for new flows, computed in Python.

`Predictor(vips, knobs)` configures a FakeDataPlane through the real LoadBalancer (so
backend ids and Maglev tables are exactly what a fresh DataPlane gets), then follows
the data plane's rules with the bit-exact model (xdplb.model): backend =
table[hash_flow(5-tuple, seed) % ring_size], NAT port = the first of
nat_port_candidates(hash) whose reply tuple (backend, backend port, snat, port) is not
held by another client's live flow. Known flows keep their pick (conntrack). Time
never passes here, so nothing expires.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .. import model
from .._bpf import abi
from .._bpf.dataplane import Knobs
from .._bpf.fake import FakeDataPlane
from ..lb import PROTOCOLS, BackendSpec, LoadBalancer, VipSpec


@dataclass(frozen=True)
class Pick:
    """The data plane's decision for one client flow."""

    backend_id: int
    backend: BackendSpec | None  # None: dropped (see `drop`)
    nat_port: int = 0  # host order; 0 in DSR mode or when dropped
    backend_port: int = 0  # host order: the destination port towards the backend
    drop: str = ""  # "" (forwarded), "drop_no_backend" or "drop_nat_full"

    @property
    def addr(self) -> str:
        assert self.backend is not None  # a forwarded pick
        return str(self.backend.address)

    @property
    def mac(self) -> str:
        assert self.backend is not None and self.backend.mac is not None  # forwarded, MAC set
        return ":".join(f"{b:02x}" for b in self.backend.mac)


class Predictor:
    def __init__(self, vips: list[VipSpec], knobs: Knobs | None = None):
        self.knobs = knobs or Knobs()
        self.fake = FakeDataPlane()
        self.lb = LoadBalancer(self.fake)
        self.lb.apply(list(vips))
        self.vips = {v.key: v for v in vips}
        self.flows: dict[tuple, Pick] = {}
        self.nat_owner: dict[tuple, tuple] = {}  # reply tuple -> (client, sport, vip, dport)

    def vip_for(self, dst, dport: int, proto: str) -> VipSpec | None:
        dst = ipaddress.ip_address(dst)
        return self.vips.get((dst, dport, proto)) or self.vips.get((dst, 0, proto))

    def hash(self, client, sport: int, vip, dport: int, proto: str = "tcp") -> int:
        return model.hash_flow(client, vip, sport, dport, PROTOCOLS[proto], self.knobs.hash_seed)

    def slot_backend(self, spec: VipSpec, flow_hash: int) -> tuple[int, BackendSpec | None]:
        table = self.fake.rings[self.lb.vip_id(spec.key)]
        bid = int(table[model.select_slot(flow_hash, spec.ring_size)])
        ids = self.lb.backend_ids(spec.key)
        for b in spec.backends:
            if ids.get(b.key) == bid:
                return bid, b
        return bid, None

    def forward(self, client, sport: int, vip, dport: int, proto: str = "tcp") -> Pick:
        """The pick for a packet client:sport -> vip:dport (a new flow is recorded)."""
        client, vip = ipaddress.ip_address(client), ipaddress.ip_address(vip)
        key = (client, sport, vip, dport, proto)
        if key in self.flows:
            return self.flows[key]
        spec = self.vip_for(vip, dport, proto)
        if spec is None:
            raise KeyError(f"{vip}:{dport}/{proto} is not a VIP")
        h = self.hash(client, sport, vip, dport, proto)
        bid, be = self.slot_backend(spec, h)
        if be is None:
            return Pick(abi.NO_BACKEND if bid == abi.NO_BACKEND else bid, None,
                        drop="drop_no_backend")
        bport = be.port if spec.mode == "nat" and be.port else dport
        if spec.mode != "nat":
            pick = Pick(bid, be, 0, bport)
        else:
            snat = ipaddress.ip_address(spec.snat or spec.address)
            owner = key[:4]
            for port in model.nat_port_candidates(h, self.knobs.nat_port_min,
                                                  self.knobs.nat_port_max):
                rk = (be.address, bport, snat, port, proto)
                if self.nat_owner.get(rk, owner) == owner:
                    self.nat_owner[rk] = owner
                    pick = Pick(bid, be, port, bport)
                    break
            else:
                return Pick(bid, be, drop="drop_nat_full")
        self.flows[key] = pick
        return pick

    def reset(self) -> None:
        """Back to a fresh data plane's state: no flows, no NAT ports taken."""
        self.flows.clear()
        self.nat_owner.clear()

    def forget_flows(self) -> None:
        """Conntrack lost (LRU eviction); the reverse NAT entries stay."""
        self.flows.clear()
