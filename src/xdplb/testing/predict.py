"""What a freshly loaded data plane decides for new flows, computed in Python.

`Predictor(vips, knobs)` configures a FakeDataPlane through the real LoadBalancer (so
backend ids and Maglev tables are exactly what a fresh DataPlane gets), then follows
the data plane's rules with the bit-exact model (xdplb.model.Model over that
FakeDataPlane, its flow table included): backend =
table[hash_flow(5-tuple, seed) % ring_size]; NAT port = the port of the flow's set
(nat_port_min + hash % number of NAT ports) unless that port is a VIP port, its
FLOW_WAYS ways are taken, or a live flow there has the same reply tuple (backend,
backend port, SNAT address), then the port of the next set, else the flow is dropped
(drop_nat_full). Known flows keep their pick (the flow table). Every `forward` is one
client packet, in order, as the data plane would see it. Time never passes here, so
nothing expires.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .. import model
from .._bpf import abi
from .._bpf.dataplane import Knobs
from .._bpf.fake import FakeDataPlane
from ..lb import PROTOCOLS, BackendSpec, LoadBalancer, VipSpec

_DROPS = {abi.Stat.DROP_NO_BACKEND: "drop_no_backend", abi.Stat.DROP_NAT_FULL: "drop_nat_full",
          abi.Stat.DROP_REMOVED: "drop_removed", abi.Stat.DROP_NOT_SYN: "drop_not_syn",
          # answered instead of forwarded (guard.h), or a challenge's answer taken
          abi.Stat.SYN_CHALLENGE: "syn_challenge", abi.Stat.RST_NOT_SYN: "rst_not_syn",
          abi.Stat.RST_NAT_FULL: "rst_nat_full", abi.Stat.SYN_VERIFIED: "syn_verified"}


@dataclass(frozen=True)
class Pick:
    """The data plane's decision for one client flow."""

    backend_id: int
    backend: BackendSpec | None  # None: dropped (see `drop`)
    nat_port: int = 0  # host order; 0 in DSR mode or when dropped
    backend_port: int = 0  # host order: the destination port towards the backend
    drop: str = ""  # "" (forwarded), or drop_no_backend, _nat_full, _removed, _not_syn
    known: bool = field(default=False, compare=False)  # the flow had an entry (fwd_est)

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
        self.vips: dict[tuple, VipSpec] = {v.key: v for v in vips}
        self.model = model.Model(self.fake, self.knobs)
        self.flows: dict[tuple, Pick] = {}  # flows forwarded so far -> their pick

    def vip_for(self, dst, dport: int, proto: str) -> VipSpec | None:
        dst = ipaddress.ip_address(dst)
        return self.vips.get((dst, dport, proto)) or self.vips.get((dst, 0, proto))

    def hash(self, client, sport: int, vip, dport: int, proto: str = "tcp") -> int:
        return model.hash_flow(client, vip, sport, dport, PROTOCOLS[proto], self.knobs.hash_seed)

    def slot_backend(self, spec: VipSpec, flow_hash: int) -> tuple[int, BackendSpec | None]:
        table = self.fake.rings[self.lb.vip_id(spec.key)]
        bid = int(table[model.select_slot(flow_hash, spec.ring_size)])
        return bid, self._backend_spec(spec, bid)

    def _backend_spec(self, spec: VipSpec, bid: int) -> BackendSpec | None:
        ids = self.lb.backend_ids(spec.key)
        for b in spec.backends:
            if ids.get(b.key) == bid:
                return b
        return None

    def forward(self, client, sport: int, vip, dport: int, proto: str = "tcp",
                client_mac: bytes = bytes(6), ifindex: int = 1,
                tcp_flags: int = model.TCPF_SYN) -> Pick:
        """The pick for a packet client:sport -> vip:dport (a new flow takes its entry,
        as in the data plane); TCP packets are SYNs unless `tcp_flags` says otherwise."""
        client, vip = ipaddress.ip_address(client), ipaddress.ip_address(vip)
        key = (client, sport, vip, dport, proto)
        spec = self.vip_for(vip, dport, proto)
        if spec is None:
            raise KeyError(f"{vip}:{dport}/{proto} is not a VIP")
        fk = model.FlowKey(model._addr16(client), model._addr16(vip), sport, dport,
                           PROTOCOLS[proto], abi.AF_INET if vip.version == 4 else abi.AF_INET6)
        fp = self.model.pick(fk, client_mac, ifindex, tcp_flags if proto == "tcp" else 0)
        be = self._backend_spec(spec, fp.backend_id)
        if fp.stat in _DROPS:
            return Pick(fp.backend_id, be if fp.stat == abi.Stat.DROP_NAT_FULL else None,
                        drop=_DROPS[fp.stat])
        assert be is not None, f"backend {fp.backend_id} of {spec.label} not in its spec"
        bport = be.port if spec.mode == "nat" and be.port else dport
        pick = Pick(fp.backend_id, be, fp.nat_port, bport, known=fp.stat == abi.Stat.FWD_EST)
        self.flows[key] = pick
        return pick

    def reset(self) -> None:
        """Back to a fresh data plane's state: an empty flow table."""
        self.model.reset_flows()
        self.flows.clear()

    def forget_flows(self) -> None:
        """The conntrack region (flows of non-NAT VIPs) is lost; NAT flows stay."""
        self.model.reset_flows(nat=False)
        self.flows = {k: p for k, p in self.flows.items() if p.nat_port}
