"""The event store's recorders: the library's, with the batch reads of ``domain/batch_reads.py``,
the work table of ``domain/work.py`` written in the same transaction as the events, and a
partial index of the events of the log's rare topics (``domain.log.INDEXED_TOPICS``).

Each store writes the ``work`` its save carries (``CurationService._record`` computes it) through
the hook the library gives subclasses for exactly this, the one it writes tracking records with:
``_insert_events``, inside the transaction that inserts the events. A save that fails (a version
conflict, a dropped connection) writes neither. On PostgreSQL the hook runs before the library
locks the events table, so the rows are written in one order (by table, then id) to keep two
saves from waiting on each other's rows.

``CurationService.construct_factory`` picks the factory for the store's persistence module from
``STORE_FACTORIES``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Mapping, Sequence
from threading import RLock
from typing import Any
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.popo import POPOApplicationRecorder, POPOFactory
from eventsourcing.postgres import PostgresFactory
from eventsourcing.sqlite import SQLiteCursor, SQLiteFactory
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL

from domain.batch_reads import (
    SQLITE_IDS_PER_STATEMENT,
    PostgresBatchAggregateRecorder,
    PostgresBatchApplicationRecorder,
    SQLiteBatchAggregateRecorder,
    SQLiteBatchApplicationRecorder,
)
from domain.log import indexed_topics_sql
from domain.work import WorkChanges, WorkRows

RUNS = "sequent_runs"
TIMERS = "sequent_timers"
SESSIONS = "sequent_job_sessions"
SERVICES = "sequent_session_services"
BUILT = "sequent_work_built"
# Which tables a build filled: a store built before a table was added is filled again.
# 1: runs and timers; 2: job sessions and session services.
WORK_VERSION = 2
Rows = list[tuple[Any, ...]]


def _ddl(prefix: str, key: str, real: str) -> list[str]:
    runs, timers, sessions, services, built = (
        f"{prefix}{t}" for t in (RUNS, TIMERS, SESSIONS, SERVICES, BUILT)
    )
    return [
        f"CREATE TABLE IF NOT EXISTS {runs} (invocation_id {key} PRIMARY KEY, "
        f"job_id {key} NOT NULL, opened_at {real} NOT NULL, available_at {real} NOT NULL, "
        f"reserved_until {real} NOT NULL DEFAULT 0)",
        f"CREATE INDEX IF NOT EXISTS sequent_runs_available ON {runs} (available_at)",
        f"CREATE TABLE IF NOT EXISTS {timers} (job_id {key} PRIMARY KEY, "
        f"state TEXT NOT NULL, since {real} NOT NULL)",
        f"CREATE INDEX IF NOT EXISTS sequent_timers_due ON {timers} (state, since)",
        f"CREATE TABLE IF NOT EXISTS {sessions} (job_id {key} PRIMARY KEY, "
        "session_id TEXT NOT NULL, state TEXT NOT NULL)",
        f"CREATE INDEX IF NOT EXISTS sequent_job_sessions_session ON {sessions} (session_id)",
        # Keyed by the URL's sha256: a spec may name a URL longer than an index entry can be.
        f"CREATE TABLE IF NOT EXISTS {services} (url_sha256 TEXT PRIMARY KEY, url TEXT NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS {built} (built INTEGER PRIMARY KEY)",
    ]


class WorkSQL:
    """The work table's statements for one store: table names and placeholder style differ,
    the SQL does not."""

    def __init__(self, prefix: str, mark: str) -> None:
        runs, timers, sessions, services, built = (
            f"{prefix}{t}" for t in (RUNS, TIMERS, SESSIONS, SERVICES, BUILT)
        )
        m = mark
        self.upsert_run = (
            f"INSERT INTO {runs} (invocation_id, job_id, opened_at, available_at) "
            f"VALUES ({m},{m},{m},{m}) ON CONFLICT (invocation_id) DO UPDATE SET "
            "job_id = excluded.job_id, available_at = excluded.available_at"
        )
        self.lease_run = f"UPDATE {runs} SET available_at = {m} WHERE invocation_id = {m}"
        self.delete_run = f"DELETE FROM {runs} WHERE invocation_id = {m}"
        self.upsert_timer = (
            f"INSERT INTO {timers} (job_id, state, since) VALUES ({m},{m},{m}) "
            "ON CONFLICT (job_id) DO UPDATE SET state = excluded.state, since = excluded.since"
        )
        self.delete_timer = f"DELETE FROM {timers} WHERE job_id = {m}"
        self.upsert_session = (
            f"INSERT INTO {sessions} (job_id, session_id, state) VALUES ({m},{m},{m}) "
            "ON CONFLICT (job_id) DO UPDATE SET session_id = excluded.session_id, "
            "state = excluded.state"
        )
        self.move_session = f"UPDATE {sessions} SET state = {m} WHERE job_id = {m}"
        self.add_service = (
            f"INSERT INTO {services} (url_sha256, url) VALUES ({m},{m}) ON CONFLICT DO NOTHING"
        )
        self.held = (  # {ids} and {states}: the store's way of listing many values
            f"SELECT session_id FROM {sessions} "
            "WHERE session_id IN ({ids}) AND state IN ({states})"
        )
        self.services = f"SELECT url FROM {services} ORDER BY url"
        self.sessions = f"SELECT job_id, session_id, state FROM {sessions}"
        self.overdue = (
            f"SELECT job_id FROM {timers} WHERE state = {m} AND since <= {m} "
            f"ORDER BY since LIMIT {m}"
        )
        self.open_runs = f"SELECT invocation_id FROM {runs} ORDER BY opened_at, invocation_id"
        self.runs = f"SELECT invocation_id, job_id, opened_at, available_at FROM {runs}"
        self.timers = f"SELECT job_id, state, since FROM {timers}"
        self.built = f"SELECT built FROM {built} WHERE built >= {WORK_VERSION}"
        self.mark_built = (
            f"INSERT INTO {built} (built) VALUES ({WORK_VERSION}) ON CONFLICT DO NOTHING"
        )

    def writes(self, changes: WorkChanges, key: Callable[[UUID], Any]) -> list[tuple[str, Rows]]:
        """(statement, rows) for ``changes``, in one order for every save: runs, timers,
        sessions, services, each by id."""
        by_id: Callable[[tuple[UUID, Any]], UUID] = lambda item: item[0]  # noqa: E731
        opened = sorted(changes.opened.items(), key=by_id)
        leased = sorted(changes.leased.items(), key=by_id)
        timed = sorted(changes.timed.items(), key=by_id)
        spawned = sorted(changes.spawned.items(), key=by_id)
        return [
            (stmt, rows)
            for stmt, rows in (
                (self.upsert_run, [(key(r), key(j), o, at) for r, (j, o, at) in opened]),
                (self.lease_run, [(at, key(r)) for r, at in leased]),
                (self.delete_run, [(key(r),) for r in sorted(changes.closed)]),
                (self.upsert_timer, [(key(j), s, at) for j, (s, at) in timed]),
                (self.delete_timer, [(key(j),) for j in sorted(changes.untimed)]),
                (self.upsert_session, [(key(j), sid, st) for j, (sid, st) in spawned]),
                (self.move_session, [(st, key(j)) for j, st in sorted(changes.moved.items())]),
                (self.add_service, [(_sha256(url), url) for url in sorted(changes.services)]),
            )
            if rows
        ]


def _work(kwargs: Mapping[str, Any]) -> WorkChanges | None:
    work = kwargs.get("work")
    return work if isinstance(work, WorkChanges) and work else None


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class _HeadMoved(Exception):
    """The log grew while the work table was being built from it: build again."""


# -- SQLite ------------------------------------------------------------------------------------


class SQLiteStoreRecorder(SQLiteBatchApplicationRecorder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.work_sql = WorkSQL("", "?")
        self.create_table_statements += _ddl("", "TEXT", "REAL")
        events = self.events_table_name
        self.create_table_statements.append(
            f"CREATE INDEX IF NOT EXISTS {events}_indexed_topics ON {events} (topic) "
            f"WHERE topic IN ({indexed_topics_sql()})"
        )

    def _insert_events(
        self, c: SQLiteCursor, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        ids = super()._insert_events(c, stored_events, **kwargs)
        work = _work(kwargs)
        if work is not None:
            self._write(c, work)
        return ids

    def _write(self, c: SQLiteCursor, work: WorkChanges) -> None:
        for statement, rows in self.work_sql.writes(work, str):
            c.executemany(statement, rows)

    def reserve_runs(self, now: float, hold_until: float, limit: int) -> list[tuple[UUID, UUID]]:
        statement = (
            f"UPDATE {RUNS} SET reserved_until = ? WHERE invocation_id IN "
            f"(SELECT invocation_id FROM {RUNS} WHERE available_at <= ? AND reserved_until <= ? "
            "ORDER BY available_at LIMIT ?) RETURNING invocation_id, job_id, available_at"
        )
        with self.datastore.transaction(commit=True) as c:
            c.execute(statement, (hold_until, now, now, limit))
            rows = c.fetchall()
        return [(UUID(r[0]), UUID(r[1])) for r in sorted(rows, key=lambda r: r[2])]

    def overdue_jobs(self, before: Mapping[str, float], limit: int) -> list[UUID]:
        found: list[UUID] = []
        with self.datastore.transaction(commit=False) as c:
            for state, moment in before.items():
                c.execute(self.work_sql.overdue, (state, moment, limit - len(found)))
                found += [UUID(r[0]) for r in c.fetchall()]
        return found

    def open_runs(self) -> list[UUID]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(self.work_sql.open_runs)
            return [UUID(r[0]) for r in c.fetchall()]

    def work_rows(self) -> WorkRows:
        with self.datastore.transaction(commit=False) as c:
            c.execute(self.work_sql.runs)
            runs = {UUID(r[0]): (UUID(r[1]), r[2], r[3]) for r in c.fetchall()}
            c.execute(self.work_sql.timers)
            timers = {UUID(r[0]): (r[1], r[2]) for r in c.fetchall()}
            c.execute(self.work_sql.sessions)
            sessions = {UUID(r[0]): (r[1], r[2]) for r in c.fetchall()}
            c.execute(self.work_sql.services)
            services = frozenset(r[0] for r in c.fetchall())
        return WorkRows(runs, timers, sessions, services)

    def held_among(self, session_ids: Collection[str], states: Collection[str]) -> set[str]:
        found: set[str] = set()
        ids, marks = list(session_ids), ",".join("?" * len(states))
        with self.datastore.transaction(commit=False) as c:
            for first in range(0, len(ids), SQLITE_IDS_PER_STATEMENT):
                chunk = ids[first : first + SQLITE_IDS_PER_STATEMENT]
                query = self.work_sql.held.format(ids=",".join("?" * len(chunk)), states=marks)
                c.execute(query, [*chunk, *states])
                found.update(r[0] for r in c.fetchall())
        return found

    def session_services(self) -> list[str]:
        with self.datastore.transaction(commit=False) as c:
            c.execute(self.work_sql.services)
            return [r[0] for r in c.fetchall()]

    def work_built(self) -> bool:
        with self.datastore.transaction(commit=False) as c:
            c.execute(self.work_sql.built)
            return c.fetchone() is not None

    def build_work(self, changes: WorkChanges, head: int) -> bool:
        try:
            with self.datastore.transaction(commit=True) as c:
                c.execute(self.work_sql.mark_built)  # a write first: the store's one writer
                c.execute(f"SELECT MAX(rowid) FROM {self.events_table_name}")
                if (c.fetchone()[0] or 0) != head:
                    raise _HeadMoved
                self._write(c, changes)
        except _HeadMoved:
            return False
        return True


class SQLiteStoreFactory(SQLiteFactory):
    aggregate_recorder_class = SQLiteBatchAggregateRecorder
    application_recorder_class = SQLiteStoreRecorder


# -- PostgreSQL --------------------------------------------------------------------------------


class PostgresStoreRecorder(PostgresBatchApplicationRecorder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        schema = f'"{self.datastore.schema}"'
        prefix = f"{schema}."
        self.runs_table = f"{prefix}{RUNS}"
        self.work_sql = WorkSQL(prefix, "%s")
        ddl = _ddl(prefix, "uuid", "double precision")
        events = f'{schema}."{self.events_table_name}"'
        ddl.append(
            f'CREATE INDEX IF NOT EXISTS "{self.events_table_name}_indexed_topics" ON {events} '
            f"(notification_id) WHERE topic IN ({indexed_topics_sql()})"
        )
        self.sql_create_statements += [SQL(statement).format() for statement in ddl]

    def _insert_events(
        self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> None:
        work = _work(kwargs)
        if work is not None:
            self._write(curs, work)
        super()._insert_events(curs, stored_events, **kwargs)

    def _write(self, curs: Cursor[DictRow], work: WorkChanges) -> None:
        for statement, rows in self.work_sql.writes(work, lambda u: u):
            curs.executemany(statement, rows)

    def reserve_runs(self, now: float, hold_until: float, limit: int) -> list[tuple[UUID, UUID]]:
        # SKIP LOCKED: workers asking at once are handed different runs, none waits.
        statement = (
            f"UPDATE {self.runs_table} r SET reserved_until = %s FROM "
            f"(SELECT invocation_id FROM {self.runs_table} "
            "WHERE available_at <= %s AND reserved_until <= %s "
            "ORDER BY available_at LIMIT %s FOR UPDATE SKIP LOCKED) w "
            "WHERE r.invocation_id = w.invocation_id "
            "RETURNING r.invocation_id, r.job_id, r.available_at"
        )
        with self.datastore.transaction(commit=True) as curs:
            curs.execute(statement, (hold_until, now, now, limit))
            rows = curs.fetchall()
        ordered = sorted(rows, key=lambda r: r["available_at"])
        return [(r["invocation_id"], r["job_id"]) for r in ordered]

    def overdue_jobs(self, before: Mapping[str, float], limit: int) -> list[UUID]:
        found: list[UUID] = []
        with self.datastore.transaction(commit=False) as curs:
            for state, moment in before.items():
                curs.execute(self.work_sql.overdue, (state, moment, limit - len(found)))
                found += [r["job_id"] for r in curs.fetchall()]
        return found

    def open_runs(self) -> list[UUID]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self.work_sql.open_runs)
            return [r["invocation_id"] for r in curs.fetchall()]

    def work_rows(self) -> WorkRows:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self.work_sql.runs)
            runs = {
                r["invocation_id"]: (r["job_id"], r["opened_at"], r["available_at"])
                for r in curs.fetchall()
            }
            curs.execute(self.work_sql.timers)
            timers = {r["job_id"]: (r["state"], r["since"]) for r in curs.fetchall()}
            curs.execute(self.work_sql.sessions)
            sessions = {r["job_id"]: (r["session_id"], r["state"]) for r in curs.fetchall()}
            curs.execute(self.work_sql.services)
            services = frozenset(r["url"] for r in curs.fetchall())
        return WorkRows(runs, timers, sessions, services)

    def held_among(self, session_ids: Collection[str], states: Collection[str]) -> set[str]:
        every = "SELECT unnest(%s::text[])"
        query = self.work_sql.held.format(ids=every, states=every)
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(query, (list(session_ids), list(states)))
            return {r["session_id"] for r in curs.fetchall()}

    def session_services(self) -> list[str]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self.work_sql.services)
            return [r["url"] for r in curs.fetchall()]

    def work_built(self) -> bool:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self.work_sql.built)
            return curs.fetchone() is not None

    def build_work(self, changes: WorkChanges, head: int) -> bool:
        events = f'"{self.datastore.schema}"."{self.events_table_name}"'
        try:
            with self.datastore.transaction(commit=True) as curs:
                # The lock every insert of events takes: none lands until this commits.
                curs.execute(f"LOCK TABLE {events} IN EXCLUSIVE MODE")
                curs.execute(f"SELECT MAX(notification_id) AS head FROM {events}")
                row = curs.fetchone()
                if ((row or {}).get("head") or 0) != head:
                    raise _HeadMoved
                self._write(curs, changes)
                curs.execute(self.work_sql.mark_built)
        except _HeadMoved:
            return False
        return True


class PostgresStoreFactory(PostgresFactory):
    aggregate_recorder_class = PostgresBatchAggregateRecorder
    application_recorder_class = PostgresStoreRecorder


# -- memory ------------------------------------------------------------------------------------


class POPOStoreRecorder(POPOApplicationRecorder):
    """The work table as two dicts, changed under the recorder's own lock with the events."""

    def __init__(self) -> None:
        super().__init__()
        # id -> [job, available_at, reserved_until, opened_at]
        self._runs: dict[UUID, list[Any]] = {}
        self._timers: dict[UUID, tuple[str, float]] = {}
        self._sessions: dict[UUID, tuple[str, str]] = {}
        self._services: set[str] = set()
        self._work_lock: RLock = self._database_lock

    def _insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        with self._work_lock:
            ids = super()._insert_events(stored_events, **kwargs)
            work = _work(kwargs)
            if work is not None:
                self._write(work)
            return ids

    def _write(self, work: WorkChanges) -> None:
        for run, (job, opened, at) in work.opened.items():
            self._runs[run] = [job, at, self._runs.get(run, [0, 0, 0.0])[2], opened]
        for run, at in work.leased.items():
            if run in self._runs:
                self._runs[run][1] = at
        for run in work.closed:
            self._runs.pop(run, None)
        self._timers.update(work.timed)
        for job in work.untimed:
            self._timers.pop(job, None)
        self._sessions.update(work.spawned)
        for job, state in work.moved.items():
            if job in self._sessions:
                self._sessions[job] = (self._sessions[job][0], state)
        self._services.update(work.services)

    def reserve_runs(self, now: float, hold_until: float, limit: int) -> list[tuple[UUID, UUID]]:
        with self._work_lock:
            free = [(row[1], run) for run, row in self._runs.items() if max(row[1], row[2]) <= now]
            chosen = [run for _, run in sorted(free, key=lambda item: item[0])[:limit]]
            for run in chosen:
                self._runs[run][2] = hold_until
            return [(run, self._runs[run][0]) for run in chosen]

    def overdue_jobs(self, before: Mapping[str, float], limit: int) -> list[UUID]:
        with self._work_lock:
            due = [
                (since, job)
                for job, (state, since) in self._timers.items()
                if state in before and since <= before[state]
            ]
        return [job for _, job in sorted(due, key=lambda item: item[0])[:limit]]

    def open_runs(self) -> list[UUID]:
        with self._work_lock:
            return list(self._runs)  # in the order they were started

    def work_rows(self) -> WorkRows:
        with self._work_lock:
            runs = {run: (row[0], row[3], row[1]) for run, row in self._runs.items()}
            sessions, services = dict(self._sessions), frozenset(self._services)
            return WorkRows(runs, dict(self._timers), sessions, services)

    def held_among(self, session_ids: Collection[str], states: Collection[str]) -> set[str]:
        wanted = set(session_ids)
        with self._work_lock:
            held = self._sessions.values()
            return {session for session, state in held if session in wanted and state in states}

    def session_services(self) -> list[str]:
        with self._work_lock:
            return sorted(self._services)

    def work_built(self) -> bool:
        return True  # a memory store starts empty, with its work table

    def build_work(self, changes: WorkChanges, head: int) -> bool:
        return True


class POPOStoreFactory(POPOFactory):
    def application_recorder(self) -> POPOStoreRecorder:
        return POPOStoreRecorder()


STORE_FACTORIES: dict[str, type[SQLiteFactory] | type[PostgresFactory] | type[POPOFactory]] = {
    "eventsourcing.sqlite": SQLiteStoreFactory,
    "eventsourcing.postgres": PostgresStoreFactory,
    "eventsourcing.popo": POPOStoreFactory,
}
