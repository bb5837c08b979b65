"""The import rules each package's docstring states (DESIGN.md §6), checked on the source."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = frozenset({"bootstrap", "domain", "integrations", "projections", "scripts", "tests"})


class _RunTimeImports(ast.NodeVisitor):
    """Top-level packages a module imports when it runs (``if TYPE_CHECKING:`` blocks aside)."""

    def __init__(self) -> None:
        self.found: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for statement in node.orelse:
                self.visit(statement)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.update(alias.name.split(".")[0] for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            self.found.add(node.module.split(".")[0])


def imports(package: str) -> dict[str, set[str]]:
    """Each module of ``package`` (path relative to the checkout) and what it imports."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        visitor = _RunTimeImports()
        visitor.visit(ast.parse(path.read_text(encoding="utf-8")))
        found[path.relative_to(ROOT).as_posix()] = visitor.found - {"__future__"}
    return found


def broken(package: str, forbidden: frozenset[str]) -> dict[str, set[str]]:
    return {m: names & forbidden for m, names in imports(package).items() if names & forbidden}


def test_domain_imports_no_other_layer_and_only_its_libraries() -> None:
    allowed = {"domain", "eventsourcing", "psycopg", "psycopg_pool", "cedarpy"}
    allowed |= set(sys.stdlib_module_names)
    outside = {m: names - allowed for m, names in imports("domain").items() if names - allowed}
    assert outside == {}


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("domain", LAYERS - {"domain"}),
        ("integrations", frozenset({"bootstrap", "projections", "scripts", "tests"})),
    ],
)
def test_a_package_imports_no_layer_its_docstring_rules_out(
    package: str, forbidden: frozenset[str]
) -> None:
    assert broken(package, forbidden) == {}


def test_cedarpy_is_called_from_domain_cedar_only() -> None:
    users = {
        module
        for package in ("bootstrap", "domain", "integrations", "projections", "scripts")
        for module, names in imports(package).items()
        if "cedarpy" in names
    }
    assert users == {"domain/cedar.py"}
