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
  agrees with the event — ``check_snapshots`` finds: it folds every snapshotted job and
  compares each of its snapshots with the fold at that version (``sequent verify``: drift
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
from eventsourcing.persistence import AggregateRecorder, StoredEvent
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


def check_snapshots(
    app: Application[UUID], job_ids: Iterable[str]
) -> tuple[int, list[SnapshotProblem]]:
    """(how many snapshots were checked, the problems found): every snapshot in the store
    (``job_ids``: the jobs the caller knows of, for stores whose snapshots cannot be listed by a
    query) compared with the fold of its job's events up to its version. One read of each
    snapshotted job's events; each snapshot decoded once, one at a time."""
    if app.snapshots is None:
        return 0, []
    by_job: dict[str, list[int]] = {}
    for key, version in _snapshot_keys(app.snapshots.recorder, job_ids):
        by_job.setdefault(key, []).append(version)
    problems: list[SnapshotProblem] = []
    for key, versions in by_job.items():
        problems.extend(_job_snapshot_problems(app, key, sorted(versions)))
    return sum(len(v) for v in by_job.values()), problems


def _job_snapshot_problems(
    app: Application[UUID], key: str, versions: Sequence[int]
) -> Iterator[SnapshotProblem]:
    try:
        job_id = UUID(key)
    except ValueError:
        yield SnapshotProblem(key, versions[0], "its aggregate id is not a UUID")
        return
    wanted = iter(versions)
    version = next(wanted, None)
    folded: Any = None
    for stored in app.recorder.select_events(job_id, lte=versions[-1]):
        try:
            folded = fold(folded, [app.mapper.to_domain_event(stored)])
        except UNREADABLE:
            return  # an undecodable event: the replay of the log reports it, nothing to fold to
        while version is not None and version <= stored.originator_version:
            if version == stored.originator_version:
                problem = _compare(app, job_id, version, folded)
                if problem is not None:
                    yield problem
            else:  # a version between two events cannot happen; below the first, neither
                yield SnapshotProblem(str(job_id), version, "the job has no event at its version")
            version = next(wanted, None)
    while version is not None:
        yield SnapshotProblem(str(job_id), version, "the job has no event at its version")
        version = next(wanted, None)


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
    recorder: AggregateRecorder, job_ids: Iterable[str]
) -> Iterator[tuple[str, int]]:
    """(aggregate id as canonical text, version) of every stored snapshot: one query on SQLite
    and PostgreSQL (every row, whatever aggregate it claims to be of), else one per job."""
    if isinstance(recorder, SQLiteAggregateRecorder):
        sql = f"SELECT originator_id, originator_version FROM {recorder.events_table_name}"
        with recorder.datastore.transaction(commit=False) as c:
            c.execute(sql)
            rows = c.fetchall()
        yield from ((_canonical(str(r[0])), int(r[1])) for r in rows)
    elif isinstance(recorder, PostgresAggregateRecorder):
        table = f'"{recorder.datastore.schema}"."{recorder.events_table_name}"'
        sql = f"SELECT originator_id::text, originator_version FROM {table}"
        with (
            recorder.datastore.get_connection() as conn,
            conn.cursor(row_factory=tuple_row) as cursor,
        ):
            cursor.execute(sql)
            yield from ((str(k), int(v)) for k, v in cursor.fetchall())
    else:
        for key in job_ids:
            for stored in recorder.select_events(UUID(key)):
                yield key, stored.originator_version
