"""domain.batch_reads: the library's recorders with batch reads pass the library's own recorder
test cases on SQLite and PostgreSQL, read many aggregates in one query each, and let a batch of
completions read its jobs and invocations in a number of queries that does not grow with it."""

from __future__ import annotations

import tempfile
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteCursor, SQLiteDatastore
from eventsourcing.tests.persistence import (
    AggregateRecorderTestCase,
    ApplicationRecorderTestCase,
)
from psycopg import sql

from bootstrap import Settings, open_service
from domain import Applied, CurationService
from domain.batch_reads import (
    BatchReads,
    PostgresBatchAggregateRecorder,
    PostgresBatchApplicationRecorder,
    SQLiteBatchAggregateRecorder,
    SQLiteBatchApplicationRecorder,
)

# -- the library's own test cases, on our subclasses -------------------------------------------


@contextmanager
def library_threads_joined() -> Iterator[None]:
    """Waits, after the block, for the threads it started: the library's concurrent test
    cases stop their reader threads without joining them, and a reader still inside a query
    when the datastore closes crashes the interpreter (seen: a segfault in sqlite3)."""
    before = set(threading.enumerate())
    yield
    for thread in set(threading.enumerate()) - before:
        if not thread.daemon:  # a connection pool's workers are daemons, alive until it closes
            thread.join(timeout=30)


class SQLiteFile:
    """A fresh SQLite file per test (a file, so the library's concurrent tests can share it)."""

    datastore: SQLiteDatastore

    @pytest.fixture(autouse=True)
    def _sqlite_file(self) -> Iterator[None]:
        with tempfile.TemporaryDirectory() as folder:
            self.datastore = SQLiteDatastore(str(Path(folder) / "recorders.db"))
            with library_threads_joined():
                yield
            self.datastore.close()


class PostgresSchema:
    """A fresh schema per test, dropped afterwards (fails, not skips, under CI=true)."""

    datastore: PostgresDatastore

    @pytest.fixture(autouse=True)
    def _postgres_schema(self, pg_server: str, request: pytest.FixtureRequest) -> Iterator[None]:
        request.node.user_properties.append(("store", "postgres"))
        schema = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        info = psycopg.conninfo.conninfo_to_dict(pg_server)
        self.datastore = PostgresDatastore(
            dbname=str(info.get("dbname", "")),
            host=str(info.get("host", "")),
            port=str(info.get("port", "5432")),
            user=str(info.get("user", "")),
            password=str(info.get("password", "")),
            schema=schema,
            pool_size=12,  # the library's concurrent test runs 10 writers
        )
        with library_threads_joined():
            yield
        self.datastore.close()
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


class TestSQLiteBatchApplicationRecorder(
    SQLiteFile, ApplicationRecorderTestCase[SQLiteBatchApplicationRecorder]
):
    def create_recorder(self) -> SQLiteBatchApplicationRecorder:
        recorder = SQLiteBatchApplicationRecorder(self.datastore)
        recorder.create_table()
        return recorder


class TestSQLiteBatchAggregateRecorder(SQLiteFile, AggregateRecorderTestCase):
    def create_recorder(self) -> SQLiteBatchAggregateRecorder:
        recorder = SQLiteBatchAggregateRecorder(self.datastore, "stored_snapshots")
        recorder.create_table()
        return recorder


@pytest.mark.postgres
class TestPostgresBatchApplicationRecorder(
    PostgresSchema, ApplicationRecorderTestCase[PostgresBatchApplicationRecorder]
):
    def create_recorder(self) -> PostgresBatchApplicationRecorder:
        recorder = PostgresBatchApplicationRecorder(self.datastore)
        recorder.create_table()
        return recorder


@pytest.mark.postgres
class TestPostgresBatchAggregateRecorder(PostgresSchema, AggregateRecorderTestCase):
    def create_recorder(self) -> PostgresBatchAggregateRecorder:
        recorder = PostgresBatchAggregateRecorder(
            self.datastore, events_table_name="stored_snapshots"
        )
        recorder.create_table()
        return recorder


# -- the batch reads themselves -----------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def batch_recorder(
    request: pytest.FixtureRequest, url_for: Callable[[str], str]
) -> Iterator[BatchReads]:
    """The event store's recorder of a service opened on a fresh store."""
    if request.param == "postgres":
        request.applymarker(pytest.mark.postgres)
    service = open_service(Settings(store_url=url_for(request.param)))
    assert isinstance(service.recorder, BatchReads)
    assert service.snapshots is not None
    assert isinstance(service.snapshots.recorder, BatchReads)
    yield service.recorder
    service.close()


def stored(originator_id: UUID, versions: range) -> list[StoredEvent]:
    return [
        StoredEvent(originator_id, v, "topic", f"{originator_id}-{v}".encode()) for v in versions
    ]


