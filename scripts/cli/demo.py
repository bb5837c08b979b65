"""The incident of DESIGN.md §1, walked by hand for one job through the Python API, with every
claim about the outcome read back from the service and checked, never assumed.

Attempt 1's run (invocation A) is denied by Cedar and the job fails; the job is retried and
attempt 2's run (invocation B) spawns a session. Then A completes late, twice: with a
SessionSpawned, and with the Fail an integration makes of the 409 it got. In the incident that
second completion killed a healthy job; here both are recorded as discarded and the job stays
Running at the same version. If any of that does not hold, the demo says which fact failed and
exits 1.

Run it as ``scripts/demo`` or ``sequent demo``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from rich.console import Console

from bootstrap import Settings, open_service
from domain import (
    Applied,
    CurationService,
    Discarded,
    DiscardReason,
    Dispatch,
    HistoryEntry,
    JobState,
    JobView,
    Verdict,
)
from scripts.cli.args import Args, Handler, Subcommands, add_command
from scripts.cli.jobs import verdict_payload
from scripts.cli.output import EXIT_OK, OneLineParser, emit, history_table, report, short

DEMO_DB_PATH = Path(".sequent") / "demo.db"
DEMO_DB_URL = f"sqlite:///{DEMO_DB_PATH}"
SPEC = {"target": "https://curation.example/feeds/orchids", "topic": "orchids"}
SETTINGS = {"depth": 2, "session_service": "http://127.0.0.1:8080"}
DECISION_ID = "demo-decision-1"
DENIAL = "Cedar denied http_call POST http://127.0.0.1:8080/sessions (no permit policy)"
SESSION_B = "session-attempt-2"
SESSION_A = "session-attempt-1-late"
LATE_409 = "409 Action 'SessionSpawned' not valid from state 'Running'"
EXPECTED_DISCARDS = [DiscardReason.SUPERSEDED, DiscardReason.DUPLICATE]


@dataclass(frozen=True)
class Step:
    what: str
    verdict: str


@dataclass(frozen=True)
class Walk:
    """What the demo did, and what the service answered."""

    job_id: UUID
    first: Dispatch  # invocation A, attempt 1
    second: Dispatch  # invocation B, attempt 2
    applied: Verdict  # B's SessionSpawned
    late_success: Verdict  # A's SessionSpawned, late
    late_failure: Verdict  # A's 409-turned-Fail, late
    version_before_late: int
    steps: list[Step]


@dataclass(frozen=True)
class Observed:
    """What the store says afterwards, read back through the service."""

    job: JobView
    discards: list[dict[str, Any]]  # the Discarded events recorded on invocation A
    failures: int  # Failed events on the job
    history: list[HistoryEntry] = field(repr=False)


class FactsDidNotHold(Exception):
    def __init__(self, failed: list[str]) -> None:
        super().__init__(f"demo: the guard did not hold; false: {', '.join(failed)}")


def describe(verdict: Verdict) -> str:
    if isinstance(verdict, Applied):
        return f"Applied (job now at version {verdict.job_version})"
    return (
        f"Discarded: {verdict.reason} (job untouched: {verdict.job_state_seen}, "
        f"version {verdict.job_version_seen})"
    )


class Narrator:
    def __init__(self, svc: CurationService) -> None:
        self.svc = svc
        self.steps: list[Step] = []

    def state(self, job_id: UUID, what: str) -> None:
        view = self.svc.get(job_id)
        self.steps.append(Step(what, f"{view.state}, version {view.version}"))

    def verdict(self, what: str, verdict: Verdict) -> Verdict:
        self.steps.append(Step(what, describe(verdict)))
        return verdict


def walk(svc: CurationService) -> Walk:
    log = Narrator(svc)
    job_id = svc.create_job(SPEC)
    log.state(job_id, f"create job {short(job_id)} to curate {SPEC['target']}")
    svc.configure(job_id, SETTINGS)
    log.state(job_id, "configure it")
    a = svc.submit(job_id)
    log.state(job_id, f"submit: invocation A {short(a.invocation_id)}, attempt {a.attempt}")
    svc.fail(job_id, reason="authorization_denied", message=DENIAL, decision_id=DECISION_ID)
    log.state(job_id, f"Cedar denies A's http_call ({DECISION_ID}): Fail(authorization_denied)")
    svc.retry(job_id)
    log.state(job_id, "the policy is approved: Retry")
    b = svc.submit(job_id)
    log.state(job_id, f"submit: invocation B {short(b.invocation_id)}, attempt {b.attempt}")
    applied = log.verdict(
        "B completes: SessionSpawned",
        svc.complete(b, "SessionSpawned", {"session_id": SESSION_B}),
    )
    version_before_late = svc.get(job_id).version
    late_success = log.verdict(
        "A completes late: SessionSpawned",
        svc.complete(a, "SessionSpawned", {"session_id": SESSION_A}),
    )
    late_failure = log.verdict(
        "A's integration turns the 409 into Fail(service_error), late",
        svc.complete(a, "Fail", {"reason": "service_error", "message": LATE_409}),
    )
    return Walk(job_id, a, b, applied, late_success, late_failure, version_before_late, log.steps)


def observe(svc: CurationService, walked: Walk) -> Observed:
    a_events = svc.invocation_history(walked.first.invocation_id)
    history = svc.history(walked.job_id)
    return Observed(
        job=svc.get(walked.job_id),
        discards=[e.data for e in a_events if e.name == "Discarded"],
        failures=sum(1 for e in history if e.aggregate == "job" and e.name == "Failed"),
        history=history,
    )


def discarded_as(verdict: Verdict, reason: DiscardReason) -> bool:
    return isinstance(verdict, Discarded) and verdict.reason == reason


def check(walked: Walk, seen: Observed) -> dict[str, bool]:
    """The facts the demo claims, each computed from what the service answered or recorded."""
    return {
        "retry_completion_applied": isinstance(walked.applied, Applied),
        "late_success_superseded": discarded_as(walked.late_success, DiscardReason.SUPERSEDED),
        "late_failure_duplicate": discarded_as(walked.late_failure, DiscardReason.DUPLICATE),
        "job_still_running": seen.job.state == JobState.RUNNING,
        "version_unchanged": seen.job.version == walked.version_before_late,
        "session_from_retry": seen.job.session_id == SESSION_B,
        "discards_recorded": [d["reason"] for d in seen.discards] == EXPECTED_DISCARDS,
        "failed_only_once": seen.failures == 1,
    }


def summary(url: str, walked: Walk, seen: Observed, facts: dict[str, bool]) -> dict[str, Any]:
    return {
        "db": url,
        "ok": all(facts.values()),
        "facts": facts,
        "job_id": walked.job_id,
        "invocation_a": walked.first.invocation_id,
        "invocation_b": walked.second.invocation_id,
        "state": seen.job.state,
        "version": seen.job.version,
        "version_before_late": walked.version_before_late,
        "attempt": seen.job.attempt,
        "session_id": seen.job.session_id,
        "verdicts": {
            name: verdict_payload(v)
            for name, v in (
                ("retry", walked.applied),
                ("late_success", walked.late_success),
                ("late_failure", walked.late_failure),
            )
        },
        "discards": seen.discards,
        "steps": walked.steps,
        "history": seen.history,
    }


def render(out: Console, url: str, walked: Walk, seen: Observed, facts: dict[str, bool]) -> None:
    out.print(f"incident demo on {url}: one job, a denied attempt, a retry, two late completions")
    for n, step in enumerate(walked.steps, 1):
        out.print(f"{n:>2}. {step.what}  =>  {step.verdict}")
    labels = {
        walked.job_id: "job",
        walked.first.invocation_id: "invocation A",
        walked.second.invocation_id: "invocation B",
    }
    out.print(history_table(seen.history, f"timeline of job {walked.job_id}", labels))
    if all(facts.values()):
        reasons = ", ".join(str(d["reason"]) for d in seen.discards)
        out.print(
            f"Job {short(walked.job_id)} is still {seen.job.state} at version "
            f"{seen.job.version} (session {seen.job.session_id}); both late completions from "
            f"invocation A were recorded as discarded ({reasons})."
        )


def fresh_demo_store() -> str:
    for suffix in ("", "-wal", "-shm", "-journal"):
        DEMO_DB_PATH.with_name(DEMO_DB_PATH.name + suffix).unlink(missing_ok=True)
    return DEMO_DB_URL


def run_demo(args: Args) -> int:
    """Walks the incident on ``--db`` (default: a fresh .sequent/demo.db), prints the story or
    its JSON summary, and exits 0 only if every fact held."""
    url = args.db or fresh_demo_store()
    svc = open_service(Settings.from_env(store_url=url))
    try:
        walked = walk(svc)
        seen = observe(svc, walked)
    finally:
        svc.close()
    facts = check(walked, seen)
    emit(
        args.json,
        summary(url, walked, seen, facts),
        lambda out, _: render(out, url, walked, seen, facts),
    )
    failed = [name for name, held in facts.items() if not held]
    return report(FactsDidNotHold(failed)) if failed else EXIT_OK


HANDLERS: Mapping[str, Handler] = {"demo": run_demo}


def add_parsers(sub: Subcommands, common: OneLineParser) -> None:
    add_command(
        sub,
        common,
        "demo",
        help="walk one job through the incident by hand and check the guard held",
        description="Without --db, uses a fresh SQLite file .sequent/demo.db ($SEQUENT_DB is "
        "not used, so the demo never writes into your store unless you name it).",
    )
