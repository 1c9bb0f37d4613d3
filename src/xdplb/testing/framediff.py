"""Human-readable difference of two Ethernet frames, layer by layer (for assertion messages)."""
from __future__ import annotations

from scapy.layers.l2 import Ether
from scapy.packet import NoPayload, Packet


def _layers(p: Packet) -> list[Packet]:
    out = []
    while p is not None and not isinstance(p, NoPayload):
        out.append(p)
        p = p.payload
    return out


def _short(v, limit: int = 48) -> str:
    s = v if isinstance(v, str) else repr(v)
    return s if len(s) <= limit else f"{s[:limit]}... ({len(s)} chars)"


def frame_diff(expected: bytes, got: bytes) -> str:
    """The fields that differ ("IP.chksum: expected 0x66c3, got 0x1234"), then the first
    differing byte offset; "" when the frames are equal."""
    if expected == got:
        return ""
    lines = []
    le, lg = _layers(Ether(expected)), _layers(Ether(got))
    for i, (a, b) in enumerate(zip(le, lg)):
        if type(a) is not type(b):
            lines.append(f"layer {i}: expected {a.__class__.__name__}, got {b.__class__.__name__}")
            break
        name = a.__class__.__name__
        for f in a.fields_desc:
            va, vb = a.getfieldval(f.name), b.getfieldval(f.name)
            if va != vb:
                lines.append(f"{name}.{f.name}: expected {_short(f.i2repr(a, va))}, "
                             f"got {_short(f.i2repr(b, vb))}")
    if len(le) != len(lg):
        lines.append("layers: expected " + "/".join(x.__class__.__name__ for x in le)
                     + ", got " + "/".join(x.__class__.__name__ for x in lg))
    if len(expected) != len(got):
        lines.append(f"length: expected {len(expected)}, got {len(got)}")
    first = next((i for i, (x, y) in enumerate(zip(expected, got)) if x != y),
                 min(len(expected), len(got)))
    lines.append(f"first differing byte at offset {first}: "
                 f"expected {expected[first:first + 8].hex()}, got {got[first:first + 8].hex()}")
    return "\n".join(lines)


def describe(frame: bytes) -> str:
    """One line: scapy's summary of a frame."""
    try:
        return Ether(frame).summary()
    except Exception as e:  # noqa: BLE001 (an undissectable frame still gets a message)
        return f"<{len(frame)} bytes, undissectable: {e}>"
