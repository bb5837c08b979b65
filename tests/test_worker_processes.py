"""`sequent worker` as real processes: several share one store, and SIGTERM stops one cleanly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from domain import CurationService, JobState
from integrations.session_service import SessionService
from tests.support.chaos import prepare

SEQUENT = str(Path(sys.executable).parent / "sequent")


@pytest.fixture
def sessions() -> Iterator[SessionService]:
    with SessionService(seed=4) as service:
        yield service


def test_two_worker_processes_share_one_store(
    shared_store_url: str, sessions: SessionService, tmp_path: Path
) -> None:
    dispatches = prepare(shared_store_url, sessions, 20)
    workers = [
        subprocess.Popen(
            [SEQUENT, "worker", "--once", "--json", "--db", shared_store_url, "--worker-id", name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
        )
        for name in ("w1", "w2")
    ]
    stats = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        stats.append(json.loads(out))
    assert sum(s["runs"] for s in stats) == len(dispatches)
    assert sum(s["applied"] for s in stats) == len(dispatches)
    svc = CurationService.open(shared_store_url)
    try:
        for d in dispatches:
            assert svc.get(d.job_id).state == JobState.RUNNING
            verdicts = svc.invocation(d.invocation_id).verdicts
            assert [v["verdict"] for v in verdicts] == ["Applied"]
    finally:
        svc.close()
    assert len(sessions.sessions) == len(dispatches)


def test_sigterm_stops_a_running_worker_after_its_work(
    url_for: object, sessions: SessionService, tmp_path: Path
) -> None:
    url = url_for("sqlite")  # type: ignore[operator]
    prepare(url, sessions, 0)
    worker = subprocess.Popen(
        [SEQUENT, "worker", "--json", "--db", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        dispatches = prepare(url, sessions, 5)
        svc = CurationService.open(url)
        deadline = time.monotonic() + 60
        try:
            while any(svc.get(d.job_id).state != JobState.RUNNING for d in dispatches):
                assert time.monotonic() < deadline, "the worker did not pick the jobs up"
                time.sleep(0.05)
        finally:
            svc.close()
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=30)
    finally:
        worker.kill()
    assert worker.returncode == 0, err
    assert json.loads(out)["applied"] == len(dispatches)
