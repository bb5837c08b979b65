"""Replay parity: every read model against the aggregates replayed from the event store.

``verify`` never trusts the projection code it checks. It replays the aggregates themselves
(each domain event's own ``mutate``, as the repository does) from the notification log up to
the position each projection says it has applied, derives the rows that position implies, and
compares them column by column with what the projection holds. Completions (one dispatch_audit
row each) are the ``Finished`` + verdict pairs of each replayed invocation; sessions come from
the ``SessionSpawned`` completions and the invocations' ``compensated`` lists.

Tracking positions are checked first, before any catch-up could paper over them: a position
past the head is impossible, and a position behind the rows (a row carries the position of the
event that last changed it) means the projection would apply events twice. A position moved
forward shows up as rows missing or stale against the replay.

The history itself is checked too, since a read model can equal a fold of events that should
never have been written: the replay to the head checks every job event against the transition
table from the state the job's previous event left it in (``invalid_transition``), reports an
event it cannot decode or fold (``undecodable``; that aggregate is not folded further), and
every job snapshot is compared with the fold of its events up to its version (``snapshot``,
``domain.snapshots.SnapshotCheck``, as the replay folds the job). Each counts as drift.

It needs the read models' recorder, the log reader, the service (for its snapshots) and the
projection definitions; catching a projection up is the runner's job, which the caller passes
in (``catch_up``).

Memory: the replay reads the log one aggregate at a time (``LogReader.by_aggregate``) and
keeps of each only the rows it implies, so it holds one aggregate's events, not the log's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from operator import attrgetter
from typing import Any
from uuid import UUID

from eventsourcing.application import Application

from domain.authorization import Decision
from domain.invocation import Invocation
from domain.job import CurationJob
from domain.log import (
    APPLIED,
    DECISION,
    DISCARDED,
    FINISHED,
    INVOCATION,
    JOB,
    JOB_TRANSITIONS,
    SESSION_STOPS,
    UNATTRIBUTED_ORPHAN_STOPPED,
    UNREADABLE,
    LogReader,
    Notice,
    invalid_step,
)
from domain.snapshots import SnapshotCheck, SnapshotProblem
from domain.store_errors import first_line
from domain.work import WorkTable, work_drift
from projections.catalog import PROJECTIONS
from projections.errors import ProjectionFailed
from projections.projection import Projection
from projections.recorders import ReadModels
from projections.schema import DECISIONS, DISPATCH_AUDIT, JOB_STATUS, SESSIONS, Table

DETAILS_LIMIT = 100

# Every event of these aggregates is replayed, whatever its name.
_REPLAYED = (f"{JOB}.", f"{INVOCATION}.", f"{DECISION}.", UNATTRIBUTED_ORPHAN_STOPPED)
_SESSION_SPAWNED = "SessionSpawned"


# Discrepancy.projection of what is wrong in the store itself rather than in a read model.
EVENTS = "events"  # invalid_transition, undecodable: key "<aggregate id>@<version>"
SNAPSHOTS = "snapshots"  # snapshot: key "<job id>@<version>"
WORK = "work_table"  # the workers' table against the log: key "run <id>" or "job <id>"


@dataclass(frozen=True)
class Discrepancy:
    projection: str  # a read model, or EVENTS / SNAPSHOTS
    # A read model's: missing | extra | drifted | tracking | skipped;
    # the store's: invalid_transition | undecodable | snapshot | work_table.
    kind: str
    key: str
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)  # column -> expected, actual
    message: str = ""


@dataclass(frozen=True)
class ProjectionCheck:
    projection: str
    position: int
    head: int
    checked: int
    drifted: int
    missing: int
    extra: int
    skipped: int = 0  # events it recorded as skipped (could not fold); counted as drifted


@dataclass(frozen=True)
class VerifyReport:
    checked: int  # rows compared (the union of expected and stored keys) over all projections
    drifted: int  # rows whose columns differ, unsound tracking positions, and history problems
    missing: int  # rows the replay implies that a projection lacks
    extra: int  # rows a projection holds that the replay does not imply
    ok: bool
    head: int
    projections: list[ProjectionCheck]
    details: list[Discrepancy]  # the first DETAILS_LIMIT discrepancies
    snapshots: int = 0  # job snapshots compared with the fold of their events
    history: int = (
        0  # invalid transitions, undecodable events, snapshots and work-table rows that differ
    )


def verify_read_models(
    store: ReadModels,
    log: LogReader,
    app: Application[UUID],
    *,
    catch_up: Callable[[Projection], object] | None = None,
) -> VerifyReport:
    """Checks every projection's tracking position, then (with ``catch_up``) brings each sound
    one to the head, then compares each with the replay up to its position, and checks the
    history (the replay to the head) and ``app``'s snapshots."""
    head = log.head()
    problems: list[Discrepancy] = []
    unsound: set[str] = set()
    for projection in PROJECTIONS:
        tracked, highest = store.bounds(projection)
        problem = _tracking_problem(projection, tracked, highest, head)
        if problem is not None:
            problems.append(problem)
            unsound.add(projection.name)
    if catch_up is not None:
        for projection in PROJECTIONS:
            if projection.name in unsound:
                continue  # applying more on top would hide or compound what is wrong
            try:
                catch_up(projection)
            except ProjectionFailed as exc:
                problems.append(Discrepancy(projection.name, "tracking", "", message=str(exc)))
                unsound.add(projection.name)
    views = {projection.name: store.snapshot(projection) for projection in PROJECTIONS}
    head = max(log.head(), head)
    snapshots = SnapshotCheck(app)
    replays = {head: replay(log, head, snapshots)}
    for position in {min(v.position, head) for v in views.values()} - {head}:
        replays[position] = replay(log, position)
    history = _history_problems(replays[head], snapshots) + _work_problems(app)
    problems.extend(history)
    checks: list[ProjectionCheck] = []
    for projection in PROJECTIONS:
        snapshot = views[projection.name]
        expected = replays[min(snapshot.position, head)].rows(projection.table)
        found = compare(projection, expected, snapshot.rows)
        skipped = _skipped(projection, store.select(projection.skipped))
        tracking = sum(1 for p in problems if p.projection == projection.name)
        checks.append(
            ProjectionCheck(
                projection=projection.name,
                position=snapshot.position,
                head=head,
                checked=len(expected.keys() | {_key(projection.table, r) for r in snapshot.rows}),
                drifted=sum(1 for d in found if d.kind == "drifted") + tracking + len(skipped),
                missing=sum(1 for d in found if d.kind == "missing"),
                extra=sum(1 for d in found if d.kind == "extra"),
                skipped=len(skipped),
            )
        )
        problems.extend(skipped)
        problems.extend(found)
    drifted = sum(c.drifted for c in checks) + len(history)
    missing = sum(c.missing for c in checks)
    extra = sum(c.extra for c in checks)
    return VerifyReport(
        checked=sum(c.checked for c in checks),
        drifted=drifted,
        missing=missing,
        extra=extra,
        ok=not (drifted or missing or extra),
        head=head,
        projections=checks,
        details=problems[:DETAILS_LIMIT],
        snapshots=snapshots.checked,
        history=len(history),
    )


