"""The guard: decides, with no I/O, whether a completion may touch its job (DESIGN.md §2).

It is the whole reason sequent exists: a completion from a run the job has moved past is
``Discarded`` with a reason, never applied and never turned into a failure.
"""

from __future__ import annotations

from typing import Protocol
from uuid import UUID

from domain.outcomes import Applied, Discarded, DiscardReason, Dispatch, Verdict
from domain.transitions import JobState, transition


class GuardedJob(Protocol):
    @property
    def version(self) -> int: ...

    state: JobState
    current_invocation: UUID | None


class GuardedInvocation(Protocol):
    @property
    def settled(self) -> bool: ...


def decide(
    job: GuardedJob, invocation: GuardedInvocation | None, dispatch: Dispatch, action: str
) -> Verdict:
    """``Applied`` carries the job's version *before* the action; the service fills in the
    version the action produced once it has applied it."""

    def discard(reason: DiscardReason) -> Discarded:
        return Discarded(dispatch.invocation_id, reason, job.version, str(job.state))

    if invocation is None:
        return discard(DiscardReason.UNKNOWN_INVOCATION)
    if invocation.settled:
        return discard(DiscardReason.DUPLICATE)
    if job.current_invocation != dispatch.invocation_id:
        return discard(DiscardReason.SUPERSEDED)
    if job.version != dispatch.expected_version:
        return discard(DiscardReason.JOB_MOVED_ON)
    if not transition(action).allows(job.state):
        # Unreachable while the table keeps Submit/RepairRequired landing in Ready, and kept so
        # that a future row cannot turn an invalid transition into anything but a discard.
        return discard(DiscardReason.JOB_MOVED_ON)
    return Applied(dispatch.invocation_id, job.version)
