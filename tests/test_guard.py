"""The guard as a pure function: every branch, and the order in which the checks are made."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID, uuid4

import pytest

from domain import Discarded, DiscardReason, Dispatch, JobState
from domain.guard import Apply, decide


@dataclass
class FakeJob:  # a plain value, not a mock: the guard reads three attributes
    version: int
    state: JobState
    current_invocation: UUID | None


@dataclass
class FakeInvocation:
    finished: bool


CURRENT = uuid4()
DISPATCH = Dispatch(job_id=uuid4(), invocation_id=CURRENT, expected_version=2, attempt=1)
READY_AT_2 = FakeJob(2, JobState.READY, CURRENT)


def test_current_invocation_at_expected_version_is_applied() -> None:
    verdict = decide(READY_AT_2, FakeInvocation(finished=False), DISPATCH, "SessionSpawned")
    assert verdict == Apply(CURRENT)


@pytest.mark.parametrize(
    ("job", "invocation", "reason"),
    [
        (READY_AT_2, None, DiscardReason.UNKNOWN_INVOCATION),
        (READY_AT_2, FakeInvocation(finished=True), DiscardReason.DUPLICATE),
        (FakeJob(5, JobState.READY, uuid4()), FakeInvocation(False), DiscardReason.SUPERSEDED),
        (FakeJob(3, JobState.FAILED, CURRENT), FakeInvocation(False), DiscardReason.JOB_MOVED_ON),
    ],
)
def test_each_discard_reason(
    job: FakeJob, invocation: FakeInvocation | None, reason: DiscardReason
) -> None:
    for action in ("SessionSpawned", "Fail"):  # a stale failure is discarded like a success
        verdict = decide(job, invocation, DISPATCH, action)
        assert isinstance(verdict, Discarded)
        assert verdict.reason == reason
        assert (verdict.job_version_seen, verdict.job_state_seen) == (job.version, job.state)


def test_an_action_invalid_from_the_state_is_a_discard_never_an_error() -> None:
    odd = FakeJob(2, JobState.RUNNING, CURRENT)  # same version, a state SessionSpawned can't leave
    verdict = decide(odd, FakeInvocation(finished=False), DISPATCH, "SessionSpawned")
    assert isinstance(verdict, Discarded)
    assert verdict.reason == DiscardReason.JOB_MOVED_ON


def test_duplicate_wins_over_superseded() -> None:
    moved_on = FakeJob(9, JobState.RUNNING, uuid4())
    verdict = decide(moved_on, FakeInvocation(finished=True), DISPATCH, "SessionSpawned")
    assert isinstance(verdict, Discarded)
    assert verdict.reason == DiscardReason.DUPLICATE
