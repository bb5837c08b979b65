"""The audit (projections/timeline.py, projections/invariants.py, ``sequent audit``): the
incident by hand on every store, time travel checked against a fold written here, the offline
invariant check on real and tampered timelines, the JSON-lines export, and the CLI's output and
one-line errors."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from domain import (
    Applied,
    CurationService,
    Discarded,
    DiscardReason,
    Dispatch,
    HistoryEntry,
    JobNotFound,
    MalformedId,
    SequentError,
)
from integrations.authorizer import CedarAuthorizer
from projections.errors import VersionOutOfRange
from projections.invariants import check_invariants
from projections.runner import Projections
from projections.timeline import Timeline, label_for
from projections.timeline_records import InvocationRecord, event_json
from scripts import cli

ENDPOINT = "http://127.0.0.1:8080/sessions"
LATE_SESSION = "s-1-late"


# -- the incident, by hand ----------------------------------------------------------------------


@dataclass(frozen=True)
class Incident:
    job_id: UUID
    first: Dispatch  # invocation A, attempt 1: denied, then late twice
    second: Dispatch  # invocation B, attempt 2: spawns the session
    decision_id: UUID
    policy_id: UUID
    verdicts: dict[str, Applied | Discarded]


def walk_incident(svc: CurationService) -> Incident:
    job_id = svc.create_job({"target": "https://curation.example/feed"})
    svc.configure(job_id, {"depth": 2})
    first = svc.submit(job_id)
    decision_id = svc.policies.request_decision(
        integration="build_session_message",
        endpoint=ENDPOINT,
        job_id=str(job_id),
        invocation_id=str(first.invocation_id),
        reason="no permit policy",
    )
    denied = svc.complete(
        first,
        "Fail",
        {"reason": "authorization_denied", "message": "denied", "decision_id": str(decision_id)},
    )
    policy_id = svc.policies.approve(decision_id, by="ops")
    svc.retry(job_id)
    second = svc.submit(job_id)
    spawned = svc.complete(second, "SessionSpawned", {"session_id": "s-2"})
    late_spawn = svc.complete(first, "SessionSpawned", {"session_id": LATE_SESSION})
    late_fail = svc.complete(first, "Fail", {"reason": "service_error", "message": "409"})
    svc.compensate(first.invocation_id, LATE_SESSION)  # the late session was stopped
    verdicts = {
        "denied": denied,
        "spawned": spawned,
        "late_spawn": late_spawn,
        "late_fail": late_fail,
    }
    return Incident(job_id, first, second, decision_id, policy_id, verdicts)


def test_the_incident_timeline_lists_both_runs_their_verdicts_and_the_compensation(
    svc: CurationService,
) -> None:
    run = walk_incident(svc)
    assert isinstance(run.verdicts["denied"], Applied)
    assert isinstance(run.verdicts["spawned"], Applied)

    timeline = Timeline.load(svc, run.job_id)

    a, b = timeline.invocations
    assert (a.id, a.label, a.attempt, a.recognised) == (run.first.invocation_id, "A", 1, True)
    assert (b.id, b.label, b.attempt) == (run.second.invocation_id, "B", 2)
    assert (a.expected_version, b.expected_version) == (
        run.first.expected_version,
        run.second.expected_version,
    )
    assert [(c.action, c.verdict, c.reason, c.job_version) for c in a.completions] == [
        ("Fail", "Applied", None, 4),
        ("SessionSpawned", "Discarded", DiscardReason.DUPLICATE, None),
        ("Fail", "Discarded", DiscardReason.DUPLICATE, None),
    ]
    late = a.completions[1]
    assert (late.params, late.job_version_seen, late.job_state_seen) == (
        {"session_id": LATE_SESSION},
        7,
        "Running",
    )
    assert [(c.action, c.verdict, c.job_version) for c in b.completions] == [
        ("SessionSpawned", "Applied", 7)
    ]
    assert [c.session_id for c in a.compensations] == [LATE_SESSION]
    assert b.compensations == ()

    (decision,) = timeline.decisions
    assert (decision.id, decision.status, decision.decided_by, decision.policy_id) == (
        run.decision_id,
        "approved",
        "ops",
        run.policy_id,
    )
    assert decision.invocation_id == str(run.first.invocation_id)
    assert [e.name for e in decision.events] == ["Requested", "Approved"]

    assert [e.name for e in timeline.events] == [
        "Created", "Configured", "Submitted", "Failed", "Retried", "Submitted", "SessionSpawned",
    ]  # fmt: skip
    now = timeline.current
    assert (now.state, now.version, now.attempt, now.session_id) == ("Running", 7, 2, "s-2")
    assert now.current_invocation == run.second.invocation_id
    summary = timeline.summary()
    assert (summary["applied"], summary["discarded"], summary["compensations"]) == (2, 2, 1)
    assert summary["discard_reasons"] == {"duplicate": 2}


def test_to_json_has_the_interface_keys_and_passes_the_offline_check(
    svc: CurationService,
) -> None:
    run = walk_incident(svc)
    payload = Timeline.load(svc, run.job_id).to_json(at=4)

    assert {"job", "state", "version", "events", "invocations", "decisions"} <= payload.keys()
    assert json.loads(json.dumps(payload)) == payload  # plain JSON all the way down
    assert (payload["job"], payload["state"], payload["version"]) == (
        str(run.job_id),
        "Running",
        7,
    )
    assert [i["label"] for i in payload["invocations"]] == ["A", "B"]
    verdicts = [(c["verdict"], c["reason"]) for c in payload["invocations"][0]["completions"]]
    assert verdicts == [("Applied", None), ("Discarded", "duplicate"), ("Discarded", "duplicate")]
    assert payload["at"]["state"] == "Failed"
    assert payload["at"]["failure"]["decision_id"] == str(run.decision_id)
    assert check_invariants(payload) == []


# -- time travel --------------------------------------------------------------------------------


def fold(entries: Iterable[HistoryEntry]) -> Iterator[dict[str, Any]]:
    """The job's state after each of its events, written out here by hand (no transition table,
    no aggregate code), to check ``state_at`` against."""
    s: dict[str, Any] = {}
    for e in entries:
        name, data = e.name, e.data
        if name == "Created":
            s = {"state": "Queued", "attempt": 1, "session_id": None,
                 "current_invocation": None, "failure": None}  # fmt: skip
        elif name == "Submitted":
            s.update(state="Ready", current_invocation=data["invocation_id"])
        elif name == "SessionSpawned":
            s.update(state="Running", session_id=data["session_id"])
        elif name == "CompletionRequested":
            s.update(state="Finalizing")
        elif name == "Completed":
            s.update(state="Completed")
        elif name == "RepairRequired":
            s.update(state="Ready", current_invocation=data["invocation_id"])
        elif name == "Failed":
            s.update(state="Failed", failure={k: data[k] for k in ("reason", "message",
                                                                    "decision_id")})  # fmt: skip
        elif name == "Retried":
            s.update(state="Queued", attempt=data["attempt"], failure=None)
        else:
            assert name in ("Configured", "ProgressRecorded"), name
        yield {"version": e.version, **s}


def long_job(svc: CurationService, progress: int) -> Incident:
    """The incident, then enough progress to take snapshots, then a repair run (C)."""
    run = walk_incident(svc)
    for i in range(progress):
        svc.execute(run.job_id, "RecordProgress", {"entry": {"i": i}})
    svc.execute(run.job_id, "Complete", {"output": {"items": 3}})
    repair = svc.execute(run.job_id, "RepairRequired", {"defects": ["missing title"]})
    assert repair is not None
    assert isinstance(svc.complete(repair, "SessionSpawned", {"session_id": "s-3"}), Applied)
    return run


def test_state_at_every_version_equals_an_independent_fold(svc: CurationService) -> None:
    run = long_job(svc, progress=230)
    snapshots = list(svc.snapshots.get(run.job_id)) if svc.snapshots else []
    assert len(snapshots) >= 2, "the job is long enough that time travel starts from snapshots"
    timeline = Timeline.load(svc, run.job_id)
    expected = list(fold(svc.history(run.job_id, invocations=False)))
    assert timeline.version == len(expected) == 7 + 230 + 3

    for want in expected:
        got = timeline.state_at(want["version"])
        assert {
            "version": got.version,
            "state": got.state,
            "attempt": got.attempt,
            "session_id": got.session_id,
            "current_invocation": got.current_invocation,
            "failure": got.failure,
        } == want
    assert [i.label for i in timeline.invocations] == ["A", "B", "C"]
    assert timeline.invocations[2].expected_version == timeline.version - 1
    assert check_invariants(timeline.to_json(at=150)) == []


def test_human_rows_collapse_long_runs_and_the_json_keeps_every_event(
    svc: CurationService,
) -> None:
    run = long_job(svc, progress=30)  # job events v8..v37 are ProgressRecorded
    timeline = Timeline.load(svc, run.job_id)

    rows = [(e.aggregate, e.name, e.version) for e in timeline.entries(collapse=10)]
    full = timeline.entries()

    progress = [r for r in rows if "ProgressRecorded" in r[1]]
    assert progress == [
        ("job", "ProgressRecorded", 8),
        ("job", "... 28 more ProgressRecorded", 9),
        ("job", "ProgressRecorded", 37),
    ]
    summary_row = next(e for e in timeline.entries(collapse=10) if e.name.startswith("..."))
    assert summary_row.data == {"versions": "9..36"}
    assert len(full) == len(rows) + 28 - 1
    assert [e["version"] for e in timeline.to_json()["events"]] == list(range(1, 41))
    short_runs = timeline.entries(collapse=30)
    assert [e.version for e in short_runs if e.name == "ProgressRecorded"] == list(range(8, 38))


def test_each_event_shows_its_own_data_whichever_of_them_were_decoded_first(
    svc: CurationService,
) -> None:
    """A long job's events are read without their states, which are fetched as events are
    decoded (a few at load, the collapsed rows', then the rest): each shows its own."""
    run = long_job(svc, progress=30)
    timeline = Timeline.load(svc, run.job_id)
    timeline.entries(collapse=10)
    timeline.state_at(20)
    expected = [event_json(e) for e in svc.history(run.job_id, invocations=False)]
    assert timeline.to_json()["events"] == expected
    assert [event_json(e) for e in timeline.events[5:9]] == expected[5:9]


@pytest.mark.parametrize("version", [0, -1, 8, 10**9])
def test_a_version_the_job_lacks_is_a_typed_error(svc: CurationService, version: int) -> None:
    run = walk_incident(svc)
    timeline = Timeline.load(svc, run.job_id)
    with pytest.raises(VersionOutOfRange, match=rf"versions 1\.\.7; there is no version {version}"):
        timeline.state_at(version)
    with pytest.raises(VersionOutOfRange):
        timeline.to_json(at=version)
    assert issubclass(VersionOutOfRange, SequentError)


def test_unknown_or_malformed_job_ids_are_typed_errors(svc: CurationService) -> None:
    run = walk_incident(svc)
    with pytest.raises(JobNotFound):
        Timeline.load(svc, uuid4())
    with pytest.raises(JobNotFound):  # an invocation's id is not a job's
        Timeline.load(svc, run.first.invocation_id)
    with pytest.raises(JobNotFound):  # nor is a decision's
        Timeline.load(svc, run.decision_id)
    with pytest.raises(MalformedId):
        Timeline.load(svc, "not-a-uuid")


# -- the other discard reasons, and what does not belong to the job ----------------------------


def test_superseded_moved_on_and_unknown_runs_are_audited_and_other_jobs_are_not(
    svc: CurationService,
) -> None:
    other = walk_incident(svc)  # another job with its own decision and runs
    job_id = svc.create_job({"target": "t"})
    a = svc.submit(job_id)
    svc.fail(job_id, reason="timeout", message="Ready for 15 min")  # the job moves on
    moved_on = svc.complete(a, "SessionSpawned", {"session_id": "s-a"})
    svc.retry(job_id)
    b = svc.submit(job_id)
    assert isinstance(svc.complete(b, "SessionSpawned", {"session_id": "s-b"}), Applied)
    forged = Dispatch(job_id, uuid4(), expected_version=2, attempt=1)
    unknown = svc.complete(forged, "Fail", {"reason": "service_error", "message": "?"})
    c_run = Dispatch(job_id, a.invocation_id, a.expected_version, a.attempt)
    duplicate = svc.complete(c_run, "Fail", {"reason": "module_error", "message": "late"})
    assert isinstance(moved_on, Discarded)
    assert moved_on.reason == DiscardReason.JOB_MOVED_ON
    assert isinstance(unknown, Discarded)
    assert unknown.reason == DiscardReason.UNKNOWN_INVOCATION
    assert isinstance(duplicate, Discarded)
    assert duplicate.reason == DiscardReason.DUPLICATE

    timeline = Timeline.load(svc, job_id)

    assert [(i.label, i.recognised) for i in timeline.invocations] == [
        ("A", True),
        ("B", True),
        ("C", False),
    ]
    assert timeline.invocations[2].id == forged.invocation_id
    assert timeline.invocations[2].completions[0].reason == DiscardReason.UNKNOWN_INVOCATION
    assert timeline.decisions == ()  # the other job's decision is not this job's
    assert [c.reason for c in timeline.invocations[0].completions] == [
        DiscardReason.JOB_MOVED_ON,
        DiscardReason.DUPLICATE,
    ]
    assert check_invariants(timeline.to_json()) == []
    other_timeline = Timeline.load(svc, other.job_id)
    assert len(other_timeline.decisions) == 1
    assert forged.invocation_id not in {i.id for i in other_timeline.invocations}


def test_a_late_run_of_a_superseded_invocation_passes_the_check(svc: CurationService) -> None:
    job_id = svc.create_job({"target": "t"})
    a = svc.submit(job_id)
    svc.fail(job_id, reason="timeout")
    svc.retry(job_id)
    b = svc.submit(job_id)
    assert isinstance(svc.complete(b, "SessionSpawned", {"session_id": "s-b"}), Applied)
    late = svc.complete(a, "SessionSpawned", {"session_id": "s-a"})
    assert isinstance(late, Discarded)
    assert late.reason == DiscardReason.SUPERSEDED
    svc.compensate(a.invocation_id, "s-a")

    payload = Timeline.load(svc, job_id).to_json()

    assert check_invariants(payload) == []
    superseded = payload["invocations"][0]["completions"][0]
    assert (superseded["reason"], superseded["job_state_seen"]) == ("superseded", "Running")
    # The same discard, claimed to be the current invocation's, must not pass.
    tampered = copy.deepcopy(payload)
    tampered["invocations"][0]["events"][-2]["data"]["job_version_seen"] = 2
    tampered["invocations"][0]["completions"][0]["job_version_seen"] = 2
    tampered["invocations"][0]["events"][-2]["data"]["job_state_seen"] = "Ready"
    tampered["invocations"][0]["completions"][0]["job_state_seen"] = "Ready"
    assert any("superseded, yet it was the current" in p for p in check_invariants(tampered))
    # And the incident's own shape: the stale run's SessionSpawned applied to the running job.
    stale = copy.deepcopy(payload)
    a_events = stale["invocations"][0]["events"]
    verdict = next(e for e in a_events if e["name"] == "Discarded")
    verdict.update(name="Applied", data={"job_version": 8})
    stale["invocations"][0]["completions"][0].update(
        verdict="Applied", reason=None, job_version=8, job_version_seen=None, job_state_seen=None
    )
    stale["events"].append(
        {
            "version": 8,
            "name": "SessionSpawned",
            "timestamp": stale["events"][-1]["timestamp"],
            "data": {"session_id": "s-a", "invocation_id": stale["invocations"][0]["id"]},
        }
    )
    stale.update(version=8, session_id="s-a")
    problems = check_invariants(stale)
    assert any("was not the current invocation" in p for p in problems), problems
    assert any("a stale effect" in p for p in problems), problems


# -- the offline check catches a tampered record -----------------------------------------------


def _a(payload: dict[str, Any]) -> dict[str, Any]:
    invocation: dict[str, Any] = payload["invocations"][0]
    return invocation


def discarded_into_applied(p: dict[str, Any]) -> None:
    _a(p)["completions"][1].update(verdict="Applied", reason=None, job_version=7)


def discarded_event_into_applied(p: dict[str, Any]) -> None:
    event = next(e for e in _a(p)["events"] if e["name"] == "Discarded")
    event.update(name="Applied", data={"job_version": 7})
    _a(p)["completions"][1].update(
        verdict="Applied", reason=None, job_version=7, job_version_seen=None, job_state_seen=None
    )


def drop_a_verdict(p: dict[str, Any]) -> None:
    events = _a(p)["events"]
    events.remove(next(e for e in events if e["name"] == "Discarded"))
    _a(p)["completions"][1].update(
        verdict=None, reason=None, job_version_seen=None, job_state_seen=None
    )


def stale_fail_applied(p: dict[str, Any]) -> None:
    """The incident itself, recorded consistently: A's late Fail applied to the running job."""
    p["events"].append(
        {
            "version": 8,
            "name": "Failed",
            "timestamp": p["events"][-1]["timestamp"],
            "data": {"reason": "service_error", "message": "409", "decision_id": None,
                     "invocation_id": _a(p)["id"]},
        }
    )  # fmt: skip
    p.update(version=8, state="Failed", failure={"reason": "service_error", "message": "409",
                                                  "decision_id": None})  # fmt: skip
    last = next(e for e in reversed(_a(p)["events"]) if e["name"] == "Discarded")
    last.update(name="Applied", data={"job_version": 8})
    _a(p)["completions"][2].update(
        verdict="Applied", reason=None, job_version=8, job_version_seen=None, job_state_seen=None
    )
    p["summary"].update(applied=3, discarded=1, events=8)


def wrong_discard_reason(p: dict[str, Any]) -> None:
    event = next(e for e in _a(p)["events"] if e["name"] == "Discarded")
    event["data"]["reason"] = "superseded"
    _a(p)["completions"][1]["reason"] = "superseded"


def compensate_the_live_session(p: dict[str, Any]) -> None:
    event = next(e for e in _a(p)["events"] if e["name"] == "Compensated")
    event["data"]["session_id"] = "s-2"
    _a(p)["compensations"][0]["session_id"] = "s-2"


def state_not_the_fold(p: dict[str, Any]) -> None:
    p["state"] = "Failed"


def at_not_the_fold(p: dict[str, Any]) -> None:
    p["at"]["attempt"] = 2


def completions_disagree(p: dict[str, Any]) -> None:
    _a(p)["completions"][2]["reason"] = "job_moved_on"


def job_event_without_its_invocation(p: dict[str, Any]) -> None:
    p["invocations"].pop(1)  # B, whose SessionSpawned is on the job


def a_second_verdict(p: dict[str, Any]) -> None:
    events = _a(p)["events"]
    i = next(n for n, e in enumerate(events) if e["name"] == "Discarded")
    events.insert(i + 1, copy.deepcopy(events[i]))


def another_jobs_decision(p: dict[str, Any]) -> None:
    other = {"id": str(uuid4()), "job_id": str(uuid4()), "status": "pending", "events": []}
    p["decisions"].append({**other, "invocation_id": None})


TAMPERS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "a Discarded claimed as Applied": (discarded_into_applied, "disagree with its recorded"),
    "a Discarded event rewritten as Applied": (discarded_event_into_applied, "Applied at job v7"),
    "a verdict dropped": (drop_a_verdict, "Finished without a verdict"),
    "the incident's stale Fail applied": (stale_fail_applied, "was not the current invocation"),
    "a discard with the wrong reason": (wrong_discard_reason, "came after a verdict"),
    "the live session compensated": (compensate_the_live_session, "which the job applied"),
    "a state that is not the fold": (state_not_the_fold, "replay is truth"),
    "an 'at' that is not the fold": (at_not_the_fold, "'at' (version 4) says attempt"),
    "completions[] edited alone": (completions_disagree, "disagree with its recorded events"),
    "a job effect with no invocation": (job_event_without_its_invocation, "0 matching Applied"),
    "two verdicts for one Finished": (a_second_verdict, "without a Finished before it"),
    "another job's decision no failure names": (another_jobs_decision, "no failure names it"),
}


