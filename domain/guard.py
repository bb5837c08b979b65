"""The guard: decides, with no I/O, whether a completion may touch its job (DESIGN.md §2).

It is the whole reason sequent exists: a completion from a run the job has moved past is
``Discarded`` with a reason, never applied and never turned into a failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

from domain.outcomes import Discarded, DiscardReason, Dispatch
from domain.transitions import JobState, transition


@dataclass(frozen=True)
class Apply:
    """The guard's go-ahead: the completion may be applied to its job. The caller applies it
    and records ``Applied`` with the version that produced, which only it can know."""

    invocation_id: UUID


class GuardedJob(Protocol):
    @property
    def version(self) -> int: ...

    state: JobState
    current_invocation: UUID | None


class GuardedInvocation(Protocol):
    @property
    def finished(self) -> bool: ...


def decide(
    job: GuardedJob, invocation: GuardedInvocation | None, dispatch: Dispatch, action: str
) -> Apply | Discarded:
    """``Apply``, or ``Discarded`` with the first reason that holds, in the order below."""

    def discard(reason: DiscardReason) -> Discarded:
        return Discarded(dispatch.invocation_id, reason, job.version, str(job.state))

    if invocation is None:
        return discard(DiscardReason.UNKNOWN_INVOCATION)
    if invocation.finished:
        return discard(DiscardReason.DUPLICATE)
    if job.current_invocation != dispatch.invocation_id:
        return discard(DiscardReason.SUPERSEDED)
    if job.version != dispatch.expected_version:
        return discard(DiscardReason.JOB_MOVED_ON)
    if not transition(action).allows(job.state):
        # Unreachable while the table keeps Submit/RepairRequired landing in Ready, and kept so
        # that a future row cannot turn an invalid transition into anything but a discard.
        return discard(DiscardReason.JOB_MOVED_ON)
    return Apply(dispatch.invocation_id)
