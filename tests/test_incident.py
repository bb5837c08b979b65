"""The incident by hand, on every store: late completions from attempt 1 never touch the job."""

from __future__ import annotations

from domain import Applied, CurationService, Discarded, DiscardReason, JobState
from tests.support.fakes import event_count


def test_late_completions_from_an_earlier_attempt_are_discarded(svc: CurationService) -> None:
    job_id = svc.create_job({"target": "https://curation.example/feed"})
    svc.configure(job_id, {"depth": 2})
    first = svc.submit(job_id)
    # Attempt 1's run is denied by Cedar; the job fails through its own (current) completion.
    denied = svc.complete(
        first, "Fail", {"reason": "authorization_denied", "message": "no", "decision_id": "d-1"}
    )
    assert isinstance(denied, Applied)
    assert svc.get(job_id).state == JobState.FAILED
    svc.retry(job_id)
    second = svc.submit(job_id)
    assert (second.attempt, first.attempt) == (2, 1)
    assert isinstance(svc.complete(second, "SessionSpawned", {"session_id": "s-2"}), Applied)
    running = svc.get(job_id)
    assert (running.state, running.session_id) == (JobState.RUNNING, "s-2")
    events_before = event_count(svc)

    # An attempt-1 run that was still in flight (a retried delivery of the same dispatch)
    # now completes late, with a success and then with the 409-turned-failure of the incident.
    late_spawn = svc.complete(first, "SessionSpawned", {"session_id": "s-1-late"})
    late_fail = svc.complete(first, "Fail", {"reason": "service_error", "message": "409"})

    assert isinstance(late_spawn, Discarded)
    assert isinstance(late_fail, Discarded)
    after = svc.get(job_id)
    assert (after.state, after.version, after.session_id) == (
        JobState.RUNNING,
        running.version,
        "s-2",
    )
    # Each late completion is two invocation events (Finished + Discarded), none on the job.
    assert event_count(svc) == events_before + 4
    discards = [e for e in svc.invocation_history(first.invocation_id) if e.name == "Discarded"]
    assert [d.data["reason"] for d in discards] == [late_spawn.reason, late_fail.reason]
    assert all(d.data["job_version_seen"] == running.version for d in discards)
    timeline = [(e.aggregate, e.name) for e in svc.history(job_id)]
    assert timeline.count(("invocation", "Discarded")) == 2
    assert ("job", "Failed") in timeline
    assert timeline.count(("job", "Failed")) == 1, "a late completion must never fail the job"


def test_a_stale_run_of_a_superseded_invocation_is_discarded_as_superseded(
    svc: CurationService,
) -> None:
    job_id = svc.create_job({"target": "t"})
    first = svc.submit(job_id)
    svc.fail(job_id, reason="timeout", message="Ready for 15 min")  # the dispatcher's timeout
    svc.retry(job_id)
    second = svc.submit(job_id)
    assert isinstance(svc.complete(second, "SessionSpawned", {"session_id": "s-2"}), Applied)
    version = svc.get(job_id).version

    late_fail = svc.complete(first, "Fail", {"reason": "service_error", "message": "409"})
    late_spawn = svc.complete(first, "SessionSpawned", {"session_id": "s-1"})

    assert isinstance(late_fail, Discarded)
    assert late_fail.reason == DiscardReason.SUPERSEDED
    assert isinstance(late_spawn, Discarded)
    assert late_spawn.reason == DiscardReason.DUPLICATE
    assert (svc.get(job_id).state, svc.get(job_id).version) == (JobState.RUNNING, version)


def test_a_completion_after_the_job_moved_on_within_the_same_invocation(
    svc: CurationService,
) -> None:
    job_id = svc.create_job({"target": "t"})
    dispatch = svc.submit(job_id)
    svc.fail(job_id, reason="timeout")  # the job moves on while its run is in flight
    version = svc.get(job_id).version
    verdict = svc.complete(dispatch, "SessionSpawned", {"session_id": "s"})
    assert isinstance(verdict, Discarded)
    assert verdict.reason == DiscardReason.JOB_MOVED_ON
    assert (verdict.job_state_seen, verdict.job_version_seen) == ("Failed", version)
    assert svc.get(job_id).state == JobState.FAILED
