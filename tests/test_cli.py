"""The ``sequent`` CLI: round trips through main() (in-process, captured with capsys), the
one-line error contract for every kind of bad input (with the store's event count unchanged),
and the same contract from a real process, where a traceback would show."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from domain import CurationService, JobState
from scripts.cli.output import EXIT_FAILED, EXIT_USAGE, to_jsonable
from tests.support.cli import Cli
from tests.support.fakes import event_count

SEQUENT = Path(sys.executable).parent / "sequent"
SPEC = {"target": "https://curation.example/feed", "tags": ["a", "b"]}
UNREACHABLE_PG = "postgresql://postgres@127.0.0.1:1/none"
JOB_VIEW_KEYS = {
    "id",
    "state",
    "version",
    "attempt",
    "session_id",
    "current_invocation",
    "spec",
    "settings",
    "failure",
    "progress",
    "output",
    "created_on",
    "modified_on",
}


@pytest.fixture(autouse=True)
def default_store(
    url_for: Callable[[str], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    """$SEQUENT_DB: a fresh store of its own, and the working directory a temporary one, so a
    command that lost its --db can neither touch the repository nor reach the test's store."""
    monkeypatch.chdir(tmp_path)
    url = url_for("sqlite")
    monkeypatch.setenv("SEQUENT_DB", url)
    monkeypatch.setenv("COLUMNS", "200")  # rich tables fold cells to fit; keep rows whole
    return url


@pytest.fixture
def db(url_for: Callable[[str], str]) -> str:
    return url_for("sqlite")


def events_in(url: str) -> int:
    svc = CurationService.open(url)
    try:
        return event_count(svc)
    finally:
        svc.close()


