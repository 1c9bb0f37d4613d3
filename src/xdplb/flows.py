"""The live flows of a running instance, read from its flow table (mapped into this
process: no syscall per entry), as `xdplb flows` lists them and as per-backend counts
for `status` and the metrics."""
from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass

import numpy as np

from ._bpf import abi
from ._bpf.dataplane import KNOBS_PIN, DataPlane, read_knobs

__all__ = ["Flow", "list_flows", "live_flows_by_backend"]

PROTOS = {6: "tcp", 17: "udp"}


@dataclass(frozen=True)
class Flow:
    proto: str
    client: str  # address:port
    vip: str  # address:port
    backend: str  # address:port ("-" when its backend id has no entry)
    backend_id: int
    nat_port: int | None  # the LB's source port towards the backend (NAT flows)
    age: float  # seconds since its last packet (refreshed at most once a second)
    state: str  # embryonic (handshake not seen complete) | established | closing

    def as_dict(self) -> dict:
        return asdict(self)


def _addr(words: np.ndarray, family: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = np.asarray(words, dtype="<u4").tobytes()
    return ipaddress.ip_address(raw[:4] if family == abi.AF_INET else raw)


def _ep(addr, port: int) -> str:
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def live_flows_by_backend(dp: DataPlane) -> dict[int, int]:
    """Backend id -> live flows (NAT and conntrack regions)."""
    return dp.live_flows_by_backend()


def list_flows(dp: DataPlane, limit: int = 0) -> list[Flow]:
    """The live flows, oldest activity last; at most `limit` (0: all)."""
    t, _, live, age, nat = dp.flow_liveness()
    idx = np.nonzero(live)[0]
    idx = idx[np.argsort(age[idx], kind="stable")]
    if limit:
        idx = idx[:limit]
    hz = dp.runtime().hz or 1000
    knobs = read_knobs(dp.maps[KNOBS_PIN]) if KNOBS_PIN in dp.maps else None
    port_min = knobs.nat_port_min if knobs else 0
    backends = dp.backend_entries()
    embryonic = getattr(abi, "FLOW_F_EMBRYONIC", 0)  # (data planes with flow admission)
    out = []
    for i in idx.tolist():
        e = t[i]
        fam = int(e["family"])
        be = backends.get(int(e["backend_id"]))
        dport = abi.ntohs(int(e["dport"]))
        if be is not None:
            bport = abi.ntohs(be.port) if be.port else dport
            backend = _ep(abi.unpack_addr(be.addr, be.family), bport)
        else:
            backend = "-"
        out.append(Flow(
            proto=PROTOS.get(int(e["proto"]), str(int(e["proto"]))),
            client=_ep(_addr(e["src"], fam), abi.ntohs(int(e["sport"]))),
            vip=_ep(_addr(e["dst"], fam), dport),
            backend=backend, backend_id=int(e["backend_id"]),
            nat_port=port_min + i // abi.FLOW_WAYS if i < nat else None,
            age=round(int(age[i]) / hz, 1),
            state="closing" if int(e["flags"]) & abi.FLOW_F_CLOSING else
            "embryonic" if int(e["flags"]) & embryonic else "established"))
    return out
