"""Read-model tables in the event store's own database, written exactly once.

``SQLiteReadModels`` (sqlite_recorder.py) and ``PostgresReadModels`` (postgres_recorder.py)
subclass the ``eventsourcing`` tracking recorders (``SQLiteTrackingRecorder``,
``PostgresTrackingRecorder``) and add the read models' tables to the same datastore, the
documented pattern for a materialised view: a batch's rows and the projection's tracking record
are written by the library's ``_insert_tracking`` in **one transaction**, so a projection never
holds a change without its position or a position without its change. This module holds what
both share (``ReadModels``); ``backends.open_read_models(service, ...)`` picks the one for the
service's store.

Each projection has its own tracking row (application name ``Sequent.<projection>``) so
projections advance and rebuild independently. Before writing, a batch takes the lock on that
row (``SELECT ... FOR UPDATE`` on PostgreSQL; on SQLite the first statement is a write, which
takes the database's write lock) and checks the position is still the one the batch was read
after. If another runner got there first the batch is refused (``PositionMoved``) and nothing
is written: a notification is applied once even when two runners race for it.

Rebuild writes into shadow tables (``<table>__rebuild``, tracking
``Sequent.<projection>#rebuild``) while the live ones keep serving and following; ``swap``
then, in one transaction holding both tracking locks, brings the shadow (and, for the checksum
comparison, the live projection) up to the head, drops the live tables, renames the shadow
ones in and moves the live tracking row. One rebuild of a projection runs at a time, across
processes (``rebuild_lock``): on PostgreSQL a session advisory lock keyed by schema and
projection, on SQLite — which has none, and whose only lock held for long would stop every
writer — a lease row in ``projection_rebuilds``, renewed between batches. A second rebuild
fails at once with RebuildInProgress rather than dropping the first one's shadow tables.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import psycopg
from eventsourcing.persistence import PersistenceError

from domain.log import UNREADABLE, Page
from domain.store_errors import first_line
from projections.projection import Insert, Lookup, Projection, Upsert, Write
from projections.schema import Table

SHADOW_SUFFIX = "__rebuild"
LOOKUP_CHUNK = 500  # keys per IN (...) query
CHECKSUM_PAGE = 5000  # rows per keyset page while hashing
SKIPPED_ERROR_CHARS = 300  # of the error recorded for a skipped event
REBUILD_LEASE_SECONDS = 60.0  # SQLite: a rebuild that stops renewing its lease loses it after

# What a driver raises from inside a transaction (the datastores translate on the way out).
DB_ERRORS: tuple[type[Exception], ...] = (PersistenceError, sqlite3.Error, psycopg.Error)


class PositionMoved(Exception):  # a signal between runner and store, not an error
    """The projection's tracked position is not the one the batch was read after."""

    def __init__(self, current: int) -> None:
        self.current = current
        super().__init__(f"tracked position is {current}")


@dataclass(frozen=True)
class Snapshot:
    """A projection's rows and its tracked position, read in one transaction."""

    position: int
    rows: list[tuple[Any, ...]]


@dataclass(frozen=True)
class Checksum:
    position: int
    rows: int
    sha256: str


@dataclass(frozen=True)
class Swapped:
    events: int  # replayed into the shadow inside the swap transaction
    position: int  # the head both projections were brought to; the live projection's new position
    live_position: int  # where the live projection was when the swap began
    checksum_live: str
    checksum_rebuilt: str
    rows: int
    live_error: str | None  # the live projection could not be caught up (see ProjectionFailed)


Fetch = Callable[[int, int], Iterator[Page]]
"""Batches of a projection's notifications in (after, upto]."""
KeepLock = Callable[[], None]
"""Called by a rebuild between batches: renews its lock where that is a lease (when due), and
raises RebuildInProgress if the lock was lost."""


def shadow_name(table: Table) -> str:
    return table.name + SHADOW_SUFFIX


# json.dumps(..., separators=(",", ":")) without building an encoder for every row.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":")).encode