def _work_problems(app: Application[UUID]) -> list[Discrepancy]:
    """Where the store's work table (what workers find their runs and deadlines by) differs
    from a fold of the log; none for a store without one."""
    table = app.recorder
    if not isinstance(table, WorkTable):
        return []
    drift = work_drift(table, app.recorder, app.mapper)
    return [Discrepancy(WORK, "work_table", line.split(":")[0], message=line) for line in drift]


def _history_problems(expected: Expected, snapshots: SnapshotCheck) -> list[Discrepancy]:
    """What is wrong in the store itself: the replay's invalid transitions and undecodable
    events, then every snapshot that is not the fold of its events."""
    snapshots.rest()
    found = [
        Discrepancy(SNAPSHOTS, "snapshot", f"{p.aggregate_id}@{p.version}", p.fields, p.why)
        for p in snapshots.problems
    ]
    return [*expected.problems, *found]


def _skipped(projection: Projection, rows: Sequence[tuple[Any, ...]]) -> list[Discrepancy]:
    """The events the projection recorded as skipped: its rows cannot be the fold of the log
    when it left events out, whatever the comparison says."""
    return [
        Discrepancy(
            projection.name,
            "skipped",
            str(position),
            message=f"{topic.rsplit('.', 1)[-1]} of {key}@{version} not folded: {error}",
        )
        for position, topic, key, version, error in rows
    ]


