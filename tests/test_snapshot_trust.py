"""Snapshots are a checked shortcut, never the truth (DESIGN.md §1 invariant 5): a snapshot row
changed by SQL — its state, attempt or session, or bytes that do not decode — cannot make a
command record an invalid transition, is not what the audit shows, and ``verify`` reports it
(drift ``snapshot``) and any transition the table forbids (``invalid_transition``), exit 1.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any
from uuid import UUID

import pytest

from domain import CurationService, InvalidTransition, JobState
from domain.job import CurationJob
from domain.service import SNAPSHOT_INTERVAL
from projections import check_invariants
from scripts.cli.output import EXIT_FAILED
from tests.support.cli import Cli
from tests.support.fakes import event_count
from tests.support.store_sql import store_sql


@pytest.fixture
def svc(shared_store_url: str) -> Iterator[CurationService]:
    service = CurationService.open(shared_store_url)
    yield service
    service.close()


def running_job(svc: CurationService, events: int = SNAPSHOT_INTERVAL) -> UUID:
    """A Running job of ``events`` events (Created, Submitted, SessionSpawned, progress)."""
    job_id = svc.create_job({"target": "t"})
    svc.complete(svc.submit(job_id), "SessionSpawned", {"session_id": "s-1"})
    for n in range(events - 3):
        svc.execute(job_id, "RecordProgress", {"entry": {"n": n}})
    return job_id


def change_snapshot(
    svc: CurationService, job_id: UUID, version: int, change: Callable[[dict[str, Any]], None]
) -> None:
    ((state,),) = store_sql(
        svc,
        "SELECT state FROM {snapshots} WHERE originator_id = ? AND originator_version = ?",
        (job_id, version),
    )
    snapshot = json.loads(bytes(state))
    change(snapshot["state"])
    set_snapshot(svc, job_id, version, json.dumps(snapshot).encode())


def set_snapshot(svc: CurationService, job_id: UUID, version: int, state: bytes) -> None:
    store_sql(
        svc,
        "UPDATE {snapshots} SET state = ? WHERE originator_id = ? AND originator_version = ?",
        (state, job_id, version),
    )


def test_a_snapshot_whose_state_was_changed_cannot_make_retry_record_an_invalid_transition(
    svc: CurationService, sequent: Cli, shared_store_url: str
) -> None:
    job_id = running_job(svc)
    change_snapshot(svc, job_id, SNAPSHOT_INTERVAL, lambda s: s.update(state="Failed"))
    before = event_count(svc)

    retry = sequent("job", "retry", str(job_id), "--db", shared_store_url)
    assert retry.code == EXIT_FAILED
    assert "action 'Retry' is not valid from state 'Running'" in retry.error_line()
    assert event_count(svc) == before  # nothing written
    shown = sequent("job", "show", str(job_id), "--json", "--db", shared_store_url).json()
    assert (shown["state"], shown["version"]) == ("Running", SNAPSHOT_INTERVAL)
    # The job still works from its true state, and the next snapshot is taken from the events.
    svc.execute(job_id, "RecordProgress", {"entry": "after"})
    assert svc.get(job_id).state == "Running"


def test_a_snapshot_changed_behind_later_events_is_still_caught(
    svc: CurationService, caplog: pytest.LogCaptureFixture
) -> None:
    """Progress events keep whatever state they are folded onto: the check is on the snapshot's
    own version, not only the last event; the fallback is logged."""
    job_id = running_job(svc, SNAPSHOT_INTERVAL + 5)
    change_snapshot(svc, job_id, SNAPSHOT_INTERVAL, lambda s: s.update(state="Failed"))
    with pytest.raises(InvalidTransition, match="not valid from state 'Running'"):
        svc.retry(job_id)
    assert svc.get(job_id).state == "Running"
    assert (
        f"job {job_id}: snapshot at version {SNAPSHOT_INTERVAL} not used (it says state Failed, "
        "but its version's event (ProgressRecorded) leaves a job Running); loaded from its events"
    ) in caplog.messages


def test_an_undecodable_snapshot_is_not_a_traceback(
    svc: CurationService, sequent: Cli, shared_store_url: str
) -> None:
    job_id = running_job(svc, 2 * SNAPSHOT_INTERVAL - 1)
    set_snapshot(svc, job_id, SNAPSHOT_INTERVAL, b"\xff\x00 not json")
    db = ("--db", shared_store_url)
    shown = sequent("job", "show", str(job_id), "--json", *db).json()
    assert (shown["state"], shown["version"]) == ("Running", 2 * SNAPSHOT_INTERVAL - 1)
    # The save that reaches the next interval takes its snapshot from the events, not from
    # the undecodable one (the library's own would fail after committing the event).
    svc.execute(job_id, "RecordProgress", {"entry": "200"})
    latest = svc.snapshots.get(job_id, gt=SNAPSHOT_INTERVAL)  # type: ignore[union-attr]
    assert [s.originator_version for s in latest] == [2 * SNAPSHOT_INTERVAL]
    audit = sequent("audit", str(job_id), "--json", "--at", str(SNAPSHOT_INTERVAL), *db).json()
    assert audit["at"]["state"] == "Running"
    report = sequent("verify", "--json", *db).failed_json()
    (detail,) = [d for d in report["details"] if d["kind"] == "snapshot"]
    assert detail["key"] == f"{job_id}@{SNAPSHOT_INTERVAL}"
    assert "undecodable" in detail["message"]


def test_audit_reads_the_events_not_a_corrupted_snapshot(
    svc: CurationService, sequent: Cli, shared_store_url: str
) -> None:
    job_id = running_job(svc, SNAPSHOT_INTERVAL + 2)

    def corrupt(state: dict[str, Any]) -> None:
        state.update(attempt=7, session_id="forged")

    change_snapshot(svc, job_id, SNAPSHOT_INTERVAL, corrupt)
    db = ("--db", shared_store_url)
    audit = sequent("audit", str(job_id), "--json", *db).json()
    assert (audit["state"], audit["attempt"], audit["session_id"]) == ("Running", 1, "s-1")
    at = sequent("audit", str(job_id), "--json", "--at", str(SNAPSHOT_INTERVAL), *db).json()["at"]
    assert (at["version"], at["attempt"], at["session_id"]) == (SNAPSHOT_INTERVAL, 1, "s-1")
    assert check_invariants(audit) == []


def test_verify_reports_a_changed_snapshot_with_its_job_and_version(
    svc: CurationService, sequent: Cli, shared_store_url: str
) -> None:
    job_id = running_job(svc)
    db = ("--db", shared_store_url)
    assert sequent("verify", "--json", *db).json()["ok"] is True
    change_snapshot(svc, job_id, SNAPSHOT_INTERVAL, lambda s: s.update(attempt=3))

    report = sequent("verify", "--json", *db).failed_json()
    assert report["ok"] is False
    assert report["snapshots"] == 1
    (detail,) = report["details"]
    assert (detail["projection"], detail["kind"]) == ("snapshots", "snapshot")
    assert detail["key"] == f"{job_id}@{SNAPSHOT_INTERVAL}"
    assert detail["fields"] == {"attempt": {"expected": 1, "actual": 3}}
    human = sequent("verify", *db)
    assert human.code == EXIT_FAILED
    assert f"snapshot {job_id}@{SNAPSHOT_INTERVAL}: differs" in human.out


def test_verify_reports_a_snapshot_at_a_version_its_job_never_reached(
    svc: CurationService, sequent: Cli, shared_store_url: str
) -> None:
    """The replay checks each job's snapshots as it folds the job; one past the job's last
    event is checked after it, from the store."""
    job_id = running_job(svc, SNAPSHOT_INTERVAL + 2)
    assert svc.snapshots is not None
    (stored,) = svc.snapshots.recorder.select_events(job_id)
    beyond = SNAPSHOT_INTERVAL + 7
    svc.snapshots.recorder.insert_events([replace(stored, originator_version=beyond)])

    report = sequent("verify", "--json", "--db", shared_store_url).failed_json()
    assert report["snapshots"] == 2
    (detail,) = report["details"]
    assert (detail["kind"], detail["key"]) == ("snapshot", f"{job_id}@{beyond}")
    assert detail["message"] == "the job has no event at its version"


def test_verify_and_the_offline_check_find_an_invalid_transition_in_the_log(
    svc: CurationService, sequent: Cli, shared_store_url: str
) -> None:
    """What the old service wrote when it trusted a corrupted snapshot: Retried on a Running
    job. Written here as the library would have (a save of the job as the snapshot said)."""
    job_id = running_job(svc)
    job: CurationJob = svc.repository.get(job_id)
    job.state = JobState.FAILED  # what the corrupted snapshot held
    job.retry()
    svc.save(job)
    db = ("--db", shared_store_url)

    report = sequent("verify", "--json", *db).failed_json()
    (detail,) = [d for d in report["details"] if d["kind"] == "invalid_transition"]
    assert detail["key"] == f"{job_id}@{SNAPSHOT_INTERVAL + 1}"
    assert detail["message"] == "Retried from state Running (allowed from: Failed)"

    problems = check_invariants(sequent("audit", str(job_id), "--json", *db).json())
    assert any("invalid transition" in p and "Retried from state Running" in p for p in problems)
