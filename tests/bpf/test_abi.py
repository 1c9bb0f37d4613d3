"""The ctypes mirrors (xdplb._bpf.abi) against the object's BTF and against abi.h:
field names, offsets and sizes, the globals' sections, knob defaults, constants."""
from __future__ import annotations

import ctypes as C
import re
from pathlib import Path

import pytest

from xdplb._bpf import abi
from xdplb._bpf.dataplane import Knobs
from xdplb.testing import btf as B

pytestmark = pytest.mark.bpf

ABI_H = Path(__file__).resolve().parents[2] / "bpf" / "abi.h"

# Mirrors whose struct the object's BTF does not carry: name -> why (strict xfail).
NOT_IN_BTF: dict[str, str] = {}


@pytest.fixture(scope="module")
def btf(bpf_object_path) -> B.Btf:
    return B.Btf.from_object(bpf_object_path)


def _mirror_params():
    return [pytest.param(name, cls, id=name,
                         marks=[pytest.mark.xfail(reason=NOT_IN_BTF[name], strict=True)]
                         if name in NOT_IN_BTF else [])
            for name, cls in abi.MIRRORS.items()]


@pytest.mark.parametrize(("name", "mirror"), _mirror_params())
def test_mirror_matches_btf(btf, name, mirror):
    st = btf.named(B.STRUCT, name)
    assert st is not None, f"struct {name} is not in the object's BTF"
    want = [(m.name, m.bits_offset // 8, btf.sizeof(m.type_id)) for m in st.members]
    got = [(f, getattr(mirror, f).offset, getattr(mirror, f).size)
           for f, *_ in mirror._fields_]
    assert got == want, (f"{mirror.__name__} vs struct {name}: (field, offset, size)\n"
                         f"  BTF:    {want}\n  ctypes: {got}")
    assert C.sizeof(mirror) == st.size
    for m, (f, ftype, *_) in zip(st.members, mirror._fields_):
        assert m.bitfield_size == 0, f"{name}.{m.name} is a bitfield"
        t = btf.resolve(m.type_id)
        if t.kind == B.ARRAY:  # element types may differ (__u32 addr[4] is c_uint8 * 16)
            assert issubclass(ftype, C.Array), f"{name}.{f}: array in C only"
        else:
            assert not issubclass(ftype, C.Array), f"{name}.{f}: array in ctypes only"


def _only_var(btf, section, var, struct, mirror):
    vars_ = btf.datasec_vars(section)
    assert vars_ == [(var, 0, C.sizeof(mirror))], f"{section} holds {vars_}"
    v = btf.named(B.VAR, var)
    assert btf.resolve(v.type_id).name == struct


def test_rodata_holds_only_knobs(btf):
    _only_var(btf, ".rodata", "knobs", "lb_knobs", abi.LbKnobs)


def test_bss_holds_only_runtime(btf):
    _only_var(btf, ".bss", "runtime", "lb_runtime", abi.LbRuntime)


def test_no_other_global_data(btf):
    secs = {t.name for t in btf.types.values() if t.kind == B.DATASEC}
    assert secs <= {".rodata", ".bss", ".maps", "license"}, secs
    assert btf.datasec_vars(".data") == []


def test_knob_defaults_match_the_object(bpf_object_path):
    rodata = B.elf_sections(bpf_object_path)[".rodata"]
    got = abi.LbKnobs.from_buffer_copy(rodata[:C.sizeof(abi.LbKnobs)])
    want = abi.LbKnobs.from_buffer_copy(Knobs().pack())
    def value(k, f):
        v = getattr(k, f)
        return bytes(v) if isinstance(v, C.Array) else v

    diff = {f: (value(want, f), value(got, f)) for f, *_ in abi.LbKnobs._fields_
            if f != "pad" and value(want, f) != value(got, f)}
    assert not diff, f"Knobs() defaults differ from the object's (python, C): {diff}"


def _max_entries(btf, map_name):
    sec = btf.named(B.DATASEC, ".maps")
    for tid, _off, _size in sec.vars:
        var = btf.types[tid]
        if var.name == map_name:
            st = btf.resolve(var.type_id)
            m = next(m for m in st.members if m.name == "max_entries")
            return btf.resolve(btf.resolve(m.type_id).type_id).nelems
    raise KeyError(map_name)


def test_stats_map_has_one_slot_per_stat(btf):
    assert _max_entries(btf, "stats") == abi.ST_MAX == len(abi.Stat)


def test_map_key_and_value_sizes(dataplane):
    checked = 0
    for name, m in dataplane.maps.items():
        if m.key_type is not None:
            assert m.key_size == C.sizeof(m.key_type), f"{name} key"
            assert m.value_size == C.sizeof(m.value_type), f"{name} value"
            checked += 1
    assert checked >= 8


def _abi_h() -> str:
    if not ABI_H.exists():
        pytest.skip(f"{ABI_H} not found (installed package without sources)")
    return ABI_H.read_text()


def test_stat_enum_matches_abi_h():
    body = re.search(r"enum xdplb_stat \{(.*?)\};", _abi_h(), re.DOTALL).group(1)
    names = re.findall(r"^\s*ST_(\w+?)\s*(?:=\s*\d+)?,", body, re.MULTILINE)
    assert names[-1] == "_MAX"
    assert names[:-1] == [s.name for s in abi.Stat]
    assert [s.value for s in abi.Stat] == list(range(len(abi.Stat)))


_RENAMED = {"XDPLB_AF_INET": "AF_INET", "XDPLB_AF_INET6": "AF_INET6",
            "XDPLB_NO_BACKEND": "NO_BACKEND", "XDPLB_MODE_NAT": "MODE_NAT",
            "XDPLB_MODE_DSR": "MODE_DSR", "XDPLB_MODE_IPIP": "MODE_IPIP",
            "XDPLB_MODE_GUE": "MODE_GUE"}


def test_constants_match_abi_h():
    text = _abi_h()
    consts = {}
    for name, expr in re.findall(r"^#define[ \t]+(\w+)[ \t]+([^/\n]+)", text, re.MULTILINE):
        expr = re.sub(r"(?<=[0-9a-fA-F])u\b", "", expr.strip())
        if re.fullmatch(r"[0-9a-fA-Fx()<< ]+", expr):
            consts[name] = eval(expr)  # digits, parentheses and shifts only
    for name, value in re.findall(r"^\s*(XDPLB_MODE_\w+)\s*=\s*(\d+)", text, re.MULTILINE):
        consts[name] = int(value)
    assert len(consts) >= 10, consts
    for name, value in consts.items():
        py = _RENAMED.get(name, name)
        assert getattr(abi, py, None) == value, f"{name} = {value} in abi.h, abi.{py} = " \
                                                f"{getattr(abi, py, None)}"