def _tracking_problem(
    projection: Projection, tracked: int, highest: int, head: int
) -> Discrepancy | None:
    if tracked > head:
        message = f"tracking position {tracked} is beyond the head of the log ({head})"
    elif highest > tracked:
        message = (
            f"tracking position {tracked} is behind the view's rows (a row was changed by "
            f"notification {highest}): events after {tracked} would be applied twice"
        )
    else:
        return None
    return Discrepancy(projection.name, "tracking", "", message=message)


def _key(table: Table, row: Sequence[Any]) -> str:
    return str(row[table.index_of(table.key)])


def compare(
    projection: Projection, expected: dict[str, tuple[Any, ...]], stored: Sequence[tuple[Any, ...]]
) -> list[Discrepancy]:
    table = projection.table
    actual = {_key(table, r): tuple(r) for r in stored}
    found: list[Discrepancy] = []
    for key in sorted(expected.keys() | actual.keys()):
        want, have = expected.get(key), actual.get(key)
        if have is None:
            found.append(Discrepancy(projection.name, "missing", key))
        elif want is None:
            found.append(Discrepancy(projection.name, "extra", key))
        elif want != have:
            fields = {
                col: {"expected": w, "actual": h}
                for col, w, h in zip(table.column_names, want, have, strict=True)
                if w != h
            }
            found.append(Discrepancy(projection.name, "drifted", key, fields))
    return found


# -- the replay ---------------------------------------------------------------------------------


@dataclass
class Completion:
    position: int  # of the verdict event
    invocation_id: str
    action: str | None
    params: dict[str, Any]
    verdict: Any  # the Applied or Discarded event

    @classmethod
    def of(cls, position: int, invocation_id: str, finished: Any, verdict: Any) -> Completion:
        """A verdict and the Finished before it (None: the run has none)."""
        if finished is None:
            return cls(position, invocation_id, None, {}, verdict)
        return cls(position, invocation_id, finished.action, dict(finished.params), verdict)


