"""Denied runs end to end (the Zig guest in wasmtime, Cedar, the dispatcher, the store): many
jobs denied on one endpoint share one pending decision, and each failure says "denied" once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from bootstrap import Settings, System, build_system
from domain import JobState
from integrations.session_service import SessionService
from scripts.cli.race import RaceConfig, run_race

JOBS = 12


@pytest.fixture
def system(store_url: str) -> Iterator[System]:
    with build_system(Settings.from_env(store_url=store_url)) as built:
        yield built


def test_jobs_denied_on_one_endpoint_fail_with_one_decision_said_once(system: System) -> None:
    svc = system.service
    with SessionService(seed=1) as sessions:
        job_ids = [
            svc.create_job({"target": f"t{n}", "session_service": sessions.url})
            for n in range(JOBS)
        ]
        for job_id in job_ids:
            svc.submit(job_id)
        anyio.run(system.dispatcher(concurrency=JOBS).run_once)  # the denials race

        system.projections.catch_up()
        [pending] = system.projections.decisions("pending")
        for job_id in job_ids:
            failure = svc.get(job_id).failure
            assert failure is not None
            assert (failure["reason"], failure["decision_id"]) == (
                "authorization_denied",
                pending.decision_id,
            )
            assert failure["message"].startswith("denied: no policy permits ")
            assert failure["message"].count("denied:") == 1

        svc.policies.approve(pending.decision_id, by="alice")
        for job_id in job_ids:
            svc.retry(job_id)
            svc.submit(job_id)
        anyio.run(system.dispatcher(concurrency=JOBS).run_once)
        assert {svc.get(j).state for j in job_ids} == {JobState.RUNNING}
        assert len(sessions.sessions) == JOBS


def test_the_race_asks_once_per_denied_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed 5 sends 8 of 10 jobs to the endpoint no policy permits: 8 decisions before the
    denials joined one, 1 now; the guard's figures are unchanged."""
    monkeypatch.chdir(tmp_path)
    figures = run_race(RaceConfig(jobs=10, seed=5), f"sqlite:///{tmp_path / 'race.db'}")
    assert figures["denied"] == 1
    guarded = ("running", "wrongly_failed", "orphan_sessions")
    assert {k: figures[k] for k in guarded} == dict(zip(guarded, (10, 0, 0), strict=True))
