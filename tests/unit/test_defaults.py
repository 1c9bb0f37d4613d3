"""One table of defaults (config.DEFAULTS): the data plane's load-time sizes and knobs, the
command line and bpf/maps.h's compiled-in values all agree with it."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from xdplb._bpf import abi
from xdplb._bpf.dataplane import Knobs, Sizes
from xdplb.config import DEFAULTS, LbSettings
from xdplb.lb import LoadBalancer, VipSpec

pytestmark = pytest.mark.unit

MAPS_H = Path(__file__).resolve().parents[2] / "bpf" / "maps.h"


def maps_h_max_entries() -> dict[str, int]:
    """name -> max_entries of every map in bpf/maps.h whose size is a plain expression."""
    text = MAPS_H.read_text()
    out = {}
    for body, name in re.findall(r"struct \{(.*?)\}\s*(\w+)\s+SEC\(\"\.maps\"\)", text, re.DOTALL):
        m = re.search(r"__uint\(max_entries,\s*([^;]+)\);", body)
        if not m:
            continue
        expr = m[1].replace("FLOW_WAYS", str(abi.FLOW_WAYS))
        if re.fullmatch(r"[0-9 ()+*<-]+", expr):
            out[name] = eval(expr)
    return out


def maps_h_knobs() -> dict[str, int]:
    m = re.search(r"const volatile struct lb_knobs knobs = \{(.*?)\};", MAPS_H.read_text(), re.DOTALL)
    assert m, "no knobs initializer in bpf/maps.h"
    return {k: int(v, 0) for k, v in re.findall(r"\.(\w+)\s*=\s*(0x[0-9a-fA-F]+|\d+)", m[1])}


def test_the_data_plane_sizes_come_from_the_table():
    s = Sizes()
    assert (s.max_vips, s.max_backends, s.conntrack) == \
        (DEFAULTS.max_vips, DEFAULTS.max_backends, DEFAULTS.conntrack_size)
    k = Knobs()
    assert (k.hash_seed, (k.nat_port_min, k.nat_port_max), k.frag_drop) == \
        (DEFAULTS.hash_seed, DEFAULTS.nat_ports, DEFAULTS.frag_policy == "drop")
    assert (k.tcp_timeout_s, k.closing_timeout_s, k.udp_timeout_s, k.refresh_s) == \
        (DEFAULTS.tcp_timeout_s, DEFAULTS.closing_timeout_s, DEFAULTS.udp_timeout_s,
         DEFAULTS.refresh_s)
    assert (k.syn_challenge, k.syn_challenge_rate, k.syn_challenge_hold_s, k.verified_timeout_s,
            k.rst_rate) == (DEFAULTS.syn_challenge, DEFAULTS.syn_challenge_rate,
                            DEFAULTS.syn_challenge_hold_s, DEFAULTS.verified_timeout_s,
                            DEFAULTS.rst_rate)
    assert s.verified == DEFAULTS.verified_size
    assert (k.gue_port, k.pmtu_rate) == (DEFAULTS.gue_port, DEFAULTS.pmtu_rate)
    assert LbSettings(interface="eth0").gue_port == DEFAULTS.gue_port


def test_the_config_and_the_control_plane_use_the_table():
    lb = LbSettings(interface="eth0")
    assert (lb.hash_seed, lb.nat_ports, lb.conntrack_size, lb.max_vips, lb.max_backends,
            lb.frag_policy) == (DEFAULTS.hash_seed, DEFAULTS.nat_ports, DEFAULTS.conntrack_size,
                                DEFAULTS.max_vips, DEFAULTS.max_backends, DEFAULTS.frag_policy)
    assert (lb.syn_challenge, lb.syn_challenge_rate, lb.verified_size, lb.verified_timeout,
            lb.rst_rate) == (DEFAULTS.syn_challenge, DEFAULTS.syn_challenge_rate,
                             DEFAULTS.verified_size, DEFAULTS.verified_timeout_s,
                             DEFAULTS.rst_rate)
    assert VipSpec.__dataclass_fields__["ring_size"].default == DEFAULTS.ring_size
    lbm = LoadBalancer.__init__.__defaults__
    assert lbm == (DEFAULTS.max_vips, DEFAULTS.max_backends)


def test_maps_h_compiles_in_the_table():
    """The object's own sizes and knobs (what a bare `bpftool prog load` gets) are the
    defaults too, so nothing differs between a loaded and a compiled-in instance."""
    got = maps_h_max_entries()
    want = Sizes().as_max_entries(Knobs())
    assert {n: got.get(n) for n in want} == want
    inner = re.search(r"struct ring_inner \{.*?max_entries,\s*(\d+)", MAPS_H.read_text(), re.DOTALL)
    assert inner and int(inner[1]) == DEFAULTS.ring_size  # the template of a VIP's table
    knobs = maps_h_knobs()
    assert knobs["hash_seed"] == DEFAULTS.hash_seed
    assert (knobs["nat_port_min"], knobs["nat_port_max"]) == DEFAULTS.nat_ports
    assert knobs["frag_drop"] == int(DEFAULTS.frag_policy == "drop")
    assert knobs["ct_sets"] == Knobs().ct_sets_for(DEFAULTS.conntrack_size)
    assert knobs["gue_port"] == abi.htons(DEFAULTS.gue_port)  # stored in network order
    assert knobs["pmtu_rate"] == DEFAULTS.pmtu_rate


def test_the_maps_h_reader_reads():
    got = maps_h_max_entries()
    assert {"vips", "backends", "flows", "be_stats"} <= set(got), got


def _doc_default(key: str) -> str:
    text = (MAPS_H.parents[1] / "docs" / "config.md").read_text()
    m = re.search(rf"^\| `{key}` \| \w+ \| ([^|]+) \|", text, re.MULTILINE)
    assert m, f"docs/config.md has no row for {key}"
    return m[1].strip().strip("`").strip('"')


def test_the_config_reference_states_the_table():
    """docs/config.md's default column says what DEFAULTS holds."""
    assert int(_doc_default("hash_seed"), 0) == DEFAULTS.hash_seed
    assert _doc_default("nat_ports") == "{}-{}".format(*DEFAULTS.nat_ports)
    for key in ("conntrack_size", "max_vips", "max_backends", "ring_size"):
        assert int(_doc_default(key)) == getattr(DEFAULTS, key), key
    assert _doc_default("frag_policy") == DEFAULTS.frag_policy
    for key in ("syn_timeout", "tcp_timeout", "closing_timeout", "udp_timeout"):
        assert float(_doc_default(key)) == getattr(DEFAULTS, f"{key}_s"), key
    assert int(_doc_default("nonsyn_budget")) == DEFAULTS.nonsyn_budget
    assert _doc_default("syn_challenge") == DEFAULTS.syn_challenge
    for key in ("syn_challenge_rate", "verified_size", "rst_rate"):
        assert int(_doc_default(key)) == getattr(DEFAULTS, key), key
    assert float(_doc_default("verified_timeout")) == DEFAULTS.verified_timeout_s
    assert int(_doc_default("gue_port")) == DEFAULTS.gue_port


def test_the_model_defaults_to_the_table():
    from xdplb._bpf.fake import FakeDataPlane
    from xdplb.model import Model

    m = Model(FakeDataPlane(), hz=1000)
    assert (m.hash_seed, (m.nat_port_min, m.nat_port_max), m.frag_drop) == \
        (DEFAULTS.hash_seed, DEFAULTS.nat_ports, DEFAULTS.frag_policy == "drop")
    assert (m.syn_challenge, m.syn_challenge_rate, m.rst_rate) == \
        (abi.CHALLENGE_MODES[DEFAULTS.syn_challenge], DEFAULTS.syn_challenge_rate,
         DEFAULTS.rst_rate)
    assert (m.tcp_timeout, m.udp_timeout, m.refresh) == \
        (int(DEFAULTS.tcp_timeout_s * 1000), int(DEFAULTS.udp_timeout_s * 1000),
         int(DEFAULTS.refresh_s * 1000))