def test_events_of_many_aggregates_come_in_one_list_by_aggregate_then_version(
    batch_recorder: Any,
) -> None:
    a, b, c, absent = sorted((uuid4() for _ in range(4)), key=lambda u: u.hex)
    batch_recorder.insert_events(
        stored(b, range(1, 6)) + stored(a, range(1, 4)) + stored(c, range(1, 3))
    )
    found = batch_recorder.select_events_of({c: 0, a: 1, b: 3, absent: 0})
    assert [(e.originator_id, e.originator_version) for e in found] == [
        (a, 2), (a, 3), (b, 4), (b, 5), (c, 1), (c, 2),
    ]  # fmt: skip
    assert (found[0].state, found[0].topic) == (f"{a}-2".encode(), "topic")
    assert batch_recorder.select_events_of({}) == []


def test_the_latest_of_many_aggregates_is_one_event_each(batch_recorder: Any) -> None:
    a, b, absent = uuid4(), uuid4(), uuid4()
    batch_recorder.insert_events(stored(a, range(1, 4)) + stored(b, range(1, 2)))
    found = {e.originator_id: e for e in batch_recorder.select_latest_of([a, b, absent])}
    assert {k: e.originator_version for k, e in found.items()} == {a: 3, b: 1}
    assert found[a].state == f"{a}-3".encode()
    assert batch_recorder.select_latest_of([]) == []


# -- a batch of completions reads in a bounded number of queries -------------------------------


def counted_statements(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts each SQL statement either store's cursors run, by its first word (a wrapper)."""
    counts: Counter[str] = Counter()

    def counting(method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            text = query if isinstance(query, str) else query.as_string(None)
            counts[text.split(None, 1)[0].upper()] += 1
            return method(self, query, *args, **kwargs)

        return wrapper

    for cls in (SQLiteCursor, psycopg.Cursor):
        for name in ("execute", "executemany"):
            monkeypatch.setattr(cls, name, counting(getattr(cls, name)))
    return counts


def statements_of_a_batch(
    svc: CurationService, n: int, monkeypatch: pytest.MonkeyPatch
) -> Counter[str]:
    dispatches = [svc.submit(svc.create_job({"n": i})) for i in range(n)]
    with monkeypatch.context() as patch:
        counts = counted_statements(patch)
        verdicts = svc.complete_batch(
            [(d, "SessionSpawned", {"session_id": f"s-{i}"}) for i, d in enumerate(dispatches)]
        )
    assert all(isinstance(v, Applied) for v in verdicts)
    return counts


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_batch_of_completions_reads_its_jobs_and_invocations_in_two_queries(
    kind: str, url_for: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = open_service(Settings(store_url=url_for(kind)))
    try:
        small = statements_of_a_batch(svc, 2, monkeypatch)
        large = statements_of_a_batch(svc, 40, monkeypatch)
    finally:
        svc.close()
    # Reads: the latest snapshots, then the events from them on, whatever the batch's size.
    assert small["SELECT"] + small["WITH"] == large["SELECT"] + large["WITH"] == 2, (small, large)
    # Writes: one transaction; SQLite's recorder inserts its events one by one (it returns
    # their notification ids), PostgreSQL's in one statement.
    assert +(small - Counter(INSERT=small["INSERT"])) == +(large - Counter(INSERT=large["INSERT"]))
    if kind == "postgres":
        assert small == large, "statements that grow with the batch"


@pytest.mark.postgres
def test_a_batch_read_is_planned_as_key_lookups_even_before_the_table_is_analyzed(
    pg_url: str,
) -> None:
    """The plan a long-lived worker caches for its prepared batch read (a generic plan) must
    not scan the whole events table: its cost would then grow with the log."""
    svc = open_service(Settings(store_url=pg_url))
    try:
        [dispatch] = svc.start_jobs([{"n": n} for n in range(200)])[:1]
        recorder = svc.recorder
        assert isinstance(recorder, PostgresBatchApplicationRecorder)
        with recorder.datastore.get_connection() as conn:
            text = recorder.events_of_statement().as_string(conn)
            numbered = text.replace("%s", "$1", 1).replace("%s", "$2", 1)
            conn.execute(sql.SQL("PREPARE batch AS {}").format(sql.SQL(numbered)))
            conn.execute("SET plan_cache_mode = force_generic_plan")
            explain = "EXPLAIN EXECUTE batch(ARRAY[{}]::uuid[], ARRAY[0]::bigint[])"
            plan = conn.execute(
                sql.SQL(explain).format(sql.Literal(str(dispatch.job_id)))
            ).fetchall()
            conn.execute("DEALLOCATE batch")
            conn.execute("RESET plan_cache_mode")
    finally:
        svc.close()
    lines = "\n".join(str(next(iter(row.values()))) for row in plan)
    assert "Seq Scan on sequent_events" not in lines, lines
    assert "sequent_events_pkey" in lines, lines
