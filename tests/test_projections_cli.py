"""The read-model commands: ``jobs``, ``discarded``, ``sessions``, ``status``, ``rebuild``,
``verify`` and ``project``, their --json shapes and values, and the one-line error contract.

They run through ``scripts.cli.main``, in process, and as real ``sequent`` processes where a
traceback would show.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from domain import CurationService
from projections.progress import progress_bar
from projections.runner import Projections
from scripts.cli.output import EXIT_FAILED, EXIT_USAGE
from tests.support.cli import ROOT, SEQUENT, Cli
from tests.support.fakes import open_projections
from tests.support.oracle import Workload, completions, fold_history


@pytest.fixture
def db(url_for: Callable[[str], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    url = url_for("sqlite")
    monkeypatch.setenv("SEQUENT_DB", url)
    return url


@pytest.fixture
def incident(db: str) -> Iterator[CurationService]:
    svc = CurationService.open(db)
    Workload(svc).incident(jobs=3, seed=1)
    svc.fail(svc.create_job({"x": 1}), reason="operator")
    svc.policies.request_decision(integration="build_session_message", endpoint="http://h:1/s")
    yield svc
    svc.close()


def test_jobs_lists_the_job_status_model_caught_up(sequent: Cli, incident: CurationService) -> None:
    rows = sequent("jobs", "--json").json()
    folded = fold_history(incident)["job_status"]
    assert len(rows) == len(folded) == 4
    keys = {"job_id", "state", "attempt", "session_id", "version", "current_invocation",
            "updated_at", "position"}  # fmt: skip
    assert all(set(r) == keys for r in rows)
    for r in rows:
        assert tuple(r.values()) == folded[r["job_id"]]
    running = sequent("jobs", "--state", "Running", "--json").json()
    assert len(running) == 3
    assert {r["attempt"] for r in running} == {2}
    assert [r["state"] for r in sequent("jobs", "--state", "Failed", "--json").json()] == ["Failed"]
    human = sequent("jobs")
    assert human.code == 0
    assert "4 jobs" in human.out


def test_discarded_lists_each_discarded_completion(sequent: Cli, incident: CurationService) -> None:
    rows = sequent("discarded", "--json").json()
    assert len(rows) == 3
    for r in rows:
        assert {"job_id", "invocation_id", "attempt", "action", "reason"} <= set(r)
        assert (r["attempt"], r["action"], r["reason"]) == (1, "SessionSpawned", "superseded")
        assert (r["verdict"], r["job_state_seen"]) == ("discarded", "Running")
    job = rows[0]["job_id"]
    assert [r["job_id"] for r in sequent("discarded", "--job", job, "--json").json()] == [job]
    assert "3 discarded completions" in sequent("discarded").out


def test_sessions_and_orphans(sequent: Cli, incident: CurationService) -> None:
    sessions = sequent("sessions", "--json").json()
    assert len(sessions) == 6
    orphans = sequent("sessions", "--orphans", "--json").json()
    assert all(o["orphan"] and o["verdict"] == "discarded" and o["alive"] for o in orphans)
    assert len(orphans) == sum(1 for s in sessions if s["orphan"])


def test_status_shows_lag_without_catching_up(
    sequent: Cli, incident: CurationService, db: str
) -> None:
    head = incident.recorder.max_notification_id()
    before = sequent("status", "--json").json()
    assert [s["projection"] for s in before] == [
        "job_status", "dispatch_audit", "sessions", "decisions",
    ]  # fmt: skip
    assert all((s["position"], s["head"], s["lag"]) == (0, head, head) for s in before)
    project = sequent("project", "--once", "--json").json()
    assert project["events"] > 0
    after = sequent("status", "--json").json()
    assert all((s["position"], s["head"], s["lag"]) == (head, head, 0) for s in after)
    assert {s["projection"]: s["rows"] for s in after}["dispatch_audit"] == len(
        completions(incident)
    )


def test_rebuild_one_and_all(sequent: Cli, incident: CurationService) -> None:
    one = sequent("rebuild", "--projection", "dispatch_audit", "--json").json()
    assert {"projection", "events", "seconds", "checksum_live", "checksum_rebuilt"} <= set(one)
    assert one["projection"] == "dispatch_audit"
    assert one["checksum_live"] == one["checksum_rebuilt"]
    assert one["equal"] is True
    assert one["rows"] == len(completions(incident))
    every = sequent("rebuild", "--json").json()
    assert every["projection"] == "all"
    assert every["checksum_live"] == every["checksum_rebuilt"]
    assert [p["projection"] for p in every["projections"]] == [
        "job_status", "dispatch_audit", "sessions", "decisions",
    ]  # fmt: skip
    assert every["events"] == sum(p["events"] for p in every["projections"])
    again = sequent("rebuild", "--projection", "dispatch_audit", "--json").json()
    assert again["checksum_rebuilt"] == one["checksum_rebuilt"]
    assert "rebuild" in sequent("rebuild", "--projection", "decisions").out


def test_verify_reports_parity_then_drift(sequent: Cli, incident: CurationService, db: str) -> None:
    report = sequent("verify", "--json").json()
    assert {"checked", "drifted", "missing"} <= set(report)
    assert (report["drifted"], report["missing"], report["extra"], report["ok"]) == (
        0, 0, 0, True,
    )  # fmt: skip
    assert report["checked"] == sum(len(v) for v in fold_history(incident).values())
    with open_projections(db) as p:
        p.store.execute('UPDATE decisions SET "status" = ?', ("approved",))
    drift = sequent("verify", "--json").failed_json()  # exit 1: DESIGN.md §5
    assert (drift["drifted"], drift["ok"]) == (1, False)
    (detail,) = drift["details"]
    assert detail["projection"] == "decisions"
    assert detail["fields"] == {"status": {"expected": "pending", "actual": "approved"}}
    human = sequent("verify")
    assert human.code == EXIT_FAILED
    assert "DRIFT" in human.out


def test_verify_finds_a_work_table_row_the_log_does_not_explain(
    sequent: Cli, incident: CurationService, db: str
) -> None:
    [run] = incident.start_jobs([{"target": "t"}])
    with incident.recorder.datastore.transaction(commit=True) as c:  # type: ignore[attr-defined]
        c.execute("UPDATE sequent_runs SET available_at = available_at + 3600")
    drift = sequent("verify", "--json").failed_json()
    (detail,) = [d for d in drift["details"] if d["projection"] == "work_table"]
    assert detail["key"] == f"run {run.invocation_id}"
    assert (drift["history"], drift["ok"]) == (1, False)


@pytest.fixture
def incident_store(shared_store_url: str) -> str:
    """The incident's store on SQLite and on PostgreSQL, its read models at the head."""
    with open_projections(shared_store_url) as p:
        Workload(p.service).incident(jobs=3, seed=1)
        p.service.policies.request_decision(
            integration="build_session_message", endpoint="http://h:1/s"
        )
        p.catch_up()
    return shared_store_url


