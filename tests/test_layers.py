"""The import rules each package's docstring states, checked on the source.

Every ``import`` in a package's files (at any depth, type-checking-only ones included) must name
a first-party package that the package may import; and each package's ``__init__`` docstring
says so in a sentence starting "May import", naming exactly those packages.
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = (
    "bootstrap", "console", "domain", "integrations", "projections", "scripts", "simulation",
    "tests",
)  # fmt: skip

# package -> the first-party packages its code may import (itself always allowed)
MAY_IMPORT: dict[str, frozenset[str]] = {
    "domain": frozenset(),
    "integrations": frozenset({"domain"}),
    "projections": frozenset({"domain"}),
    "console": frozenset({"domain", "projections"}),
    "bootstrap": frozenset({"domain", "integrations", "projections", "console"}),
    "scripts": frozenset(
        {"bootstrap", "console", "domain", "integrations", "projections", "simulation"}
    ),
    "simulation": frozenset({"domain", "integrations"}),
}


def imported_packages(path: Path, *, runtime_only: bool = False) -> Iterator[tuple[int, str]]:
    """(line, top-level package) of every import in the file; with ``runtime_only``, those
    under ``if TYPE_CHECKING:`` left out."""
    tree = ast.parse(path.read_text(), str(path))
    skipped: set[int] = set()
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
                skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


def violations(package: str) -> list[str]:
    allowed = MAY_IMPORT[package] | {package}
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, name in imported_packages(path):
            if name in FIRST_PARTY and name not in allowed:
                found.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    return found


def stated_rule(package: str) -> frozenset[str]:
    """The first-party packages the "May import" sentence of the docstring names."""
    docstring = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text())) or ""
    match = re.search(r"May import(.*?)(?:[.;]\s|[.;]$)", docstring, re.DOTALL)
    assert match, f"{package}/__init__.py's docstring has no 'May import …' sentence"
    named = set(re.findall(r"``(\w+)``", match.group(1)))
    return frozenset(named & set(FIRST_PARTY))


def modules() -> dict[str, Path]:
    """Every module of sequent's packages by dotted name (the package itself for __init__)."""
    found: dict[str, Path] = {}
    for path in sorted(p for package in MAY_IMPORT for p in (ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imported_modules(path: Path, known: Mapping[str, Path]) -> Iterator[str]:
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
    return {
        name: {i for i in imported_modules(path, known) if i in known}
        for name, path in known.items()
    }


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


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_a_package_imports_only_what_its_rule_allows(package: str) -> None:
    assert violations(package) == []


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_each_package_docstring_states_its_rule(package: str) -> None:
    assert stated_rule(package) == MAY_IMPORT[package]


def test_the_check_catches_a_forbidden_import(tmp_path: Path) -> None:
    """The walk sees imports inside functions and TYPE_CHECKING blocks too."""
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from projections.runner import Projections\n"
        "def f() -> None:\n    import integrations.runtime\n"
    )
    assert [name for _, name in imported_packages(source)] == [
        "typing",
        "projections",
        "integrations",
    ]


def test_domain_imports_only_the_libraries_it_names() -> None:
    allowed = {"domain", "eventsourcing", "psycopg", "psycopg_pool", "cedarpy", "__future__"}
    allowed |= set(sys.stdlib_module_names)
    outside = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted((ROOT / "domain").rglob("*.py"))
        for line, name in imported_packages(path)
        if name not in allowed
    ]
    assert outside == []


def test_cedarpy_is_called_from_domain_cedar_only() -> None:
    users = {
        path.relative_to(ROOT).as_posix()
        for package in MAY_IMPORT
        for path in (ROOT / package).rglob("*.py")
        if any(name == "cedarpy" for _, name in imported_packages(path, runtime_only=True))
    }
    assert users == {"domain/cedar.py"}


def test_the_cycle_finder_finds_a_cycle_and_passes_a_tree() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_module_is_part_of_an_import_cycle() -> None:
    graph = import_graph()
    assert {"projections.runner", "projections.verify", "projections.rebuild"} <= graph.keys()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or ())


@pytest.mark.parametrize("module", sorted(m for m in modules() if not m.endswith("__main__")))
def test_every_module_imports(module: str) -> None:
    importlib.import_module(module)


def test_no_test_module_imports_conftest_or_another_test_module() -> None:
    """Shared helpers live in tests/support; fixtures in conftest, which pytest loads itself."""
    crossing = [
        f"{path.name}:{node.lineno} imports {node.module}"
        for path in sorted((ROOT / "tests").glob("test_*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom)
        and node.module
        and (node.module.startswith("tests.test_") or node.module == "tests.conftest")
    ]
    assert crossing == []
