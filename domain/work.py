"""The work table: the runs waiting for a worker and the jobs sitting in a timed state, kept by
the event store in the same transaction as the events that change them.

A worker finds its next runs, and the jobs past their state timeout, with an indexed query on
these rows instead of folding the notification log from position 0 (DESIGN.md §3, §7), so its
start and every poll cost the same against ten events or ten million. The rows are a function
of the log: ``changes_of`` says what each event writes, and ``CurationService`` hands that to
its recorder (``domain/store_recorders.py``) with every save, so a row can never be ahead of or
behind the events it follows. One column is not a function of the log: a run's
``reserved_until``, set by a worker about to claim it, so that workers asking at once are handed
different runs (on PostgreSQL with ``FOR UPDATE SKIP LOCKED``). The claim itself is still the OCC
write on the invocation; a reservation can only delay a run, and only until it runs out.

The same table answers reconciliation (``integrations/reconcile.py``): each job's last applied
session and the state the job is in (whether it holds it: ``domain.orphan``), and the session
services jobs name. A reconciler asks about the sessions it finds live, not about every job.

Times are Unix seconds (floats): the rows are compared and indexed, never shown.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

from eventsourcing.persistence import ApplicationRecorder, Mapper

from domain.invocation import Invocation
from domain.job import CurationJob
from domain.log import CLAIMED, FINISHED, JOB_TOPICS, STARTED, UNREADABLE, LogReader, log_reader
from domain.orphan import SESSION_SERVICE_KEY
from domain.transitions import STATE_TIMEOUTS, TRANSITIONS, JobState

# Only jobs in a state with a timeout get a row: a finished job costs the table nothing.
TIMED_STATES = frozenset(STATE_TIMEOUTS)
_STATE_AFTER_EVENT: Mapping[str, JobState] = {t.event: t.target for t in TRANSITIONS.values()}
WORK_TOPICS = (STARTED, CLAIMED, FINISHED, *JOB_TOPICS)


@dataclass
class WorkChanges:
    """What one save does to the work table, folded in event order: per run, its open row
    (``opened``: job, started at, available at), a new moment it becomes available
    (``leased``, for runs opened earlier) or its removal (``closed``); per job, its timed
    state and since when, or its removal; its session and state once a session is applied
    (``spawned``), or just its new state (``moved``, for jobs whose session is older); and
    the session services new jobs name."""

    opened: dict[UUID, tuple[UUID, float, float]] = field(default_factory=dict)
    leased: dict[UUID, float] = field(default_factory=dict)
    closed: set[UUID] = field(default_factory=set)
    timed: dict[UUID, tuple[str, float]] = field(default_factory=dict)
    untimed: set[UUID] = field(default_factory=set)
    spawned: dict[UUID, tuple[str, str]] = field(default_factory=dict)
    moved: dict[UUID, str] = field(default_factory=dict)
    services: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return any(vars(self).values())

    def fold(self, event: Any) -> None:
        if isinstance(event, CurationJob.Event):
            self._job(event)
        elif isinstance(event, Invocation.Event):
            self._run(event)

    def _job(self, event: Any) -> None:
        state = _STATE_AFTER_EVENT.get(type(event).__name__)
        if state is None:
            return  # a job event the table does not know (an old one): no state to time
        job_id = event.originator_id
        if state in TIMED_STATES:
            self.timed[job_id] = (str(state), event.timestamp.timestamp())
            self.untimed.discard(job_id)
        else:
            self.untimed.add(job_id)
            self.timed.pop(job_id, None)
        self._session(job_id, type(event).__name__, event, str(state))

    def _session(self, job_id: UUID, kind: str, event: Any, state: str) -> None:
        if kind == "SessionSpawned":
            self.spawned[job_id] = (event.session_id, state)
            self.moved.pop(job_id, None)
        elif job_id in self.spawned:
            self.spawned[job_id] = (self.spawned[job_id][0], state)
        else:
            self.moved[job_id] = state
        if kind == "Created":
            url = event.spec.get(SESSION_SERVICE_KEY)
            if isinstance(url, str) and url:
                self.services.add(url.rstrip("/"))

    def _run(self, event: Any) -> None:
        run, kind = event.originator_id, type(event).__name__
        if kind == "Started":
            started = event.timestamp.timestamp()
            self.opened[run] = (event.job_id, started, started)
        elif kind == "Claimed":
            self._lease(run, event.lease_until)
        elif kind == "Finished":
            self.opened.pop(run, None)
            self.leased.pop(run, None)
            self.closed.add(run)

    def _lease(self, run: UUID, until: datetime) -> None:
        if run in self.opened:
            job, started, _ = self.opened[run]
            self.opened[run] = (job, started, until.timestamp())
        else:
            self.leased[run] = until.timestamp()


def changes_of(events: Iterable[Any]) -> WorkChanges:
    """The work-table changes of ``events`` (in order), e.g. one save's."""
    changes = WorkChanges()
    for event in events:
        changes.fold(event)
    return changes


