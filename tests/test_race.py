"""The incident end to end (`sequent race`): with the guard no job is harmed and no session is
orphaned; the baseline, same seed, reproduces the incident."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from scripts import cli
from scripts.cli.race import RaceConfig, run_race

KEYS = {
    "jobs", "running", "completed", "failed", "wrongly_failed", "stale_completions", "applied",
    "discarded", "orphan_sessions", "events", "seconds",
}  # fmt: skip


def assert_guard_held(figures: dict[str, Any], jobs: int) -> None:
    assert set(figures) >= KEYS
    assert figures["jobs"] == jobs
    assert figures["wrongly_failed"] == 0
    assert figures["orphan_sessions"] == 0
    assert figures["stale_completions"] >= 1
    assert figures["discarded"] >= figures["stale_completions"]
    # Every discarded success left a session: each was stopped by its compensation. (A stale
    # run's Fail is discarded too, and has none to stop.)
    assert figures["compensated"] == figures["discarded_sessions"] >= 1
    assert figures["discarded_sessions"] <= figures["discarded_by_reason"].get(
        "superseded", 0
    ) + figures["discarded_by_reason"].get("job_moved_on", 0)
    # Runs that outlive the Ready timeout under load are retried for a bounded number of
    # rounds; a job can end Failed(timeout) then, but never harmed by a stale completion.
    assert figures["running"] >= jobs * 0.99


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def test_guarded_and_baseline_same_seed(url_for: Callable[[str], str]) -> None:
    guarded = run_race(RaceConfig(jobs=10, seed=7), url_for("sqlite"))
    baseline = run_race(RaceConfig(jobs=10, seed=7, baseline=True), url_for("sqlite"))
    assert_guard_held(guarded, 10)
    assert baseline["wrongly_failed"] >= 1, "the incident reproduces without the guard"
    assert baseline["discarded"] == 0
    assert baseline["orphan_sessions"] >= 1
    assert baseline["stale_completions"] >= 1


@pytest.mark.parametrize("jobs", [100, 1000])
def test_guard_holds_at_scale_on_sqlite(url_for: Callable[[str], str], jobs: int) -> None:
    assert_guard_held(run_race(RaceConfig(jobs=jobs, seed=11), url_for("sqlite")), jobs)


def test_guard_holds_on_postgres(url_for: Callable[[str], str]) -> None:
    assert_guard_held(run_race(RaceConfig(jobs=30, seed=5), url_for("postgres")), 30)


def test_cli_race_compare_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["race", "--jobs", "10", "--seed", "3", "--compare", "--json"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    guarded, baseline = json.loads(out)
    assert (guarded["mode"], baseline["mode"]) == ("guarded", "baseline")
    assert_guard_held(guarded, 10)
    assert baseline["wrongly_failed"] >= 1
    assert Path(".sequent/race-3-10-guarded.db").is_file()


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["race", "--jobs", "0"], "expected at least 1"),
        (["race", "--jobs", "ten"], "expected a whole number"),
        (["race", "--compare", "--db", "memory://"], "leave out --db"),
        (["race", "--baseline", "--compare"], "not allowed with"),
    ],
)
def test_cli_race_bad_input(
    capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code != 0
    assert out == ""
    assert len(err.splitlines()) == 1
    assert fragment in err