@pytest.mark.parametrize("name", list(TAMPERS))
def test_check_invariants_flags_a_tampered_timeline(name: str) -> None:
    svc = CurationService.open("memory://")
    try:
        payload = Timeline.load(svc, walk_incident(svc).job_id).to_json(at=4)
    finally:
        svc.close()
    assert check_invariants(payload) == []
    tamper, expected = TAMPERS[name]
    tampered = copy.deepcopy(payload)
    tamper(tampered)

    problems = check_invariants(tampered)

    assert any(expected in p for p in problems), problems


def test_check_invariants_reports_malformed_input_instead_of_raising() -> None:
    assert check_invariants({}) == ["malformed timeline: KeyError: 'events'"]
    assert check_invariants({"events": []}) == ["the job has no events"]
    problems = check_invariants({"events": [{"version": 1, "name": "Exploded", "data": {}}]})
    assert problems
    assert problems[0].startswith("malformed timeline")


# -- export -------------------------------------------------------------------------------------


def test_export_writes_one_json_line_per_event_in_time_order(
    svc: CurationService, tmp_path: Path
) -> None:
    run = walk_incident(svc)
    history = svc.history(run.job_id)  # the job's events and its invocations', by the service
    decision_events = svc.policies.decision_history(run.decision_id)
    expected = {(str(e.aggregate_id), e.version) for e in [*history, *decision_events]}

    out = tmp_path / "audit.jsonl"
    count = Timeline.load(svc, run.job_id).export_jsonl(out)

    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert count == len(lines) == len(history) + len(decision_events) == 20
    assert {(line["aggregate_id"], line["version"]) for line in lines} == expected
    stamps = [line["timestamp"] for line in lines]
    assert stamps == sorted(stamps)
    assert {line["job"] for line in lines} == {str(run.job_id)}
    labels = {(line["aggregate"], line["label"]) for line in lines}
    assert labels == {("job", None), ("invocation", "A"), ("invocation", "B"), ("decision", "1")}


