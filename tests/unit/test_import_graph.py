"""The shape of src/xdplb: no import cycles, and the dependency rule of docs/architecture.md.

The graph is read from the source with `ast` (every import, also those inside functions and
under TYPE_CHECKING: a lazy import is still a dependency), so it holds without importing
anything.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SRC = Path(__file__).resolve().parents[2] / "src"
PKG = "xdplb"

# Leaf modules: pure cores that import nothing of the rest of xdplb except each other.
# The reference model still reads the ABI's struct layouts (`_bpf.abi`, plain ctypes: no
# libbpf, no kernel) and, inside a few test helpers, the data plane it mirrors; those
# are the named exceptions until the model reads a snapshot through the kernel contract.
LEAVES = {"xdplb.config", "xdplb.ring", "xdplb.model"}
LEAF_ALLOWED = LEAVES | {"xdplb.errors"}
LEAF_EXCEPTIONS = {
    "xdplb.model": {"xdplb._bpf.abi", "xdplb._bpf.dataplane", "xdplb._bpf.fake", "xdplb.lb"},
}


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / PKG).rglob("*.py"))}


def _resolve(mod: str, is_pkg: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def import_graph() -> dict[str, set[str]]:
    """module -> the xdplb modules it imports (a name imported from a package counts as
    its submodule when there is one)."""
    mods = modules()
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, is_pkg, node.level, node.module)
                subs = [f"{target}.{a.name}" for a in node.names]
                targets = [s for s in subs if s in mods]
                if len(targets) < len(subs):  # some names are the module's own
                    targets.append(target)
            else:
                continue
            for t in targets:
                while t and t not in mods:  # `import xdplb.x.y.Name` -> the module
                    t = t.rpartition(".")[0]
                if t and t != mod and (t == PKG or t.startswith(PKG + ".")):
                    deps.add(t)
        graph[mod] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (c := visit(d)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_the_graph_is_read():
    g = import_graph()
    assert "xdplb.config" in g and "xdplb.errors" in g["xdplb.config"]


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_nothing_imports_the_command_line():
    bad = sorted((m, d) for m, deps in import_graph().items() if not _in(m, "xdplb.cli")
                 for d in deps if _in(d, "xdplb.cli"))
    assert not bad, f"the command line is the top: nothing imports it, but {bad}"


def test_the_pure_cores_import_only_each_other():
    g = import_graph()
    for leaf in sorted(LEAVES):
        extra = g[leaf] - LEAF_ALLOWED - LEAF_EXCEPTIONS.get(leaf, set())
        assert not extra, f"{leaf} must not import {sorted(extra)}"


def test_the_kernel_boundary_imports_only_defaults_and_errors():
    """_bpf sits under the control plane: of the rest it needs only the defaults table
    (config) and the error types."""
    for mod, deps in sorted(import_graph().items()):
        if _in(mod, "xdplb._bpf"):
            extra = {d for d in deps if not _in(d, "xdplb._bpf")} - {"xdplb.config",
                                                                    "xdplb.errors"}
            assert not extra, f"{mod} imports {sorted(extra)}"


def test_the_planner_never_imports_the_daemon():
    for mod in ("xdplb.plan", "xdplb.spec", "xdplb.lb"):
        bad = {d for d in import_graph()[mod] if _in(d, "xdplb.daemon") or _in(d, "xdplb.cli")}
        assert not bad, f"{mod} imports {sorted(bad)}"


def test_only_the_kernel_boundary_uses_libbpf_private_names():
    """libbpf.py's `_names` (ctypes prototypes, raw structs) stay inside it."""
    import re

    for mod, path in modules().items():
        if mod == "xdplb._bpf.libbpf":
            continue
        hits = re.findall(r"libbpf\._\w+|\b_lib\.\w+", path.read_text())
        assert not hits, f"{mod} uses {hits}"


def test_the_control_plane_does_not_probe_the_data_plane():
    """The kernel contract is one Protocol both data planes implement: nobody asks what
    a data plane can do (getattr/hasattr on it)."""
    import re

    for mod, path in modules().items():
        hits = re.findall(r"(?:getattr|hasattr)\((?:self\.)?dp\b", path.read_text())
        assert not hits, f"{mod} probes the data plane: {hits}"


def test_the_daemon_knows_nothing_of_argparse():
    for mod, path in modules().items():
        if _in(mod, "xdplb.daemon"):
            assert "argparse" not in path.read_text(), f"{mod} uses argparse"


def _in(mod: str, pkg: str) -> bool:
    return mod == pkg or mod.startswith(pkg + ".")
