"""The notification log: its topics, the state each job event leaves a job in, and the one
batched reader that every follower of the log uses (dispatcher queues, policy caches, read
models, rebuild, verify, audit, benchmarks).

Topics are the library's ``<aggregate topic>.<event class>`` strings. They are built here and
nowhere else, the job's from the transition table, so a renamed event cannot leave a follower
listening for a topic that no longer exists.

Why a reader of our own: the library's ``select_notifications`` builds a ``Notification`` with a
``UUID`` for every row, which is most of the cost of a replay when a follower needs only the
topic and version of most events. ``LogReader`` runs the same query (same table, same ``topic
IN`` filter, same order) through the recorder's own datastore and hands out ``Page`` objects:
the driver's rows, each made a ``Notice`` only when asked for, whose event is decoded only when
asked for. It also reads the log one aggregate after another (``by_aggregate``: verify), and
one aggregate's events as stored (``aggregate``, ``states_of``: the audit), for the same
reason. Stores it does not know (memory) go through the library's reads unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, overload
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

# How the library's JSON transcoder writes an event's state: its timestamp first (the event's
# first attribute), as ISO text (``DatetimeAsISO``).
_STORED_TIMESTAMP = b'{"timestamp":{"_type_":"datetime_iso","_data_":"'


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
        """The event's timestamp as ``isoformat()`` text. Read off the stored JSON where it
        leads it as the transcoder writes it (a quarter of the cost of a full decode, which a
        replay would pay for most of the events it keeps); decoded otherwise."""
        if self._event is None:
            stored = self._stored_timestamp()
            if stored is not None:
                return stored
        return str(self.event.timestamp.isoformat())

    def _stored_timestamp(self) -> str | None:
        mapper = self._mapper
        state = self._state
        if mapper.cipher or mapper.compressor or not state.startswith(_STORED_TIMESTAMP):
            return None
        start = len(_STORED_TIMESTAMP)
        text = state[start : state.find(b'"', start)]
        try:  # as the transcoder would: DatetimeAsISO.decode is datetime.fromisoformat
            return datetime.fromisoformat(text.decode()).isoformat()
        except ValueError:  # not plain ISO text (an escape, say): the full decode decides
            return None


Row = tuple[int, str, int, str, bytes]
"""A notification as the log's query returns it: id, aggregate id (as the store keeps it),
version, topic, state."""


class Page(Sequence[Notice]):
    """The notices of one read of the log, kept as the driver's rows and made into Notices only
    as they are asked for: a replay keeps few of a page's events (the last of each aggregate,
    those of a few topics), and making an object of every row would cost it more than reading
    the rows does."""

    __slots__ = ("_all", "_canonical", "_mapper", "_rows", "rows_read")

    def __init__(
        self,
        rows: list[Row],
        mapper: Mapper[Any],
        canonical: Callable[[str], str] = str,
        rows_read: int | None = None,
    ) -> None:
        self._rows = rows
        self._mapper = mapper
        self._canonical = canonical  # a stored aggregate id -> its canonical text
        self._all: list[Notice] | None = None
        # The notifications read to make it: more than it holds where a Keep dropped some.
        self.rows_read = len(rows) if rows_read is None else rows_read

    @classmethod
    def of(cls, batch: Iterable[Notification], mapper: Mapper[Any]) -> Page:
        rows = [(n.id, str(n.originator_id), n.originator_version, n.topic, n.state) for n in batch]
        return cls(rows, mapper)

    @property
    def rows(self) -> list[Row]:
        return self._rows

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> Notice: ...

    @overload
    def __getitem__(self, index: slice) -> Page: ...

    def __getitem__(self, index: int | slice) -> Notice | Page:
        if isinstance(index, slice):
            return Page(self._rows[index], self._mapper, self._canonical)
        if self._all is not None:
            return self._all[index]
        return self._notice(self._rows[index])

    def __iter__(self) -> Iterator[Notice]:
        if self._all is None:
            self._all = self._notices(self._rows)
        return iter(self._all)

    def last_of_each(self) -> list[Notice]:
        """The last notice of each aggregate in the page."""
        return self._notices(list({row[1]: row for row in self._rows}.values()))

    def having(self, topics: Container[str]) -> list[Notice]:
        """The notices of ``topics``, in order."""
        return self._notices([row for row in self._rows if row[3] in topics])

    def lasts_and(self, topics: Container[str]) -> Page:
        """The last notice of each aggregate and every notice of ``topics``, in order."""
        last = {row[1]: row for row in self._rows}.values()
        of_topics = [row for row in self._rows if row[3] in topics]
        rows = sorted({row[0]: row for row in (*of_topics, *last)}.values())  # ids are unique
        return Page(rows, self._mapper, self._canonical)

    def after(self, position: int, topics: Container[str]) -> Page:
        """The page's notices of ``topics`` after ``position``, as a page."""
        rows = [row for row in self._rows if row[0] > position and row[3] in topics]
        return Page(rows, self._mapper, self._canonical)

    def _notice(self, row: Row) -> Notice:
        i, key, version, topic, state = row
        return Notice(i, self._canonical(key), version, topic, state, self._mapper)

    def _notices(self, rows: list[Row]) -> list[Notice]:
        keys = {key: self._canonical(key) for key in {row[1] for row in rows}}
        mapper = self._mapper
        return [Notice(i, keys[k], v, t, s, mapper) for i, k, v, t, s in rows]


# -- the reader ------------------------------------------------------------------------------

# What each store's query selects, as a Row (a benchmark's bare scan selects the same).
SQLITE_COLUMNS = "rowid, originator_id, originator_version, topic, state"
POSTGRES_COLUMNS = "notification_id, originator_id::text, originator_version, topic, state"
# Rows a read takes from the driver at a time, however large its batch: a few thousand rows
# are made and dropped faster than tens of thousands (they stay in the CPU's caches).
READ_PAGE = 5000
_MAX_VERSION = 2**63 - 1  # every version (BIGINT's largest)
STATES_PER_QUERY = 500  # versions in one IN (...) (SQLite's limit on variables is far above)
Stored = tuple[int, str, bytes | None]
"""One event of an aggregate as stored, without what the caller knows (the aggregate's id) or
needs not (its notification id): version, topic, state (None: not read, see ``states_of``)."""

Keep = Callable[[Page], Page]
"""What of each page of a read its caller needs (``Page.lasts_and``, say): the read holds only
that, so a large batch costs no more memory than the rows its fold will look at."""


def _whole(page: Page) -> Page:
    return page


class LogReader:
    def __init__(self, recorder: ApplicationRecorder, mapper: Mapper[Any]) -> None:
        self.recorder = recorder
        self.mapper = mapper

    def head(self) -> int:
        return self.recorder.max_notification_id() or 0

    def read(
        self, after: int, upto: int, topics: Sequence[str], limit: int, keep: Keep = _whole
    ) -> tuple[Page, int]:
        """At most ``limit`` notices of ``topics`` in (after, covered], in log order, and
        ``covered`` (at most ``upto``): the position up to which nothing else is to be read."""
        page = Page.of(
            self.recorder.select_notifications(
                start=after, limit=limit, stop=upto, topics=topics, inclusive_of_start=False
            ),
            self.mapper,
        )
        covered = page[-1].id if len(page) == limit else upto
        kept = keep(page)
        return Page(kept.rows, self.mapper, rows_read=len(page)), covered

    def batches(
        self,
        after: int,
        upto: int,
        topics: Sequence[str],
        limit: int = 1000,
        keep: Keep = _whole,
    ) -> Iterator[tuple[Page, int]]:
        """(batch, position it covers up to) for every notice of ``topics`` in (after, upto];
        the last batch covers up to ``upto`` exactly, even where no notice of the topics is."""
        while after < upto:
            batch, covered = self.read(after, upto, topics, limit, keep)
            yield batch, covered
            after = covered

    def notices(
        self, topics: Sequence[str], after: int = 0, upto: int | None = None, limit: int = 1000
    ) -> Iterator[Notice]:
        """Every notice of ``topics`` in (after, upto], ``upto`` defaulting to the head now."""
        for batch, _ in self.batches(after, self.head() if upto is None else upto, topics, limit):
            yield from batch

    def by_aggregate(self, upto: int, limit: int = READ_PAGE) -> Iterator[Notice]:
        """Every notice up to ``upto``, each aggregate's together in version order (aggregates
        in no particular order), read ``limit`` at a time where the store can: a follower that
        folds one aggregate at a time holds one, not all of them."""
        everything = self.notices((), 0, upto, limit)
        yield from sorted(everything, key=lambda n: (n.key, n.version))

    def aggregate(
        self, originator_id: UUID, lte: int | None = None, *, states: bool = True
    ) -> list[Stored]:
        """The events of one aggregate up to version ``lte`` (default: all), in version order,
        as stored: one query, nothing decoded (the library's ``select_events`` makes a
        StoredEvent and a UUID of each row). Without ``states``, their states are left in the
        store (``states_of`` reads those a caller turns out to need): a job's ten thousand
        progress entries cost their versions and topics only."""
        stored = self.recorder.select_events(originator_id, lte=lte)
        return [(s.originator_version, s.topic, s.state if states else None) for s in stored]

    def states_of(self, originator_id: UUID, versions: Sequence[int]) -> dict[int, bytes]:
        """The stored state of each of ``versions`` of one aggregate."""
        wanted = set(versions)
        stored = self.recorder.select_events(originator_id)
        return {s.originator_version: s.state for s in stored if s.originator_version in wanted}