def assert_one_error_line(err: str, *fragments: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sequent: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def dispatch_args(d: dict[str, Any], action: str, params: dict[str, Any]) -> list[str]:
    return [
        "job",
        "complete",
        d["job_id"],
        "--invocation",
        d["invocation_id"],
        "--expected-version",
        str(d["expected_version"]),
        "--attempt",
        str(d["attempt"]),
        "--action",
        action,
        "--params",
        json.dumps(params),
    ]


# -- round trips ------------------------------------------------------------------------------


def test_create_configure_submit_complete_show_round_trip(
    sequent: Cli, shared_store_url: str
) -> None:
    db = shared_store_url
    job_id = sequent("job", "create", "--spec", json.dumps(SPEC), "--db", db, "--json").json()[
        "job_id"
    ]
    assert str(UUID(job_id)) == job_id
    configured = sequent("--db", db, "--json", "job", "configure", job_id, "--settings", '{"d":2}')
    assert configured.json() == {"job_id": job_id, "state": "Queued", "version": 2, "attempt": 1}

    d = sequent("job", "submit", job_id, "--json", "--db", db).json()
    assert (d["job_id"], d["expected_version"], d["attempt"]) == (job_id, 3, 1)
    assert UUID(d["invocation_id"]) != UUID(job_id)

    verdict = sequent(*dispatch_args(d, "SessionSpawned", {"session_id": "s-1"}), "--db", db)
    assert verdict.code == 0
    assert verdict.out.startswith("Applied: invocation " + d["invocation_id"])
    assert "version 4" in verdict.out

    shown = sequent("--json", "--db", db, "job", "show", job_id).json()
    assert set(shown) == JOB_VIEW_KEYS
    assert (shown["id"], shown["state"], shown["version"], shown["attempt"]) == (
        job_id,
        "Running",
        4,
        1,
    )
    assert (shown["session_id"], shown["current_invocation"]) == ("s-1", d["invocation_id"])
    assert (shown["spec"], shown["settings"]) == (SPEC, {"d": 2})
    assert (shown["failure"], shown["output"], shown["progress"]) == (None, None, [])
    created = datetime.fromisoformat(shown["created_on"])
    assert created.tzinfo is not None
    assert created <= datetime.fromisoformat(shown["modified_on"]) <= datetime.now(UTC)


def test_a_completion_verdict_as_json_names_applied_or_discarded(sequent: Cli, db: str) -> None:
    job_id = sequent("job", "create", "--spec", "{}", "--db", db, "--json").json()["job_id"]
    d = sequent("job", "submit", job_id, "--db", db, "--json").json()
    spawn = dispatch_args(d, "SessionSpawned", {"session_id": "s-1"})
    assert sequent(*spawn, "--db", db, "--json").json() == {
        "verdict": "Applied",
        "invocation_id": d["invocation_id"],
        "job_version": 3,
    }
    again = sequent(*spawn, "--db", db, "--json").json()
    assert again == {
        "verdict": "Discarded",
        "invocation_id": d["invocation_id"],
        "reason": "duplicate",
        "job_version_seen": 3,
        "job_state_seen": "Running",
    }
    human = sequent(*spawn, "--db", db)
    assert human.out.startswith("Discarded (duplicate): invocation " + d["invocation_id"])


def test_fail_retry_and_execute_report_the_job_they_left(sequent: Cli, db: str) -> None:
    job_id = sequent("job", "create", "--spec", "{}", "--db", db, "--json").json()["job_id"]
    failed = sequent(
        *("job", "fail", job_id, "--reason", "authorization_denied", "--decision-id", "d-9"),
        *("--message", "denied", "--db", db, "--json"),
    ).json()
    assert (failed["state"], failed["version"]) == ("Failed", 2)
    failure = sequent("job", "show", job_id, "--db", db, "--json").json()["failure"]
    assert failure == {"reason": "authorization_denied", "message": "denied", "decision_id": "d-9"}
    retried = sequent("job", "retry", job_id, "--db", db, "--json").json()
    assert (retried["state"], retried["version"], retried["attempt"]) == ("Queued", 3, 2)

    submitted = sequent("job", "execute", job_id, "Submit", "--db", db, "--json").json()
    assert (submitted["action"], submitted["state"], submitted["version"]) == ("Submit", "Ready", 4)
    current = sequent("job", "show", job_id, "--db", db, "--json").json()["current_invocation"]
    assert submitted["dispatch"] == {
        "job_id": job_id,
        "invocation_id": current,
        "expected_version": 4,
        "attempt": 2,
    }
    operator = sequent("job", "fail", job_id, "--db", db)  # default reason: operator
    assert operator.out.strip() == f"job {job_id}: Failed, version 5, attempt 2"
    reason = sequent("job", "show", job_id, "--db", db, "--json").json()["failure"]["reason"]
    assert reason == "operator"


def test_execute_without_a_dispatch_reports_null(sequent: Cli, db: str) -> None:
    svc = CurationService.open(db)
    job_id = svc.create_job({})
    svc.complete(svc.submit(job_id), "SessionSpawned", {"session_id": "s"})
    svc.close()
    progressed = sequent(
        *("job", "execute", str(job_id), "RecordProgress", "--params", '{"entry": "half"}'),
        *("--db", db, "--json"),
    ).json()
    assert (progressed["state"], progressed["version"], progressed["dispatch"]) == (
        "Running",
        4,
        None,
    )
    assert sequent("job", "show", str(job_id), "--db", db, "--json").json()["progress"] == ["half"]


def test_human_create_prints_only_the_job_id(sequent: Cli, db: str) -> None:
    ran = sequent("job", "create", "--spec", json.dumps(SPEC), "--db", db)
    assert ran.code == 0
    job_id = UUID(ran.out.strip())
    svc = CurationService.open(db)
    try:
        assert svc.get(job_id).spec == SPEC
    finally:
        svc.close()


def test_human_show_is_a_table_with_the_state(sequent: Cli, db: str) -> None:
    job_id = sequent("job", "create", "--spec", '{"flags": [true]}', "--db", db).out.strip()
    out = sequent("job", "show", job_id, "--db", db).out
    assert f"job {job_id}" in out
    assert "Queued" in out
    assert '{"flags":[true]}' in out  # data is not read as rich markup


# -- --db and --json placement, and the default store -----------------------------------------


@pytest.mark.parametrize(
    "layout",
    [
        ("--db", "{db}", "--json", "job", "show", "{job}"),
        ("job", "show", "{job}", "--db", "{db}", "--json"),
        ("--json", "job", "show", "{job}", "--db", "{db}"),
        ("--db", "{db}", "job", "--json", "show", "{job}"),
        ("job", "--db", "{db}", "show", "--json", "{job}"),
    ],
)
def test_db_and_json_work_before_and_after_the_subcommand(
    sequent: Cli, db: str, default_store: str, layout: tuple[str, ...]
) -> None:
    svc = CurationService.open(db)
    job_id = str(svc.create_job({"k": 1}))
    svc.close()
    argv = [part.format(db=db, job=job_id) for part in layout]
    assert sequent(*argv).json()["spec"] == {"k": 1}


def test_without_db_the_store_is_sequent_db(sequent: Cli, default_store: str) -> None:
    job_id = sequent("job", "create", "--spec", "{}", "--json").json()["job_id"]
    svc = CurationService.open(default_store)
    try:
        assert svc.get(job_id).state == JobState.QUEUED
    finally:
        svc.close()


# -- history ----------------------------------------------------------------------------------


@pytest.fixture
def incident_job(sequent: Cli, db: str) -> tuple[str, str]:
    """The incident through the CLI: returns (job id, the late invocation A's id)."""
    job_id = sequent("job", "create", "--spec", "{}", "--db", db, "--json").json()["job_id"]
    a = sequent("job", "submit", job_id, "--db", db, "--json").json()
    assert sequent("job", "fail", job_id, "--reason", "timeout", "--db", db).code == 0
    assert sequent("job", "retry", job_id, "--db", db).code == 0
    b = sequent("job", "submit", job_id, "--db", db, "--json").json()
    spawned = sequent(*dispatch_args(b, "SessionSpawned", {"session_id": "s-b"}), "--db", db)
    assert spawned.out.startswith("Applied")
    late = sequent(*dispatch_args(a, "SessionSpawned", {"session_id": "s-a"}), "--db", db)
    assert late.out.startswith("Discarded (superseded)")
    fail = {"reason": "service_error", "message": "409"}
    assert sequent(*dispatch_args(a, "Fail", fail), "--db", db).out.startswith(
        "Discarded (duplicate)"
    )
    return job_id, a["invocation_id"]


def test_history_json_contains_the_discarded_invocation_events(
    sequent: Cli, db: str, incident_job: tuple[str, str]
) -> None:
    job_id, late = incident_job
    entries = sequent("history", job_id, "--db", db, "--json").json()
    assert all(
        set(e) == {"aggregate", "aggregate_id", "name", "version", "timestamp", "data"}
        for e in entries
    )
    discards = [e for e in entries if e["name"] == "Discarded"]
    assert [(e["aggregate"], e["aggregate_id"]) for e in discards] == [("invocation", late)] * 2
    assert [e["data"]["reason"] for e in discards] == ["superseded", "duplicate"]
    assert [e["data"]["job_state_seen"] for e in discards] == ["Running", "Running"]
    stamps = [datetime.fromisoformat(e["timestamp"]) for e in entries]
    assert stamps == sorted(stamps)
    job_names = [e["name"] for e in entries if e["aggregate"] == "job"]
    assert job_names == ["Created", "Submitted", "Failed", "Retried", "Submitted", "SessionSpawned"]


def test_history_without_invocations_and_as_a_table(
    sequent: Cli, db: str, incident_job: tuple[str, str]
) -> None:
    job_id, late = incident_job
    own = sequent("history", job_id, "--no-invocations", "--db", db, "--json").json()
    assert {e["aggregate"] for e in own} == {"job"}
    assert [e["version"] for e in own] == [1, 2, 3, 4, 5, 6]
    table = sequent("history", job_id, "--db", db).out
    assert f"history of job {job_id}" in table
    assert table.count("Discarded") == 2
    assert "reason=superseded" in table
    assert late[:8] in table


# -- bad input: one line on stderr, a non-zero exit, nothing written --------------------------


@pytest.fixture
def queued(db: str) -> str:
    svc = CurationService.open(db)
    try:
        return str(svc.create_job({"target": "t"}))
    finally:
        svc.close()


GHOST = str(uuid4())
COMPLETE = ["job", "complete", "{job}", "--attempt", "1", "--invocation"]
BAD_INPUT = {
    "malformed job id": (["job", "show", "not-a-uuid"], EXIT_USAGE, "malformed job id"),
    "malformed job id on a write": (["job", "retry", "12345"], EXIT_USAGE, "malformed job id"),
    "unknown job id": (["job", "configure", GHOST, "--settings", "{}"], EXIT_FAILED, "not found"),
    "unknown job history": (["history", GHOST], EXIT_FAILED, f"job {GHOST} not found"),
    "invalid JSON spec": (["job", "create", "--spec", "{oops"], EXIT_USAGE, "is not JSON"),
    "spec not an object": (["job", "create", "--spec", "[1, 2]"], EXIT_USAGE, "'spec' must be"),
    "spec nested 100,000 deep": (
        ["job", "create", "--spec", "[" * 100_000 + "]" * 100_000],
        EXIT_USAGE,
        "nested deeper than 64 levels",
    ),
    "spec with NaN": (["job", "create", "--spec", '{"a": NaN}'], EXIT_USAGE, "NaN is not JSON"),
    "spec with a NUL": (["job", "create", "--spec", '{"a": "\\u0000"}'], EXIT_USAGE, "NUL"),
    "spec missing": (["job", "create"], EXIT_USAGE, "required: --spec"),
    "settings not an object": (
        ["job", "configure", "{job}", "--settings", '"x"'],
        EXIT_USAGE,
        "'settings' must be object",
    ),
    "unknown action": (["job", "execute", "{job}", "Explode"], EXIT_USAGE, "unknown action"),
    "SessionSpawned through execute": (
        ["job", "execute", "{job}", "SessionSpawned", "--params", '{"session_id": "s"}'],
        EXIT_USAGE,
        "only arrives through complete",
    ),
    "execute params not JSON": (
        ["job", "execute", "{job}", "RecordProgress", "--params", "half"],
        EXIT_USAGE,
        "is not JSON",
    ),
    "retry a Queued job": (["job", "retry", "{job}"], EXIT_FAILED, "not valid from state 'Queued'"),
    "unknown fail reason": (["job", "fail", "{job}", "--reason", "boredom"], EXIT_USAGE, "boredom"),
    "complete with a non-completion action": (
        [*COMPLETE, GHOST, "--expected-version", "2", "--action", "Complete"],
        EXIT_USAGE,
        "not a completion action",
    ),
    "complete with a malformed invocation id": (
        [*COMPLETE, "inv-1", "--expected-version", "2", "--action", "Fail"],
        EXIT_USAGE,
        "malformed invocation id",
    ),
    "complete with a non-integer version": (
        [*COMPLETE, GHOST, "--expected-version", "two", "--action", "Fail"],
        EXIT_USAGE,
        "invalid int value",
    ),
    "unknown subcommand": (["frobnicate"], EXIT_USAGE, "invalid choice: 'frobnicate'"),
    "unknown job subcommand": (["job", "explode", "{job}"], EXIT_USAGE, "invalid choice"),
    "unknown option": (["job", "show", "{job}", "--colour"], EXIT_USAGE, "unrecognized"),
}


@pytest.mark.parametrize("case", BAD_INPUT, ids=list(BAD_INPUT))
def test_bad_input_is_one_line_nonzero_and_writes_nothing(
    sequent: Cli, db: str, queued: str, case: str
) -> None:
    argv, code, fragment = BAD_INPUT[case]
    before = events_in(db)
    ran = sequent(*[a.replace("{job}", queued) for a in argv], "--db", db)
    assert ran.code == code
    assert_one_error_line(ran.err, fragment)
    assert ran.out == ""
    assert events_in(db) == before


def test_an_invalid_transition_names_the_job_state_and_allowed_states(
    sequent: Cli, db: str, queued: str
) -> None:
    assert sequent("job", "submit", queued, "--db", db).code == 0
    before = events_in(db)
    ran = sequent("job", "submit", queued, "--db", db)
    assert ran.code == EXIT_FAILED
    assert_one_error_line(ran.err, queued, "'Submit'", "'Ready'", "allowed from: Queued")
    assert events_in(db) == before


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("nonsense", "bad store URL 'nonsense'"),
        ("mysql://root@localhost/x", "unknown scheme 'mysql'"),
        ("sqlite://", "expected sqlite:///"),
        ("postgresql://host-only", "expected postgresql://"),
    ],
)
def test_a_malformed_db_url_is_bad_input(sequent: Cli, url: str, fragment: str) -> None:
    ran = sequent("--db", url, "job", "show", GHOST)
    assert ran.code == EXIT_USAGE
    assert_one_error_line(ran.err, fragment)


