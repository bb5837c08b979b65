"""The test suite's own fold of the event history (the oracle the read models are compared
with), and the workload the projection tests run.

``fold_history`` is written from the event contract alone (DESIGN.md §2 and the read models'
documented columns), sharing no code with ``projections/`` or ``domain/log.py``: it reads every
notification with the library's own ``select_notifications``, keys on event class names, and
builds the rows each read model should hold. ``tests/test_projections_fold.py`` pins the fold
itself to a hand-checked history, so a wrong fold cannot make a wrong projection pass.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID, uuid4

from domain import CurationService, Discarded, Dispatch, SequentError
from projections.catalog import PROJECTION_NAMES
from projections.runner import Projections

# Written out by hand from the state table, on purpose not read from domain.transitions.
STATE_AFTER = {
    "Created": "Queued",
    "Configured": "Queued",
    "Submitted": "Ready",
    "SessionSpawned": "Running",
    "ProgressRecorded": "Running",
    "CompletionRequested": "Finalizing",
    "Completed": "Completed",
    "RepairRequired": "Ready",
    "Failed": "Failed",
    "Retried": "Queued",
}


def log(svc: CurationService, upto: int | None = None) -> Iterator[tuple[Any, Any]]:
    """(notification, decoded event) for the whole log, or up to ``upto``."""
    after = 0
    while True:
        batch = svc.recorder.select_notifications(
            start=after, limit=500, stop=upto, inclusive_of_start=False
        )
        for n in batch:
            yield n, svc.mapper.to_domain_event(n)
        if len(batch) < 500:
            return
        after = batch[-1].id


def _kind(topic: str) -> str:
    return topic.split(":", 1)[1].split(".", 1)[0]  # CurationJob, Invocation, Decision, Policy


def fold_history(  # noqa: PLR0912, PLR0915
    svc: CurationService, upto: int | None = None
) -> dict[str, dict[str, tuple[Any, ...]]]:
    """Every read model's rows, keyed by their key, as the history up to ``upto`` implies."""
    jobs: dict[str, list[Any]] = {}
    invocations: dict[str, dict[str, Any]] = {}
    audit: dict[str, tuple[Any, ...]] = {}
    sessions: dict[str, list[Any]] = {}
    decisions: dict[str, list[Any]] = {}
    for n, e in log(svc, upto):
        kind, name, key = _kind(n.topic), type(e).__name__, str(n.originator_id)
        when = e.timestamp.isoformat()
        if kind == "CurationJob":
            if name == "Created":
                jobs[key] = [key, None, 1, None, None, None, None, None]
            row = jobs[key]
            row[1], row[4], row[6], row[7] = STATE_AFTER[name], n.originator_version, when, n.id
            if name == "Retried":
                row[2] = e.attempt
            elif name == "SessionSpawned":
                row[3] = e.session_id
            elif name in ("Submitted", "RepairRequired"):
                row[5] = str(e.invocation_id)
        elif kind == "Invocation":
            if name == "Started":
                invocations[key] = {"job": str(e.job_id), "attempt": e.attempt, "finished": None}
            elif name == "Unrecognised":
                invocations[key] = {"job": str(e.job_id), "attempt": 0, "finished": None}
            inv = invocations[key]
            if name == "Finished":
                inv["finished"] = e
            elif name in ("Applied", "Discarded"):
                finished, inv["finished"] = inv["finished"], None
                applied = name == "Applied"
                audit[str(n.id)] = (
                    n.id, key, inv["job"], inv["attempt"], finished.action,
                    "applied" if applied else "discarded",
                    None if applied else str(e.reason),
                    e.job_version if applied else None,
                    None if applied else e.job_version_seen,
                    None if applied else str(e.job_state_seen),
                    when,
                )  # fmt: skip
                if finished.action == "SessionSpawned":
                    sid = finished.params["session_id"]
                    s = sessions.setdefault(sid, [sid, inv["job"], key, None, when, 0, 1, n.id])
                    s[3] = "applied" if applied or s[3] == "applied" else "discarded"
                    s[7] = n.id
            elif name in ("Compensated", "OrphanStopped"):  # stopped: compensation, reconcile
                sid = e.session_id
                s = sessions.setdefault(sid, [sid, inv["job"], key, None, when, 0, 1, n.id])
                s[5], s[6], s[7] = 1, 0, n.id
        elif kind == "OrphanSession":  # reconciliation stopped a session no run is known for
            sid = e.session_id
            s = sessions.setdefault(sid, [sid, None, None, None, when, 0, 1, n.id])
            s[5], s[6], s[7] = 1, 0, n.id
        elif kind == "Decision":
            if name == "Requested":
                decisions[key] = [
                    key, "pending", e.principal, e.action, e.resource, e.job_id,
                    e.invocation_id, None, None, when, None, None,
                ]  # fmt: skip
            d = decisions[key]
            d[10], d[11] = n.originator_version, n.id
            if name == "Approved":
                d[1], d[7], d[8] = "approved", str(e.policy_id), e.by
            elif name == "Rejected":
                d[1], d[8] = "rejected", e.by
    return {
        "job_status": {k: tuple(v) for k, v in jobs.items()},
        "dispatch_audit": audit,
        "sessions": {k: tuple(v) for k, v in sessions.items()},
        "decisions": {k: tuple(v) for k, v in decisions.items()},
    }


def completions(svc: CurationService) -> list[int]:
    """Positions of every verdict event: one per completion that reached the system."""
    return [
        n.id
        for n, e in log(svc)
        if _kind(n.topic) == "Invocation" and type(e).__name__ in ("Applied", "Discarded")
    ]


SERVICE = "http://127.0.0.1:8123"

