"""What a completion comes to (``Applied`` or ``Discarded``) and what a submit hands out
(``Dispatch``): plain values shared by the guard, the aggregates and the service."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from uuid import UUID


class DiscardReason(StrEnum):
    SUPERSEDED = "superseded"  # the invocation is no longer the job's current one
    JOB_MOVED_ON = "job_moved_on"  # the job's version is past the one the run was dispatched at
    DUPLICATE = "duplicate"  # this invocation's completion was already decided
    UNKNOWN_INVOCATION = "unknown_invocation"  # no such invocation was ever started


@dataclass(frozen=True)
class Dispatch:
    """The ticket a run carries back: which job, which run, and the job version it saw."""

    job_id: UUID
    invocation_id: UUID
    expected_version: int
    attempt: int


@dataclass(frozen=True)
class Applied:
    invocation_id: UUID
    job_version: int  # the job's version after the completion was applied


@dataclass(frozen=True)
class Discarded:
    invocation_id: UUID
    reason: DiscardReason
    job_version_seen: int
    job_state_seen: str


Verdict = Applied | Discarded
