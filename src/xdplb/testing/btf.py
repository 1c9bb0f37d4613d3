"""Just enough ELF and BTF reading to check the ctypes mirrors against a BPF object.

No bpftool, no pyelftools: ELF64 little-endian section headers and the BTF type
section (include/uapi/linux/btf.h) are small, fixed formats.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

# BTF kinds (BTF_KIND_*)
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
_MODIFIERS = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)


def elf_sections(path: str | Path) -> dict[str, bytes]:
    """Section name -> contents of an ELF64 little-endian object (what clang -target bpf makes)."""
    raw = Path(path).read_bytes()
    if raw[:4] != b"\x7fELF" or raw[4] != 2 or raw[5] != 1:
        raise ValueError(f"{path}: not an ELF64 little-endian object")
    shoff, = struct.unpack_from("<Q", raw, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", raw, 0x3A)
    heads = [struct.unpack_from("<IIQQQQIIQQ", raw, shoff + i * shentsize) for i in range(shnum)]
    names = heads[shstrndx]
    strtab = raw[names[4]:names[4] + names[5]]
    out = {}
    for h in heads:
        name = strtab[h[0]:strtab.index(b"\0", h[0])].decode()
        sh_type, off, size = h[1], h[4], h[5]
        out[name] = b"" if sh_type == 8 else raw[off:off + size]  # SHT_NOBITS (.bss): no bytes
    return out


@dataclass
class BtfMember:
    name: str
    type_id: int
    bits_offset: int
    bitfield_size: int = 0


@dataclass
class BtfType:
    id: int
    kind: int
    name: str
    size: int = 0  # STRUCT/UNION/INT/ENUM/DATASEC/FLOAT
    type_id: int = 0  # PTR/TYPEDEF/modifiers/VAR/FUNC; ARRAY: element type
    nelems: int = 0  # ARRAY
    members: list[BtfMember] = field(default_factory=list)  # STRUCT/UNION
    vars: list[tuple[int, int, int]] = field(default_factory=list)  # DATASEC: (type, off, size)


class Btf:
    """The types of a .BTF section, by id (id 0 is void)."""

    def __init__(self, data: bytes):
        magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = \
            struct.unpack_from("<HBBIIIII", data, 0)
        if magic != 0xEB9F:
            raise ValueError("not a BTF section (bad magic)")
        types = data[hdr_len + type_off:hdr_len + type_off + type_len]
        self._strs = data[hdr_len + str_off:hdr_len + str_off + str_len]
        self.types: dict[int, BtfType] = {}
        pos, tid = 0, 1
        while pos < len(types):
            name_off, info, size_or_type = struct.unpack_from("<III", types, pos)
            pos += 12
            kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
            t = BtfType(tid, kind, self._str(name_off))
            if kind in (INT, STRUCT, UNION, ENUM, ENUM64, DATASEC, FLOAT):
                t.size = size_or_type
            else:
                t.type_id = size_or_type
            if kind == INT:
                pos += 4
            elif kind == ARRAY:
                t.type_id, _index, t.nelems = struct.unpack_from("<III", types, pos)
                pos += 12
            elif kind in (STRUCT, UNION):
                for _ in range(vlen):
                    mname, mtype, moff = struct.unpack_from("<III", types, pos)
                    pos += 12
                    bits = (moff >> 24) if kflag else 0
                    off = (moff & 0xFFFFFF) if kflag else moff
                    t.members.append(BtfMember(self._str(mname), mtype, off, bits))
            elif kind == ENUM:
                pos += 8 * vlen
            elif kind == ENUM64:
                pos += 12 * vlen
            elif kind == FUNC_PROTO:
                pos += 8 * vlen
            elif kind == VAR:
                pos += 4
            elif kind == DATASEC:
                for _ in range(vlen):
                    t.vars.append(struct.unpack_from("<III", types, pos))
                    pos += 12
            elif kind == DECL_TAG:
                pos += 4
            self.types[tid] = t
            tid += 1

    @classmethod
    def from_object(cls, path: str | Path) -> Btf:
        sections = elf_sections(path)
        if ".BTF" not in sections:
            raise ValueError(f"{path} has no .BTF section (built without -g?)")
        return cls(sections[".BTF"])

    def _str(self, off: int) -> str:
        return self._strs[off:self._strs.index(b"\0", off)].decode()

    def named(self, kind: int, name: str) -> BtfType | None:
        for t in self.types.values():
            if t.kind == kind and t.name == name:
                return t
        return None

    def resolve(self, type_id: int) -> BtfType:
        """Skip typedefs and qualifiers."""
        t = self.types[type_id]
        while t.kind in _MODIFIERS:
            t = self.types[t.type_id]
        return t

    def sizeof(self, type_id: int) -> int:
        t = self.resolve(type_id)
        if t.kind == ARRAY:
            return t.nelems * self.sizeof(t.type_id)
        if t.kind == PTR:
            return 8
        return t.size

    def datasec_vars(self, section: str) -> list[tuple[str, int, int]]:
        """(variable name, offset, size) of a DATASEC such as '.rodata' or '.bss'."""
        sec = self.named(DATASEC, section)
        if sec is None:
            return []
        return [(self.types[tid].name, off, size) for tid, off, size in sec.vars]