@dataclass
class Expected:
    """The rows the aggregates replayed up to a position imply, and what the replay found
    wrong in the log. Folded one aggregate at a time (``fold``); of each it keeps its row (a
    job's, a decision's), its run (an invocation's job and attempt), its completions and the
    sessions it stopped, never the aggregate itself."""

    jobs: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    decisions: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    runs: dict[str, tuple[str, int]] = field(default_factory=dict)  # invocation -> job, attempt
    problems: list[Discrepancy] = field(default_factory=list)  # EVENTS: invalid, undecodable
    completions: list[Completion] = field(default_factory=list)
    stops: dict[str, list[tuple[int, str | None, Any]]] = field(
        default_factory=lambda: defaultdict(list)
    )  # session id -> (position, the invocation named, if any, event): compensations, reconciles

    def fold(self, key: str, notices: Iterable[Notice], check: SnapshotCheck | None = None) -> None:
        """Folds one aggregate's notices (in version order), noting each job event the
        transition table forbids, and stops at one it cannot decode or fold; with ``check``,
        compares the aggregate's snapshots with the fold as it goes."""
        snapshots = check.of(key) if check is not None else None
        aggregate: Any = None
        position = 0
        finished: Any = None  # the Finished awaiting its verdict
        unreadable = False
        problems: list[SnapshotProblem] = []
        for notice in notices:
            at = f"{key}@{notice.version}"
            if notice.topic in JOB_TRANSITIONS:
                state = getattr(aggregate, "state", None)
                why = invalid_step(notice.topic, None if state is None else str(state))
                if why is not None:
                    self.problems.append(Discrepancy(EVENTS, "invalid_transition", at, message=why))
            try:
                event: Any = notice.event
                aggregate = event.mutate(aggregate)
            except UNREADABLE as exc:
                why = f"notification {notice.id} ({notice.topic}): {first_line(exc)}"
                self.problems.append(
                    Discrepancy(EVENTS, "undecodable", at, message=f"{why}; not folded further")
                )
                unreadable = True
                break
            position = notice.id
            if snapshots is not None:
                problems += snapshots.folded(notice.version, aggregate)
            finished = self._run_event(key, notice, event, finished)
        if check is not None and snapshots is not None:
            check.done(snapshots, problems, unreadable=unreadable)
        if aggregate is not None:
            self._keep(key, aggregate, position)

    def _run_event(self, key: str, notice: Notice, event: Any, finished: Any) -> Any:
        """Notes the completion or the session stop an invocation's event records; returns the
        Finished still awaiting its verdict."""
        topic = notice.topic
        if topic == FINISHED:
            return event
        if topic in (APPLIED, DISCARDED):
            self.completions.append(Completion.of(notice.id, key, finished, event))
            return None
        if topic in SESSION_STOPS:
            run = None if topic == UNATTRIBUTED_ORPHAN_STOPPED else key
            self.stops[str(event.session_id)].append((notice.id, run, event))
        return finished

    def _keep(self, key: str, aggregate: Any, position: int) -> None:
        if isinstance(aggregate, CurationJob):
            self.jobs[key] = _job_row(key, aggregate, position)
        elif isinstance(aggregate, Decision):
            self.decisions[key] = _decision_row(key, aggregate, position)
        elif isinstance(aggregate, Invocation):
            self.runs[key] = (str(aggregate.job_id), aggregate.attempt)

    def rows(self, table: Table) -> dict[str, tuple[Any, ...]]:
        if table is JOB_STATUS:
            return self.jobs
        if table is DISPATCH_AUDIT:
            return self._audit()
        if table is SESSIONS:
            return self._sessions()
        if table is DECISIONS:
            return self.decisions
        raise KeyError(table.name)

    def _audit(self) -> dict[str, tuple[Any, ...]]:
        rows: dict[str, tuple[Any, ...]] = {}
        for c in self.completions:
            job_id, attempt = self.runs.get(c.invocation_id, (None, None))
            applied = type(c.verdict).__name__ == "Applied"
            rows[str(c.position)] = (
                c.position,
                c.invocation_id,
                job_id,
                attempt,
                c.action,
                "applied" if applied else "discarded",
                None if applied else str(c.verdict.reason),
                c.verdict.job_version if applied else None,
                None if applied else c.verdict.job_version_seen,
                None if applied else str(c.verdict.job_state_seen),
                c.verdict.timestamp.isoformat(),
            )
        return rows

    def _sessions(self) -> dict[str, tuple[Any, ...]]:
        # Per session id, in log order: each completion that reported it (applied or not)
        # and each stop of it (a compensation, or reconciliation).
        told: dict[str, list[tuple[int, str | None, bool | None, Any]]] = defaultdict(list)
        for c in self.completions:
            if c.action == _SESSION_SPAWNED:
                applied = type(c.verdict).__name__ == "Applied"
                told[str(c.params.get("session_id"))].append(
                    (c.position, c.invocation_id, applied, c.verdict)
                )
        for session_id, stops in self.stops.items():
            told[session_id].extend((p, i, None, e) for p, i, e in stops)
        rows: dict[str, tuple[Any, ...]] = {}
        for session_id, facts in told.items():
            facts.sort(key=lambda f: f[0])
            _, invocation_id, _, first = facts[0]
            reports = [f[2] for f in facts if f[2] is not None]
            verdict = ("applied" if any(reports) else "discarded") if reports else None
            compensated = int(any(f[2] is None for f in facts))
            run = None if invocation_id is None else self.runs.get(invocation_id)
            rows[session_id] = (
                session_id,
                None if run is None else run[0],
                invocation_id,
                verdict,
                first.timestamp.isoformat(),
                compensated,
                1 - compensated,
                facts[-1][0],
            )
        return rows


def replay(log: LogReader, upto: int, snapshots: SnapshotCheck | None = None) -> Expected:
    """Replays every job, invocation and decision in the log up to ``upto``, one aggregate at
    a time (``Expected.fold``); with ``snapshots``, checks the jobs' snapshots as it goes."""
    expected = Expected()
    replayed = (n for n in log.by_aggregate(upto) if n.topic.startswith(_REPLAYED))
    for key, notices in groupby(replayed, key=attrgetter("key")):
        expected.fold(key, notices, snapshots)
    return expected


def _job_row(key: str, job: CurationJob, position: int) -> tuple[Any, ...]:
    return (
        key,
        str(job.state),
        job.attempt,
        job.session_id,
        job.version,
        None if job.current_invocation is None else str(job.current_invocation),
        job.modified_on.isoformat(),
        position,
    )


def _decision_row(key: str, d: Decision, position: int) -> tuple[Any, ...]:
    return (
        key,
        str(d.status),
        d.principal,
        d.action,
        d.resource,
        d.job_id,
        d.invocation_id,
        None if d.policy_id is None else str(d.policy_id),
        d.decided_by,
        d.created_on.isoformat(),
        d.version,
        position,
    )