# -- the CLI ------------------------------------------------------------------------------------


def sequent(argv: list[str]) -> int:
    return cli.main(argv)


@pytest.fixture
def walked(shared_store_url: str) -> Iterator[tuple[str, Incident]]:
    svc = CurationService.open(shared_store_url)
    try:
        yield shared_store_url, walk_incident(svc)
    finally:
        svc.close()


def test_cli_json_is_the_timeline_and_passes_the_check(
    walked: tuple[str, Incident], capsys: pytest.CaptureFixture[str]
) -> None:
    url, run = walked
    assert sequent(["--db", url, "audit", str(run.job_id), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert (payload["job"], payload["state"], payload["version"]) == (
        str(run.job_id),
        "Running",
        7,
    )
    assert "at" not in payload
    assert [i["attempt"] for i in payload["invocations"]] == [1, 2]
    assert check_invariants(payload) == []


def test_cli_at_shows_the_state_as_of_that_version(
    walked: tuple[str, Incident],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, run = walked
    monkeypatch.setenv("COLUMNS", "400")  # one table row per line, so phrases are not wrapped
    assert sequent(["audit", str(run.job_id), "--at", "4", "--json", "--db", url]) == 0
    at = json.loads(capsys.readouterr().out)["at"]
    assert (at["version"], at["state"], at["attempt"]) == (4, "Failed", 1)
    assert at["current_invocation"] == str(run.first.invocation_id)

    assert sequent(["--db", url, "audit", str(run.job_id), "--at", "4"]) == 0
    text = capsys.readouterr().out
    for expected in (
        "invocation A",
        "invocation B",
        "decision 1",
        "Discarded duplicate (job Running at v7)",
        "applied 2, discarded 2: duplicate 2",
        "compensated sessions: 1",
        "state as of version 4 (of 7)",
        "authorization_denied",
        LATE_SESSION,
    ):
        assert expected in text, expected


def test_cli_export_writes_the_lines_and_reports_the_count(
    walked: tuple[str, Incident], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url, run = walked
    out = tmp_path / "job.jsonl"
    assert sequent(["--db", url, "audit", str(run.job_id), "--export", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    lines = out.read_text().splitlines()
    assert report["lines"] == len(lines) == 20
    assert (report["events"], report["invocation_events"], report["decision_events"]) == (7, 11, 2)

    assert sequent(["--db", url, "audit", str(run.job_id), "--export", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"exported 20 events of job {run.job_id}")


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["audit", "{unknown}"], 1, "not found"),
        (["audit", "not-a-uuid"], 2, "malformed job id"),
        (["audit", "{job}", "--at", "0"], 1, "versions 1..7; there is no version 0"),
        (["audit", "{job}", "--at", "8"], 1, "there is no version 8"),
        (["audit", "{job}", "--at", "-3"], 1, "there is no version -3"),
        (["audit", "{job}", "--at", "four"], 2, "expected a version number"),
        (["audit", "{job}", "--export", "/nonexistent/dir/x.jsonl"], 1, "cannot export"),
        (["audit", "{job}", "--at", "2", "--export", "x.jsonl"], 2, "not allowed with"),
    ],
)
def test_cli_bad_input_is_one_stderr_line_and_a_nonzero_exit(
    walked: tuple[str, Incident],
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    code: int,
    message: str,
) -> None:
    url, run = walked
    args = [a.format(job=run.job_id, unknown=uuid4()) for a in argv]
    assert sequent(["--db", url, *args]) == code
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("sequent: error: ")
    assert message in lines[0]


def test_labels_run_past_z() -> None:
    assert [label_for(i) for i in (0, 1, 25, 26, 27, 701, 702)] == [
        "A", "B", "Z", "AA", "AB", "ZZ", "AAA",
    ]  # fmt: skip


# -- what the audit reads from the read models ----------------------------------------------------


def test_decisions_and_unrecognised_runs_come_from_the_caught_up_read_models(
    svc: CurationService,
) -> None:
    run = walk_incident(svc)
    job_id = run.job_id
    first = svc.policies.request_decision(
        integration="build_session_message", endpoint=ENDPOINT, job_id=str(job_id),
        invocation_id=str(run.second.invocation_id), reason="first",
    )  # fmt: skip
    second = svc.policies.request_decision(
        integration="build_session_message", endpoint=ENDPOINT, job_id=str(job_id),
        invocation_id=str(run.second.invocation_id), reason="second",
    )  # fmt: skip
    svc.policies.reject(first, by="ops", reason="not this endpoint")  # after second's request
    forged = Dispatch(job_id, uuid4(), expected_version=7, attempt=2)
    svc.complete(forged, "Fail", {"reason": "service_error", "message": "?"})
    projections = Projections(svc)

    timeline = Timeline.load(svc, job_id, projections)

    assert projections.positions()["decisions"] == projections.head()
    assert projections.positions()["dispatch_audit"] == projections.head()
    # The read model lists by last change; the audit in the order they were requested.
    assert [d.decision_id for d in projections.decisions(job_id=str(job_id))] == [
        str(run.decision_id), str(second), str(first),
    ]  # fmt: skip
    assert [d.id for d in timeline.decisions] == [run.decision_id, first, second]
    rejected = timeline.decisions[1]
    assert (rejected.status, rejected.decided_by, rejected.reason) == ("rejected", "ops", "first")
    assert rejected.rejection_reason == "not this endpoint"
    assert rejected.decided_at == rejected.events[-1].timestamp
    assert (timeline.decisions[2].status, timeline.decisions[2].decided_at) == ("pending", None)
    assert projections.decisions(status="pending", job_id=str(job_id))[0].decision_id == str(second)
    assert [(i.label, i.recognised) for i in timeline.invocations] == [
        ("A", True), ("B", True), ("C", False),
    ]  # fmt: skip
    assert timeline.invocations[2].id == forged.invocation_id
    assert check_invariants(timeline.to_json()) == []


def history_entry(name: str, version: int, **data: Any) -> HistoryEntry:
    return HistoryEntry("invocation", INVOCATION_ID, name, version, MOMENT, data)


INVOCATION_ID = uuid4()
MOMENT = datetime(2025, 1, 1, tzinfo=UTC)


def test_an_invocation_shows_the_module_of_its_latest_claim_that_names_one() -> None:
    started = history_entry(
        "Started", 1, job_id=uuid4(), expected_version=3, attempt=1, module_sha256="started"
    )
    old_claim = history_entry("Claimed", 2, worker="w1", lease_until=MOMENT)  # before the field
    claim = history_entry("Claimed", 3, worker="w2", lease_until=MOMENT, module_sha256="ran")
    renewed = history_entry("Claimed", 4, worker="w2", lease_until=MOMENT)

    def sha(*events: HistoryEntry) -> str:
        return InvocationRecord.of("A", events).module_sha256

    assert sha(started) == "started"
    assert sha(started, old_claim) == "started"
    assert sha(started, old_claim, claim) == "ran"
    assert sha(started, old_claim, claim, renewed) == "ran"


def test_a_job_whose_denial_joined_another_jobs_decision_shows_that_decision(
    svc: CurationService,
) -> None:
    """Denials of one request share one pending decision, recorded with the first job's id;
    the second job's audit still shows it, because its failure names it."""
    authorizer = CedarAuthorizer(svc.policies)
    first, second = (svc.create_job({"target": "t"}) for _ in range(2))
    outcomes = []
    for job_id in (first, second):
        dispatch = svc.submit(job_id)
        outcome = authorizer.check(
            "build_session_message", "f" * 64, "POST", "http://127.0.0.1:9/sessions",
            str(job_id), str(dispatch.invocation_id),
        )  # fmt: skip
        assert outcome.decision_id is not None
        outcomes.append(outcome.decision_id)
        denied = {"reason": "authorization_denied", "decision_id": outcome.decision_id}
        svc.complete(dispatch, "Fail", {**denied, "message": "denied"})
    assert outcomes[0] == outcomes[1]

    for job_id in (first, second):
        audit = Timeline.load(svc, job_id).to_json()
        assert [d["id"] for d in audit["decisions"]] == [outcomes[0]], job_id
        assert check_invariants(audit) == []
