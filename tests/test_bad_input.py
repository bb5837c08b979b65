"""Bad input gets a typed error or a recorded Discarded, and the store changes only by what is
recorded (asserted on the event count)."""

from __future__ import annotations

import math
from typing import Any
from uuid import uuid4

import pytest

from domain import (
    ActionNotAllowedHere,
    CurationService,
    Discarded,
    DiscardReason,
    Dispatch,
    InvalidDispatch,
    InvalidParams,
    InvalidTransition,
    InvocationNotFound,
    JobNotFound,
    JobState,
    MalformedId,
    SequentError,
    StoreUnavailable,
    StoreURLError,
    UnknownAction,
)
from domain.values import MAX_PARAMS_BYTES
from tests.support.fakes import event_count


@pytest.fixture
def job_id(svc: CurationService) -> Any:
    return svc.create_job({"target": "t"})


def unchanged(svc: CurationService, call: Any, error: type[SequentError]) -> SequentError:
    before = event_count(svc)
    with pytest.raises(error) as caught:
        call()
    assert event_count(svc) == before, "a refused command must write nothing"
    return caught.value


def test_unknown_job_id(svc: CurationService, job_id: Any) -> None:
    ghost = uuid4()
    for call in (
        lambda: svc.get(ghost),
        lambda: svc.submit(ghost),
        lambda: svc.configure(ghost, {}),
        lambda: svc.history(ghost),
        lambda: svc.complete(Dispatch(ghost, uuid4(), 2, 1), "Fail", {"reason": "timeout"}),
    ):
        error = unchanged(svc, call, JobNotFound)
        assert str(ghost) in str(error)


def test_an_invocation_id_is_not_a_job_id(svc: CurationService, job_id: Any) -> None:
    dispatch = svc.submit(job_id)
    unchanged(svc, lambda: svc.get(dispatch.invocation_id), JobNotFound)
    unchanged(svc, lambda: svc.history(dispatch.invocation_id), JobNotFound)
    unchanged(svc, lambda: svc.invocation(job_id), InvalidDispatch)
    unchanged(svc, lambda: svc.invocation_history(uuid4()), InvocationNotFound)


@pytest.mark.parametrize("bad", ["not-a-uuid", "", "1234", 42, None])
def test_malformed_id(svc: CurationService, job_id: Any, bad: Any) -> None:
    error = unchanged(svc, lambda: svc.retry(bad), MalformedId)
    assert repr(bad) in str(error)


@pytest.mark.parametrize(
    ("action", "params", "fragment"),
    [
        ("Configure", {"settings": "deep"}, "'settings' must be object, got str"),
        ("Configure", {}, "missing param 'settings'"),
        ("Configure", {"settings": {}, "colour": 1}, "unexpected param 'colour'"),
        ("Configure", ["settings"], "params must be an object"),
        ("Configure", {"settings": {"x": {1, 2}}}, "plain JSON"),
        ("Configure", {"settings": {"x": math.nan}}, "plain JSON"),
        ("Configure", {"settings": {"x": "y" * MAX_PARAMS_BYTES}}, "more than the limit"),
        ("Fail", {"reason": "bored"}, "'reason' must be one of"),
        ("Fail", {"reason": "operator", "message": 7}, "'message' must be string"),
        ("Fail", {"reason": "authorization_denied"}, "needs a 'decision_id'"),
    ],
)
def test_wrong_parameters(
    svc: CurationService, job_id: Any, action: str, params: Any, fragment: str
) -> None:
    error = unchanged(svc, lambda: svc.execute(job_id, action, params), InvalidParams)
    assert fragment in str(error)
    assert str(error).startswith(f"{action}: ")


def test_wrong_spec(svc: CurationService) -> None:
    error = unchanged(svc, lambda: svc.create_job("curate everything"), InvalidParams)  # type: ignore[arg-type]
    assert "'spec' must be object" in str(error)


def test_wrong_completion_params_record_nothing(svc: CurationService, job_id: Any) -> None:
    dispatch = svc.submit(job_id)
    error = unchanged(
        svc, lambda: svc.complete(dispatch, "SessionSpawned", {"session_id": 7}), InvalidParams
    )
    assert "'session_id' must be string" in str(error)
    unchanged(svc, lambda: svc.complete(dispatch, "SessionSpawned", {}), InvalidParams)
    assert svc.invocation(dispatch.invocation_id).completions == 0