def _canonical_uuid(hex32: str) -> str:
    return f"{hex32[:8]}-{hex32[8:12]}-{hex32[12:16]}-{hex32[16:20]}-{hex32[20:]}"


class SQLiteLogReader(LogReader):
    """SQLite keeps a UUID as its 32 hex digits: its pages give followers the canonical text."""

    recorder: SQLiteApplicationRecorder

    def read(
        self, after: int, upto: int, topics: Sequence[str], limit: int, keep: Keep = _whole
    ) -> tuple[Page, int]:
        table = self.recorder.events_table_name
        marks = ",".join("?" * len(topics))
        where, params = f"AND topic IN ({marks}) " if topics else "", (after, upto, *topics, limit)
        if indexed_only(topics):
            # The partial index's own condition, then the rows of ``topics`` among them.
            table = f"{table} INDEXED BY {table}_indexed_topics"
            where = f"AND topic IN ({indexed_topics_sql()}) AND topic IN ({marks}) "
        sql = (
            f"SELECT {SQLITE_COLUMNS} "
            f"FROM {table} WHERE rowid > ? AND rowid <= ? {where}ORDER BY rowid LIMIT ?"
        )
        kept: list[Row] = []
        read, last = 0, after
        with self.recorder.datastore.transaction(commit=False) as c:
            cursor = c.sqlite_cursor
            cursor.row_factory = None  # plain tuples
            cursor.execute(sql, params)
            while rows := cursor.fetchmany(READ_PAGE):
                read += len(rows)
                last = rows[-1][0]
                kept += keep(Page(rows, self.mapper, _canonical_uuid)).rows
        page = Page(kept, self.mapper, _canonical_uuid, rows_read=read)
        return page, last if read == limit else upto

    def aggregate(
        self, originator_id: UUID, lte: int | None = None, *, states: bool = True
    ) -> list[Stored]:
        sql = (
            f"SELECT originator_version, topic, {'state' if states else 'NULL'} "
            f"FROM {self.recorder.events_table_name} "
            "WHERE originator_id = ? AND originator_version <= ? ORDER BY originator_version"
        )
        return self._rows(sql, (originator_id.hex, _MAX_VERSION if lte is None else lte))

    def states_of(self, originator_id: UUID, versions: Sequence[int]) -> dict[int, bytes]:
        found: dict[int, bytes] = {}
        for first in range(0, len(versions), STATES_PER_QUERY):
            chunk = versions[first : first + STATES_PER_QUERY]
            sql = (
                f"SELECT originator_version, state FROM {self.recorder.events_table_name} "
                f"WHERE originator_id = ? AND originator_version IN ({','.join('?' * len(chunk))})"
            )
            found.update(self._rows(sql, (originator_id.hex, *chunk)))
        return found

    def _rows(self, sql: str, params: Sequence[Any]) -> list[Any]:
        with self.recorder.datastore.transaction(commit=False) as c:
            cursor = c.sqlite_cursor
            cursor.row_factory = None  # plain tuples
            cursor.execute(sql, params)
            return cursor.fetchall()

    def by_aggregate(self, upto: int, limit: int = READ_PAGE) -> Iterator[Notice]:
        # Keyset pages along the primary key (originator_id, originator_version).
        base = f"SELECT {SQLITE_COLUMNS} FROM {self.recorder.events_table_name} WHERE rowid <= ? "
        order = "ORDER BY originator_id, originator_version LIMIT ?"
        sql, params = base + order, [upto, limit]
        while True:
            rows = self._rows(sql, params)
            yield from Page(rows, self.mapper, _canonical_uuid)
            if len(rows) < limit:
                return
            sql = base + "AND (originator_id, originator_version) > (?, ?) " + order
            params = [upto, rows[-1][1], rows[-1][2], limit]


