"""The incident demo (scripts/cli/demo.py, ``sequent demo``): its claims are read back from the
store, and a broken guard makes it fail loudly instead of telling the happy story."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import domain.service
from domain import (
    CurationService,
    Discarded,
    DiscardReason,
    Dispatch,
    JobNotFound,
    JobState,
)
from domain.guard import Apply
from scripts import cli
from scripts.cli import demo
from scripts.cli.output import EXIT_FAILED, EXIT_USAGE
from tests.support.fakes import event_count

FACTS = {
    "retry_completion_applied",
    "late_success_superseded",
    "late_failure_duplicate",
    "job_still_running",
    "version_unchanged",
    "session_from_retry",
    "discards_recorded",
    "failed_only_once",
}


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = cli.main(["demo", "--json", *argv])
    captured = capsys.readouterr()
    return code, json.loads(captured.out), captured.err


def assert_incident_held(summary: dict[str, Any]) -> None:
    assert summary["ok"] is True
    assert summary["facts"] == dict.fromkeys(FACTS, True)
    assert summary["state"] == "Running"
    assert summary["version"] == summary["version_before_late"] == 7
    assert (summary["attempt"], summary["session_id"]) == (2, demo.SESSION_B)
    assert [d["reason"] for d in summary["discards"]] == ["superseded", "duplicate"]
    assert all(d["job_version_seen"] == 7 for d in summary["discards"])
    verdicts = summary["verdicts"]
    assert verdicts["retry"] == {
        "verdict": "Applied",
        "invocation_id": summary["invocation_b"],
        "job_version": 7,
    }
    assert [verdicts[k]["reason"] for k in ("late_success", "late_failure")] == [
        "superseded",
        "duplicate",
    ]
    assert summary["invocation_a"] != summary["invocation_b"]


def test_the_demo_json_states_the_facts_and_the_store_agrees(
    capsys: pytest.CaptureFixture[str], url_for: Callable[[str], str]
) -> None:
    url = url_for("sqlite")
    code, summary, err = run_json(capsys, "--db", url)
    assert (code, err) == (0, "")
    assert summary["db"] == url
    assert_incident_held(summary)

    svc = CurationService.open(url)  # read back independently of the demo's own summary
    try:
        job = svc.get(summary["job_id"])
        assert (job.state, job.version, job.attempt) == (JobState.RUNNING, 7, 2)
        a_events = svc.invocation_history(summary["invocation_a"])
        assert [e.name for e in a_events] == [
            "Started",
            "Finished",
            "Discarded",
            "Finished",
            "Discarded",
        ]
        failed = [e.data for e in svc.history(summary["job_id"]) if e.name == "Failed"]
        assert [(f["reason"], f["decision_id"]) for f in failed] == [
            ("authorization_denied", demo.DECISION_ID)
        ]
    finally:
        svc.close()
    names = [(e["aggregate"], e["name"]) for e in summary["history"]]
    assert names.count(("invocation", "Discarded")) == 2
    assert ("job", "Failed") in names


@pytest.mark.postgres
def test_the_demo_holds_on_postgres(
    capsys: pytest.CaptureFixture[str], url_for: Callable[[str], str]
) -> None:
    code, summary, _ = run_json(capsys, "--db", url_for("postgres"))
    assert code == 0
    assert_incident_held(summary)


def test_the_human_story_is_nine_steps_a_timeline_and_the_conclusion(
    capsys: pytest.CaptureFixture[str],
    url_for: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    assert cli.main(["demo", "--db", url_for("sqlite")]) == 0
    out = capsys.readouterr().out.splitlines()
    steps = [line for line in out if line[:3].strip().rstrip(".").isdigit()]
    assert len(steps) == 9
    assert steps[6].endswith("Applied (job now at version 7)")
    assert "Discarded: superseded" in steps[7]
    assert "Discarded: duplicate" in steps[8]
    a_rows = [line.split("│")[3].strip() for line in out if line.startswith("│ invocation A")]
    assert a_rows == ["Started", "Finished", "Discarded", "Finished", "Discarded"]
    assert out[-1].startswith("Job ")
    assert "is still Running at version 7" in out[-1]
    assert out[-1].endswith("recorded as discarded (superseded, duplicate).")


def test_without_db_the_demo_starts_from_a_fresh_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEQUENT_DB", "sqlite:///elsewhere.db")  # the demo must not use it
    first = run_json(capsys)[1]
    second = run_json(capsys)[1]
    assert first["db"] == second["db"] == demo.DEMO_DB_URL
    assert not (tmp_path / "elsewhere.db").exists()
    svc = CurationService.open(demo.DEMO_DB_URL)
    try:
        assert svc.get(second["job_id"]).state == JobState.RUNNING
        with pytest.raises(JobNotFound):
            svc.get(first["job_id"])  # the first run's file was deleted
        assert event_count(svc) == len(second["history"])
    finally:
        svc.close()


def test_sequent_demo_runs_it_with_db_after_the_subcommand(
    capsys: pytest.CaptureFixture[str], url_for: Callable[[str], str]
) -> None:
    url = url_for("sqlite")
    assert cli.main(["demo", "--db", url, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["db"] == url
    assert_incident_held(summary)


def test_a_bad_db_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--db", "sqlite:"]) == EXIT_USAGE
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0].startswith("sequent: error: bad store URL")


# -- a broken guard must make the demo fail, not tell the happy story ------------------------


def discard_everything(job: Any, invocation: Any, dispatch: Dispatch, action: str) -> Any:
    return Discarded(dispatch.invocation_id, DiscardReason.JOB_MOVED_ON, job.version, job.state)


def apply_everything(job: Any, invocation: Any, dispatch: Dispatch, action: str) -> Any:
    return Apply(dispatch.invocation_id)  # no correlation, as in the incident


def test_facts_that_do_not_hold_exit_1_and_are_named(
    capsys: pytest.CaptureFixture[str],
    url_for: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(domain.service, "decide", discard_everything)
    code, summary, err = run_json(capsys, "--db", url_for("sqlite"))
    assert code == EXIT_FAILED
    assert summary["ok"] is False
    false = {name for name, held in summary["facts"].items() if not held}
    assert false == {
        "retry_completion_applied",
        "late_success_superseded",
        "late_failure_duplicate",
        "job_still_running",
        "session_from_retry",
        "discards_recorded",
    }
    assert summary["state"] == "Ready"
    lines = err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("sequent: error: demo: the guard did not hold")
    assert "retry_completion_applied" in lines[0]
    assert "version_unchanged" not in lines[0]


def test_a_broken_guard_gets_no_happy_ending_in_the_story(
    capsys: pytest.CaptureFixture[str],
    url_for: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(domain.service, "decide", discard_everything)
    assert cli.main(["demo", "--db", url_for("sqlite")]) == EXIT_FAILED
    out = capsys.readouterr().out
    assert "still Running" not in out


def test_unguarded_completions_hit_the_409_and_the_demo_fails(
    capsys: pytest.CaptureFixture[str],
    url_for: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(domain.service, "decide", apply_everything)
    assert cli.main(["demo", "--db", url_for("sqlite")]) == EXIT_FAILED
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert "'SessionSpawned' is not valid from state 'Running'" in lines[0]
    assert "Traceback" not in captured.err
