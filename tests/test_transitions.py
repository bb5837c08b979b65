"""The aggregate obeys the transition table exactly: every (state, action) pair is checked."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest

from domain import (
    TRANSITIONS,
    ActionNotAllowedHere,
    CurationService,
    InvalidTransition,
    JobState,
)
from domain.job import CurationJob
from domain.transitions import STATE_TIMEOUTS

# Params that make each action valid, so only the state decides.
VALID_PARAMS: dict[str, dict[str, Any]] = {
    "Configure": {"settings": {"depth": 2}},
    "Submit": {},
    "SessionSpawned": {"session_id": "s-1"},
    "RecordProgress": {"entry": "half way"},
    "Complete": {"output": {"items": 3}},
    "FinalizeCompletion": {},
    "RepairRequired": {"defects": ["missing title"]},
    "Fail": {"reason": "operator", "message": "stop"},
    "Retry": {},
}

# A path of actions that reaches each state from a fresh job.
PATH_TO: dict[JobState, list[str]] = {
    JobState.QUEUED: [],
    JobState.READY: ["Submit"],
    JobState.RUNNING: ["Submit", "SessionSpawned"],
    JobState.FINALIZING: ["Submit", "SessionSpawned", "Complete"],
    JobState.COMPLETED: ["Submit", "SessionSpawned", "Complete", "FinalizeCompletion"],
    JobState.FAILED: ["Fail"],
}


def job_in(state: JobState) -> CurationJob:
    job = CurationJob(spec={"target": "t"})
    for action in PATH_TO[state]:
        job.perform(action, VALID_PARAMS[action], invocation_id=job.current_invocation)
    assert job.state == state
    return job


@pytest.mark.parametrize("state", list(JobState))
@pytest.mark.parametrize("action", list(VALID_PARAMS))
def test_every_action_is_allowed_exactly_from_its_table_sources(
    state: JobState, action: str
) -> None:
    job = job_in(state)
    version = job.version
    row = TRANSITIONS[action]
    if state in row.sources:
        job.perform(action, VALID_PARAMS[action], invocation_id=job.current_invocation)
        assert job.state == row.target
        assert job.version == version + 1
        return
    with pytest.raises(InvalidTransition) as caught:
        job.perform(action, VALID_PARAMS[action], invocation_id=job.current_invocation)
    assert job.version == version, "a refused action must record nothing"
    error = caught.value
    assert (error.job_id, error.state, error.action) == (job.id, state, action)
    assert set(error.allowed) == {str(s) for s in row.sources}
    assert str(job.id) in str(error)
    assert f"'{state}'" in str(error)


def test_completed_is_final() -> None:
    job = job_in(JobState.COMPLETED)
    refused = []
    for action, params in VALID_PARAMS.items():
        with pytest.raises(InvalidTransition):
            job.perform(action, params, invocation_id=job.current_invocation)
        refused.append(action)
    assert refused == list(VALID_PARAMS)
    assert job.version == 5


def test_retry_counts_attempts_and_submit_starts_a_new_invocation() -> None:
    job = job_in(JobState.READY)
    first = job.current_invocation
    job.perform("Fail", VALID_PARAMS["Fail"])
    job.perform("Retry", {})
    assert job.attempt == 2
    job.perform("Submit", {})
    assert job.current_invocation not in (None, first)


def test_repair_required_starts_a_new_invocation_and_returns_to_ready() -> None:
    job = job_in(JobState.FINALIZING)
    before = job.current_invocation
    job.perform("RepairRequired", VALID_PARAMS["RepairRequired"])
    assert job.state == JobState.READY
    assert job.current_invocation not in (None, before)


def test_events_are_named_by_the_table() -> None:
    job = job_in(JobState.COMPLETED)
    names = [type(e).__name__ for e in job.collect_events()]
    assert names == ["Created", "Submitted", "SessionSpawned", "CompletionRequested", "Completed"]


def test_session_spawned_needs_the_current_invocation_even_on_the_aggregate() -> None:
    job = job_in(JobState.READY)
    with pytest.raises(ActionNotAllowedHere):
        job.perform("SessionSpawned", {"session_id": "s"}, invocation_id=uuid4())
    with pytest.raises(ActionNotAllowedHere):
        job.perform("SessionSpawned", {"session_id": "s"})
    assert job.state == JobState.READY


def test_timeout_deadline_follows_the_table(svc: CurationService) -> None:
    job_id = svc.create_job({"target": "t"})
    view = svc.get(job_id)
    job: CurationJob = svc.repository.get(job_id)
    assert job.timeout_at() == view.modified_on + STATE_TIMEOUTS[JobState.QUEUED]
    svc.fail(job_id)
    assert svc.repository.get(job_id).timeout_at() is None  # Failed waits for an operator
