"""One seed's whole system, the seeded scheduler that drives it, and the checks after each step.

**What runs.** The real ``CurationService`` on ``memory://`` (guard, leases, timeouts,
compensation records), the real ``CedarAuthorizer`` over its policy book, two workers that are
real ``Dispatcher``s called step by step (``claim``, ``execute``, ``complete``, ``compensate``,
``expire_overdue``, ``sweep_deadlines``, ``reconcile_due``), each with its real ``Reconciler``.
Stand-ins: the sandbox run (``runner.py``) and the session service (``sessions.py``). Time is a
``VirtualClock``; nothing sleeps and nothing runs on another thread.

**What happens.** ``random.Random(seed)`` picks each next action among the ones possible:
create a job; an operator submits, retries, fails or moves a job along, or approves a Cedar
denial; a worker claims a pending invocation, runs it (Cedar, then the POST) or delivers an
answered run's completion, in any order; time passes (leases and state timeouts run out) and a
worker sweeps for timeouts; a worker reconciles; a completion is forged or garbled; someone
creates a session by hand. Faults: a worker crashes before its claim, during a run, after the
POST, before or after the completion's save; the POST fails, or succeeds with its answer lost;
answers come late, twice, out of order; a DELETE or a listing fails. Then every run left is
driven to its end, time passes beyond the grace period, and a last reconciliation must leave
exactly the sessions jobs hold.

**What is checked, after every step,** against ``model.Model``: every job is exactly as the
model says (invariants 1 and 3: nothing stale moved it, no Fail came from a conflict); every
delivered completion got the verdict and reason the model predicts, and its invocation recorded
exactly those verdicts (2); a refused garbled dispatch wrote nothing (6); every session a job
holds is live, no run created two sessions, a discarded success's session is stopped at once,
and after a reconciliation every live session is held, still in flight, or too young to judge,
each stop recorded once (4). Leases, Cedar and timeouts are checked too: a claim succeeds
exactly when the model says the lease is free, Cedar allows exactly the permitted services, a
timeout fails only a job past its deadline.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from domain import CurationService, Dispatch, InvalidDispatch, InvalidTransition, JobState
from domain.cedar import default_policies
from domain.log import log_reader
from domain.orphan import DEFAULT_GRACE, SESSION_SERVICE_KEY, OrphanSession, orphan_id
from domain.transitions import STATE_TIMEOUTS
from integrations.authorizer import CedarAuthorizer
from integrations.dispatcher import Completer, Completion, Dispatcher, Run, RunOutcome
from integrations.reconcile import Reconciler
from simulation.clock import VirtualClock
from simulation.incident import IncidentCompleter
from simulation.model import Model, RunModel, Violation, verdict_text
from simulation.runner import RunFault, SimulatedRunner, WorkerCrashed
from simulation.sessions import SessionModels

PERMITTED = "http://sessions.permitted:8080"  # the seed policy lets runs call this one
GATED = "http://sessions.gated:8080"  # ... and not this one, until a denial is approved
SERVICES = {PERMITTED: "p", GATED: "g"}
MAX_JOBS = 3
LEASE = timedelta(seconds=60)
TIMEOUTS = {str(state): limit for state, limit in STATE_TIMEOUTS.items()}
WORKERS = 2

# How far time moves when it does: a moment, past a lease, past the 15-minute timeouts, past
# the grace period, past Running's 2 hours.
ADVANCES = (
    (timedelta(seconds=5), 4),
    (LEASE + timedelta(seconds=1), 4),
    (timedelta(minutes=16), 2),
    (DEFAULT_GRACE + timedelta(seconds=1), 1),
    (timedelta(hours=2, minutes=1), 1),
)
RUN_FAULTS = (
    (RunFault.NONE, 70),
    (RunFault.POST_FAILS, 6),
    (RunFault.ANSWER_LOST, 8),
    (RunFault.CRASH_BEFORE_POST, 6),
    (RunFault.CRASH_AFTER_POST, 10),
)
# How a completion reaches the store: once, twice (a retried delivery), with the worker dying
# before or after its save, or with the compensating DELETE failing.
DELIVERIES = (("once", 70), ("twice", 10), ("crash_before_save", 6),
              ("crash_after_save", 8), ("delete_fails", 6))  # fmt: skip
OPERATOR = {  # action -> (params, weight)
    "Submit": (None, 6),
    "Retry": (None, 3),
    "Fail": ({"reason": "operator", "message": "by hand"}, 1),
    "RecordProgress": ({"entry": "tick"}, 1),
    "Complete": ({"output": {"pages": 1}}, 1),
    "FinalizeCompletion": (None, 1),
    "RepairRequired": ({"defects": ["typo"]}, 1),
    "Configure": ({"settings": {"depth": 2}}, 1),
}
# What a garbled dispatch gets wrong; the service refuses each with InvalidDispatch (invariant 6).
GARBLES = ("job", "expected_version", "attempt")
UUID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def pick(rng: random.Random, weighted: tuple[tuple[Any, int], ...]) -> Any:
    return rng.choices([v for v, _ in weighted], [w for _, w in weighted])[0]


@dataclass
class Worker:
    """A worker process: its dispatcher, and what only its memory holds."""

    name: str
    dispatcher: Dispatcher
    claimed: list[tuple[Run, datetime]] = field(default_factory=list)  # not yet run
    answered: list[tuple[Run, RunOutcome, datetime]] = field(default_factory=list)

    def in_flight(self) -> list[tuple[Run, datetime]]:
        return self.claimed + [(run, at) for run, _, at in self.answered]


class World:
    def __init__(self, seed: int, clock: VirtualClock, *, baseline: bool = False) -> None:
        self.rng = random.Random(seed)
        self.clock = clock
        self.baseline = baseline
        self.service = CurationService.open("memory://")
        self.service.policies.add_policy(default_policies(PERMITTED), reason="simulation")
        self.authorizer = CedarAuthorizer(self.service.policies)
        self.sessions = SessionModels(clock, SERVICES)
        self.runner = SimulatedRunner(self.authorizer, self.sessions)
        self.model = Model(TIMEOUTS, LEASE)
        self.model.permitted.add(PERMITTED)
        self.generations = [0] * WORKERS
        self.workers = [self._start_worker(n) for n in range(WORKERS)]
        self.decisions: dict[str, str] = {}  # pending Cedar decision -> the service it is for
        self.log = log_reader(self.service.recorder, self.service.mapper)
        self._checked_at = 0  # the log position the last check saw
        self._checked: dict[UUID, tuple[Any, ...]] = {}  # each job as the last check saw it
        self.trace: list[str] = []
        self.steps = 0

    def close(self) -> None:
        self.service.close()

    # -- the scheduler -----------------------------------------------------------------------

    def step(self) -> None:
        """One action, chosen by the seed among those possible now; then every check."""
        actions: list[tuple[Callable[[], str], int]] = [
            (self.advance, 3),
            (self.sweep, 2),
            (self.reconcile, 2),
            (self.crash_one, 1),
        ]
        if len(self.model.jobs) < MAX_JOBS:
            actions.append((self.create, 3))
        if self.model.jobs:
            actions += [(self.operate, 5), (self.forge, 1), (self.stray_session, 1)]
        if self.decisions:
            actions.append((self.approve, 2))
        if any(not r.finished for r in self.model.runs.values()):
            actions.append((self.claim, 5))
        if any(w.claimed for w in self.workers):
            actions.append((self.run, 5))
        if any(w.answered for w in self.workers):
            actions.append((self.deliver, 6))
        self._do(pick(self.rng, tuple(actions)))

    def drain(self) -> None:
        """Drives every run left to its verdict (no more faults), lets time pass beyond the
        grace period, reconciles, and checks that exactly the sessions jobs hold are live."""
        for _ in range(4 * len(self.model.runs) + 4):
            for worker in self.workers:  # nothing left in any worker's hands
                while worker.claimed:
                    self._do(self.run, worker, 0, RunFault.NONE)
                while worker.answered:
                    self._do(self.deliver, worker, 0, "once")
            if not any(not r.finished for r in self.model.runs.values()):
                break
            self._do(self.advance, LEASE + timedelta(seconds=1))  # the leases of the dead run out
            worker = self.workers[0]
            for invocation_id in worker.dispatcher.refresh():
                self._do(self.claim, worker, invocation_id)
        else:
            raise Violation("model", "runs still unfinished after draining")
        # A worker that keeps running reconciles within its interval of first looking.
        self._do(self.reconcile, self.workers[0], False)
        self._do(self.advance, DEFAULT_GRACE + timedelta(seconds=1))
        self._do(self.reconcile, self.workers[0], False)
        self.check_final()

    def _do(self, action: Callable[..., str], *args: Any) -> None:
        """Takes one action, records what it did, and checks everything."""
        try:
            self._record(action(*args))
            self.check()
        except Exception:
            self._record(f"({action.__name__} failed)")  # what the violation interrupted
            raise

    def labelled(self, text: str) -> str:
        """``text`` with every id the model knows replaced by its label (J1, I2), any other by
        ``<id>``: ids are random, a trace must not be."""

        def label(match: re.Match[str]) -> str:
            some_id = UUID(match.group(0))
            known = some_id in self.model.jobs or some_id in self.model.runs
            return self.model.label(some_id) if known else "<id>"

        return UUID_PATTERN.sub(label, text)

    def _record(self, what: str) -> None:
        self.steps += 1
        self.trace.append(f"{self.steps:>3} {self.clock.elapsed()} {what}")

    # -- actions: jobs and operators ----------------------------------------------------------

    def create(self) -> str:
        url = GATED if self.rng.random() < 0.3 else PERMITTED
        job_id = self.service.create_job(
            {"target": f"feed-{len(self.model.jobs) + 1}", SESSION_SERVICE_KEY: url}
        )
        job = self.model.created(job_id, url, self.clock.now)
        return f"create {job.label} for {SERVICES[url]}"

    def operate(self) -> str:
        """An operator's command; now and then one the job's state does not allow."""
        jobs = list(self.model.jobs)
        choices = [(j, a) for j in jobs for a in OPERATOR if self.model.allows(j, a)]
        if not choices or self.rng.random() < 0.1:
            choices = [(j, a) for j in jobs for a in OPERATOR]
        weights = [OPERATOR[a][1] for _, a in choices]
        job_id, action = self.rng.choices(choices, weights)[0]
        job = self.model.jobs[job_id]
        allowed, was = self.model.allows(job_id, action), job.state
        try:
            dispatch = self.service.execute(job_id, action, OPERATOR[action][0])
        except InvalidTransition:
            if allowed:
                raise Violation("model", f"{action} refused for {job.label} in {was}") from None
            return f"operator {action} {job.label}: refused from {was}"
        if not allowed:
            raise Violation("model", f"{action} accepted for {job.label} in {was}")
        self.model.perform(job_id, action, self.clock.now)
        if dispatch is None:
            return f"operator {action} {job.label}: {was} -> {job.state}"
        run = self.model.started(job_id, dispatch)
        return f"operator {action} {job.label}: {was} -> {job.state}, starts {run.label}"

    def approve(self) -> str:
        decision_id = self.rng.choice(list(self.decisions))
        url = self.decisions[decision_id]
        self.service.policies.approve(decision_id, by="operator")
        self.model.permitted.add(url)
        # Approving settles every decision pending for the same request.
        self.decisions = {d: u for d, u in self.decisions.items() if u != url}
        return f"operator approves a denial: {SERVICES[url]} permitted"

    # -- actions: workers --------------------------------------------------------------------

    def claim(self, worker: Worker | None = None, invocation_id: UUID | None = None) -> str:
        worker = worker or self.rng.choice(self.workers)
        if invocation_id is None:
            mine = {run.dispatch.invocation_id for run, _ in worker.in_flight()}
            pending = [i for i in worker.dispatcher.refresh() if i not in mine]
            if not pending:
                return f"{worker.name} finds nothing to claim"
            invocation_id = self.rng.choice(pending)
        label = self.model.runs[invocation_id].label
        now = self.clock.now
        free = self.model.may_claim(invocation_id, worker.name, now)
        run = worker.dispatcher.claim(invocation_id, now)
        if (run is not None) != free:
            model_run = self.model.runs[invocation_id]
            raise Violation("lease", f"{worker.name} {'got' if run else 'was refused'} {label} "
                            f"(lease: {model_run.holder} until {model_run.lease_until}, "
                            f"finished: {model_run.finished})")  # fmt: skip
        if run is None:
            return f"{worker.name} cannot claim {label}"
        self.model.claimed(invocation_id, worker.name, now)
        worker.claimed.append((run, now))
        return f"{worker.name} claims {label}"

    def run(
        self, worker: Worker | None = None, index: int | None = None, fault: RunFault | None = None
    ) -> str:
        worker = worker or self.rng.choice([w for w in self.workers if w.claimed])
        index = self.rng.randrange(len(worker.claimed)) if index is None else index
        run, claimed_at = worker.claimed.pop(index)
        self.runner.fault = fault or pick(self.rng, RUN_FAULTS)
        label = self.model.runs[run.dispatch.invocation_id].label
        url = self.model.jobs[run.dispatch.job_id].service_url
        permitted = url in self.model.permitted
        try:
            outcome = worker.dispatcher.execute(run)
        except WorkerCrashed as crash:
            return f"{worker.name} runs {label}: crashes {crash} ({self._crash(worker)})"
        finally:
            self.runner.fault = RunFault.NONE
        if (outcome.error_kind == "denied") == permitted:
            raise Violation("authorization", f"Cedar {outcome.error_kind or 'allowed'} {label}'s "
                            f"call to {SERVICES[url]}, permitted: {permitted}")  # fmt: skip
        if outcome.decision_id:
            self.decisions[outcome.decision_id] = url
        sessions = self.sessions.sessions_by_creator(str(run.dispatch.invocation_id))
        if sessions > 1:
            raise Violation("4", f"{label}'s runs created {sessions} sessions (no fencing)")
        worker.answered.append((run, outcome, claimed_at))
        result = (outcome.ok or {}).get("session_id") or outcome.error_kind
        return f"{worker.name} runs {label}: {result}"

    def deliver(
        self, worker: Worker | None = None, index: int | None = None, how: str | None = None
    ) -> str:
        worker = worker or self.rng.choice([w for w in self.workers if w.answered])
        index = self.rng.randrange(len(worker.answered)) if index is None else index
        how = how or pick(self.rng, DELIVERIES)
        run, outcome, _ = worker.answered.pop(index)
        label = self.model.runs[run.dispatch.invocation_id].label
        if how == "crash_before_save":
            return f"{worker.name} delivers {label}: dies before its save ({self._crash(worker)})"
        results = []
        for _ in range(2 if how == "twice" else 1):
            completion = worker.dispatcher.complete(run, outcome)
            results.append(self._check_completion(run, outcome, completion))
            if how == "crash_after_save":
                lost = self._crash(worker)
                return f"{worker.name} delivers {label}: {results[0]}, crashes ({lost})"
            self.sessions.fail_deletes = int(how == "delete_fails")
            worker.dispatcher.compensate(run, completion)
            self.sessions.fail_deletes = 0
            if how != "delete_fails":
                self._check_compensated(label, completion)
        return f"{worker.name} delivers {label} {how}: {', '.join(results)}"

    def crash_one(self) -> str:
        worker = self.rng.choice(self.workers)
        return f"{worker.name} crashes ({self._crash(worker)})"

    def _crash(self, worker: Worker) -> str:
        """The worker's process dies and a new one starts in its place, with a new name (a
        new pid): what it held in memory is lost, its leases run out in the store."""
        lost = len(worker.claimed) + len(worker.answered)
        n = self.workers.index(worker)
        self.generations[n] += 1
        self.workers[n] = self._start_worker(n)
        return f"{lost} run(s) lost, {self.workers[n].name} starts"

    def _start_worker(self, n: int) -> Worker:
        name = f"W{n + 1}.{self.generations[n]}"
        # The baseline changes the completion handling and nothing else, so what it breaks is
        # what the incident broke.
        completer: Completer | None = IncidentCompleter(self.service) if self.baseline else None
        dispatcher = Dispatcher(
            self.service,
            self.runner,
            completer=completer,
            sessions=self.sessions,
            reconciler=Reconciler(self.service, self.sessions),
            worker_id=name,
            lease=LEASE,
            sweep_interval=0.0,
        )
        return Worker(name, dispatcher)

    # -- actions: time -----------------------------------------------------------------------

    def advance(self, by: timedelta | None = None) -> str:
        by = by or pick(self.rng, ADVANCES)
        self.clock.advance(by)
        return f"time passes: {by}"

    def sweep(self) -> str:
        """A worker applies the state timeouts; each job it failed must have been due."""
        worker = self.rng.choice(self.workers)
        now = self.clock.now
        before = self.log.head()
        failed = worker.dispatcher.expire_overdue(now) + worker.dispatcher.sweep_deadlines(now)
        timed_out = []
        for job_id in self._written_since(before):
            job = self.model.jobs[job_id]
            view = self.service.get(job_id)
            if view.state != JobState.FAILED or job.state == JobState.FAILED:
                continue
            if (view.failure or {}).get("reason") != "timeout":
                continue  # not this step's doing: the job check names it
            claimed_long_ago = any(
                run.dispatch.job_id == job_id and now - at >= TIMEOUTS["Ready"]
                for run, at in worker.in_flight()
            )
            if not self.model.due(job_id, now) or (job.state == "Ready" and not claimed_long_ago):
                raise Violation("timeout", f"{job.label} timed out in {job.state} before its "
                                f"deadline (last change {job.changed_at}, now {now})")  # fmt: skip
            timed_out.append(f"{job.label} ({job.state})")
            self.model.perform(job_id, "Fail", now)
        if len(timed_out) != failed:
            raise Violation("timeout", f"{worker.name} says it failed {failed}, saw {timed_out}")
        return f"{worker.name} sweeps: {', '.join(timed_out) or 'nothing due'}"

    # -- actions: sessions -------------------------------------------------------------------

    def reconcile(self, worker: Worker | None = None, faults: bool = True) -> str:
        worker = worker or self.rng.choice(self.workers)
        if faults and self.rng.random() < 0.1:
            self.sessions.fail_lists.add(self.rng.choice(list(SERVICES)))
        if faults and self.rng.random() < 0.1:
            self.sessions.fail_deletes = 1
        before = dict(self.sessions.deleted)
        report = worker.dispatcher.reconcile_due(self.clock.now)
        refused = self.sessions.refused
        self.sessions.fail_lists.clear()
        self.sessions.fail_deletes, self.sessions.refused = 0, []
        if report is None:
            return f"{worker.name} reconciles: not due"
        stopped = [s for s in self.sessions.deleted if s not in before]
        if report.stopped != len(stopped):
            raise Violation("4", f"reconcile reports {report.stopped} stopped, {len(stopped)} were")
        for session_id in stopped:
            self._check_recorded(session_id)
        self._check_no_orphans(report.unreachable, refused)
        return (f"{worker.name} reconciles: {report.checked} checked, {report.orphans} orphans, "
                f"stopped {stopped or 'none'}, unreachable {len(report.unreachable)}")  # fmt: skip

    def stray_session(self) -> str:
        """A session created behind the store's back, with no key (by hand, an old worker),
        at a service some job names (the ones workers reconcile)."""
        url = self.rng.choice(list({j.service_url: None for j in self.model.jobs.values()}))
        session_id = self.sessions.create(url, {"note": "by hand"}, None)
        return f"someone creates {session_id} with no key"

    def forge(self) -> str:
        """A completion no run produced: for an invocation never started, or a garbled
        dispatch of a real one."""
        job_id = self.rng.choice(list(self.model.jobs))
        job = self.model.jobs[job_id]
        action, params = self.rng.choice(
            [("SessionSpawned", {"session_id": "forged"}), ("Fail", {"reason": "module_error"})]
        )
        runs = list(self.model.runs.values())
        if runs and self.rng.random() < 0.5:
            return self._garble(self.rng.choice(runs), action, params)
        forged = Dispatch(job_id, uuid4(), job.version, job.attempt)
        expected = self.model.deliver(forged, action, params, self.clock.now)
        got = verdict_text(self.service.complete(forged, action, params))
        if got != expected:
            raise Violation("2", f"a forged completion for {job.label} got {got}, not {expected}")
        return f"forged {action} for {job.label}: {got}"

    def _garble(self, run: RunModel, action: str, params: dict[str, Any]) -> str:
        """The dispatch of a real run with one field changed: refused, and nothing written,
        so the genuine completion still gets its verdict (invariant 6)."""
        genuine = run.dispatch
        others = [j for j in self.model.jobs if j != genuine.job_id]
        what = self.rng.choice([g for g in GARBLES if others or g != "job"])
        garbled = {
            "job": lambda: replace(genuine, job_id=self.rng.choice(others)),
            "expected_version": lambda: replace(
                genuine, expected_version=genuine.expected_version + self.rng.choice((-1, 1))
            ),
            "attempt": lambda: replace(genuine, attempt=genuine.attempt + 1),
        }[what]()
        head = self.service.recorder.max_notification_id()
        try:
            verdict = self.service.complete(garbled, action, params)
        except InvalidDispatch:
            if self.service.recorder.max_notification_id() != head:
                raise Violation("6", f"a refused garbled dispatch of {run.label} wrote") from None
            return f"garbled ({what}) {action} for {run.label}: refused"
        got = verdict_text(verdict)
        raise Violation("6", f"a garbled ({what}) dispatch of {run.label} got {got}")

    # -- checks ------------------------------------------------------------------------------

    def check(self, delivered: str | None = None) -> None:
        """Every job is as the model says; every session a job holds is live. ``delivered``:
        the action of the completion just delivered, which names what a difference breaks."""
        written = self._written_since(self._checked_at)
        self._checked_at = self.log.head()
        for job_id, job in self.model.jobs.items():
            want = job.observed()
            if job_id not in written and self._checked.get(job_id) == want:
                continue  # neither the store nor the model moved it since the last look
            view = self.service.get(job_id)
            got = (view.state, view.version, view.attempt, view.session_id, view.current_invocation)
            if got != want:
                shown = f"{job.label} is {got[0]} v{got[1]}, the model says {want[0]} v{want[1]}"
                if delivered is None:
                    raise Violation("model", f"{job.label} is {got}, the model says {want}")
                if got[0] == "Failed" and delivered != "Fail":
                    raise Violation("3", f"{shown}: a {delivered} failed it: {view.failure}")
                raise Violation("1", f"{shown}: a {delivered} that had to be discarded moved it")
            self._checked[job_id] = want
        for session_id, job in self.model.held().items():
            if session_id not in self.sessions.live:
                raise Violation("4", f"{job.label} holds {session_id}, which was stopped "
                                f"(by {self.sessions.deleted.get(session_id)})")  # fmt: skip
        self._check_work_table()

    def _check_work_table(self) -> None:
        """The runs the work table would offer a worker now are the model's unfinished runs
        whose lease (if any) has run out: what workers find their work by."""
        now = self.clock.now.timestamp()
        rows = self.service.work.work_rows().runs
        offered = {run for run, (_, _, available_at) in rows.items() if available_at <= now}
        free = {
            run_id
            for run_id, run in self.model.runs.items()
            if not run.finished and (run.lease_until is None or run.lease_until.timestamp() <= now)
        }
        if set(rows) != {r for r, run in self.model.runs.items() if not run.finished}:
            raise Violation("work table", f"open runs {len(rows)} differ from the model's")
        every = [*self.sessions.live, *self.sessions.deleted]
        held = self.service.held_sessions(every)
        if held != set(self.model.held()):
            raise Violation("work table", f"says jobs hold {sorted(held)}, the model "
                            f"{sorted(self.model.held())}")  # fmt: skip
        if offered != free:
            labels = sorted(self.model.runs[r].label for r in offered ^ free)
            raise Violation(
                "work table", f"would offer {len(offered)} runs, the model {len(free)}: {labels}"
            )

    def _written_since(self, position: int) -> dict[UUID, None]:
        """The jobs with an event recorded after ``position`` of the log, in log order."""
        notices = self.log.notices((), after=position)
        return {n.originator_id: None for n in notices if n.originator_id in self.model.jobs}

    def _check_completion(self, run: Run, outcome: RunOutcome, completion: Completion) -> str:
        model_run = self.model.runs[run.dispatch.invocation_id]
        if (outcome.ok is not None) != (completion.action == "SessionSpawned"):
            raise Violation("3", f"{model_run.label}'s {'success' if outcome.ok else 'failure'} "
                            f"was completed as {completion.action}")  # fmt: skip
        expected = self.model.deliver(
            run.dispatch, completion.action, completion.params, self.clock.now
        )
        got = verdict_text(completion.verdict)
        if got != expected:
            self.check(completion.action)  # a job that moved is the finding (1 or 3)
            raise Violation("2", f"{model_run.label}'s {completion.action} got {got}, "
                            f"not {expected}")  # fmt: skip
        view = self.service.invocation(model_run.dispatch.invocation_id)
        recorded = [verdict_text(v) for v in view.verdicts]
        if recorded != model_run.verdicts:
            raise Violation("2", f"{model_run.label} recorded {recorded}, not {model_run.verdicts}")
        return f"{completion.action} {got}"

    def _check_compensated(self, label: str, completion: Completion) -> None:
        session_id = completion.params.get("session_id")
        if completion.action != "SessionSpawned" or verdict_text(completion.verdict) == "Applied":
            return
        if session_id in self.sessions.live and session_id not in self.model.held():
            raise Violation("4", f"{label}'s discarded {session_id} was not stopped")

    def _check_recorded(self, session_id: str) -> None:
        """A session reconciliation stopped is recorded once: on the run that created it when
        its key names one, else on its own OrphanSession."""
        session = next(s for s in self.sessions.created if s.session_id == session_id)
        if session.idempotency_key is not None:
            stops = self.service.invocation(UUID(session.idempotency_key)).orphans_stopped
            if stops.count(session_id) != 1:
                raise Violation("4", f"stopped {session_id} recorded {stops.count(session_id)}x")
            return
        record: object = self.service.repository.get(orphan_id(session.service_url, session_id))
        if not isinstance(record, OrphanSession) or record.session_id != session_id:
            raise Violation("4", f"stopped {session_id} has no record")

    def _check_no_orphans(self, unreachable: tuple[str, ...], refused: list[str]) -> None:
        """After a reconciliation, each live session is held, in flight (its creator is not
        finished) or keyless and younger than the grace period; or its service could not be
        asked, or refused the DELETE."""
        held = self.model.held()
        young = self.clock.seconds() - DEFAULT_GRACE.total_seconds()
        for session in list(self.sessions.live.values()):
            if session.service_url in unreachable or session.session_id in refused:
                continue
            key = session.idempotency_key
            if session.session_id in held:
                continue
            if key is not None and self.model.unfinished(key):
                continue
            if key is None and session.created > young:
                continue
            raise Violation("4", f"{session.session_id} is an orphan still live after reconcile")

    def check_final(self) -> None:
        """Nothing in flight, a reconciliation past the grace period: live == held, every
        stop recorded once, every invocation's verdicts as the model's, and the work table
        a fold of the log (what workers find their runs and deadlines by)."""
        drift = self.service.work_drift()
        if drift:
            raise Violation("work table", f"{len(drift)} row(s) off the log: {drift[0]}")
        live, held = sorted(self.sessions.live), sorted(self.model.held())
        if live != held:
            raise Violation("4", f"live sessions {live} != sessions jobs hold {held}")
        for invocation_id, run in self.model.runs.items():
            view = self.service.invocation(invocation_id)
            recorded = [verdict_text(v) for v in view.verdicts]
            if recorded != run.verdicts:
                raise Violation("2", f"{run.label} recorded {recorded}, not {run.verdicts}")
            stops = view.compensated + view.orphans_stopped
            for session_id in set(stops):
                if stops.count(session_id) != 1 or session_id not in self.sessions.deleted:
                    raise Violation("4", f"{run.label} records stopping {session_id} "
                                    f"{stops.count(session_id)}x")  # fmt: skip