@pytest.mark.parametrize("action", ["Explode", "submit", "", 3])
def test_unknown_action_names(svc: CurationService, job_id: Any, action: Any) -> None:
    error = unchanged(svc, lambda: svc.execute(job_id, action), UnknownAction)
    assert "Submit" in str(error)  # names the known actions
    dispatch = svc.submit(job_id)
    unchanged(svc, lambda: svc.complete(dispatch, action, {}), UnknownAction)


def test_actions_offered_through_the_wrong_door(svc: CurationService, job_id: Any) -> None:
    dispatch = svc.submit(job_id)
    error = unchanged(
        svc,
        lambda: svc.execute(job_id, "SessionSpawned", {"session_id": "s"}),
        ActionNotAllowedHere,
    )
    assert "complete(dispatch" in str(error)
    unchanged(svc, lambda: svc.execute(job_id, "Create", {"spec": {}}), ActionNotAllowedHere)
    unchanged(svc, lambda: svc.complete(dispatch, "Retry", {}), ActionNotAllowedHere)
    assert svc.get(job_id).state == JobState.READY


def test_invalid_transitions(svc: CurationService, job_id: Any) -> None:
    error = unchanged(svc, lambda: svc.retry(job_id), InvalidTransition)
    assert isinstance(error, InvalidTransition)
    assert (error.state, error.action, error.allowed) == ("Queued", "Retry", ("Failed",))
    assert str(job_id) in str(error)
    unchanged(svc, lambda: svc.execute(job_id, "FinalizeCompletion"), InvalidTransition)


def test_completion_for_an_unknown_invocation_is_recorded(
    svc: CurationService, job_id: Any
) -> None:
    svc.submit(job_id)
    job = svc.get(job_id)
    stray = Dispatch(job_id, uuid4(), job.version, job.attempt)
    before = event_count(svc)
    verdict = svc.complete(stray, "SessionSpawned", {"session_id": "ghost"})
    assert isinstance(verdict, Discarded)
    assert verdict.reason == DiscardReason.UNKNOWN_INVOCATION
    assert event_count(svc) == before + 3  # Unrecognised, Finished, Discarded
    assert svc.get(job_id).version == job.version
    names = [e.name for e in svc.invocation_history(stray.invocation_id)]
    assert names == ["Unrecognised", "Finished", "Discarded"]
    again = svc.complete(stray, "SessionSpawned", {"session_id": "ghost"})
    assert isinstance(again, Discarded)
    assert again.reason == DiscardReason.DUPLICATE


def test_the_same_completion_twice(svc: CurationService, job_id: Any) -> None:
    dispatch = svc.submit(job_id)
    svc.complete(dispatch, "SessionSpawned", {"session_id": "s"})
    version = svc.get(job_id).version
    before = event_count(svc)
    verdict = svc.complete(dispatch, "SessionSpawned", {"session_id": "s"})
    assert isinstance(verdict, Discarded)
    assert verdict.reason == DiscardReason.DUPLICATE
    assert event_count(svc) == before + 2
    assert svc.get(job_id).version == version


def test_a_dispatch_naming_another_jobs_invocation(svc: CurationService, job_id: Any) -> None:
    dispatch = svc.submit(job_id)
    other = svc.create_job({"target": "other"})
    forged = Dispatch(other, dispatch.invocation_id, dispatch.expected_version, 1)
    error = unchanged(
        svc, lambda: svc.complete(forged, "Fail", {"reason": "timeout"}), InvalidDispatch
    )
    assert str(job_id) in str(error)
    as_job = Dispatch(job_id, other, 2, 1)
    unchanged(svc, lambda: svc.complete(as_job, "Fail", {"reason": "timeout"}), InvalidDispatch)


@pytest.mark.parametrize(
    "url",
    [
        "jobs.db",
        "mysql://localhost/jobs",
        "sqlite://relative.db",
        "sqlite:///",
        "memory://somewhere",
        "postgresql://localhost",
        "postgresql://localhost:notaport/db",
        "postgresql://localhost/db?sslmode=disable",
        "postgresql://localhost/db?schema=drop;table",
    ],
)
def test_malformed_store_url(url: str) -> None:
    with pytest.raises(StoreURLError):
        CurationService.open(url)


def test_unreachable_postgres_names_the_store_without_its_password() -> None:
    with pytest.raises(StoreUnavailable) as caught:
        CurationService.open("postgresql://postgres:s3cret@127.0.0.1:1/test")
    assert "127.0.0.1:1" in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_unreachable_sqlite_path(tmp_path: Any) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreUnavailable):
        CurationService.open(f"sqlite:///{blocker}/jobs.db")
