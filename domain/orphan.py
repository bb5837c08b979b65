"""Sessions no job holds (invariant 4): which job states hold a session, the rule that says when
a live session is an orphan, and the record of an orphan stopped that no run can be named for.

**Which states hold a session.** A job holds the session of its last applied ``SessionSpawned``
while it is Running or Finalizing (it works in it) and once it is Completed (its output came
from it, and Completed is final: nothing will ever replace it). A Failed job holds none: a retry
starts a new run that spawns a new session, so the old one would never be used again; a Queued
or Ready job holds none either (the session it still names is from an earlier attempt).

**When a live session is an orphan** (``judge``). A session's creator is the invocation its
``Idempotency-Key`` names (the host sets it; the session service records it). While the creator
is not finished its run may still complete with this session, so it is *in flight*, not an
orphan. Once the creator is finished, no completion can ever make a job hold the session: the
key is the creator's alone, so no other run gets this session back, and the creator's one
verdict is already recorded. From then on "no job holds it" is final, and the session is an
orphan. A session without a key, or whose key names no invocation the store knows, cannot be
tied to a run: it is an orphan only once it is older than a grace period (longer than any run
whose completion could still apply it may take), unless a job holds it.
"""

from __future__ import annotations

from collections.abc import Container
from datetime import timedelta
from enum import StrEnum
from typing import Protocol
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate, event

from domain.transitions import STATE_TIMEOUTS, JobState

# Where a job's spec names the session service its integration talks to.
SESSION_SERVICE_KEY = "session_service"

HOLDING_STATES: frozenset[JobState] = frozenset(
    {JobState.RUNNING, JobState.FINALIZING, JobState.COMPLETED}
)

# A run can complete with its session only while its job is Ready, which times out after
# STATE_TIMEOUTS[READY] (counted from the claim); twice that leaves room for a lease taken over.
DEFAULT_GRACE = 2 * STATE_TIMEOUTS[JobState.READY]


def holds_session(state: str, job_session: str | None, session_id: str) -> bool:
    """Whether a job in ``state`` whose last applied session is ``job_session`` holds
    ``session_id``."""
    return job_session == session_id and state in HOLDING_STATES


class Finding(StrEnum):
    HELD = "held"  # a job holds it
    IN_FLIGHT = "in_flight"  # its creator's completion is not decided yet
    TOO_YOUNG = "too_young"  # no known creator, and younger than the grace period
    ORPHAN = "orphan"  # no job holds it, and none ever will


class Creator(Protocol):
    @property
    def finished(self) -> bool: ...


def judge(
    session_id: str,
    age: timedelta,
    creator: Creator | None,
    held: Container[str],
    grace: timedelta = DEFAULT_GRACE,
) -> Finding:
    """What a live session is, in the order below. ``creator`` is the invocation its key names
    (None: no key, or one the store does not know). ``held`` must be read *after* ``creator``:
    a creator seen finished stays finished, so a hold it applied is then already visible."""
    if creator is not None and not creator.finished:
        return Finding.IN_FLIGHT
    if session_id in held:
        return Finding.HELD
    if creator is None and age < grace:
        return Finding.TOO_YOUNG
    return Finding.ORPHAN


class OrphanSession(Aggregate):
    """The audit record of a session reconciliation stopped that no invocation can be named
    for (no key, or a key naming no invocation). One per session: its id is derived from the
    service and the session, so the same stop is never recorded twice."""

    @event("Stopped")
    def __init__(self, service_url: str, session_id: str, idempotency_key: str | None) -> None:
        self.service_url = service_url
        self.session_id = session_id
        self.idempotency_key = idempotency_key

    @staticmethod
    def create_id(service_url: str, session_id: str, idempotency_key: str | None) -> UUID:
        return orphan_id(service_url, session_id)


def orphan_id(service_url: str, session_id: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"{service_url.rstrip('/')}/sessions/{session_id}")
