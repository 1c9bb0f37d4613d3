"""The kernel boundary: the only package that talks to libbpf and the kernel."""
from __future__ import annotations

from pathlib import Path

_PKG_DATA = Path(__file__).resolve().parent.parent / "_data"
_REPO_BUILD = Path(__file__).resolve().parents[3] / "build" / "bpf"


def object_path(name: str = "xdplb") -> Path:
    """Path of a compiled BPF object: 'xdplb' (the data plane) or 'stub' (XDP_PASS)."""
    # a source checkout's fresh build first, then the copy shipped in the package
    for base in (_REPO_BUILD, _PKG_DATA):
        p = base / f"{name}.bpf.o"
        if p.exists():
            return p
    raise FileNotFoundError(
        f"{name}.bpf.o not found in {_PKG_DATA} or {_REPO_BUILD}: run `make build`"
    )
