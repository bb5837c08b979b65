"""The notification log: its topics, the state each job event leaves a job in, and the one
batched reader that every follower of the log uses (dispatcher queues, policy caches, read
models, rebuild, verify, audit, benchmarks).

Topics are the library's ``<aggregate topic>.<event class>`` strings. They are built here and
nowhere else, the job's from the transition table, so a renamed event cannot leave a follower
listening for a topic that no longer exists.

Why a reader of our own: the library's ``select_notifications`` builds a ``Notification`` with a
``UUID`` for every row, which is most of the cost of a replay when a follower needs only the
topic and version of most events. ``LogReader`` runs the same query (same table, same ``topic
IN`` filter, same order) through the recorder's own datastore and hands out ``Notice`` objects
that keep the event's state undecoded until someone asks for it. Stores it does not know
(memory) go through ``select_notifications`` unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.persistence import (
    ApplicationRecorder,
    Mapper,
    MapperDeserialisationError,
    Notification,
    StoredEvent,
)
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder
from eventsourcing.utils import TopicError, get_topic
from psycopg.rows import tuple_row

from domain.authorization import Decision, Policy
from domain.invocation import Invocation
from domain.job import CurationJob
from domain.orphan import OrphanSession
from domain.transitions import TRANSITIONS, JobState, Transition

# -- topics ----------------------------------------------------------------------------------

JOB = get_topic(CurationJob)
INVOCATION = get_topic(Invocation)
POLICY = get_topic(Policy)
DECISION = get_topic(Decision)


def job_topic(action: str) -> str:
    """The topic of the event that ``action`` records on a job (from the table)."""
    return f"{JOB}.{TRANSITIONS[action].event}"


# The table's row for each job event's topic: which states it may follow, where it leaves the job.
JOB_TRANSITIONS: Mapping[str, Transition] = {f"{JOB}.{t.event}": t for t in TRANSITIONS.values()}
# Every job event moves the job to one fixed state: the transition table says which.
STATE_AFTER: Mapping[str, JobState] = {topic: t.target for topic, t in JOB_TRANSITIONS.items()}
JOB_TOPICS = tuple(STATE_AFTER)
JOB_CREATED = job_topic("Create")
JOB_RETRIED = job_topic("Retry")
JOB_FAILED = job_topic("Fail")
JOB_SESSION_SPAWNED = job_topic("SessionSpawned")
JOB_STARTS_INVOCATION = frozenset(
    f"{JOB}.{t.event}" for t in TRANSITIONS.values() if t.starts_invocation
)


def invalid_step(topic: str, before: str | None) -> str | None:
    """Why a job event of ``topic`` cannot follow a job in state ``before`` (None: the job has
    no event yet), by the transition table; None when it can. The aggregate checks this before
    it records an event; followers of the log use it to find events that were written anyway
    (e.g. by a command that trusted a corrupted snapshot)."""
    row = JOB_TRANSITIONS[topic]
    if before is None:
        return None if not row.sources else f"{row.event} as the job's first event"
    if before in row.sources:  # JobState is a StrEnum: its members equal their text
        return None
    allowed = ", ".join(sorted(row.sources)) or "none: it only creates a job"
    return f"{row.event} from state {before} (allowed from: {allowed})"


STARTED = f"{INVOCATION}.Started"
UNRECOGNISED = f"{INVOCATION}.Unrecognised"
CLAIMED = f"{INVOCATION}.Claimed"
FINISHED = f"{INVOCATION}.Finished"
APPLIED = f"{INVOCATION}.Applied"
DISCARDED = f"{INVOCATION}.Discarded"
COMPENSATED = f"{INVOCATION}.Compensated"
ORPHAN_STOPPED = f"{INVOCATION}.OrphanStopped"  # reconciliation stopped a session this run made
UNATTRIBUTED_ORPHAN_STOPPED = f"{get_topic(OrphanSession)}.Stopped"  # one no run can be named for
# Every stop sequent makes of a session: a discarded run's compensation, or reconciliation.
SESSION_STOPS = frozenset({COMPENSATED, ORPHAN_STOPPED, UNATTRIBUTED_ORPHAN_STOPPED})
INVOCATION_CREATED = frozenset({STARTED, UNRECOGNISED})
VERDICTS = frozenset({APPLIED, DISCARDED})

POLICY_ADDED = f"{POLICY}.PolicyAdded"
POLICY_REVOKED = f"{POLICY}.PolicyRevoked"
POLICY_TOPICS = (POLICY_ADDED, POLICY_REVOKED)
DECISION_REQUESTED = f"{DECISION}.Requested"
DECISION_APPROVED = f"{DECISION}.Approved"
DECISION_REJECTED = f"{DECISION}.Rejected"
DECISION_TOPICS = (DECISION_REQUESTED, DECISION_APPROVED, DECISION_REJECTED)
# Topics rare in the log that a follower reads on its own (the policy book): the store keeps a
# partial index of their rows (``domain/store_recorders.py``), so reading them costs what they
# are, not what the whole log is (a worker's first authorization check against a million
# events read every one of them: 1.9 s on PostgreSQL).
INDEXED_TOPICS = (*POLICY_TOPICS, *DECISION_TOPICS)


def indexed_topics_sql() -> str:
    """``INDEXED_TOPICS`` as an SQL list of literals: a partial index is only used for a
    query whose condition names the same literals (never for bound parameters)."""
    return ", ".join("'" + topic.replace("'", "''") + "'" for topic in INDEXED_TOPICS)


def indexed_only(topics: Sequence[str]) -> bool:
    return bool(topics) and set(topics) <= set(INDEXED_TOPICS)


# What decoding or folding a stored event (or snapshot) can raise when its row was written or
# changed by hand: bytes that are not the transcoder's JSON, a topic naming no class, JSON whose
# keys are not what the class's constructor or mutator expects. Whoever follows the log
# decides what such an event means to it; none may stop on one (DESIGN.md §1 invariant 5).
UNREADABLE: tuple[type[Exception], ...] = (
    MapperDeserialisationError,
    TopicError,
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
)


# -- notices ---------------------------------------------------------------------------------


class Notice:
    """One notification as a follower sees it: position, aggregate id (canonical text),
    version and topic at once; the decoded domain event only when asked for (and then once)."""

    __slots__ = ("_event", "_mapper", "_state", "id", "key", "topic", "version")

    def __init__(
        self, id: int, key: str, version: int, topic: str, state: bytes, mapper: Mapper[Any]
    ) -> None:
        self.id = id
        self.key = key
        self.version = version
        self.topic = topic
        self._state = state
        self._mapper = mapper
        self._event: Any = None

    @classmethod
    def of(cls, n: Notification, mapper: Mapper[Any]) -> Notice:
        return cls(n.id, str(n.originator_id), n.originator_version, n.topic, n.state, mapper)

    @property
    def originator_id(self) -> UUID:
        return UUID(self.key)

    @property
    def event(self) -> Any:
        if self._event is None:
            stored = StoredEvent(
                originator_id=UUID(self.key),
                originator_version=self.version,
                topic=self.topic,
                state=bytes(self._state),
            )
            self._event = self._mapper.to_domain_event(stored)
        return self._event

    @property
    def timestamp(self) -> str:
        return str(self.event.timestamp.isoformat())


def notices(batch: Iterable[Notification], mapper: Mapper[Any]) -> list[Notice]:
    return [Notice.of(n, mapper) for n in batch]


# -- the reader ------------------------------------------------------------------------------


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
        self, after: int, upto: int, topics: Sequence[str], limit: int = 1000
    ) -> Iterator[tuple[list[Notice], int]]:
        """(batch, position it covers up to) for every notice of ``topics`` in (after, upto];
        the last batch covers up to ``upto`` exactly, even where no notice of the topics is."""
        while after < upto:
            batch, covered = self.read(after, upto, topics, limit)
            yield batch, covered
            after = covered

    def notices(
        self, topics: Sequence[str], after: int = 0, upto: int | None = None, limit: int = 1000
    ) -> Iterator[Notice]:
        """Every notice of ``topics`` in (after, upto], ``upto`` defaulting to the head now."""
        for batch, _ in self.batches(after, self.head() if upto is None else upto, topics, limit):
            yield from batch


def _covered(batch: Sequence[Notice], limit: int, upto: int) -> int:
    return batch[-1].id if len(batch) == limit else upto


class SQLiteLogReader(LogReader):
    recorder: SQLiteApplicationRecorder

    def read(
        self, after: int, upto: int, topics: Sequence[str], limit: int
    ) -> tuple[list[Notice], int]:
        table = self.recorder.events_table_name
        marks = ",".join("?" * len(topics))
        where, params = f"AND topic IN ({marks}) " if topics else "", (after, upto, *topics, limit)
        if indexed_only(topics):
            # The partial index's own condition, then the rows of ``topics`` among them.
            table = f"{table} INDEXED BY {table}_indexed_topics"
            where = f"AND topic IN ({indexed_topics_sql()}) AND topic IN ({marks}) "
        sql = (
            "SELECT rowid, originator_id, originator_version, topic, state "
            f"FROM {table} WHERE rowid > ? AND rowid <= ? {where}ORDER BY rowid LIMIT ?"
        )
        mapper = self.mapper
        with self.recorder.datastore.transaction(commit=False) as c:
            cursor = c.sqlite_cursor
            cursor.row_factory = None  # plain tuples
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        # SQLite keeps a UUID as its 32 hex digits: give followers the canonical text,
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
        if indexed_only(topics):
            return self._read_indexed(after, upto, topics, limit)
        end = min(after + limit, upto)
        table = self._table()
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

    def _read_indexed(
        self, after: int, upto: int, topics: Sequence[str], limit: int
    ) -> tuple[list[Notice], int]:
        # The partial index holds only these rows: no window needed to keep to an index.
        sql = (
            "SELECT notification_id, originator_id::text, originator_version, topic, state "
            f"FROM {self._table()} WHERE notification_id > %s AND notification_id <= %s "
            f"AND topic IN ({indexed_topics_sql()}) AND topic = ANY(%s) "
            "ORDER BY notification_id LIMIT %s"
        )
        with (
            self.recorder.datastore.get_connection() as conn,
            conn.cursor(row_factory=tuple_row) as cursor,
        ):
            cursor.execute(sql, (after, upto, list(topics), limit))
            rows = cursor.fetchall()
        batch = [Notice(i, k, v, t, s, self.mapper) for i, k, v, t, s in rows]
        return batch, _covered(batch, limit, upto)

    def _table(self) -> str:
        return f'"{self.recorder.datastore.schema}"."{self.recorder.events_table_name}"'


def log_reader(recorder: ApplicationRecorder, mapper: Mapper[Any]) -> LogReader:
    if (
        isinstance(recorder, SQLiteApplicationRecorder)
        and recorder.datastore.originator_id_type == "uuid"
    ):
        return SQLiteLogReader(recorder, mapper)
    if isinstance(recorder, PostgresApplicationRecorder):
        return PostgresLogReader(recorder, mapper)
    return LogReader(recorder, mapper)
