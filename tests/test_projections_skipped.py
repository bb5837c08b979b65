"""No event the store accepted stops a read model (DESIGN.md §1 invariant 5): an event a
projection cannot fold — bytes that do not decode, or JSON without the fields its fold reads —
is recorded in the projection's ``<name>_skipped`` table in the transaction that moves it past
the event; the runner keeps following, ``status`` counts the skipped events and ``verify``
lists them (and the undecodable events of the log) as drift, exit 1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from uuid import UUID

from domain import CurationService
from domain.log import FINISHED, JOB_RETRIED
from tests.support.cli import ROOT, SEQUENT, Cli
from tests.support.fakes import open_projections
from tests.support.oracle import Workload
from tests.support.store_sql import insert_event

GARBAGE = b"\xff\xfe not the transcoder's JSON"
# Decodes (the transcoder's JSON with a timestamp) but lacks every field a Finished has.
NO_FIELDS = b'{"timestamp":{"_type_":"datetime_iso","_data_":"2025-01-01T00:00:00+00:00"}}'


def bad_events(svc: CurationService) -> tuple[UUID, int, int]:
    """A job whose second event is an undecodable Retried, and an invocation whose second
    event is a Finished without its fields, both inserted by SQL. Returns the job's id and the
    two notification ids."""
    job_id = svc.create_job({"target": "t"})
    undecodable = insert_event(svc, job_id, 2, JOB_RETRIED, GARBAGE)
    other = svc.create_job({"target": "u"})
    dispatch = svc.submit(other)
    unexpected = insert_event(svc, dispatch.invocation_id, 2, FINISHED, NO_FIELDS)
    return job_id, undecodable, unexpected


def test_the_runner_records_an_event_it_cannot_fold_and_keeps_following(
    shared_store_url: str, sequent: Cli
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runner = subprocess.Popen(
        [SEQUENT, "project", "--json", "--db", shared_store_url, "--poll", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    try:
        with open_projections(shared_store_url) as p:
            job_id, undecodable, unexpected = bad_events(p.service)
            Workload(p.service).incident(jobs=2)  # written after them, and followed
            deadline = time.monotonic() + 30
            while set(p.lag().values()) != {0}:
                assert runner.poll() is None, runner.communicate()
                assert time.monotonic() < deadline, p.status()
                time.sleep(0.05)
            assert runner.poll() is None  # still following
            status = {s.projection: s.skipped for s in p.status()}
            assert status == {"job_status": 1, "dispatch_audit": 1, "sessions": 1, "decisions": 0}
            (skipped,) = p.skipped("job_status")
            assert (skipped.position, skipped.topic, skipped.aggregate_id, skipped.version) == (
                undecodable, JOB_RETRIED, str(job_id), 2,
            )  # fmt: skip
            assert "deserialise" in skipped.error
            assert [s.position for s in p.skipped("dispatch_audit")] == [unexpected]
            # The events around them were applied: the incident's jobs are all there.
            assert len(p.jobs("Running")) == 2
            assert [r.version for r in p.jobs() if r.job_id == str(job_id)] == [1]
    finally:
        runner.send_signal(signal.SIGTERM)
        out, err = runner.communicate(timeout=30)
    assert runner.returncode == 0, err
    assert {s["skipped"] for s in json.loads(out)["projections"]} == {0, 1}

    report = sequent("verify", "--json", "--db", shared_store_url).failed_json()
    kinds = {(d["projection"], d["kind"], d["key"]) for d in report["details"]}
    assert ("job_status", "skipped", str(undecodable)) in kinds
    assert ("dispatch_audit", "skipped", str(unexpected)) in kinds
    assert ("events", "undecodable", f"{job_id}@2") in kinds
    assert "skipped" in sequent("status", "--db", shared_store_url).out
    audit = sequent("audit", str(job_id), "--db", shared_store_url)
    assert f"job {job_id}: event 2 cannot be read" in audit.error_line()


def test_a_rebuild_records_the_same_skipped_events(shared_store_url: str) -> None:
    with open_projections(shared_store_url) as p:
        _, undecodable, _ = bad_events(p.service)
        Workload(p.service).incident(jobs=1)
        p.catch_up()
        live = p.checksum("job_status")
        report = p.rebuild("job_status", progress=False)
        assert report.equal
        assert report.checksum_rebuilt == live
        assert [s.position for s in p.skipped("job_status")] == [undecodable]
