"""Store URLs that could mean two things, and databases that are busy, broken or opened by many
at once: each gets a typed one-line error (never a password) or just works."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from domain import CurationService, StoreUnavailable, StoreURLError
from domain.errors import StoreBusy
from domain.store_errors import store_failure
from domain.store_url import parse_store_url, redact
from projections import Projections
from tests.support.cli import Cli
from tests.support.fakes import event_count

SPEC = '{"target": "t"}'


def create_job(sequent: Cli, url: str) -> tuple[int, str]:
    ran = sequent("job", "create", "--db", url, "--spec", SPEC)
    return ran.code, ran.error_line() if ran.code else ran.out


# -- URLs ---------------------------------------------------------------------------------------


def test_a_schema_name_postgresql_would_truncate_is_refused(pg_server: str) -> None:
    longest = "s" * 63
    assert parse_store_url(f"{pg_server}?schema={longest}").env["POSTGRES_SCHEMA"] == longest
    # These two differ only past byte 63: PostgreSQL would put both in one schema.
    for tail in ("a", "b"):
        with pytest.raises(StoreURLError, match="63"):
            parse_store_url(f"{pg_server}?schema={longest}{tail}")
    with pytest.raises(StoreURLError, match="database name"):
        parse_store_url(f"postgresql://u@h/{'d' * 64}")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@h/db?schema=a&schema=b",
        "postgresql://u@h/db?schema=a&schema=a",
        "postgresql://u@h/db?lock_timeout=1&lock_timeout=2",
        "sqlite:///x.db?lock_timeout=1&lock_timeout=1",
    ],
)
def test_a_repeated_query_parameter_is_refused(url: str) -> None:
    with pytest.raises(StoreURLError, match="more than once"):
        parse_store_url(url)


def test_a_query_on_a_sqlite_url_is_refused_not_made_part_of_the_file_name(
    sequent: Cli, tmp_path: Path
) -> None:
    code, line = create_job(sequent, f"sqlite:///{tmp_path}/jobs.db?mode=ro")
    assert code == 2
    assert "unknown query parameter(s) 'mode'" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("value", ["0", "-1", "1.5", "soon", "", "²", "3601"], ids=repr)
def test_a_lock_timeout_must_be_whole_seconds(value: str) -> None:
    for url in ("sqlite:///x.db", "postgresql://u@h/db"):
        with pytest.raises(StoreURLError, match="lock_timeout"):
            parse_store_url(f"{url}?lock_timeout={value}")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@[::1/db",
        "postgresql://u@::1]/db",
        "postgresql://u@[not-an-address]/db",
        "postgresql://u@[::1]:99999/db",
        "postgresql://u@h:0/db",
    ],
)
def test_a_malformed_host_is_a_store_url_error(sequent: Cli, url: str) -> None:
    code, line = create_job(sequent, url)
    assert code == 2
    assert "expected host, host:port or [IPv6]:port" in line


# Each password holds the markers XYZZY and PLUGH around the character that misleads a parser.
SECRET_SHAPES = [
    "postgresql://u:XYZZY/PLUGH@127.0.0.1:1/db",
    "postgresql://u:XYZZY#PLUGH@127.0.0.1:1/db",
    "postgresql://u:XYZZY?PLUGH@127.0.0.1:1/db",
    "postgresql://u:XYZZY@PLUGH@[::1/db",
    "postgresql://u:XYZZY:PLUGH@127.0.0.1:notaport/db",
    "postgresql://u:XYZZY%2FPLUGH@127.0.0.1:1/db?sslmode=disable",
    "postgresql://u:XYZZYPLUGH@127.0.0.1:1/db?schema=a&schema=b",
    "postgresql://127.0.0.1:1/db?password=XYZZYPLUGH",
    "postgresql://u:XYZZYPLUGH/db",
    "postgresql:u:XYZZYPLUGH@127.0.0.1/db",
    "sqlite://u:XYZZY/PLUGH@/jobs.db",
    "sqlite://u:XYZZYPLUGH@localhost/jobs.db",
    "mysql://u:XYZZY/PLUGH@h/db",
    "memory://u:XYZZYPLUGH@h",
]


@pytest.mark.parametrize("url", SECRET_SHAPES)
def test_a_password_is_never_echoed(sequent: Cli, url: str) -> None:
    code, line = create_job(sequent, url)
    assert code == 2
    assert "XYZZY" not in line
    assert "PLUGH" not in line
    assert "XYZZY" not in redact(url)
    assert "PLUGH" not in redact(url)


def test_an_unreachable_store_with_a_reserved_character_password_is_not_echoed(
    sequent: Cli,
) -> None:
    code, line = create_job(sequent, "postgresql://u:XYZZY%2FPLUGH@127.0.0.1:1/db")
    assert code == 1
    assert "is unavailable" in line
    assert "XYZZY" not in line


# -- database faults ----------------------------------------------------------------------------


def test_postgres_sessions_time_out_waiting(pg_url: str) -> None:
    names = ("lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout")
    svc = CurationService.open(pg_url)
    try:
        with svc.recorder.datastore.get_connection() as conn:  # type: ignore[attr-defined]
            shown = {name: conn.execute(f"SHOW {name}").fetchone()[name] for name in names}
    finally:
        svc.close()
    assert shown == {
        "lock_timeout": "5s",
        "statement_timeout": "1min",
        "idle_in_transaction_session_timeout": "5s",
    }


@contextmanager
def write_lock_held(url: str, pg_server: str) -> Iterator[None]:
    """Another client holding the lock a write needs: a PostgreSQL table lock, or a SQLite
    write transaction."""
    config = parse_store_url(url)
    if config.kind == "sqlite":
        conn = sqlite3.connect(config.env["SQLITE_DBNAME"], isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.close()
        return
    table = sql.Identifier(config.env["POSTGRES_SCHEMA"], "sequent_events")
    with psycopg.connect(pg_server) as admin:  # not autocommit: the lock lasts until rollback
        admin.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(table))
        yield
        admin.rollback()


def test_a_lock_held_by_another_client_is_store_busy_within_the_lock_timeout(
    sequent: Cli, shared_store_url: str, pg_server: str
) -> None:
    url = f"{shared_store_url}{'&' if '?' in shared_store_url else '?'}lock_timeout=1"
    svc = CurationService.open(url)
    svc.create_job({"target": "before"})
    with write_lock_held(url, pg_server):
        started = time.monotonic()
        code, line = create_job(sequent, url)
        waited = time.monotonic() - started
    assert code == 1
    assert "is busy" in line
    assert "retry later" in line
    assert waited < 4, f"one lock timeout (1 s), not the library's ten retries: {waited:.1f} s"
    assert event_count(svc) == 1, "nothing was written"
    assert create_job(sequent, url)[0] == 0, "retryable: it works once the lock is gone"
    svc.close()


def test_a_postgres_table_lock_fails_job_create_within_seconds_by_default(
    sequent: Cli, pg_url: str, pg_server: str
) -> None:
    CurationService.open(pg_url).close()
    with write_lock_held(pg_url, pg_server):
        started = time.monotonic()
        code, line = create_job(sequent, pg_url)
        waited = time.monotonic() - started
    assert (code, "is busy" in line) == (1, True)
    assert waited < 10, f"the default lock timeout is 5 s, waited {waited:.1f} s"


def test_a_driver_error_without_an_sqlite_code_is_store_unavailable() -> None:
    closed = sqlite3.connect(":memory:")
    closed.close()
    with pytest.raises(sqlite3.ProgrammingError) as caught:
        closed.execute("SELECT 1")
    failure = store_failure("sqlite:///x.db", caught.value)
    assert type(failure) is StoreUnavailable
    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorcode = sqlite3.SQLITE_BUSY  # as the driver sets it
    assert type(store_failure("sqlite:///x.db", busy)) is StoreBusy


def test_a_sqlite_file_that_is_not_a_database_is_store_unavailable(
    sequent: Cli, tmp_path: Path
) -> None:
    path = tmp_path / "jobs.db"
    junk = os.urandom(4096)
    path.write_bytes(junk)
    code, line = create_job(sequent, f"sqlite:///{path}")
    assert code == 1
    assert line.endswith("is unavailable: file is not a database")
    assert path.read_bytes() == junk, "left as it was"


@pytest.mark.parametrize("read_models", [False, True], ids=["store", "store+read_models"])
def test_concurrent_openers_of_a_fresh_schema_all_succeed(
    pg_server: str, read_models: bool
) -> None:
    """A deployment starting several workers (or consoles, or `sequent project`s) at once: every
    opener of the store, and of its read models, creates tables under one DDL lock."""
    openers, rounds = 8, 3
    schemas = [f"t_open_{uuid.uuid4().hex[:12]}" for _ in range(rounds)]
    failures: list[str] = []
    try:
        for schema in schemas:
            failures += open_all_at_once(f"{pg_server}?schema={schema}", openers, read_models)
    finally:
        with psycopg.connect(pg_server, autocommit=True) as admin:
            for schema in schemas:
                admin.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                )
    assert failures == []


def open_all_at_once(url: str, openers: int, read_models: bool) -> list[str]:
    start = threading.Barrier(openers)
    failures: list[str] = []

    def open_one() -> None:
        start.wait()
        try:
            svc = CurationService.open(url)
            if read_models:
                Projections(svc).close()
        except Exception as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
        else:
            svc.close()

    threads = [threading.Thread(target=open_one) for _ in range(openers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures
