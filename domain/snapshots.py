"""Job snapshots as a checked shortcut (DESIGN.md §1, invariant 5: replay is truth).

The service snapshots a job every ``SNAPSHOT_INTERVAL`` events (the library's snapshotting), so
a long job loads from its latest snapshot and the events after it. A snapshot is only a cache of
the fold of those events, kept in a table anyone with SQL access can change, so nothing here
trusts one blindly:

* ``load_job`` (every command and ``get``; also what a new snapshot is taken from) reads the
  events from the snapshot's own version on — the library's two queries, one row more — and
  uses the snapshot only if it decodes into a job whose state is the state the event at its
  version leaves a job in (``STATE_AFTER``: by the table, each job event fixes the state).
  Otherwise it folds every event of the job and logs a warning. The transition table checks
  the state alone, so a corrupted snapshot can never make a command record a transition the
  table forbids; it costs no query and no decode the library's load does not.
* What that check cannot see — an attempt, session or progress changed while the state still
  agrees with the event — ``SnapshotCheck`` finds: it compares each snapshot with the fold of
  its job's events at that version, as ``sequent verify``'s replay folds them (drift
  ``snapshot``). The audit reads no snapshots at all.

The warnings go to the ``domain.snapshots`` logger, which a worker's logging configuration
shows; a CLI command keeps its one-line stderr contract (the logger has a NullHandler).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresAggregateRecorder
from eventsourcing.sqlite import SQLiteAggregateRecorder
from psycopg.rows import tuple_row

from domain.batch_reads import latest_of
from domain.job import CurationJob
from domain.log import STATE_AFTER, UNREADABLE
from domain.store_errors import first_line

log = logging.getLogger(__name__)
log.addHandler(logging.NullHandler())


@dataclass(frozen=True)
class SnapshotProblem:
    """A snapshot that is not the fold of its aggregate's events up to its version."""

    aggregate_id: str
    version: int
    why: str
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> expected, actual


# -- loading a job -------------------------------------------------------------------------------


def fold(aggregate: object | None, events: Iterable[Any]) -> object | None:
    """The library's ``project_aggregate`` without its per-event ``isinstance`` against a
    runtime Protocol (an assertion: our events are the library's, all of which mutate), which
    on Python 3.11 costs more than decoding the event (~20 us each)."""
    for event in events:
        aggregate = event.mutate(aggregate)
    return aggregate


def load_job(app: Application[UUID], job_id: UUID, version: int | None = None) -> object | None:
    """The aggregate ``job_id`` as of ``version`` (default: its latest): its latest snapshot at
    or before that version and the events after it if the snapshot passes the check above,
    else the fold of all its events. None when the store has no event of ``job_id``."""
    snapshots = app.snapshots
    latest = (
        snapshots.recorder.select_events(job_id, lte=version, desc=True, limit=1)
        if snapshots is not None
        else ()
    )
    if latest:
        at = latest[0].originator_version
        stored = app.recorder.select_events(job_id, gt=at - 1, lte=version)
        return job_from(app, job_id, latest[0], stored, version)
    return fold(None, app.events.get(job_id, lte=version))


def latest_snapshots(app: Application[UUID], job_ids: Sequence[UUID]) -> dict[UUID, StoredEvent]:
    """The latest stored snapshot of each of ``job_ids`` that has one, in one query where the
    store's recorder can (``domain.batch_reads``); ``job_from`` decides whether to use it."""
    if app.snapshots is None or not job_ids:
        return {}
    return latest_of(app.snapshots.recorder, job_ids)


def job_from(
    app: Application[UUID],
    job_id: UUID,
    latest: StoredEvent | None,
    stored: Sequence[StoredEvent],
    version: int | None = None,
) -> object | None:
    """``load_job`` from what it read: the job's latest snapshot (None: it has none) and its
    stored events — from the snapshot's version on (earlier ones are passed over), or every
    one when there is no snapshot. A snapshot that fails the check costs one more read."""
    if latest is not None:
        at = latest.originator_version
        stored = [s for s in stored if s.originator_version >= at]
        snapshot, why = _read_snapshot(app, latest)
        if why is None:
            why = _state_problem(snapshot, stored[0] if stored else None, at)
        if why is None:
            return fold(snapshot, (app.mapper.to_domain_event(s) for s in stored[1:]))
        log.warning(
            "job %s: snapshot at version %d not used (%s); loaded from its events", job_id, at, why
        )
        return fold(None, app.events.get(job_id, lte=version))
    return fold(None, (app.mapper.to_domain_event(s) for s in stored))


def _read_snapshot(app: Application[UUID], stored: StoredEvent) -> tuple[Any, str | None]:
    """(the aggregate a stored snapshot holds, None) or (None, why it cannot be read)."""
    assert app.snapshots is not None
    try:
        snapshot: Any = app.snapshots.mapper.to_domain_event(stored)
        return snapshot.mutate(None), None
    except UNREADABLE as exc:
        return None, f"undecodable: {first_line(exc)}"


def _state_problem(snapshot: Any, event: StoredEvent | None, version: int) -> str | None:
    if not isinstance(snapshot, CurationJob):
        return f"it holds a {type(snapshot).__name__}, not a job"
    if event is None or event.originator_version != version:
        return f"the job has no event at version {version}"
    after = STATE_AFTER.get(event.topic)
    if after is None:
        return f"the event at version {version} is not a job event"
    state = getattr(snapshot, "state", None)
    if state != after:
        name = event.topic.rsplit(".", 1)[-1]
        return f"it says state {state}, but its version's event ({name}) leaves a job {after}"
    return None


# -- checking every snapshot ---------------------------------------------------------------------


class SnapshotCheck:
    """Every stored job snapshot compared with the fold of its job's events up to its version,
    for a caller that folds each aggregate's events itself, in version order, one aggregate
    after another (``sequent verify``'s replay), so no job is folded twice: ``of(key)`` before
    folding an aggregate, ``JobSnapshots.folded`` after each of its events, ``done`` after the
    last. ``rest()`` then checks the snapshots no fold reached (of an aggregate the caller did
    not fold, or past the events it folded) from their jobs' events in the store.
    ``checked``: the snapshots compared; ``problems``: what was found."""

    def __init__(self, app: Application[UUID]) -> None:
        self.app = app
        self.checked = 0
        self.problems: list[SnapshotProblem] = []
        # Every stored snapshot's versions by aggregate, where one query lists them.
        self._listed: dict[str, list[int]] | None = None
        recorder = app.snapshots.recorder if app.snapshots is not None else None
        if isinstance(recorder, SQLiteAggregateRecorder | PostgresAggregateRecorder):
            self._listed = {}
            for key, version in _snapshot_keys(recorder):
                self._listed.setdefault(key, []).append(version)
        self._unreached: dict[str, list[int]] = {}

    def of(self, key: str) -> JobSnapshots | None:
        """The snapshots of aggregate ``key`` to check as its events are folded (None: none)."""
        if self._listed is not None:
            versions = self._listed.pop(key, [])
        elif self.app.snapshots is not None:  # a store whose snapshots cannot be listed
            stored = self.app.snapshots.recorder.select_events(UUID(key))
            versions = [snapshot.originator_version for snapshot in stored]
        else:
            return None
        self.checked += len(versions)
        return JobSnapshots(self.app, UUID(key), versions) if versions else None

    def done(self, job: JobSnapshots, problems: list[SnapshotProblem], *, unreadable: bool) -> None:
        """Takes what the fold of ``job`` found; at an event it could not read
        (``unreadable``: the replay reports that) there is nothing to fold later snapshots to."""
        self.problems.extend(problems)
        if job.left and not unreadable:
            self._unreached[str(job.job_id)] = job.left

    def rest(self) -> None:
        """Checks the snapshots no fold reached, each job's events read from the store."""
        listed = self._listed or {}
        self.checked += sum(len(versions) for versions in listed.values())
        for key, versions in (*listed.items(), *self._unreached.items()):
            self.problems.extend(_job_snapshot_problems(self.app, key, sorted(versions)))


class JobSnapshots:
    """One job's snapshot versions, each compared with the fold of the job's events at that
    version as the fold goes."""

    def __init__(self, app: Application[UUID], job_id: UUID, versions: Sequence[int]) -> None:
        self.app = app
        self.job_id = job_id
        self._versions = sorted(versions)
        self._next = 0

    @property
    def left(self) -> list[int]:
        """The versions no event folded so far reached."""
        return self._versions[self._next :]

    def folded(self, version: int, aggregate: Any) -> list[SnapshotProblem]:
        """What is wrong with the snapshots up to ``version``, the job's event just folded
        into ``aggregate``."""
        found: list[SnapshotProblem] = []
        while self._next < len(self._versions) and self._versions[self._next] <= version:
            at = self._versions[self._next]
            if at == version:
                problem = _compare(self.app, self.job_id, at, aggregate)
            else:  # a version between two events cannot happen; below the first, neither
                problem = _no_event(self.job_id, at)
            if problem is not None:
                found.append(problem)
            self._next += 1
        return found


def _job_snapshot_problems(
    app: Application[UUID], key: str, versions: Sequence[int]
) -> Iterator[SnapshotProblem]:
    try:
        job_id = UUID(key)
    except ValueError:
        yield SnapshotProblem(key, versions[0], "its aggregate id is not a UUID")
        return
    job = JobSnapshots(app, job_id, versions)
    folded: Any = None
    for stored in app.recorder.select_events(job_id, lte=versions[-1]):
        try:
            folded = fold(folded, [app.mapper.to_domain_event(stored)])
        except UNREADABLE:
            return  # an undecodable event: the replay of the log reports it, nothing to fold to
        yield from job.folded(stored.originator_version, folded)
    for version in job.left:
        yield _no_event(job_id, version)


def _no_event(job_id: UUID, version: int) -> SnapshotProblem:
    return SnapshotProblem(str(job_id), version, "the job has no event at its version")


def _compare(
    app: Application[UUID], job_id: UUID, version: int, folded: Any
) -> SnapshotProblem | None:
    assert app.snapshots is not None
    (stored,) = app.snapshots.recorder.select_events(job_id, gt=version - 1, lte=version)
    snapshot, why = _read_snapshot(app, stored)
    if why is not None:
        return SnapshotProblem(str(job_id), version, why)
    if not isinstance(folded, CurationJob):
        return SnapshotProblem(str(job_id), version, "a snapshot of an aggregate that is no job")
    expected, actual = vars(folded), vars(snapshot)
    fields = {
        name: {"expected": _shown(expected.get(name)), "actual": _shown(actual.get(name))}
        for name in sorted(expected.keys() | actual.keys())
        if name != "_pending_events" and expected.get(name) != actual.get(name)
    }
    if not fields:
        return None
    return SnapshotProblem(str(job_id), version, "differs from the fold of its events", fields)


def _shown(value: Any) -> Any:
    # A job's progress log can hold thousands of entries: say how many, not what.
    return f"{len(value)} entries" if isinstance(value, list) else value


def _canonical(key: str) -> str:
    try:
        return str(UUID(key))  # SQLite keeps a UUID as its 32 hex digits
    except ValueError:
        return key


def _snapshot_keys(
    recorder: SQLiteAggregateRecorder | PostgresAggregateRecorder,
) -> Iterator[tuple[str, int]]:
    """(aggregate id as canonical text, version) of every stored snapshot, in one query (every
    row, whatever aggregate it claims to be of)."""
    if isinstance(recorder, SQLiteAggregateRecorder):
        sql = f"SELECT originator_id, originator_version FROM {recorder.events_table_name}"
        with recorder.datastore.transaction(commit=False) as c:
            c.execute(sql)
            rows = c.fetchall()
        yield from ((_canonical(str(r[0])), int(r[1])) for r in rows)
    else:
        table = f'"{recorder.datastore.schema}"."{recorder.events_table_name}"'
        sql = f"SELECT originator_id::text, originator_version FROM {table}"
        with (
            recorder.datastore.get_connection() as conn,
            conn.cursor(row_factory=tuple_row) as cursor,
        ):
            cursor.execute(sql)
            yield from ((str(k), int(v)) for k, v in cursor.fetchall())
