"""The read models' recorder on PostgreSQL: the library's PostgreSQL tracking recorder with the
read models' tables, created under the store's DDL lock. See ``recorders.py``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from psycopg.sql import SQL, Literal

from domain.store_url import ddl_lock_key
from projections.errors import RebuildInProgress
from projections.projection import Projection, Write
from projections.recorders import DB_ERRORS, KeepLock, ReadModels
from projections.schema import INT, Table

POSTGRES_TRACKING_TABLE = "projection_tracking"


class PostgresReadModels(PostgresTrackingRecorder, ReadModels):
    placeholder = "%s"

    def __init__(
        self, datastore: PostgresDatastore, *, app_name: str, projections: Sequence[Projection]
    ):
        self.app_name = app_name
        self.projections = tuple(projections)
        super().__init__(datastore, tracking_table_name=POSTGRES_TRACKING_TABLE)
        # The library runs these in one transaction: taking the store's DDL lock first makes
        # concurrent openers create the tables one at a time, as the event store's are.
        self.sql_create_statements.insert(
            0,
            SQL("SELECT pg_advisory_xact_lock(hashtextextended({}, 0))").format(
                Literal(ddl_lock_key(datastore.schema))
            ),
        )
        self.sql_create_statements.extend(
            SQL(s).format() for s in self._projection_ddl(self.projections)
        )

    @contextmanager
    def _transaction(self, *, write: bool, snapshot: bool = False) -> Iterator[Any]:
        with self.datastore.transaction(commit=write) as c:
            if snapshot:
                c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield c

    def _qualified(self, name: str) -> str:
        return f'"{self.datastore.schema}"."{name}"'

    @contextmanager
    def rebuild_lock(self, projection: Projection) -> Iterator[KeepLock]:
        # A session lock on a connection of its own, held until released or the session
        # ends: a rebuild that dies lets go of it with its connection.
        key = f"{self.datastore.schema}.{self.tracking_key(projection)}"
        with self.datastore.get_connection() as conn:
            row = conn.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 0)) AS taken", (key,)
            ).fetchone()
            if row is None or not row["taken"]:
                raise RebuildInProgress(projection.name, "another session holds its lock")
            try:
                yield lambda: None
            finally:
                with suppress(*DB_ERRORS):
                    conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))

    def _execute(self, c: Any, writes: Sequence[Write], shadow: bool) -> None:
        # One statement per write, its rows as one array per column: executemany would send
        # (and the server plan and run) a statement per row.
        for write in writes:
            if write.rows:
                columns = [list(column) for column in zip(*write.rows, strict=True)]
                c.execute(self._write_sql(write, shadow), columns)

    def _rows_sql(self, table: Table) -> str:
        arrays = ", ".join(f"%s::{self._column_type(c.type)}[]" for c in table.columns)
        return f"SELECT * FROM unnest({arrays})"

    def _tracking_table(self) -> str:
        return self._qualified(self.tracking_table_name)

    def _lock_row(self, c: Any, key: str) -> None:
        pass  # _locked_position reads the row FOR UPDATE

    def _for_update(self) -> str:
        return " FOR UPDATE"

    def _track(self, c: Any, key: str, position: int) -> None:
        self._insert_tracking(c, Tracking(key, position))

    def _fetchall(self, c: Any) -> list[tuple[Any, ...]]:
        return [tuple(row.values()) for row in c.fetchall()]

    def _column_type(self, kind: str) -> str:
        return "BIGINT" if kind == INT else "TEXT"

    def _create_table_sql(self, table: Table, name: str) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS {self._qualified(name)} ({self._columns_sql(table)}, "
            f'CONSTRAINT "{name}_pkey" PRIMARY KEY ("{table.key}"))'
        )

    def _rename_sql(self, table: Table, old: str, new: str) -> list[str]:
        return [
            f'ALTER TABLE {self._qualified(old)} RENAME TO "{new}"',
            f'ALTER TABLE {self._qualified(new)} RENAME CONSTRAINT "{old}_pkey" TO "{new}_pkey"',
        ]