def test_rebuild_exits_1_when_the_live_checksum_differed(sequent: Cli, incident_store: str) -> None:
    db = ("--db", incident_store)
    with open_projections(incident_store) as p:
        table = p.store.qualified("decisions")
        p.store.execute(f'UPDATE {table} SET "status" = ?', ("approved",))
    ran = sequent("rebuild", "--projection", "decisions", "--json", *db)
    report = ran.failed_json()  # the report is still printed
    assert report["equal"] is False
    assert report["checksum_live"] != report["checksum_rebuilt"]
    every = sequent("rebuild", "--json", *db).json()  # the rebuilt tables are in place: equal
    assert every["equal"] is True
    assert sequent("verify", "--json", *db).json()["ok"] is True


def test_status_shows_a_position_past_the_head_as_negative_lag_and_drift(
    sequent: Cli, incident_store: str
) -> None:
    db = ("--db", incident_store)
    with open_projections(incident_store) as p:
        head = p.head()
        p.store.force_position(p.projection("sessions"), head + 5)
    rows = {s["projection"]: s for s in sequent("status", "--json", *db).json()}
    assert (rows["sessions"]["lag"], rows["job_status"]["lag"]) == (-5, 0)
    assert rows["sessions"]["drift"] == (
        f"position {head + 5} is past the head {head}: rebuild the projection"
    )
    assert rows["job_status"]["drift"] is None
    human = sequent("status", *db)
    assert "DRIFT" in human.out
    assert f"sessions: position {head + 5} is past the head" in human.out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("rebuild", "--projection", "jobs"), "argument --projection: invalid choice: 'jobs'"),
        (("jobs", "--state", "Sleeping"), "argument --state: invalid choice: 'Sleeping'"),
        (("discarded", "--job", "not-a-uuid"), "malformed job id 'not-a-uuid'"),
        (("project", "--batch-size", "0"), "expected at least 1"),
        (("jobs", "--db", "postgresql://postgres@127.0.0.1:1/none"), "is unavailable"),
        (("status", "--db", "mysql://x"), "bad store URL"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(
    sequent: Cli, db: str, argv: tuple[str, ...], message: str
) -> None:
    ran = sequent(*argv)
    assert message in ran.error_line()
    assert ran.code in (EXIT_USAGE, EXIT_FAILED)


def test_a_real_process_prints_one_line_not_a_traceback(db: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SEQUENT_DB": db}
    ran = subprocess.run(
        [SEQUENT, "rebuild", "--projection", "x"],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert ran.returncode == EXIT_USAGE
    assert ran.stdout == ""
    assert ran.stderr.count("\n") == 1
    assert "Traceback" not in ran.stderr
    ok = subprocess.run(
        [SEQUENT, "project", "--once", "--json"],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["events"] == 0


def test_project_follows_until_sigterm(shared_store_url: str) -> None:
    """``sequent project`` as a process: SQLite polled, PostgreSQL followed through the
    subscription; SIGTERM lets it finish and report."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runner = subprocess.Popen(
        [SEQUENT, "project", "--json",
         "--db", shared_store_url, "--poll", "0.05", "--batch-size", "7"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )  # fmt: skip
    try:
        with open_projections(shared_store_url) as p:
            Workload(p.service).incident(jobs=4)
            deadline = time.monotonic() + 30
            while set(p.lag().values()) != {0}:
                assert runner.poll() is None, runner.communicate()
                assert time.monotonic() < deadline, p.status()
                time.sleep(0.05)
            assert stored_parity(p)
    finally:
        runner.send_signal(signal.SIGTERM)
        out, err = runner.communicate(timeout=30)
    assert runner.returncode == 0, err
    report = json.loads(out)
    assert report["events"] is None
    assert {s["lag"] for s in report["projections"]} == {0}


def stored_parity(p: Projections) -> bool:
    folded = fold_history(p.service)
    for name in folded:
        view = p.projection(name)
        at = view.table.index_of(view.table.key)
        rows = {str(r[at]): tuple(r) for r in p.store.snapshot(view).rows}
        assert rows == folded[name], name
    return True


def test_progress_bar_only_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    with progress_bar("rebuild x") as bar:
        assert bar is None  # stderr is captured, not a terminal
    with progress_bar("rebuild x", force=True) as bar:
        assert bar is not None
        bar(5, 10)
        bar(10, 10)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "rebuild x" in captured.err
    assert "10/10" in captured.err
