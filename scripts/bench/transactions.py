"""Database transactions per job cycle (DESIGN.md §7: at most 2, amortised), counted where the
application meets its database: the library datastore of the service's recorder.

``counting_transactions(app)`` swaps that datastore's class for a counting subclass of it for
as long as the block runs (as ``domain.store_errors.bound_waits`` swaps in its own), so every
recorder, follower and policy read of the app is seen, and nothing else on the server is.

* SQLite: each ``datastore.transaction(commit=...)`` is one transaction (the library issues
  BEGIN and COMMIT or ROLLBACK around it); ``commit=True`` is a write.
* PostgreSQL: each connection checkout (``datastore.get_connection``) is one transaction: the
  library and this project run either a ``conn.transaction()`` block or one statement in
  autocommit per checkout. It is a write if any statement in it writes (INSERT, UPDATE,
  DELETE, LOCK, DDL, or the library's insert_events database function).

The measurement counts one batch of job cycles in-process, wired by bootstrap.build_system: the
operator side (create, configure, submit for the batch in one ``start_jobs``; one by one in the
details) and the worker side (one
``Dispatcher.run_once`` over the batch: its look at the queue, claims, policy reads, guarded
completions), against the bare loop of cycles.py (create -> configure -> submit -> complete,
one by one, with no claim, sandbox or policy).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import psycopg
from eventsourcing.application import Application
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore
from psycopg import sql
from psycopg.rows import DictRow

from bootstrap import Settings, build_system
from domain import CurationService
from domain.cedar import default_policies
from integrations.session_service import SessionService
from scripts.bench.harness import (
    COUNT_UNIT,
    TRANSACTIONS,
    Bench,
    Measurement,
    Target,
    load_average,
)
from scripts.bench.stores import ScratchStore, scratch_stores

TRANSACTIONS_TARGET = 2.0  # per job cycle, amortised
WRITES = re.compile(
    r"^\s*(INSERT|UPDATE|DELETE|LOCK|CREATE|DROP|ALTER|TRUNCATE)\b|insert_events", re.IGNORECASE
)


@dataclass
class TransactionCount:
    writes: int = 0
    reads: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def total(self) -> int:
        return self.writes + self.reads

    def add(self, *, write: bool) -> None:
        with self._lock:  # the dispatcher's threads share the datastore
            if write:
                self.writes += 1
            else:
                self.reads += 1

    def per(self, n: int) -> dict[str, float]:
        return {"writes": self.writes / n, "reads": self.reads / n, "total": self.total / n}


class _CountingSQLite(SQLiteDatastore):
    bench_count: TransactionCount

    @contextmanager
    def transaction(self, *, commit: bool) -> Iterator[Any]:
        with super().transaction(commit=commit) as cursor:
            yield cursor
        self.bench_count.add(write=commit)


class _WriteSpottingCursor(psycopg.Cursor[DictRow]):
    """Notes on its connection whether a statement it ran writes."""

    def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        spot_write(self.connection, query)
        return super().execute(query, *args, **kwargs)

    def executemany(self, query: Any, *args: Any, **kwargs: Any) -> None:
        spot_write(self.connection, query)
        super().executemany(query, *args, **kwargs)


def spot_write(conn: psycopg.Connection[Any], query: Any) -> None:
    text = query.as_string(conn) if isinstance(query, sql.Composable) else str(query)
    if WRITES.search(text):
        setattr(conn, "_bench_wrote", True)  # noqa: B010


class _CountingPostgres(PostgresDatastore):
    bench_count: TransactionCount

    @contextmanager
    def get_connection(self) -> Iterator[psycopg.Connection[DictRow]]:
        with super().get_connection() as conn:
            own_factory = conn.cursor_factory
            conn.cursor_factory = _WriteSpottingCursor
            setattr(conn, "_bench_wrote", False)  # noqa: B010
            try:
                yield conn
            finally:
                conn.cursor_factory = own_factory
        self.bench_count.add(write=bool(getattr(conn, "_bench_wrote", False)))


@contextmanager
def counting_transactions(app: Application[Any]) -> Iterator[TransactionCount]:
    """Counts the transactions ``app``'s datastore runs while the block does."""
    datastore: Any = getattr(app.recorder, "datastore", None)
    if not isinstance(datastore, PostgresDatastore | SQLiteDatastore):
        raise TypeError(f"no transactions to count in a {type(app.recorder).__name__}")
    mixin: type = _CountingPostgres if isinstance(datastore, PostgresDatastore) else _CountingSQLite
    own_class = type(datastore)
    count = TransactionCount()
    counted: Any = datastore  # gains bench_count, which neither library class declares
    counted.bench_count = count
    counted.__class__ = type(f"Counting{own_class.__name__}", (mixin, own_class), {})
    try:
        yield count
    finally:
        counted.__class__ = own_class
        del counted.bench_count


