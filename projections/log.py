"""Reading the notification log in batches, lean enough for a rebuild.

The library's ``select_notifications`` builds a ``Notification`` with a ``UUID`` for every row,
which is most of the cost of a replay when a view needs only the topic and version of most
events. ``LogReader`` runs the same query (same table, same ``topic IN`` filter, same order)
through the recorder's own datastore and hands out ``Notice`` objects that keep the event's
state undecoded until a view asks for it. Stores it does not know (memory) go through
``select_notifications`` unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from eventsourcing.persistence import ApplicationRecorder, Mapper
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder
from psycopg.rows import tuple_row

from projections.views import Notice, notices


class LogReader:
    def __init__(self, recorder: ApplicationRecorder, mapper: Mapper[Any]) -> None:
        self.recorder = recorder
        self.mapper = mapper

    def head(self) -> int:
        return self.recorder.max_notification_id() or 0

    def read(
        self, after: int, upto: int, topics: Sequence[str], limit: int
    ) -> tuple[list[Notice], int]:
        """At most ``limit`` notices of ``topics`` in (after, covered], in log order, and
        ``covered`` (at most ``upto``): the position up to which nothing else is to be read."""
        batch = notices(
            self.recorder.select_notifications(
                start=after, limit=limit, stop=upto, topics=topics, inclusive_of_start=False
            ),
            self.mapper,
        )
        return batch, _covered(batch, limit, upto)

    def batches(
        self, after: int, upto: int, topics: Sequence[str], limit: int
    ) -> Iterator[tuple[list[Notice], int]]:
        """(batch, position it covers up to) for every notice of ``topics`` in (after, upto];
        the last batch covers up to ``upto`` exactly, even where no notice of the topics is."""
        while after < upto:
            batch, covered = self.read(after, upto, topics, limit)
            yield batch, covered
            after = covered


def _covered(batch: Sequence[Notice], limit: int, upto: int) -> int:
    return batch[-1].id if len(batch) == limit else upto


class SQLiteLogReader(LogReader):
    recorder: SQLiteApplicationRecorder

    def read(
        self, after: int, upto: int, topics: Sequence[str], limit: int
    ) -> tuple[list[Notice], int]:
        marks = ",".join("?" * len(topics))
        sql = (
            "SELECT rowid, originator_id, originator_version, topic, state "
            f"FROM {self.recorder.events_table_name} WHERE rowid > ? AND rowid <= ? "
            + (f"AND topic IN ({marks}) " if topics else "")
            + "ORDER BY rowid LIMIT ?"
        )
        mapper = self.mapper
        with self.recorder.datastore.transaction(commit=False) as c:
            cursor = c.sqlite_cursor
            cursor.row_factory = None  # plain tuples
            cursor.execute(sql, (after, upto, *topics, limit))
            rows = cursor.fetchall()
        # SQLite keeps a UUID as its 32 hex digits: give the views the canonical text,
        # formatted once per aggregate in the batch.
        canonical = {
            h: f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}" for h in {r[1] for r in rows}
        }
        batch = [Notice(i, canonical[h], v, t, s, mapper) for i, h, v, t, s in rows]
        return batch, _covered(batch, limit, upto)


class PostgresLogReader(LogReader):
    """Reads the log in windows of ``limit`` notification ids. A bounded id range keeps
    PostgreSQL on the notification_id index whatever its statistics say; an open range with a
    topic filter can be planned as a scan of every later row and a sort, once per batch."""

    recorder: PostgresApplicationRecorder

    def read(
        self, after: int, upto: int, topics: Sequence[str], limit: int
    ) -> tuple[list[Notice], int]:
        end = min(after + limit, upto)
        table = f'"{self.recorder.datastore.schema}"."{self.recorder.events_table_name}"'
        sql = (
            "SELECT notification_id, originator_id::text, originator_version, topic, state "
            f"FROM {table} WHERE notification_id > %s AND notification_id <= %s "
            + ("AND topic = ANY(%s) " if topics else "")
            + "ORDER BY notification_id"
        )
        params: tuple[Any, ...] = (after, end, list(topics)) if topics else (after, end)
        mapper = self.mapper
        with (
            self.recorder.datastore.get_connection() as conn,
            conn.cursor(row_factory=tuple_row) as cursor,
        ):
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        return [Notice(i, k, v, t, s, mapper) for i, k, v, t, s in rows], end


def log_reader(recorder: ApplicationRecorder, mapper: Mapper[Any]) -> LogReader:
    if (
        isinstance(recorder, SQLiteApplicationRecorder)
        and recorder.datastore.originator_id_type == "uuid"
    ):
        return SQLiteLogReader(recorder, mapper)
    if isinstance(recorder, PostgresApplicationRecorder):
        return PostgresLogReader(recorder, mapper)
    return LogReader(recorder, mapper)
