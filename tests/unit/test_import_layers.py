"""Imports run one way: no cycle between host's packages and modules, and the agent never imports the host.

A unit is a top-level module or package under ``host/`` (``host.campaign``, ``host.report``,
``host.figures``...). Every ``import``/``from ... import`` of another unit, at module level or inside a
function, is an edge. A cycle between units means two concerns that cannot be read or changed alone.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _unit(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _host_units() -> set[str]:
    return {f"host.{p.stem if p.is_file() else p.name}" for p in (ROOT / "host").iterdir()
            if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())}


def unit_graph() -> dict[str, set[str]]:
    """host unit -> the other host units it imports."""
    units = _host_units()
    graph: dict[str, set[str]] = defaultdict(set)
    for path in (ROOT / "host").rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for name in _imports(path):
            target = _unit(name)
            if target in units and target != _unit(module):
                graph[_unit(module)].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_find_cycle_finds_one_and_only_one_that_exists():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_between_host_units():
    graph = unit_graph()
    assert graph, "no imports found: the scan is broken"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_records_and_figures_are_leaves_below_the_features():
    graph = unit_graph()
    features = {"host.campaign", "host.commands", "host.compare", "host.lab", "host.repair", "host.report"}
    for leaf in ("host.records", "host.store", "host.figures", "host.files", "host.seeds", "host.artifacts"):
        assert not graph.get(leaf, set()) & features, f"{leaf} imports {sorted(graph[leaf] & features)}"


def test_the_device_agent_never_imports_the_host():
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "device_agent").rglob("*.py")
                 if any(_unit(name).split(".")[0] == "host" for name in _imports(p))]
    assert offenders == []


def _is_grpc(name: str) -> bool:
    top = name.split(".")[0]
    return top == "grpc" or top.startswith("grpc_")


def test_only_targets_import_grpc_on_the_host_side():
    """gRPC is host.targets' business (remote.py translates every RpcError): no other host module imports
    grpc, grpc_health and the like, or a device_agent module that does (the generated stubs, the server)."""
    grpc_agent_modules = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / "device_agent").rglob("*.py") if any(_is_grpc(name) for name in _imports(p))}
    assert "device_agent._gen.agent_pb2_grpc" in grpc_agent_modules, "the scan is broken"
    offenders = {}
    for path in (ROOT / "host").rglob("*.py"):
        if path.relative_to(ROOT / "host").parts[0] == "targets":
            continue
        found = sorted(name for name in _imports(path) if _is_grpc(name) or name in grpc_agent_modules)
        if found:
            offenders[str(path.relative_to(ROOT))] = found
    assert offenders == {}, "gRPC outside host/targets/ (route it through host.targets.remote)"
