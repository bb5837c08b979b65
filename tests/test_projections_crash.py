"""A projection runner killed with SIGKILL, between batches or in the middle of one, resumes at
its tracked position: every view holds exactly the history up to its position (no half
batch, nothing missing), and after a restart everything, once (no duplicate, no gap)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from domain import CurationService
from projections.catalog import PROJECTION_NAMES
from projections.runner import Projections
from tests.support.fakes import open_projections
from tests.support.oracle import Workload, assert_parity, fold_history, random_workload, stored

ROOT = Path(__file__).resolve().parent.parent

# The runner under test, instrumented only to say where it is and to linger there: after each
# committed batch ("between"), or inside a batch's transaction after its rows are written,
# just before its tracking record is ("mid").
RUNNER = """
import sys, time
from projections.runner import Projections
from projections.recorders import PostgresReadModels, ReadModels, SQLiteReadModels
from tests.support.fakes import open_projections

mode, url, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
apply = ReadModels.apply

def slow_apply(self, *args, **kwargs):
    apply(self, *args, **kwargs)
    print("committed", flush=True)
    if mode == "between":
        time.sleep(0.02)

ReadModels.apply = slow_apply
for cls in (SQLiteReadModels, PostgresReadModels):
    def slow_track(self, c, key, position, track=cls._track):
        if mode == "mid":  # the batch's rows are written; its position is next
            print("tracking", flush=True)
            time.sleep(0.05)
        track(self, c, key, position)
    cls._track = slow_track

with open_projections(url, batch_size=batch) as p:
    p.catch_up()
print("done", flush=True)
"""


def start(mode: str, url: str, batch: int = 4) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, mode, url, str(batch)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )


def kill_after(runner: subprocess.Popen[str], commits: int, then: str) -> None:
    """SIGKILL once ``commits`` batches are committed and the runner says ``then``."""
    assert runner.stdout is not None
    seen = 0
    for line in runner.stdout:
        seen += line.strip() == "committed"
        if seen >= commits and line.strip() == then:
            runner.send_signal(signal.SIGKILL)
            break
        assert line.strip() != "done", "the runner finished before it could be killed"
    runner.wait(timeout=30)
    assert runner.returncode == -signal.SIGKILL


@pytest.fixture
def history(shared_store_url: str) -> Iterator[CurationService]:
    svc = CurationService.open(shared_store_url)
    w = Workload(svc)
    w.incident(jobs=25, seed=2)
    random_workload(svc, 80, seed=6)
    yield svc
    svc.close()


@pytest.mark.parametrize("moment", ["between", "mid"])
def test_killed_runner_resumes_at_its_tracked_position(
    shared_store_url: str, history: CurationService, moment: str
) -> None:
    Projections(history).store  # tables exist before two processes race to make them  # noqa: B018
    head = history.recorder.max_notification_id() or 0

    runner = start(moment, shared_store_url)
    kill_after(runner, commits=40, then="committed" if moment == "between" else "tracking")

    with open_projections(shared_store_url) as p:
        positions = p.positions()
        assert any(0 < pos < head for pos in positions.values()), positions  # killed midway
        for name in PROJECTION_NAMES:
            # Exactly the history up to the tracked position: the killed batch left nothing.
            assert stored(p, name) == fold_history(p.service, positions[name])[name], name

        restarted = start("none", shared_store_url, batch=50)
        out, err = restarted.communicate(timeout=120)
        assert restarted.returncode == 0, err
        assert out.strip().endswith("done")

        assert set(p.positions().values()) == {head}
        assert_parity(p)  # nothing missing, nothing twice