def measure(bench: Bench) -> list[Measurement]:
    jobs = bench.config.sizes.transaction_jobs
    with SessionService() as sessions:
        return [
            measure_transactions(store, jobs, sessions)
            for store in scratch_stores(bench, TRANSACTIONS, bench.config.backends)
        ]


def measure_transactions(store: ScratchStore, jobs: int, sessions: SessionService) -> Measurement:
    load = load_average()
    system = build_system(Settings.from_env(store_url=store.url))
    try:
        svc = system.service
        svc.policies.add_policy(default_policies(sessions.url), reason="bench")
        dispatcher = system.dispatcher(reconcile_interval=None)
        spec = {"session_service": sessions.url}

        def specs(count: int) -> list[dict[str, Any]]:
            return [{**spec, "target": f"https://bench.example/{i}"} for i in range(count)]

        def one_by_one(count: int) -> None:
            for job_spec in specs(count):
                job_id = svc.create_job(job_spec)
                svc.configure(job_id, {"priority": "normal"})
                svc.submit(job_id)

        one_by_one(2)  # warm-up: the module compiled, the policy read, the queue looked at
        anyio.run(dispatcher.run_once)
        applied_before = dispatcher.stats.applied
        started = time.perf_counter()
        with counting_transactions(svc) as submitting:
            svc.start_jobs(specs(jobs), {"priority": "normal"})
        with counting_transactions(svc) as working:
            anyio.run(dispatcher.run_once)
        per_job_us = (time.perf_counter() - started) / jobs * 1e6
        applied = dispatcher.stats.applied - applied_before
        with counting_transactions(svc) as submitting_one_by_one:
            one_by_one(jobs)
        anyio.run(dispatcher.run_once)
        with counting_transactions(svc) as bare:
            bare_cycles(svc, jobs)
    finally:
        system.close()
    writes = (submitting.writes + working.writes) / jobs
    total = (submitting.total + working.total) / jobs
    return Measurement(
        name=TRANSACTIONS,
        backend=store.backend,
        unit=COUNT_UNIT,
        value=writes,
        baseline=bare.writes / jobs,
        n=jobs,
        p50=per_job_us,
        p99=per_job_us,
        target=Target(TRANSACTIONS_TARGET, "value", "<="),
        notes=(
            f"value: write transactions per job cycle, amortised over {jobs} cycles: the "
            "operator's create, configure and submit for the batch (start_jobs, one "
            "transaction; one by one in details: operator_one_by_one), then one "
            "Dispatcher.run_once "
            "over the batch (claim, sandbox, Cedar, POST to a loopback session service, guarded "
            "SessionSpawned), counted in the service's own datastore (a counting subclass: per "
            "SQLite transaction, per PostgreSQL connection checkout); baseline: the bare "
            "cycle one by one (create -> configure -> submit -> complete), counted the same "
            "way. Read-only transactions apart in details (reads, total), per side. p50/p99: "
            "the counted batch's wall time per job cycle (one figure: the cycles are not timed "
            "one by one)."
        ),
        details={
            "loadavg_1m": load,
            "jobs": jobs,
            "applied": applied,
            "operator": submitting.per(jobs),
            "operator_one_by_one": submitting_one_by_one.per(jobs),
            "worker": working.per(jobs),
            "total_per_cycle": total,
            "reads_per_cycle": total - writes,
            "total_meets": total <= TRANSACTIONS_TARGET,
            "bare": bare.per(jobs),
        },
    )


def bare_cycles(svc: CurationService, jobs: int) -> None:
    for index in range(jobs):
        job_id = svc.create_job({"target": f"https://bench.example/bare-{index}"})
        svc.configure(job_id, {"priority": "normal"})
        dispatch = svc.submit(job_id)
        svc.complete(dispatch, "SessionSpawned", {"session_id": f"bare-{index}"})