# -- a workload of everything the read models can see --------------------------------------------

OPS = (
    "create", "configure", "submit", "spawn", "spawn_stale", "fail_completion", "unknown",
    "duplicate", "progress", "complete", "finalize", "repair", "fail", "retry", "compensate",
    "request", "approve", "reject", "reconcile_run", "reconcile_unknown",
)  # fmt: skip


@dataclass
class Workload:
    """Applies operations by name to a service; invalid ones are refused (and write nothing)."""

    svc: CurationService
    jobs: list[UUID] = field(default_factory=list)
    dispatches: list[Dispatch] = field(default_factory=list)
    discarded_spawns: list[tuple[UUID, str]] = field(default_factory=list)
    decisions: list[UUID] = field(default_factory=list)
    sessions: int = 0

    def run(self, op: str, pick: int) -> None:
        with suppress(SequentError):  # an invalid transition or a decided decision
            self._run(op, pick)

    def _pick(self, items: list[Any], pick: int) -> Any:
        return items[pick % len(items)] if items else None

    def _session(self) -> str:
        self.sessions += 1
        return f"s-{self.sessions}-{uuid4().hex[:6]}"

    def _run(self, op: str, pick: int) -> None:  # noqa: PLR0912
        svc = self.svc
        job = self._pick(self.jobs, pick)
        if op == "create" or job is None:
            self.jobs.append(svc.create_job({"n": len(self.jobs)}))
            return
        current = [d for d in self.dispatches if d.job_id == job]
        if op == "configure":
            svc.configure(job, {"k": pick})
        elif op == "submit":
            self.dispatches.append(svc.submit(job))
        elif op in ("spawn", "spawn_stale", "duplicate", "fail_completion") and current:
            dispatch = current[-1] if op != "spawn_stale" else self._pick(current, pick)
            action = "Fail" if op == "fail_completion" else "SessionSpawned"
            params = (
                {"reason": "module_error", "message": "x"}
                if action == "Fail"
                else {"session_id": self._session()}
            )
            verdict = svc.complete(dispatch, action, params)
            if isinstance(verdict, Discarded) and action == "SessionSpawned":
                self.discarded_spawns.append((dispatch.invocation_id, params["session_id"]))
        elif op == "unknown":
            svc.complete(Dispatch(job, uuid4(), 2, 1), "SessionSpawned", {"session_id": "u"})
        elif op == "progress":
            svc.execute(job, "RecordProgress", {"entry": {"p": pick}})
        elif op == "complete":
            svc.execute(job, "Complete", {"output": {"ok": True}})
        elif op == "finalize":
            svc.execute(job, "FinalizeCompletion")
        elif op == "repair":
            dispatch = svc.execute(job, "RepairRequired", {"defects": ["d"]})
            if dispatch is not None:
                self.dispatches.append(dispatch)
        elif op == "fail":
            svc.fail(job, reason="operator")
        elif op == "retry":
            svc.retry(job)
        elif op == "compensate" and self.discarded_spawns:
            invocation, session = self.discarded_spawns.pop(pick % len(self.discarded_spawns))
            svc.compensate(invocation, session)
        elif op == "request":
            self.decisions.append(
                svc.policies.request_decision(
                    integration="build_session_message",
                    endpoint=f"http://127.0.0.1:{1000 + pick % 7}/sessions",
                    job_id=str(job),
                )
            )
        elif op == "approve" and self.decisions:
            svc.policies.approve(self._pick(self.decisions, pick), by="tester")
        elif op == "reject" and self.decisions:
            svc.policies.reject(self._pick(self.decisions, pick), by="tester", reason="no")
        elif op == "reconcile_run" and self.dispatches:  # a dead worker's session, stopped
            run = self._pick(self.dispatches, pick).invocation_id
            svc.record_orphan(self._session(), SERVICE, invocation_id=run)
        elif op == "reconcile_unknown":  # a session no run is known for, stopped
            svc.record_orphan(f"u-{pick}", SERVICE, idempotency_key=None)

    def incident(self, jobs: int, seed: int = 0) -> None:
        """A compact version of the incident per job: submit, fail, retry, resubmit, spawn,
        then the stale run completes too (discarded, compensated)."""
        rng = random.Random(seed)
        for _ in range(jobs):
            job = self.svc.create_job({"target": "x"})
            first = self.svc.submit(job)
            self.svc.fail(job, reason="operator")
            self.svc.retry(job)
            second = self.svc.submit(job)
            self.svc.complete(second, "SessionSpawned", {"session_id": self._session()})
            stale = self._session()
            self.svc.complete(first, "SessionSpawned", {"session_id": stale})
            if rng.random() < 0.5:
                self.svc.compensate(first.invocation_id, stale)
            for k in range(rng.randrange(3)):
                self.svc.execute(job, "RecordProgress", {"entry": {"k": k}})


def random_workload(svc: CurationService, steps: int, seed: int) -> Workload:
    rng = random.Random(seed)
    w = Workload(svc)
    for _ in range(steps):
        w.run(rng.choice(OPS), rng.randrange(1000))
    return w


# -- parity of the read models with the fold --------------------------------------------------


def stored(p: Projections, name: str) -> dict[str, tuple[Any, ...]]:
    view = p.projection(name)
    at = view.table.index_of(view.table.key)
    return {str(row[at]): tuple(row) for row in p.store.snapshot(view).rows}


def assert_parity(p: Projections) -> None:
    """Every read model equals the fold; dispatch_audit has one row per completion."""
    folded = fold_history(p.service)
    for name in PROJECTION_NAMES:
        assert stored(p, name) == folded[name], name
    audit = stored(p, "dispatch_audit")
    assert sorted(int(k) for k in audit) == completions(p.service)