def overdue_before(
    now: datetime, timeouts: Mapping[JobState, timedelta], skip: Iterable[JobState] = ()
) -> dict[str, float]:
    """For each timed state a dispatcher watches, the moment before which entering it means
    being overdue at ``now``."""
    skipped = set(skip)
    unknown = set(timeouts) - TIMED_STATES
    if unknown:
        # The table keeps rows only for the transition table's timed states.
        raise ValueError(f"no timeout can be kept for {', '.join(sorted(unknown))}")
    return {
        str(state): (now - limit).timestamp()
        for state, limit in timeouts.items()
        if state not in skipped
    }


@dataclass(frozen=True)
class WorkRows:
    """The work table's contents: per open run (job, started at, available at); per timed job
    (state, since)."""

    runs: Mapping[UUID, tuple[UUID, float, float]]
    timers: Mapping[UUID, tuple[str, float]]
    sessions: Mapping[UUID, tuple[str, str]]  # per job: its last applied session, its state
    services: frozenset[str]

    @classmethod
    def of(cls, changes: WorkChanges) -> WorkRows:
        """The rows ``changes`` leaves in an empty table (a fold of a whole log's)."""
        return cls(
            dict(changes.opened),
            dict(changes.timed),
            dict(changes.spawned),
            frozenset(changes.services),
        )

    def differences(self, expected: WorkRows) -> list[str]:
        """What these rows have that ``expected`` does not, and what they lack or hold
        otherwise, one line each (run or job id first)."""
        found: list[str] = []
        services = (dict.fromkeys(self.services, True), dict.fromkeys(expected.services, True))
        tables: tuple[tuple[str, Mapping[Any, Any], Mapping[Any, Any]], ...] = (
            ("run", self.runs, expected.runs),
            ("job", self.timers, expected.timers),
            ("session of job", self.sessions, expected.sessions),
            ("service", *services),
        )
        for kind, have, want in tables:
            for key in sorted(set(have) | set(want), key=str):
                if have.get(key) != want.get(key):
                    found.append(f"{kind} {key}: work table {have.get(key)}, log {want.get(key)}")
        return found


@runtime_checkable
class WorkTable(Protocol):
    """The queries of the work table, as each store's recorder answers them."""

    def reserve_runs(self, now: float, hold_until: float, limit: int) -> list[tuple[UUID, UUID]]:
        """Up to ``limit`` (invocation, job) pairs of runs available at ``now`` and not
        reserved, oldest first, now reserved until ``hold_until``."""
        ...

    def overdue_jobs(self, before: Mapping[str, float], limit: int) -> list[UUID]:
        """Up to ``limit`` jobs in a state of ``before`` that entered it before its moment."""
        ...

    def open_runs(self) -> list[UUID]:
        """Every run started and not finished, in the order they were started."""
        ...

    def work_rows(self) -> WorkRows:
        """Every row, less reservations (which the log does not say)."""
        ...

    def held_among(self, session_ids: Collection[str], states: Collection[str]) -> set[str]:
        """Those of ``session_ids`` that are the last applied session of a job in one of
        ``states``."""
        ...

    def session_services(self) -> list[str]:
        """Every session service a job's spec names."""
        ...

    def work_built(self) -> bool:
        """Whether the table has been filled from the log (stores older than the table)."""
        ...

    def build_work(self, changes: WorkChanges, head: int) -> bool:
        """Writes ``changes``, the log's up to notification ``head``, and marks the table
        built; False (and nothing written) if the log has moved past ``head`` meanwhile."""
        ...


def fill_from_log(table: WorkTable, recorder: ApplicationRecorder, mapper: Mapper[Any]) -> None:
    """Fills the work table of a store that has events from before it: folds the log once,
    then writes the rows only if no event landed meanwhile (else folds again). A store whose
    table is built (every store since) costs one query."""
    reader = log_reader(recorder, mapper)
    while not table.work_built():
        head = reader.head()
        if table.build_work(fold_log(reader, head), head):
            return


def fold_log(reader: LogReader, head: int) -> WorkChanges:
    """The work-table changes of the whole log up to ``head``."""
    changes = WorkChanges()
    for notice in reader.notices(WORK_TOPICS, upto=head):
        try:
            changes.fold(notice.event)
        except UNREADABLE:
            continue  # an event no follower can read moves nothing here either
    return changes


def work_drift(table: WorkTable, recorder: ApplicationRecorder, mapper: Mapper[Any]) -> list[str]:
    """Where the work table differs from a fold of the log as it is now (none: in step). A
    write landing during the check can show as a difference: check a quiet store."""
    reader = log_reader(recorder, mapper)
    head = reader.head()
    stored = table.work_rows()
    return stored.differences(WorkRows.of(fold_log(reader, head)))
