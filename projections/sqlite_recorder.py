"""The read models' recorder on SQLite (and, in a private in-memory database, for ``memory://``):
the library's SQLite tracking recorder with the read models' tables. See ``recorders.py``."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any
from uuid import uuid4

from eventsourcing.persistence import Tracking
from eventsourcing.sqlite import (
    SQLiteCursor,
    SQLiteDatastore,
    SQLiteTrackingRecorder,
)

from projections.errors import RebuildInProgress
from projections.projection import Projection
from projections.recorders import DB_ERRORS, REBUILD_LEASE_SECONDS, KeepLock, ReadModels
from projections.schema import INT, Table


class SQLiteReadModels(SQLiteTrackingRecorder, ReadModels):
    placeholder = "?"

    def __init__(
        self, datastore: SQLiteDatastore, *, app_name: str, projections: Sequence[Projection]
    ):
        self.app_name = app_name
        self.projections = tuple(projections)
        super().__init__(datastore)

    def construct_create_table_statements(self) -> list[str]:
        return [
            *super().construct_create_table_statements(),
            *self._projection_ddl(self.projections),
            "CREATE TABLE IF NOT EXISTS projection_rebuilds (projection TEXT PRIMARY KEY, "
            "holder TEXT NOT NULL, expires REAL NOT NULL)",
        ]

    @contextmanager
    def rebuild_lock(self, projection: Projection) -> Iterator[KeepLock]:
        key = self.tracking_key(projection)
        holder = f"pid {os.getpid()} on {socket.gethostname()}, {uuid4().hex[:8]}"
        self._lease(projection, key, holder, take=True)
        renewed = time.monotonic()

        def keep() -> None:
            # The lease cannot be taken before it expires, so renewing it half way through
            # holds it as surely as renewing after every batch, for one commit, not many.
            nonlocal renewed
            if time.monotonic() - renewed >= REBUILD_LEASE_SECONDS / 2:
                self._lease(projection, key, holder, take=False)
                renewed = time.monotonic()

        try:
            yield keep
        finally:
            with suppress(*DB_ERRORS), self._transaction(write=True) as c:
                c.execute(
                    "DELETE FROM projection_rebuilds WHERE projection = ? AND holder = ?",
                    (key, holder),
                )

    def _lease(self, projection: Projection, key: str, holder: str, *, take: bool) -> None:
        """Takes (``take``: if free or expired) or renews the lease; the first statement is a
        write, so the check and the change are one step under SQLite's write lock."""
        now = time.time()
        expires = now + REBUILD_LEASE_SECONDS
        with self._transaction(write=True) as c:
            if take:
                c.execute(
                    "INSERT INTO projection_rebuilds (projection, holder, expires) "
                    "VALUES (?, ?, ?) ON CONFLICT (projection) DO UPDATE SET "
                    "holder = excluded.holder, expires = excluded.expires "
                    "WHERE projection_rebuilds.expires < ?",
                    (key, holder, expires, now),
                )
            else:
                c.execute(
                    "UPDATE projection_rebuilds SET expires = ? "
                    "WHERE projection = ? AND holder = ?",
                    (expires, key, holder),
                )
            c.execute(
                "SELECT holder, expires FROM projection_rebuilds WHERE projection = ?", (key,)
            )
            rows = self._fetchall(c)
        if not rows:
            raise RebuildInProgress(projection.name, "this rebuild's lease was taken away")
        found, until = rows[0]
        if found != holder:
            left = max(float(until) - now, 0.0)
            raise RebuildInProgress(projection.name, f"{found}, lease for {left:.0f} s more")

    @contextmanager
    def _transaction(self, *, write: bool, snapshot: bool = False) -> Iterator[Any]:
        # A deferred transaction; readers get a consistent snapshot from their first read
        # (WAL), writers take the write lock with their first statement (_lock_row).
        with self.datastore.transaction(commit=write) as c:
            yield c

    def _qualified(self, name: str) -> str:
        return f'"{name}"'

    def _tracking_table(self) -> str:
        return "tracking"

    def _lock_row(self, c: Any, key: str) -> None:
        # A write as the transaction's first statement takes SQLite's write lock, waiting
        # (busy timeout) for other writers, before anything is read: no stale snapshot.
        c.execute(
            "UPDATE tracking SET notification_id = notification_id WHERE application_name = ?",
            (key,),
        )

    def _track(self, c: Any, key: str, position: int) -> None:
        assert isinstance(c, SQLiteCursor)
        self._insert_tracking(c, Tracking(key, position))

    def _fetchall(self, c: Any) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in c.fetchall()]

    def _column_type(self, kind: str) -> str:
        return "INTEGER" if kind == INT else "TEXT"

    def _create_table_sql(self, table: Table, name: str) -> str:
        key_type = next(c.type for c in table.columns if c.name == table.key)
        # A text key is the clustered key (WITHOUT ROWID); an integer key is the rowid.
        suffix = "" if key_type == INT else " WITHOUT ROWID"
        return (
            f'CREATE TABLE IF NOT EXISTS "{name}" ({self._columns_sql(table)}, '
            f'PRIMARY KEY ("{table.key}")){suffix}'
        )

    def _rename_sql(self, table: Table, old: str, new: str) -> list[str]:
        return [f'ALTER TABLE "{old}" RENAME TO "{new}"']


def memory_datastore() -> SQLiteDatastore:
    """For memory:// stores: the read models in a private in-memory SQLite database, gone
    when the process ends, like the events they are made from."""
    return SQLiteDatastore(f"file:sequent-read-models-{uuid4().hex}?mode=memory&cache=shared")
