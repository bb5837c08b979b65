"""Store fixtures: every test gets its own SQLite file or PostgreSQL schema, dropped afterwards.

PostgreSQL is the server on 127.0.0.1:5432 (override with SEQUENT_TEST_PG). When it cannot be
reached, its tests skip on a developer's machine and *fail* when CI=true. Headless Chromium
(``chromium``, tests/support/browser.py) is the same: installed from Debian's package when
missing, and when it cannot be had, skipped on a developer's machine, failed under CI=true.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import psycopg
import pytest
from psycopg import sql

from bootstrap import Settings, open_service
from domain import CurationService
from integrations.session_service import SessionService
from scripts import cli
from tests.support.browser import CHROMIUM, ensure_chromium
from tests.support.cli import Cli, Ran

PG_URL = os.environ.get("SEQUENT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
# Tests run in temporary folders; the guest module is built once for all of them (and for the
# processes they start) in the checkout's state folder.
CHECKOUT = Path(__file__).resolve().parents[1]
os.environ.setdefault("SEQUENT_MODULE_DIR", str(CHECKOUT / ".sequent" / "modules"))
STORES = ("memory", "sqlite", "postgres")


def _required_or_skip(what: str, problem: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} under CI=true: {problem}")
    pytest.skip(f"{what} (set CI=true to make this fail): {problem}")


def _pg_reachable() -> str | None:
    try:
        with psycopg.connect(PG_URL, connect_timeout=3):
            return None
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0]


@pytest.fixture(scope="session")
def pg_server() -> str:
    problem = _pg_reachable()
    if problem is None:
        return PG_URL
    _required_or_skip(f"PostgreSQL at {PG_URL} is unreachable", problem)


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of Debian's headless Chromium, installed (once, for every test worker of this
    run, under a lock) when missing."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
    problem = ensure_chromium(Path(tempfile.gettempdir()) / f"sequent-chromium-{run}")
    if problem is not None:
        _required_or_skip("headless Chromium is unavailable", problem)
    return str(CHROMIUM)


@pytest.fixture
def pg_url(pg_server: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh schema in the test database, dropped with everything in it afterwards."""
    request.node.user_properties.append(("store", "postgres"))  # counted in the summary
    schema = f"t_{uuid.uuid4().hex[:16]}"
    yield f"{pg_server}?schema={schema}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def url_for(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Returns a function giving a fresh store URL for a store kind."""

    def make(kind: str) -> str:
        if kind == "memory":
            return "memory://"
        if kind == "sqlite":
            return f"sqlite:///{tmp_path / f'{uuid.uuid4().hex[:8]}.db'}"
        if kind == "postgres":
            return str(request.getfixturevalue("pg_url"))
        raise ValueError(kind)

    return make


@pytest.fixture(params=STORES)
def store_url(request: pytest.FixtureRequest, url_for: Callable[[str], str]) -> str:
    if request.param == "postgres":
        request.applymarker(pytest.mark.postgres)
    return url_for(request.param)


@pytest.fixture(params=["sqlite", "postgres"])
def shared_store_url(request: pytest.FixtureRequest, url_for: Callable[[str], str]) -> str:
    """Stores that several service instances (threads, processes) can share."""
    return url_for(request.param)


@pytest.fixture
def sessions() -> Iterator[SessionService]:
    """A session service on loopback, seeded, no faults injected."""
    with SessionService(seed=1) as service:
        yield service


@pytest.fixture
def svc(store_url: str) -> Iterator[CurationService]:
    """The service as every entry point opens it: through the composition root."""
    service = open_service(Settings(store_url=store_url))
    yield service
    service.close()


@pytest.fixture
def sequent(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Runs ``sequent ARGV...`` in process (scripts.cli.main) and captures what it printed."""

    def run(*argv: str) -> Ran:
        code = cli.main(list(argv))
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return run


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Says how many tests really ran against PostgreSQL, so a run that skipped them shows."""
    outcomes: Counter[str] = Counter()
    for reports in terminalreporter.stats.values():
        for report in reports:
            props = dict(getattr(report, "user_properties", ()))
            if props.get("store") == "postgres" and getattr(report, "when", "") == "call":
                outcomes[report.outcome] += 1
    counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items())) or "none ran"
    terminalreporter.write_line(f"PostgreSQL tests ({PG_URL}): {counts}")