def test_an_unreachable_postgres_is_one_line_and_exit_1(sequent: Cli) -> None:
    ran = sequent("job", "create", "--spec", "{}", "--db", UNREACHABLE_PG)
    assert ran.code == EXIT_FAILED
    assert_one_error_line(ran.err, f"store '{UNREACHABLE_PG}'")
    assert ran.out == ""


def test_the_store_is_closed_after_every_command(
    sequent: Cli, db: str, queued: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[CurationService] = []
    closed: list[CurationService] = []  # (a collected service also closes itself: identity)
    real_open, real_close = CurationService.open, CurationService.close

    def open_spy(url: str | None = None, **kwargs: Any) -> CurationService:
        opened.append(real_open(url, **kwargs))
        return opened[-1]

    def close_spy(self: CurationService) -> None:
        closed.append(self)
        real_close(self)

    monkeypatch.setattr(CurationService, "open", open_spy)
    monkeypatch.setattr(CurationService, "close", close_spy)
    for argv, code in (
        (["job", "show", queued], 0),
        (["job", "retry", queued], EXIT_FAILED),
        (["job", "show", "nope"], EXIT_USAGE),
    ):
        assert sequent(*argv, "--db", db).code == code
        assert any(c is opened[-1] for c in closed), argv
    assert len(opened) == 3


def test_an_interrupt_is_one_line_and_exit_130(
    sequent: Cli, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> CurationService:
        raise KeyboardInterrupt

    monkeypatch.setattr(CurationService, "open", interrupted)
    ran = sequent("job", "show", GHOST, "--db", db)
    assert ran.code == 130
    assert_one_error_line(ran.err, "interrupted")


def test_help_documents_the_exit_codes_and_returns_0(sequent: Cli) -> None:
    ran = sequent("--help")
    assert ran.code == 0
    assert "exit status:" in ran.out
    assert "2  bad input" in ran.out
    sub = sequent("job", "complete", "--help")
    assert sub.code == 0
    assert "--expected-version" in sub.out


# -- a real process: what a user's shell sees -------------------------------------------------


@pytest.fixture
def process_env(url_for: Callable[[str], str]) -> dict[str, str]:
    assert SEQUENT.exists(), f"console script missing: {SEQUENT} (pip install -e .)"
    return {**os.environ, "SEQUENT_DB": url_for("sqlite"), "COLUMNS": "200"}


def run_process(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SEQUENT), *argv], capture_output=True, text=True, env=env, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("argv", "code", "fragment"),
    [
        (["job", "show", "not-a-uuid"], EXIT_USAGE, "malformed job id"),
        (["frobnicate", "--json"], EXIT_USAGE, "invalid choice"),
        (["job", "create", "--spec", "{oops"], EXIT_USAGE, "is not JSON"),
        (["--db", "nonsense", "job", "show", GHOST], EXIT_USAGE, "bad store URL"),
        (["history", GHOST, "--json"], EXIT_FAILED, "not found"),
    ],
)
def test_a_real_process_prints_one_line_and_no_traceback(
    process_env: dict[str, str], argv: list[str], code: int, fragment: str
) -> None:
    done = run_process(process_env, *argv)
    assert done.returncode == code
    assert_one_error_line(done.stderr, fragment)
    assert done.stdout == ""


