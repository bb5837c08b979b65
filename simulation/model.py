"""The simulation's own model of what sequent must do, written from DESIGN.md §1-2 and kept
apart from the code it checks: its state table is its own copy, and it predicts every verdict
from what it saw dispatched and delivered, never from what the store answered. The world (see
``world.py``) compares the store with it after every step; a difference is a ``Violation``
naming the invariant it breaks.

What it keeps: each job's state, version, attempt, session and current invocation, and when it
last changed (its state timeout counts from then); each invocation's dispatch, lease and the
verdicts its completions must have had; which session services Cedar must let a run call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from domain import Applied, Dispatch, Verdict

# (state, action) -> state: DESIGN.md §2's table, written out again.
MOVES: dict[tuple[str, str], str] = {
    ("Queued", "Configure"): "Queued",
    ("Queued", "Submit"): "Ready",
    ("Ready", "SessionSpawned"): "Running",
    ("Running", "RecordProgress"): "Running",
    ("Running", "Complete"): "Finalizing",
    ("Finalizing", "FinalizeCompletion"): "Completed",
    ("Finalizing", "RepairRequired"): "Ready",
    ("Failed", "Retry"): "Queued",
    **{(s, "Fail"): "Failed" for s in ("Queued", "Ready", "Running", "Finalizing")},
}
HOLDING = frozenset({"Running", "Finalizing", "Completed"})  # states whose job holds its session


class Violation(Exception):
    """An invariant broken at a step. ``invariant`` is DESIGN.md §1's number (or a name for a
    property the invariants rest on: ``lease``, ``authorization``, ``timeout``, ``model``,
    ``error`` for an exception no step should raise)."""

    def __init__(self, invariant: str, message: str) -> None:
        super().__init__(f"invariant {invariant}: {message}")
        self.invariant = invariant
        self.message = message


@dataclass
class JobModel:
    label: str
    service_url: str
    changed_at: datetime
    state: str = "Queued"
    version: int = 1
    attempt: int = 1
    session: str | None = None
    current: UUID | None = None

    def observed(self) -> tuple[Any, ...]:
        return (self.state, self.version, self.attempt, self.session, self.current)


@dataclass
class RunModel:
    """One invocation: the dispatch it was started with, its lease, its verdicts."""

    label: str
    dispatch: Dispatch
    verdicts: list[str] = field(default_factory=list)
    holder: str | None = None
    lease_until: datetime | None = None

    @property
    def finished(self) -> bool:
        return bool(self.verdicts)


def verdict_text(verdict: Verdict | dict[str, Any]) -> str:
    """``Applied`` or ``Discarded(reason)``, from a verdict or a recorded one."""
    if isinstance(verdict, dict):
        kind = verdict["verdict"]
        return kind if kind == "Applied" else f"{kind}({verdict['reason']})"
    return "Applied" if isinstance(verdict, Applied) else f"Discarded({verdict.reason})"


class Model:
    def __init__(self, timeouts: dict[str, timedelta], lease: timedelta) -> None:
        self.timeouts = timeouts
        self.lease = lease
        self.jobs: dict[UUID, JobModel] = {}
        self.runs: dict[UUID, RunModel] = {}
        self.permitted: set[str] = set()  # session service URLs Cedar must allow

    # -- jobs --------------------------------------------------------------------------------

    def created(self, job_id: UUID, service_url: str, now: datetime) -> JobModel:
        job = JobModel(f"J{len(self.jobs) + 1}", service_url, now)
        self.jobs[job_id] = job
        return job

    def allows(self, job_id: UUID, action: str) -> bool:
        return (self.jobs[job_id].state, action) in MOVES

    def perform(self, job_id: UUID, action: str, now: datetime) -> None:
        """An action the model allows, done: one event on the job."""
        job = self.jobs[job_id]
        job.state = MOVES[(job.state, action)]
        job.version += 1
        job.changed_at = now
        if action == "Retry":
            job.attempt += 1

    def started(self, job_id: UUID, dispatch: Dispatch) -> RunModel:
        """After Submit or RepairRequired: the run it started must carry the job as it is."""
        job = self.jobs[job_id]
        expected = (job_id, job.version, job.attempt)
        got = (dispatch.job_id, dispatch.expected_version, dispatch.attempt)
        if got != expected:
            raise Violation("model", f"{job.label} dispatched {got[1:]}, expected {expected[1:]}")
        job.current = dispatch.invocation_id
        run = RunModel(f"I{len(self.runs) + 1}", dispatch)
        self.runs[dispatch.invocation_id] = run
        return run

    def due(self, job_id: UUID, now: datetime) -> bool:
        """Whether the job has sat in its state past its timeout (counted from its last
        event)."""
        job = self.jobs[job_id]
        limit = self.timeouts.get(job.state)
        return limit is not None and job.changed_at + limit <= now

    # -- runs --------------------------------------------------------------------------------

    def may_claim(self, invocation_id: UUID, worker: str, now: datetime) -> bool:
        run = self.runs[invocation_id]
        if run.finished:
            return False
        held = run.holder is not None and run.lease_until is not None and run.lease_until > now
        return not held or run.holder == worker

    def claimed(self, invocation_id: UUID, worker: str, now: datetime) -> None:
        run = self.runs[invocation_id]
        run.holder, run.lease_until = worker, now + self.lease

    def deliver(
        self, dispatch: Dispatch, action: str, params: dict[str, Any], now: datetime
    ) -> str:
        """The verdict a delivered completion must get (DESIGN.md §2, in its order), applied
        to the model's job when it is Applied."""
        run = self.runs.get(dispatch.invocation_id)
        job = self.jobs[dispatch.job_id]
        if run is None:
            return "Discarded(unknown_invocation)"
        if run.finished:
            verdict = "Discarded(duplicate)"
        elif job.current != dispatch.invocation_id:
            verdict = "Discarded(superseded)"
        elif job.version != dispatch.expected_version or (job.state, action) not in MOVES:
            verdict = "Discarded(job_moved_on)"
        else:
            verdict = "Applied"
            self.perform(dispatch.job_id, action, now)
            if action == "SessionSpawned":
                job.session = params["session_id"]
        run.verdicts.append(verdict)
        return verdict

    # -- sessions ----------------------------------------------------------------------------

    def held(self) -> dict[str, JobModel]:
        """The sessions jobs hold, with the job holding each."""
        return {j.session: j for j in self.jobs.values() if j.session and j.state in HOLDING}

    def unfinished(self, invocation_id: str) -> bool:
        """Whether the invocation an idempotency key names is started and not finished."""
        try:
            run = self.runs.get(UUID(invocation_id))
        except ValueError:
            return False
        return run is not None and not run.finished

    def label(self, some_id: UUID | None) -> str:
        if some_id is None:
            return "-"
        if some_id in self.jobs:
            return self.jobs[some_id].label
        return self.runs[some_id].label if some_id in self.runs else "I?"
