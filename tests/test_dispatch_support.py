"""What a dispatcher relies on in the store: the pending feed, leases, timeouts, compensation."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from eventsourcing.application import project_aggregate

from domain import (
    Applied,
    CurationService,
    Discarded,
    InvocationFinished,
    JobState,
    LeaseHeld,
)
from domain.invocation import Invocation
from domain.transitions import STATE_TIMEOUTS
from integrations.dispatcher import Dispatcher, RunOutcome
from tests.support.fakes import FixedRunner

LEASE = timedelta(seconds=30)
SHA = "5" * 64  # the module a worker says it is about to run


def test_the_work_table_follows_starts_and_finishes(svc: CurationService) -> None:
    assert svc.open_runs() == []
    dispatches = [svc.submit(svc.create_job({"n": n})) for n in range(3)]
    assert svc.open_runs() == [d.invocation_id for d in dispatches]
    svc.complete(dispatches[1], "SessionSpawned", {"session_id": "s"})
    assert svc.open_runs() == [dispatches[0].invocation_id, dispatches[2].invocation_id]


def test_a_lease_excludes_other_workers_until_it_expires(svc: CurationService) -> None:
    dispatch = svc.submit(svc.create_job({"target": "t"}))
    now = datetime.now(UTC)
    assert svc.claim(dispatch.invocation_id, "w1", LEASE, now, module_sha256=SHA) == dispatch
    with pytest.raises(LeaseHeld) as caught:
        svc.claim(dispatch.invocation_id, "w2", LEASE, now + LEASE / 2, module_sha256=SHA)
    assert caught.value.holder == "w1"
    svc.claim(dispatch.invocation_id, "w1", LEASE, now + LEASE / 2, module_sha256=SHA)  # renewal
    taken_over = svc.claim(dispatch.invocation_id, "w2", LEASE, now + 2 * LEASE, module_sha256=SHA)
    assert taken_over == dispatch
    assert svc.invocation(dispatch.invocation_id).lease_holder == "w2"


def test_a_finished_invocation_cannot_be_claimed(svc: CurationService) -> None:
    dispatch = svc.submit(svc.create_job({"target": "t"}))
    svc.complete(dispatch, "SessionSpawned", {"session_id": "s"})
    with pytest.raises(InvocationFinished):
        svc.claim(dispatch.invocation_id, "w1", LEASE, module_sha256=SHA)


def test_a_claim_recorded_before_claims_named_their_module_still_loads(
    svc: CurationService,
) -> None:
    dispatch = svc.submit(svc.create_job({"target": "t"}))
    svc.claim(dispatch.invocation_id, "w1", LEASE, module_sha256=SHA)
    started, claimed = svc.recorder.select_events(dispatch.invocation_id)
    state = svc.mapper.transcoder.decode(claimed.state)
    del state["module_sha256"]  # as every Claimed was recorded before this field
    old = replace(claimed, state=svc.mapper.transcoder.encode(state))
    invocation = project_aggregate(None, [svc.mapper.to_domain_event(s) for s in (started, old)])
    assert isinstance(invocation, Invocation)
    assert invocation.lease_holder == "w1"
    assert invocation.module_sha256 == ""  # Started's, as it was before claims named one


def test_racing_claims_have_one_winner(shared_store_url: str) -> None:
    workers = [CurationService.open(shared_store_url) for _ in range(4)]
    try:
        dispatch = workers[0].submit(workers[0].create_job({"target": "t"}))

        def claim(n: int) -> str:
            try:
                workers[n].claim(dispatch.invocation_id, f"w{n}", LEASE, module_sha256=SHA)
            except LeaseHeld:
                return "held"
            return "won"

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(claim, range(4)))
        assert results.count("won") == 1
        claims = [
            e for e in workers[0].invocation_history(dispatch.invocation_id) if e.name == "Claimed"
        ]
        assert len(claims) == 1
    finally:
        for worker in workers:
            worker.close()


def test_expire_fails_only_jobs_past_their_state_timeout(svc: CurationService) -> None:
    job_id = svc.create_job({"target": "t"})
    dispatch = svc.submit(job_id)
    ready_since = svc.get(job_id).modified_on
    limit = STATE_TIMEOUTS[JobState.READY]
    assert svc.expire(job_id, ready_since + limit - timedelta(seconds=1)) is False
    assert svc.get(job_id).state == JobState.READY
    assert svc.expire(job_id, ready_since + limit) is True
    job = svc.get(job_id)
    assert job.state == JobState.FAILED
    assert job.failure is not None
    assert job.failure["reason"] == "timeout"
    assert svc.expire(job_id, ready_since + 10 * limit) is False  # Failed has no timeout
    # The run dispatched before the timeout now completes late: discarded, job untouched.
    late = svc.complete(dispatch, "SessionSpawned", {"session_id": "s"})
    assert isinstance(late, Discarded)
    assert late.reason == "job_moved_on"


def test_custom_timeouts(svc: CurationService) -> None:
    job_id = svc.create_job({"target": "t"})
    svc.submit(job_id)
    short: Any = {JobState.READY: timedelta(milliseconds=1)}
    assert svc.expire(job_id, datetime.now(UTC) + timedelta(seconds=1), short) is True


def test_compensation_is_recorded_on_the_invocation(svc: CurationService) -> None:
    job_id = svc.create_job({"target": "t"})
    stale = svc.submit(job_id)
    svc.fail(job_id, reason="timeout")
    svc.retry(job_id)
    current = svc.submit(job_id)
    assert isinstance(svc.complete(current, "SessionSpawned", {"session_id": "s-new"}), Applied)
    assert isinstance(svc.complete(stale, "SessionSpawned", {"session_id": "s-old"}), Discarded)
    svc.compensate(stale.invocation_id, "s-old")
    assert svc.invocation(stale.invocation_id).compensated == ["s-old"]
    names = [e.name for e in svc.history(job_id) if e.aggregate == "invocation"]
    assert names.count("Compensated") == 1
    assert svc.get(job_id).session_id == "s-new"


def test_overdue_jobs_follow_each_jobs_state(svc: CurationService) -> None:
    short = {state: timedelta(milliseconds=1) for state in STATE_TIMEOUTS}
    queued = svc.create_job({"target": "q"})
    ready = svc.create_job({"target": "r"})
    svc.submit(ready)
    later = datetime.now(UTC) + timedelta(seconds=1)
    assert set(svc.overdue_jobs(later, short)) == {queued, ready}
    assert svc.overdue_jobs(later, short, skip=(JobState.READY,)) == [queued]
    assert svc.overdue_jobs(datetime.now(UTC) - timedelta(seconds=1), short) == []
    svc.fail(queued)  # Failed has no timeout: forgotten
    assert svc.overdue_jobs(later, short) == [ready]


def test_the_dispatcher_sweeps_jobs_past_their_state_timeout(svc: CurationService) -> None:
    queued = svc.create_job({"target": "q"})
    running = svc.create_job({"target": "r"})
    svc.complete(svc.submit(running), "SessionSpawned", {"session_id": "s"})
    waiting = svc.create_job({"target": "w"})
    # Ready, its run leased by a worker elsewhere that has not finished it yet.
    svc.claim(
        svc.submit(waiting).invocation_id, "elsewhere", timedelta(minutes=5), module_sha256=SHA
    )
    timeouts = {state: timedelta(milliseconds=50) for state in STATE_TIMEOUTS}
    dispatcher = Dispatcher(
        svc, FixedRunner(RunOutcome(ok={"session_id": "x"})), sweep_interval=0.05, timeouts=timeouts
    )

    def swept() -> bool:
        return all(svc.get(j).state == JobState.FAILED for j in (queued, running))

    async def bounded() -> None:
        with anyio.fail_after(30):
            await dispatcher.run(swept)

    anyio.run(bounded)
    for job_id in (queued, running):
        failure = svc.get(job_id).failure
        assert failure is not None
        assert failure["reason"] == "timeout"
    assert svc.get(waiting).state == JobState.READY, "Ready counts from this worker's claim"
    assert dispatcher.stats.timeouts == 2
