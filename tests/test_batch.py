"""complete_batch: group commit with the same verdicts as one-by-one completion."""

from __future__ import annotations

from typing import Any

import pytest

from domain import (
    Applied,
    CurationService,
    Discarded,
    InvalidParams,
    JobState,
)
from tests.support.fakes import event_count, open_interleaving


def spawn(n: int) -> dict[str, Any]:
    return {"session_id": f"s-{n}"}


def test_a_batch_applies_many_in_one_transaction(svc: CurationService) -> None:
    dispatches = [svc.submit(svc.create_job({"n": n})) for n in range(5)]
    before = event_count(svc)
    verdicts = svc.complete_batch(
        [(d, "SessionSpawned", spawn(n)) for n, d in enumerate(dispatches)]
    )
    assert all(isinstance(v, Applied) for v in verdicts)
    assert event_count(svc) == before + 5 * 3  # SessionSpawned + Finished + Applied each
    assert [svc.get(d.job_id).session_id for d in dispatches] == [f"s-{n}" for n in range(5)]


def test_later_items_see_the_earlier_ones(svc: CurationService) -> None:
    job_id = svc.create_job({"target": "t"})
    stale = svc.submit(job_id)
    svc.fail(job_id, reason="timeout")
    svc.retry(job_id)
    current = svc.submit(job_id)
    verdicts = svc.complete_batch(
        [
            (current, "SessionSpawned", spawn(2)),
            (current, "SessionSpawned", spawn(2)),  # the same completion again
            (stale, "SessionSpawned", spawn(1)),  # attempt 1, late
            (stale, "Fail", {"reason": "service_error", "message": "409"}),
        ]
    )
    assert isinstance(verdicts[0], Applied)
    assert [v.reason for v in verdicts[1:] if isinstance(v, Discarded)] == [
        "duplicate", "superseded", "duplicate",
    ]  # fmt: skip
    job = svc.get(job_id)
    assert (job.state, job.session_id, job.version) == (
        JobState.RUNNING,
        "s-2",
        verdicts[0].job_version,
    )
    assert svc.invocation(stale.invocation_id).completions == 2


def test_one_bad_item_refuses_the_whole_batch(svc: CurationService) -> None:
    dispatches = [svc.submit(svc.create_job({"n": n})) for n in range(2)]
    before = event_count(svc)
    with pytest.raises(InvalidParams):
        svc.complete_batch(
            [(dispatches[0], "SessionSpawned", spawn(0)), (dispatches[1], "SessionSpawned", {})]
        )
    assert event_count(svc) == before
    assert svc.get(dispatches[0].job_id).state == JobState.READY


def test_a_conflict_re_decides_the_whole_batch(store_url: str) -> None:
    worker = open_interleaving(store_url)
    try:
        first, second = (worker.submit(worker.create_job({"n": n})) for n in range(2))
        worker.interleave = lambda: CurationService.fail(worker, first.job_id)
        verdicts = worker.complete_batch(
            [(first, "SessionSpawned", spawn(1)), (second, "SessionSpawned", spawn(2))]
        )
        assert isinstance(verdicts[0], Discarded)
        assert verdicts[0].reason == "job_moved_on"
        assert isinstance(verdicts[1], Applied)
        assert worker.get(first.job_id).state == JobState.FAILED
        assert worker.get(second.job_id).state == JobState.RUNNING
        assert worker.invocation(second.invocation_id).completions == 1, "not recorded twice"
    finally:
        worker.close()
