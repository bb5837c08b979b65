"""Snapshots every 100 job events: long histories load from the latest snapshot, and the state
they give equals a replay of every event."""

from __future__ import annotations

from eventsourcing.application import project_aggregate

from domain import CurationService
from domain.job import CurationJob
from domain.service import SNAPSHOT_INTERVAL


def test_long_history_is_snapshotted_and_loads_the_same_state(svc: CurationService) -> None:
    job_id = svc.create_job({"target": "t"})
    dispatch = svc.submit(job_id)
    svc.complete(dispatch, "SessionSpawned", {"session_id": "s"})
    for n in range(2 * SNAPSHOT_INTERVAL + 7):
        svc.execute(job_id, "RecordProgress", {"entry": {"n": n}})

    assert svc.snapshots is not None
    versions = [s.originator_version for s in svc.snapshots.get(job_id)]
    assert versions == [SNAPSHOT_INTERVAL, 2 * SNAPSHOT_INTERVAL]

    loaded: CurationJob = svc.repository.get(job_id)
    replayed = project_aggregate(None, svc.events.get(job_id))
    assert isinstance(replayed, CurationJob)
    assert loaded.version == replayed.version == 2 * SNAPSHOT_INTERVAL + 10
    assert vars(loaded) == vars(replayed)
    assert loaded.progress[-1] == {"n": 2 * SNAPSHOT_INTERVAL + 6}
    # The restored state still drives the table: the job can be completed from Running.
    svc.execute(job_id, "Complete", {"output": {"ok": True}})
    assert svc.get(job_id).state == "Finalizing"
