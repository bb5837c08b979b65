"""The import rules of ``projections/`` (its package docstring states them): no import cycle
between its modules, and of sequent's own packages it imports ``domain`` only — never
``integrations``, ``scripts`` or ``bootstrap``. Read from the source with ``ast``, every
``import`` counts, including those inside functions and ``if TYPE_CHECKING:`` blocks."""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

PACKAGE = "projections"
ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("bootstrap", "domain", "integrations", "projections", "scripts")
ALLOWED = {"domain", "projections"}


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (the package itself for __init__.py)."""
    found: dict[str, Path] = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imported(path: Path, known: Mapping[str, Path]) -> Iterator[str]:
    """The dotted names ``path`` imports, each a module where it names one of ``known``."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # ``from projections import rebuild`` names a module
                submodule = f"{node.module}.{alias.name}"
                yield submodule if submodule in known else node.module


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {i for i in imported(path, known) if i in known} for name, path in known.items()}


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None: a depth-first search that meets a module still on
    its own path."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph.get(node, ())):
            cycle = visit(target)
            if cycle is not None:
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle is not None:
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_passes_a_tree() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


@pytest.mark.parametrize("module", sorted(modules()))
def test_every_module_imports(module: str) -> None:
    importlib.import_module(module)


def test_no_module_of_projections_is_part_of_an_import_cycle() -> None:
    graph = import_graph()
    assert {"projections.runner", "projections.verify", "projections.rebuild"} <= graph.keys()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or ())


def test_projections_imports_domain_and_nothing_else_of_sequent() -> None:
    known = modules()
    crossing = {
        (name, target)
        for name, path in known.items()
        for target in imported(path, known)
        if target.split(".")[0] in FIRST_PARTY and target.split(".")[0] not in ALLOWED
    }
    assert crossing == set()
