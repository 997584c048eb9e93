"""The module structure: no import circle among worldline's modules, one registry of stages.

The import graph is read from the sources (``ast``): an edge for every import statement of a
module of ``pipeline``, ``jobs`` or ``schemas``, wherever it stands (function-local imports and
``TYPE_CHECKING`` blocks included: a circle that only closes at run time, or only for the type
checker, is still a circle). ``from package import name`` is an edge to ``package.name`` when
that is a module, else to ``package``. Importing ``a.b`` also runs ``a/__init__.py``; those
implicit edges to parent packages are not counted (every package's ``__init__`` would otherwise
close a circle with its own submodules).
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

from pipeline import registry

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "jobs", "schemas")


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def import_graph() -> nx.DiGraph:
    modules = _modules()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join([*parts, base] if base else parts)
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            else:
                continue
            graph.add_edges_from((name, t) for t in targets if t in modules and t != name)
    return graph


def test_the_graph_sees_the_imports_that_matter() -> None:
    graph = import_graph()
    assert graph.has_edge("pipeline.cli", "pipeline.receivers.cli")
    assert graph.has_edge("jobs.causal.worker", "pipeline.workers")
    assert graph.has_edge("pipeline.workers", "pipeline.registry")
    assert graph.has_edge("pipeline.cli", "pipeline.workers")  # a function-local import
    assert graph.number_of_edges() > 100


def test_no_import_circle() -> None:
    cycles = list(nx.simple_cycles(import_graph()))
    shown = sorted((" -> ".join([*c, c[0]]) for c in cycles), key=len)[:10]
    assert not cycles, f"{len(cycles)} import circles, e.g.:\n" + "\n".join(shown)


def test_a_circle_would_be_found() -> None:
    graph = import_graph()
    graph.add_edge("pipeline.registry", "jobs.causal.worker")
    assert list(nx.simple_cycles(graph))


def test_every_worker_stage_names_a_builder_that_exists() -> None:
    from pipeline.ingest.core import STAGES as INGEST

    assert set(INGEST) == {s.name for s in registry.STAGES if s.replicas}
    for name in registry.WORKERS:
        assert callable(registry.builder(name)), name
    assert registry.NAMES[0] == registry.RECEIVER
    assert registry.stage(registry.RECEIVER).argv == ("receive",)
    assert all(registry.stage(n).argv == ("worker", n) for n in registry.WORKERS)