def hash_rows(rows: Iterable[tuple[Any, ...]]) -> tuple[int, str]:
    """sha256 over canonical JSON lines, one per row, in key order."""
    digest = hashlib.sha256()
    count = 0
    for row in rows:
        digest.update(_COMPACT_JSON(list(row)).encode())
        digest.update(b"\n")
        count += 1
    return count, digest.hexdigest()


class ReadModels(ABC):
    """What both dialects share: tracking locks, batch writes, shadows, swap, reads."""

    app_name: str
    placeholder: str = "?"

    # -- dialect ----------------------------------------------------------------------------

    @abstractmethod
    def create_table(self) -> None:
        """The library's tracking table plus the projections' tables (the recorder's own method)."""

    @abstractmethod
    def _transaction(self, *, write: bool, snapshot: bool = False) -> AbstractContextManager[Any]:
        """A cursor in a transaction that commits (``write``) or rolls back on exit."""

    @abstractmethod
    def _qualified(self, name: str) -> str: ...

    @abstractmethod
    def _tracking_table(self) -> str: ...

    @abstractmethod
    def _lock_row(self, c: Any, key: str) -> None:
        """Takes the write lock on the tracking row (or the database) for this transaction."""

    @abstractmethod
    def _track(self, c: Any, key: str, position: int) -> None:
        """Records the position with the library's tracking insert (refuses going back)."""

    @abstractmethod
    def _fetchall(self, c: Any) -> list[tuple[Any, ...]]: ...

    @abstractmethod
    def _create_table_sql(self, table: Table, name: str) -> str: ...

    @abstractmethod
    def _rename_sql(self, table: Table, old: str, new: str) -> list[str]: ...

    @abstractmethod
    def _column_type(self, kind: str) -> str: ...

    # -- names ------------------------------------------------------------------------------

    def tracking_key(self, projection: Projection, *, shadow: bool = False) -> str:
        return f"{self.app_name}.{projection.name}" + ("#rebuild" if shadow else "")

    def _name(self, table: Table, shadow: bool) -> str:
        return shadow_name(table) if shadow else table.name

    def _sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    def _columns_sql(self, table: Table) -> str:
        return ", ".join(
            f'"{c.name}" {self._column_type(c.type)}' + (" NOT NULL" if c.not_null else "")
            for c in table.columns
        )

    def _index_sql(self, table: Table, name: str) -> list[str]:
        return [
            f'CREATE INDEX IF NOT EXISTS "{name}_{col}_idx" ON {self._qualified(name)} ("{col}")'
            for col in table.indexes
        ]

    # -- setup ------------------------------------------------------------------------------

    def _projection_ddl(self, projections: Sequence[Projection]) -> list[str]:
        statements: list[str] = []
        for projection in projections:
            for table in projection.stored_tables:
                statements.append(self._create_table_sql(table, table.name))
                statements.extend(self._index_sql(table, table.name))
        return statements

    def init_positions(self, projections: Sequence[Projection]) -> None:
        """Gives every projection a tracking row (position 0) so batches always have one to lock."""
        sql = self._sql(
            f"INSERT INTO {self._tracking_table()} (application_name, notification_id) "
            "VALUES (?, 0) ON CONFLICT (application_name) DO NOTHING"
        )
        with self._transaction(write=True) as c:
            for projection in projections:
                c.execute(sql, (self.tracking_key(projection),))

    # -- positions --------------------------------------------------------------------------

    def positions(
        self, projections: Sequence[Projection], *, shadow: bool = False
    ) -> dict[str, int]:
        keys = {self.tracking_key(v, shadow=shadow): v.name for v in projections}
        marks = ", ".join("?" * len(keys))
        sql = self._sql(
            f"SELECT application_name, notification_id FROM {self._tracking_table()} "
            f"WHERE application_name IN ({marks})"
        )
        with self._transaction(write=False) as c:
            c.execute(sql, tuple(keys))
            found = {keys[name]: int(pos or 0) for name, pos in self._fetchall(c)}
        return {v.name: found.get(v.name, 0) for v in projections}

    def _locked_position(self, c: Any, key: str) -> int:
        self._lock_row(c, key)
        sql = self._sql(
            f"SELECT notification_id FROM {self._tracking_table()} WHERE application_name = ?"
        )
        c.execute(sql + self._for_update(), (key,))
        rows = self._fetchall(c)
        if not rows:  # no row yet (a shadow, or one deleted by hand): make it, then lock it
            c.execute(
                self._sql(
                    f"INSERT INTO {self._tracking_table()} (application_name, notification_id) "
                    "VALUES (?, 0) ON CONFLICT (application_name) DO NOTHING"
                ),
                (key,),
            )
            c.execute(sql + self._for_update(), (key,))
            rows = self._fetchall(c)
        return int(rows[0][0] or 0)

    def _for_update(self) -> str:
        return ""

    def _set_position(self, c: Any, key: str, position: int) -> None:
        c.execute(
            self._sql(
                f"INSERT INTO {self._tracking_table()} (application_name, notification_id) "
                "VALUES (?, ?) ON CONFLICT (application_name) "
                "DO UPDATE SET notification_id = excluded.notification_id"
            ),
            (key, position),
        )

    def _delete_position(self, c: Any, key: str) -> None:
        c.execute(
            self._sql(f"DELETE FROM {self._tracking_table()} WHERE application_name = ?"), (key,)
        )

    # -- exactly-once batches ---------------------------------------------------------------

    def apply(
        self,
        projection: Projection,
        batch: Page,
        *,
        after: int,
        upto: int,
        shadow: bool = False,
    ) -> None:
        """Folds ``batch`` (the projection's notifications in (after, upto]) into it and moves
        its position to ``upto``, in one transaction. Raises PositionMoved, writing nothing,
        if the projection is no longer at ``after``."""
        key = self.tracking_key(projection, shadow=shadow)
        with self._transaction(write=True) as c:
            current = self._locked_position(c, key)
            if current != after:
                raise PositionMoved(current)
            self._write(c, projection, batch, shadow)
            if upto > current:
                self._track(c, key, upto)

    def _write(self, c: Any, projection: Projection, batch: Page, shadow: bool) -> None:
        if not batch:
            return

        def lookup(table: Table, keys: Collection[str]) -> dict[str, tuple[Any, ...]]:
            return self._lookup(c, table, keys, shadow)

        try:
            writes = projection.writes(batch, lookup)
        except UNREADABLE:
            # An event the store accepted that this projection cannot fold must not stop it
            # (DESIGN.md §1 invariant 5): fold the batch again one event at a time — the same
            # result, as a fold does not depend on where batches end — and record the ones
            # that fail as skipped. A fold raises before it asks for any write.
            writes = self._writes_skipping(projection, batch, lookup, c, shadow)
        self._execute(c, writes, shadow)

    def _writes_skipping(
        self,
        projection: Projection,
        batch: Page,
        lookup: Lookup,
        c: Any,
        shadow: bool,
    ) -> list[Write]:
        skipped: list[tuple[Any, ...]] = []
        for i, notice in enumerate(batch):
            try:
                writes = projection.writes(batch[i : i + 1], lookup)
            except UNREADABLE as exc:
                why = first_line(exc)[:SKIPPED_ERROR_CHARS]
                skipped.append((notice.id, notice.topic, notice.key, notice.version, why))
                continue
            self._execute(c, writes, shadow)  # before the next event's lookups
        return [Insert(projection.skipped, skipped)]

    def _execute(self, c: Any, writes: Sequence[Write], shadow: bool) -> None:
        for write in writes:
            if write.rows:
                c.executemany(self._write_sql(write, shadow), write.rows)

    def _rows_sql(self, table: Table) -> str:
        """What an INSERT of ``table``'s rows takes its rows from (one row of parameters)."""
        return "VALUES (" + ", ".join([self.placeholder] * len(table.columns)) + ")"

    def _write_sql(self, write: Write, shadow: bool) -> str:
        table = write.table
        name = self._qualified(self._name(table, shadow))
        cols = ", ".join(f'"{c}"' for c in table.column_names)
        insert = f"INSERT INTO {name} AS t ({cols}) {self._rows_sql(table)}"
        if isinstance(write, Insert):
            return insert
        assert isinstance(write, Upsert)
        sets = ", ".join(
            f'"{c}" = COALESCE(excluded."{c}", t."{c}")'
            if c in table.keep
            else f'"{c}" = excluded."{c}"'
            for c in table.column_names
            if c != table.key
        )
        return f'{insert} ON CONFLICT ("{table.key}") DO UPDATE SET {sets}'

    def _lookup(
        self, c: Any, table: Table, keys: Collection[str], shadow: bool
    ) -> dict[str, tuple[Any, ...]]:
        found: dict[str, tuple[Any, ...]] = {}
        wanted = list(keys)
        cols = ", ".join(f'"{c}"' for c in table.column_names)
        name = self._qualified(self._name(table, shadow))
        at = table.index_of(table.key)
        for i in range(0, len(wanted), LOOKUP_CHUNK):
            chunk = wanted[i : i + LOOKUP_CHUNK]
            marks = ", ".join([self.placeholder] * len(chunk))
            c.execute(f'SELECT {cols} FROM {name} WHERE "{table.key}" IN ({marks})', chunk)
            for row in self._fetchall(c):
                found[row[at]] = row
        return found

    # -- reads ------------------------------------------------------------------------------

    def select(
        self,
        table: Table,
        where: dict[str, Any] | None = None,
        order_by: Sequence[str] = (),
    ) -> list[tuple[Any, ...]]:
        cols = ", ".join(f'"{c}"' for c in table.column_names)
        sql = f"SELECT {cols} FROM {self._qualified(table.name)}"
        params: list[Any] = []
        if where:
            sql += " WHERE " + " AND ".join(f'"{k}" = {self.placeholder}' for k in where)
            params.extend(where.values())
        order = ", ".join(f'"{c}"' for c in (*order_by, table.key))
        with self._transaction(write=False) as c:
            c.execute(f"{sql} ORDER BY {order}", params)
            return self._fetchall(c)

    def count(self, table: Table) -> int:
        with self._transaction(write=False) as c:
            c.execute(f"SELECT COUNT(*) FROM {self._qualified(table.name)}")
            return int(self._fetchall(c)[0][0])

    def snapshot(self, projection: Projection) -> Snapshot:
        """The projection's main table and its position as of one moment."""
        table = projection.table
        cols = ", ".join(f'"{c}"' for c in table.column_names)
        sql = f'SELECT {cols} FROM {self._qualified(table.name)} ORDER BY "{table.key}"'
        with self._transaction(write=False, snapshot=True) as c:
            position = self._read_position(c, self.tracking_key(projection))
            c.execute(sql)
            return Snapshot(position, self._fetchall(c))

    def bounds(self, projection: Projection) -> tuple[int, int]:
        """(tracked position, highest position any row of the projection's tables carries)."""
        with self._transaction(write=False, snapshot=True) as c:
            tracked = self._read_position(c, self.tracking_key(projection))
            highest = 0
            for table in projection.stored_tables:
                c.execute(f'SELECT MAX("position") FROM {self._qualified(table.name)}')
                highest = max(highest, int(self._fetchall(c)[0][0] or 0))
        return tracked, highest

    def checksum(self, projection: Projection) -> Checksum:
        with self._transaction(write=False, snapshot=True) as c:
            position = self._read_position(c, self.tracking_key(projection))
            rows, sha = self._checksum(c, projection.table, projection.table.name)
        return Checksum(position, rows, sha)

    def _read_position(self, c: Any, key: str) -> int:
        c.execute(
            self._sql(
                f"SELECT notification_id FROM {self._tracking_table()} WHERE application_name = ?"
            ),
            (key,),
        )
        rows = self._fetchall(c)
        return int(rows[0][0] or 0) if rows else 0

    def _checksum(self, c: Any, table: Table, name: str) -> tuple[int, str]:
        """Hashes the rows page by page (keyset pagination), so memory stays flat."""
        cols = ", ".join(f'"{col}"' for col in table.column_names)
        qualified = self._qualified(name)
        key = f'"{table.key}"'
        at = table.index_of(table.key)

        def pages() -> Iterator[tuple[Any, ...]]:
            last: Any = None
            while True:
                if last is None:
                    c.execute(
                        f"SELECT {cols} FROM {qualified} ORDER BY {key} LIMIT {CHECKSUM_PAGE}"
                    )
                else:
                    c.execute(
                        f"SELECT {cols} FROM {qualified} WHERE {key} > {self.placeholder} "
                        f"ORDER BY {key} LIMIT {CHECKSUM_PAGE}",
                        (last,),
                    )
                rows = self._fetchall(c)
                yield from rows
                if len(rows) < CHECKSUM_PAGE:
                    return
                last = rows[-1][at]

        return hash_rows(pages())

    # -- rebuild ----------------------------------------------------------------------------

    def create_shadow(self, projection: Projection) -> None:
        """Empty shadow tables (no secondary indexes: they are made once, at the swap) and a
        shadow tracking row at 0. Whatever an interrupted rebuild left is dropped first."""
        with self._transaction(write=True) as c:
            self._lock_row(c, self.tracking_key(projection, shadow=True))
            for table in projection.stored_tables:
                c.execute(f"DROP TABLE IF EXISTS {self._qualified(shadow_name(table))}")
                c.execute(self._create_table_sql(table, shadow_name(table)))
            self._set_position(c, self.tracking_key(projection, shadow=True), 0)

    def drop_shadow(self, projection: Projection) -> None:
        with self._transaction(write=True) as c:
            self._lock_row(c, self.tracking_key(projection, shadow=True))
            for table in projection.stored_tables:
                c.execute(f"DROP TABLE IF EXISTS {self._qualified(shadow_name(table))}")
            self._delete_position(c, self.tracking_key(projection, shadow=True))

    def swap(self, projection: Projection, head: Callable[[], int], fetch: Fetch) -> Swapped:
        """One transaction: lock both tracking rows, bring the shadow and the live projection to the
        head, hash both, replace the live tables with the shadow ones, move the position."""
        live_key = self.tracking_key(projection)
        shadow_key = self.tracking_key(projection, shadow=True)
        with self._transaction(write=True) as c:
            live = self._locked_position(c, live_key)
            at = self._locked_position(c, shadow_key)
            # Every notification up to this head is committed and none can appear below it
            # later (the event store serialises its inserts), so head is a safe position.
            target = max(head(), at)
            events = 0
            for batch in fetch(at, target):
                self._write(c, projection, batch, shadow=True)
                events += batch.rows_read
            live_error: str | None = None
            if live < target:
                c.execute("SAVEPOINT live_catch_up")
                try:
                    for batch in fetch(live, target):
                        self._write(c, projection, batch, shadow=False)
                except DB_ERRORS as exc:
                    c.execute("ROLLBACK TO SAVEPOINT live_catch_up")
                    live_error = first_line(exc)
                c.execute("RELEASE SAVEPOINT live_catch_up")
            _, checksum_live = self._checksum(c, projection.table, projection.table.name)
            rows, checksum_rebuilt = self._checksum(
                c, projection.table, shadow_name(projection.table)
            )
            for table in projection.stored_tables:
                c.execute(f"DROP TABLE IF EXISTS {self._qualified(table.name)}")
                for statement in self._rename_sql(table, shadow_name(table), table.name):
                    c.execute(statement)
                for statement in self._index_sql(table, table.name):
                    c.execute(statement)
            self._set_position(c, live_key, target)
            self._delete_position(c, shadow_key)
        return Swapped(events, target, live, checksum_live, checksum_rebuilt, rows, live_error)

    @abstractmethod
    def rebuild_lock(self, projection: Projection) -> AbstractContextManager[KeepLock]:
        """Held for the whole of a rebuild of ``projection`` by one rebuild at a time, across
        processes; RebuildInProgress at once if another holds it."""

    # -- corruption, for tests and operators ------------------------------------------------

    def force_position(self, projection: Projection, position: int) -> None:
        """Sets a projection's tracking position without touching its rows (a test of verify)."""
        with self._transaction(write=True) as c:
            self._set_position(c, self.tracking_key(projection), position)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Runs one statement (``?`` placeholders) on the read models' database."""
        with self._transaction(write=True) as c:
            c.execute(self._sql(sql), tuple(params))

    def qualified(self, name: str) -> str:
        return self._qualified(name)
