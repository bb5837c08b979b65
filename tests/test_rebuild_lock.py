"""One rebuild of a projection at a time, across processes: a second one fails at once with
RebuildInProgress (one line, exit 1, nothing changed) instead of dropping the first one's
shadow tables, while the live read model keeps serving and following; afterwards its checksum
equals a fresh rebuild's. PostgreSQL: a session advisory lock; SQLite: a lease row."""

from __future__ import annotations

import os
import subprocess
import threading
from typing import Any

import pytest

from projections.errors import RebuildInProgress
from projections.rebuild import RebuildReport
from projections.runner import Projections
from scripts.cli.output import EXIT_FAILED
from tests.support.cli import ROOT, SEQUENT
from tests.support.fakes import open_projections
from tests.support.oracle import Workload

WAIT = 60  # seconds, an upper bound only


def fresh_rebuild_equals_live(url: str, name: str) -> None:
    with open_projections(url) as p:
        p.catch_up()
        live = p.checksum(name)
        report = p.rebuild(name, progress=False)
        assert (report.checksum_live, report.checksum_rebuilt) == (live, live)


def test_a_second_rebuild_fails_at_once_while_the_first_runs(shared_store_url: str) -> None:
    url = shared_store_url
    with open_projections(url, rebuild_batch_size=5) as first:
        Workload(first.service).incident(jobs=5, seed=3)
        first.catch_up()
        jobs = len(first.jobs())
        inside, release = threading.Event(), threading.Event()
        outcome: dict[str, Any] = {}

        def hold(position: int, head: int) -> None:  # the first rebuild pauses in its replay
            inside.set()
            release.wait(WAIT)

        def rebuild() -> None:
            try:
                outcome["report"] = first.rebuild("job_status", progress=hold)
            except BaseException as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=rebuild)
        thread.start()
        try:
            assert inside.wait(WAIT)
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            other = subprocess.run(
                [SEQUENT, "rebuild", "--projection", "job_status", "--db", url],
                check=False,
                capture_output=True,
                text=True,
                cwd=ROOT,
                env=env,
                timeout=WAIT,
            )
            assert other.returncode == EXIT_FAILED
            assert other.stdout == ""
            assert other.stderr.startswith("sequent: error: a rebuild of job_status is already")
            assert other.stderr.count("\n") == 1
            with open_projections(url) as second:  # its own connections
                with pytest.raises(RebuildInProgress, match="already running"):
                    second.rebuild("job_status", progress=False)
                # The live model keeps serving and following; other projections rebuild.
                second.service.create_job({"during": "rebuild"})
                second.catch_up()
                assert len(second.jobs()) == jobs + 1
                assert second.rebuild("sessions", progress=False).equal
        finally:
            release.set()
            thread.join(WAIT)
    assert "error" not in outcome, outcome
    report: RebuildReport = outcome["report"]
    assert report.equal
    fresh_rebuild_equals_live(url, "job_status")


def test_two_rebuilds_started_at_once_never_fail_untyped(shared_store_url: str) -> None:
    url = shared_store_url
    with open_projections(url) as p:
        Workload(p.service).incident(jobs=20, seed=4)
    start = threading.Barrier(2)
    outcomes: list[object] = []

    def rebuild(p: Projections) -> None:
        start.wait(WAIT)
        try:
            outcomes.append(p.rebuild("dispatch_audit", progress=False))
        except RebuildInProgress as exc:
            outcomes.append(exc)
        except BaseException as exc:  # what the test is about: nothing else escapes
            outcomes.append(("untyped", exc))

    # Opened one after the other (each with its own connections): opening a store is not
    # what is under test.
    rebuilders = [open_projections(url, rebuild_batch_size=3) for _ in range(2)]
    threads = [threading.Thread(target=rebuild, args=(p,)) for p in rebuilders]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
    finally:
        for p in rebuilders:
            p.close()
    assert len(outcomes) == 2
    assert all(isinstance(o, RebuildReport | RebuildInProgress) for o in outcomes), outcomes
    assert any(isinstance(o, RebuildReport) for o in outcomes)
    fresh_rebuild_equals_live(url, "dispatch_audit")
