"""The oracle's fold (tests/support/oracle.py) pinned to a history checked by hand, so a wrong
fold cannot make a wrong projection pass."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from domain import CurationService
from tests.support.oracle import completions, fold_history

# -- the fold itself, against a history checked by hand ------------------------------------------


@pytest.fixture
def svc() -> Iterator[CurationService]:
    service = CurationService.open("memory://")
    yield service
    service.close()


def test_fold_of_a_hand_checked_history(svc: CurationService) -> None:
    job = svc.create_job({"a": 1})
    first = svc.submit(job)  # v2
    svc.fail(job, reason="operator")  # v3
    svc.retry(job)  # v4, attempt 2
    second = svc.submit(job)  # v5
    svc.complete(second, "SessionSpawned", {"session_id": "live"})  # v6 Running
    svc.complete(first, "SessionSpawned", {"session_id": "stale"})  # discarded: superseded
    svc.compensate(first.invocation_id, "stale")
    decision = svc.policies.request_decision(integration="m", endpoint="http://h:1/p")
    svc.policies.reject(decision, by="me")

    folded = fold_history(svc)

    (row,) = folded["job_status"].values()
    assert row[:6] == (str(job), "Running", 2, "live", 6, str(second.invocation_id))
    applied, discarded = sorted(folded["dispatch_audit"].values())
    assert applied[1:8] == (
        str(second.invocation_id), str(job), 2, "SessionSpawned", "applied", None, 6,
    )  # fmt: skip
    assert discarded[1:7] == (
        str(first.invocation_id), str(job), 1, "SessionSpawned", "discarded", "superseded",
    )  # fmt: skip
    assert discarded[8:10] == (6, "Running")
    sessions = folded["sessions"]
    assert sessions["live"][3:7] == ("applied", sessions["live"][4], 0, 1)
    assert sessions["stale"][1:4] == (str(job), str(first.invocation_id), "discarded")
    assert sessions["stale"][5:7] == (1, 0)  # compensated, not alive
    (d,) = folded["decisions"].values()
    assert d[1] == "rejected"
    assert d[8] == "me"
    assert completions(svc) == [applied[0], discarded[0]]


def test_fold_up_to_a_position_leaves_later_events_out(svc: CurationService) -> None:
    job = svc.create_job({})
    head = svc.recorder.max_notification_id()
    svc.submit(job)
    assert fold_history(svc, head)["job_status"][str(job)][1] == "Queued"
    assert fold_history(svc)["job_status"][str(job)][1] == "Ready"
