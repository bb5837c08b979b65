"""Only the real run can complete (DESIGN.md §1 invariant 6): a completion whose dispatch
contradicts its invocation's record (expected version, attempt, job) is refused with a one-line
InvalidDispatch naming the field, writes nothing and settles nothing, so the genuine completion
that follows is Applied. Stale but genuine dispatches are still recorded as discards."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from domain import (
    Applied,
    CurationService,
    Discarded,
    DiscardReason,
    Dispatch,
    InvalidDispatch,
    JobState,
)
from tests.support.cli import Cli
from tests.support.fakes import event_count

SPAWNED = ("SessionSpawned", {"session_id": "s-genuine"})


def refused(svc: CurationService, dispatch: Dispatch, fragment: str) -> None:
    before = event_count(svc)
    with pytest.raises(InvalidDispatch) as caught:
        svc.complete(dispatch, "Fail", {"reason": "module_error", "message": "garbled"})
    message = str(caught.value)
    assert fragment in message
    assert str(dispatch.invocation_id) in message
    assert "\n" not in message
    assert event_count(svc) == before, "a refused completion must write nothing"


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("expected_version", -1, "expected_version -1 differs from the recorded 2"),
        ("expected_version", 3, "expected_version 3 differs from the recorded 2"),
        ("expected_version", "2", "expected_version '2' differs from the recorded 2"),
        ("attempt", 2, "attempt 2 differs from the recorded 1"),
        ("attempt", 0, "attempt 0 differs from the recorded 1"),
        ("attempt", True, "attempt True differs from the recorded 1"),
    ],
)
def test_a_garbled_dispatch_is_refused_and_the_genuine_completion_applies(
    svc: CurationService, field: str, value: Any, fragment: str
) -> None:
    job_id = svc.create_job({"target": "t"})
    dispatch = svc.submit(job_id)
    refused(svc, replace(dispatch, **{field: value}), fragment)
    assert svc.invocation(dispatch.invocation_id).completions == 0

    verdict = svc.complete(dispatch, *SPAWNED)
    assert isinstance(verdict, Applied)
    assert svc.get(job_id).state == JobState.RUNNING


def test_a_dispatch_naming_another_job_is_refused_and_the_genuine_completion_applies(
    svc: CurationService,
) -> None:
    job_id = svc.create_job({"target": "t"})
    other = svc.create_job({"target": "other"})
    dispatch = svc.submit(job_id)
    refused(svc, replace(dispatch, job_id=other), f"it belongs to job {job_id}, not {other}")
    assert isinstance(svc.complete(dispatch, *SPAWNED), Applied)


def test_a_garbled_dispatch_in_a_batch_refuses_the_batch_and_settles_nothing(
    svc: CurationService,
) -> None:
    first = svc.submit(svc.create_job({"target": "a"}))
    second = svc.submit(svc.create_job({"target": "b"}))
    before = event_count(svc)
    with pytest.raises(InvalidDispatch, match="attempt 7 differs"):
        svc.complete_batch([(first, *SPAWNED), (replace(second, attempt=7), *SPAWNED)])
    assert event_count(svc) == before
    verdicts = svc.complete_batch([(first, *SPAWNED), (second, *SPAWNED)])
    assert all(isinstance(v, Applied) for v in verdicts)


def test_stale_but_genuine_dispatches_are_still_discarded_with_their_reason(
    svc: CurationService,
) -> None:
    job_id = svc.create_job({"target": "t"})
    first = svc.submit(job_id)
    svc.fail(job_id, "operator", message="stop")
    moved_on = svc.complete(first, *SPAWNED)
    assert isinstance(moved_on, Discarded)
    assert moved_on.reason == DiscardReason.JOB_MOVED_ON

    svc.retry(job_id)
    second = svc.submit(job_id)
    assert second.attempt == 2
    with pytest.raises(InvalidDispatch, match="attempt 1 differs from the recorded 2"):
        svc.complete(replace(second, attempt=1), *SPAWNED)
    assert isinstance(svc.complete(second, *SPAWNED), Applied)

    # The first run is over (its completion was recorded): a late copy is a duplicate.
    duplicate = svc.complete(first, *SPAWNED)
    assert isinstance(duplicate, Discarded)
    assert duplicate.reason == DiscardReason.DUPLICATE


def test_a_genuine_run_the_job_has_replaced_is_superseded(svc: CurationService) -> None:
    job_id = svc.create_job({"target": "t"})
    first = svc.submit(job_id)
    svc.fail(job_id, "operator")
    svc.retry(job_id)
    svc.submit(job_id)
    superseded = svc.complete(first, *SPAWNED)
    assert isinstance(superseded, Discarded)
    assert superseded.reason == DiscardReason.SUPERSEDED


def test_the_cli_refuses_a_garbled_dispatch_in_one_line_and_the_genuine_one_applies(
    sequent: Cli, shared_store_url: str
) -> None:
    db = shared_store_url
    job_id = sequent("--db", db, "--json", "job", "create", "--spec", '{"t": 1}').json()["job_id"]
    d = sequent("--db", db, "--json", "job", "submit", job_id).json()

    def complete(expected_version: int) -> Any:
        return sequent(
            "--db", db, "job", "complete", job_id,
            "--invocation", d["invocation_id"],
            "--expected-version", str(expected_version),
            "--attempt", str(d["attempt"]),
            "--action", "SessionSpawned",
            "--params", json.dumps({"session_id": "s-1"}),
        )  # fmt: skip

    garbled = complete(-1)
    assert garbled.code == 2
    line = garbled.error_line()
    assert f"expected_version -1 differs from the recorded {d['expected_version']}" in line
    genuine = complete(d["expected_version"])
    assert genuine.code == 0, genuine.err
    assert genuine.out.startswith("Applied: ")