def test_a_real_process_round_trip_prints_valid_json(process_env: dict[str, str]) -> None:
    created = run_process(process_env, "job", "create", "--spec", json.dumps(SPEC), "--json")
    assert (created.returncode, created.stderr) == (0, "")
    job_id = json.loads(created.stdout)["job_id"]
    retry = run_process(process_env, "job", "retry", job_id)
    assert retry.returncode == EXIT_FAILED
    assert_one_error_line(retry.stderr, "'Retry' is not valid from state 'Queued'")
    shown = run_process(process_env, "--json", "job", "show", job_id)
    assert json.loads(shown.stdout)["spec"] == SPEC


# -- the JSON encoding ------------------------------------------------------------------------


def test_to_jsonable_turns_domain_values_into_plain_json() -> None:
    job_id = uuid4()
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    svc = CurationService.open("memory://")
    view = svc.get(svc.create_job({"n": 1}))
    svc.close()
    value = {"id": job_id, "at": when, "state": JobState.RUNNING, "rows": (1, {2}), "view": view}
    plain = to_jsonable(value)
    assert json.loads(json.dumps(plain)) == plain
    assert plain["id"] == str(job_id)
    assert plain["at"] == "2026-01-02T03:04:05+00:00"
    assert (plain["state"], plain["rows"]) == ("Running", [1, [2]])
    assert set(plain["view"]) == JOB_VIEW_KEYS
    assert plain["view"]["id"] == str(view.id)
    with pytest.raises(TypeError, match="object"):
        to_jsonable(object())