class PostgresLogReader(LogReader):
    """Reads the log in windows of at most READ_PAGE notification ids, ``limit`` ids a batch.
    A bounded id range keeps PostgreSQL on the notification_id index whatever its statistics
    say (an open range with a topic filter can be planned as a scan of every later row and a
    sort, once per batch), and a window's rows come back faster than a large result's. Binary
    transfer: the state's bytes as they are, not as hex text to decode."""

    recorder: PostgresApplicationRecorder

    def read(
        self, after: int, upto: int, topics: Sequence[str], limit: int, keep: Keep = _whole
    ) -> tuple[Page, int]:
        if indexed_only(topics):
            return self._read_indexed(after, upto, topics, limit, keep)
        end = min(after + limit, upto)
        sql = (
            f"SELECT {POSTGRES_COLUMNS} "
            f"FROM {self._table} WHERE notification_id > %s AND notification_id <= %s "
            + ("AND topic = ANY(%s) " if topics else "")
            + "ORDER BY notification_id"
        )
        extra: tuple[Any, ...] = (list(topics),) if topics else ()
        kept: list[Row] = []
        read = 0
        with (
            self.recorder.datastore.get_connection() as conn,
            conn.cursor(row_factory=tuple_row, binary=True) as cursor,
        ):
            for start in range(after, end, READ_PAGE):
                cursor.execute(sql, (start, min(start + READ_PAGE, end), *extra))
                rows = cursor.fetchall()
                read += len(rows)
                kept += keep(Page(rows, self.mapper)).rows
        return Page(kept, self.mapper, rows_read=read), end

    def aggregate(
        self, originator_id: UUID, lte: int | None = None, *, states: bool = True
    ) -> list[Stored]:
        sql = (
            f"SELECT originator_version, topic, {'state' if states else 'NULL'} "
            f"FROM {self._table} "
            "WHERE originator_id = %s AND originator_version <= %s ORDER BY originator_version"
        )
        return self._rows(sql, (originator_id, _MAX_VERSION if lte is None else lte))

    def states_of(self, originator_id: UUID, versions: Sequence[int]) -> dict[int, bytes]:
        sql = (
            f"SELECT originator_version, state FROM {self._table} "
            "WHERE originator_id = %s AND originator_version = ANY(%s)"
        )
        return dict(self._rows(sql, (originator_id, list(versions))))

    @property
    def _table(self) -> str:
        return f'"{self.recorder.datastore.schema}"."{self.recorder.events_table_name}"'

    def _rows(self, sql: str, params: Sequence[Any]) -> list[Any]:
        with (
            self.recorder.datastore.get_connection() as conn,
            conn.cursor(row_factory=tuple_row, binary=True) as cursor,
        ):
            cursor.execute(sql, params)
            return cursor.fetchall()

    def by_aggregate(self, upto: int, limit: int = READ_PAGE) -> Iterator[Notice]:
        # Keyset pages along the primary key (originator_id, originator_version).
        # The table's own originator_id (e.), not the output column of that name (its text):
        # only that order is the primary key's.
        base = f"SELECT {POSTGRES_COLUMNS} FROM {self._table} e WHERE notification_id <= %s "
        order = "ORDER BY e.originator_id, e.originator_version LIMIT %s"
        sql, params = base + order, [upto, limit]
        while True:
            rows = self._rows(sql, params)
            yield from Page(rows, self.mapper)
            if len(rows) < limit:
                return
            sql = base + "AND (e.originator_id, e.originator_version) > (%s::uuid, %s) " + order
            params = [upto, rows[-1][1], rows[-1][2], limit]

    def _read_indexed(
        self, after: int, upto: int, topics: Sequence[str], limit: int, keep: Keep
    ) -> tuple[Page, int]:
        # The partial index holds only these rows: no window needed to keep to an index.
        sql = (
            f"SELECT {POSTGRES_COLUMNS} FROM {self._table} "
            "WHERE notification_id > %s AND notification_id <= %s "
            f"AND topic IN ({indexed_topics_sql()}) AND topic = ANY(%s) "
            "ORDER BY notification_id LIMIT %s"
        )
        rows = self._rows(sql, (after, upto, list(topics), limit))
        page = Page(keep(Page(rows, self.mapper)).rows, self.mapper, rows_read=len(rows))
        return page, rows[-1][0] if len(rows) == limit else upto


def log_reader(recorder: ApplicationRecorder, mapper: Mapper[Any]) -> LogReader:
    if (
        isinstance(recorder, SQLiteApplicationRecorder)
        and recorder.datastore.originator_id_type == "uuid"
    ):
        return SQLiteLogReader(recorder, mapper)
    if isinstance(recorder, PostgresApplicationRecorder):
        return PostgresLogReader(recorder, mapper)
    return LogReader(recorder, mapper)
