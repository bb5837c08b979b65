"""The audit's JSON after the incident (``sequent race --jobs 10 --seed 7``, in process): the
offline check finds every invariant of DESIGN.md §1 held for every job, and finds the one event
flipped to a transition the table forbids."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from projections import check_invariants
from tests.support.cli import Cli


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def test_every_audit_after_the_race_checks_clean_until_one_event_is_flipped(
    sequent: Cli, shared_store_url: str
) -> None:
    db = ("--db", shared_store_url)
    race = sequent("race", "--jobs", "10", "--seed", "7", "--json", *db).json()
    assert (race["jobs"], race["wrongly_failed"]) == (10, 0)
    jobs = [row["job_id"] for row in sequent("jobs", "--json", *db).json()]
    assert len(jobs) == 10
    audits = [sequent("audit", job, "--json", *db).json() for job in jobs]
    problems = {job: check_invariants(a) for job, a in zip(jobs, audits, strict=True)}
    assert problems == {job: [] for job in jobs}
    assert sum(a["summary"]["discarded"] for a in audits) >= 1  # the race had late completions

    # Submitted -> RepairRequired: both start an invocation and leave the job Ready, so every
    # fold agrees; only the transition table says RepairRequired cannot follow Queued.
    flipped = copy.deepcopy(audits[0])
    event = next(e for e in flipped["events"] if e["name"] == "Submitted")
    event["name"] = "RepairRequired"
    assert check_invariants(flipped) == [
        f"job v{event['version']}: invalid transition: RepairRequired from state Queued "
        "(allowed from: Finalizing)"
    ]
