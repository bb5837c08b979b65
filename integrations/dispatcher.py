"""The dispatcher: finds started-but-unfinished invocations in the store, leases each, runs its
integration, and hands the outcome back through the guard (DESIGN.md §3).

Work is found in the store, not in a queue, so several worker processes can share one database:
each asks the store's work table (``domain/work.py``, an indexed query whose cost does not grow
with the log) for runs nobody holds, reserving them so that workers asking at once are handed
different ones. The lease (an OCC write on the invocation) keeps two of them off the same run,
and a crashed worker's lease simply expires. Execution is at-least-once: a second completion of
the same run is a recorded ``duplicate``, never a second effect.

The threaded loop commits in groups: the runs it finds are claimed in one transaction
(``claim_batch``) and their jobs read in one query, and runs that finish together are completed
in one transaction (``integrations/group_commit.py``).

One invocation is processed in four steps, each a method: ``claim`` (lease it, read its job),
``execute`` (run the integration), ``complete`` (the declaration maps the outcome to an action,
the guard decides) and ``compensate`` (stop the session a discarded success left behind). The
threaded loop (``run``) chains them in a worker thread; the whole-system simulation
(``simulation/``) calls them one at a time, with crashes and a virtual clock in between. So do
the sweeps (``expire_overdue``, ``sweep_deadlines``) and the periodic reconciliation
(``reconcile_due``): every step takes the moment it acts at.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from uuid import UUID

import anyio
import anyio.abc
import anyio.to_thread

from domain import (
    Applied,
    ConcurrencyError,
    CurationService,
    Discarded,
    Dispatch,
    InvalidParams,
    InvocationFinished,
    JobState,
    JobView,
    LeaseHeld,
    StoreUnavailable,
    Verdict,
)
from domain.orphan import SESSION_SERVICE_KEY, holds_session
from domain.transitions import STATE_TIMEOUTS
from integrations.group_commit import GroupCommit
from integrations.observer import DispatchObserver, RunObserver, Unobserved
from integrations.reconcile import ReconcileReport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOutcome:
    """What an integration run came to, in the terms the declaration maps to actions."""

    ok: dict[str, Any] | None = None  # params of on_success
    error_kind: str | None = None
    message: str = ""
    decision_id: str | None = None


class Runner(Protocol):
    """Runs the integration for one dispatch: wasm, host functions, authorization."""

    @property
    def module_sha256(self) -> str:
        """The module it runs, recorded on each claim made to run it."""
        ...

    def __call__(self, dispatch: Dispatch, job_input: dict[str, Any]) -> RunOutcome:
        """Raises StoreUnavailable when the run could not decide for want of the store (say,
        an authorization check): the dispatcher runs it again rather than complete it."""
        ...


class Completer(Protocol):
    def complete(
        self, dispatch: Dispatch, action: str, params: Mapping[str, Any] | None = None
    ) -> Verdict: ...


class SessionStopper(Protocol):
    def stop(self, service_url: str, session_id: str) -> bool: ...


class Reconciles(Protocol):
    def reconcile_all(self, now: datetime | None = None) -> ReconcileReport: ...


# How a classified failure becomes the job's Fail reason.
FAIL_REASONS: Mapping[str, str] = {
    "denied": "authorization_denied",
    "http_error": "service_error",
    "timeout": "timeout",
}


@dataclass(frozen=True)
class Declaration:
    """An integration's declaration: which action its ``ok`` and ``error`` map to. A module
    never names an action itself."""

    name: str = "build_session_message"
    on_success: str = "SessionSpawned"
    on_failure: str = "Fail"

    def completion(self, outcome: RunOutcome) -> tuple[str, dict[str, Any]]:
        if outcome.ok is not None:
            return self.on_success, dict(outcome.ok)
        return self.on_failure, failure_params(outcome)


def failure_params(outcome: RunOutcome) -> dict[str, Any]:
    reason = FAIL_REASONS.get(outcome.error_kind or "", "module_error")
    params: dict[str, Any] = {
        "reason": reason,
        "message": f"{outcome.error_kind or 'error'}: {outcome.message}"[:500],
    }
    if reason == "authorization_denied" and outcome.decision_id:
        params["decision_id"] = outcome.decision_id
    elif reason == "authorization_denied":
        params["reason"] = "module_error"  # a guest claiming a denial the host never made
    return params


@dataclass
class DispatchStats:
    runs: int = 0
    applied: int = 0
    discarded: dict[str, int] = field(default_factory=dict)
    compensated: int = 0
    discarded_sessions: int = 0  # discarded successes: sessions left to compensate
    leased_elsewhere: int = 0
    errors: int = 0
    timeouts: int = 0
    orphans_stopped: int = 0
    store_retries: int = 0  # loop steps and runs cut short by the store (dropped, busy)
    claim_commits: int = 0  # transactions the loop's claims took (one per group claimed)

    def count(self, verdict: Verdict) -> None:
        if isinstance(verdict, Applied):
            self.applied += 1
            return
        self.discarded[str(verdict.reason)] = self.discarded.get(str(verdict.reason), 0) + 1


@dataclass(frozen=True)
class Run:
    """A claimed invocation, ready to run: the dispatch it runs under, the input the module
    gets, and the session service its job names (where a compensation stops a session)."""

    dispatch: Dispatch
    job_input: dict[str, Any]
    service_url: str | None
    lease_until: datetime


@dataclass(frozen=True)
class Completion:
    """What a run's outcome came to: the action and params it was completed with (the
    declaration's choice, never the module's) and the guard's verdict."""

    action: str
    params: dict[str, Any]
    verdict: Verdict


UNOBSERVED = Unobserved()  # what a step sees when its caller watches nothing (the simulation)


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Dispatcher:
    def __init__(
        self,
        service: CurationService,
        runner: Runner,
        *,
        completer: Completer | None = None,
        sessions: SessionStopper | None = None,
        reconciler: Reconciles | None = None,
        declaration: Declaration | None = None,
        worker_id: str | None = None,
        lease: timedelta = timedelta(seconds=60),
        concurrency: int = 16,
        poll_interval: float = 0.02,
        sweep_interval: float = 1.0,
        reconcile_interval: float | None = 60.0,
        store_retry_interval: float = 0.5,
        timeouts: Mapping[JobState, timedelta] = STATE_TIMEOUTS,
        observer: DispatchObserver | None = None,
    ) -> None:
        """``reconcile_interval``: seconds between two reconciliations by ``run`` when a
        ``reconciler`` is given (None: never). ``store_retry_interval``: how long ``run``
        waits before it looks at a store that failed it again."""
        self.service = service
        self.runner = runner
        self.completer: Completer = completer or service
        self.sessions = sessions
        self.reconciler = reconciler
        self.declaration = declaration or Declaration()
        self.worker_id = worker_id or default_worker_id()
        self.lease = lease
        self.limiter = anyio.CapacityLimiter(concurrency)
        self.poll_interval = poll_interval
        self.sweep_interval = timedelta(seconds=sweep_interval)
        self.reconcile_interval = (
            None if reconcile_interval is None else timedelta(seconds=reconcile_interval)
        )
        self.store_retry_interval = store_retry_interval
        self.timeouts = timeouts
        self.observer: DispatchObserver = observer or Unobserved()
        self.stats = DispatchStats()
        self.concurrency = concurrency
        self._executing = 0  # runs of the threaded loop between their claim and completion
        # The threaded loop's completions go through one group commit; a given completer
        # (tests) or the step-wise calls of the simulation (nothing executing) are unchanged.
        self.group = GroupCommit(service, expected=lambda: self._executing)
        self._loop_completer: Completer = completer or self.group
        self._swept_at = datetime.min.replace(tzinfo=UTC)
        self._reconciled_at: datetime | None = None  # None: the first look starts the clock
        # invocation -> (its job once claimed, since when)
        self._inflight: dict[UUID, tuple[UUID | None, datetime]] = {}
        # Runs cut short by the store, still under this worker's lease: the work table will
        # not offer them again until it runs out, so this worker claims them again itself.
        self._again: dict[UUID, None] = {}
        self.pending: list[UUID] = []  # as of the last look at the store
        self._freed: anyio.Event | None = None  # set when a run ends (made in the loop)

    # -- the loop ---------------------------------------------------------------------------

    async def run(self, until: Callable[[], bool] = lambda: False) -> None:
        """Dispatches until ``until()`` is true and nothing is in flight. When the store drops
        a connection or stays busy, the loop looks again after ``store_retry_interval``
        instead of ending: each of its steps decides afresh from what the store holds, so a
        step cut short is safe to repeat, and a worker outlives a database restart."""
        async with anyio.create_task_group() as tg:
            while not (until() and not self._inflight):
                try:
                    exhausted = await self._start_pending(tg)
                    now = datetime.now(UTC)
                    self.stats.timeouts += await anyio.to_thread.run_sync(self._sweep, now)
                except (StoreUnavailable, ConcurrencyError) as exc:
                    self.stats.store_retries += 1
                    log.warning("store call failed, retrying: %s", exc)
                    await anyio.sleep(self.store_retry_interval)
                    continue
                await self._reconcile(now)
                if exhausted:
                    await anyio.sleep(self.poll_interval)
                else:
                    await self._room()  # more may be waiting: look again once a run ends

    async def run_once(self) -> None:
        """Processes every run the store offers now (taking more as runs finish) and returns
        when they are all done (tests, `--once`)."""
        async with anyio.create_task_group() as tg:
            while not await self._start_pending(tg):
                await self._room()

    def refresh(self) -> list[UUID]:
        """The invocations started and not yet finished, as the store says now."""
        self.pending = self.service.open_runs()
        return self.pending

    async def _start_pending(self, tg: anyio.abc.TaskGroup) -> bool:
        """Starts the runs it can claim; True when it had room for more than the store
        offered (nothing is waiting for this worker now)."""
        free = self.concurrency - len(self._inflight)
        if free <= 0:
            return False
        runs = await anyio.to_thread.run_sync(self.claim_next, free, datetime.now(UTC))
        for run in runs:
            self._executing += 1
            tg.start_soon(self._process, run)
        # What this look found, and what it must look at again: the loop's "nothing pending".
        self.pending = [run.dispatch.invocation_id for run in runs] + list(self._again)
        return len(runs) < free

    async def _room(self) -> None:
        """Returns once the loop has room for another run."""
        while len(self._inflight) >= self.concurrency:
            self._freed = anyio.Event()
            await self._freed.wait()

    def _sweep(self, now: datetime) -> int:
        return self.expire_overdue(now) + self.sweep_deadlines(now)

    async def _process(self, run: Run) -> None:
        invocation_id = run.dispatch.invocation_id
        try:
            await anyio.to_thread.run_sync(self.process_run, run, limiter=self.limiter)
        except StoreUnavailable as exc:
            # Nothing was decided: this worker (whose lease it still is) or another runs it
            # again; the fencing token gives a rerun the session the first run created.
            log.warning("invocation %s left for a retry: %s", invocation_id, exc)
            self.stats.store_retries += 1
            self._again[invocation_id] = None
        except Exception:
            # The worker stays up; the lease expires and this or another worker runs it again.
            log.exception("invocation %s left for a retry after its lease", invocation_id)
            self.stats.errors += 1
        finally:
            self._executing -= 1
            self._inflight.pop(invocation_id, None)
            if self._freed is not None:
                self._freed.set()

    async def _reconcile(self, now: datetime) -> None:
        try:
            await anyio.to_thread.run_sync(self.reconcile_due, now)
        except Exception:
            # Orphans wait for the next pass; the worker's own runs are not held up by them.
            log.exception("reconciliation failed; trying again in %s", self.reconcile_interval)

    # -- one invocation, step by step --------------------------------------------------------

    def process(self, invocation_id: UUID, now: datetime | None = None) -> Verdict | None:
        """Claims, runs and completes one invocation; None if another worker has it. The
        observer sees each step (the completion's includes its compensation)."""
        with self.observer.run(invocation_id) as observed:
            with observed.step("claim"):
                run = self.claim(invocation_id, now, observed)
            if run is None:
                return None
            return self._run_claimed(run, observed, self.completer)

    def process_run(self, run: Run) -> Verdict:
        """Runs and completes a run ``claim_next`` claimed (its completion group-committed)."""
        with self.observer.run(run.dispatch.invocation_id) as observed:
            # The claim was its group's, made before this run's trace began: its step here
            # says who holds the lease until when, not how long the group's claim took.
            with observed.step("claim"):
                observed.claimed(run.dispatch, run.lease_until)
            return self._run_claimed(run, observed, self._loop_completer)

    def _run_claimed(self, run: Run, observed: RunObserver, completer: Completer) -> Verdict:
        with observed.step("sandbox"):
            outcome = self.execute(run, observed)
        with observed.step("completion"):
            completion = self.complete(run, outcome, observed, completer)
            self.compensate(run, completion, observed)
        return completion.verdict

    def claim_next(self, limit: int, now: datetime | None = None) -> list[Run]:
        """Claims up to ``limit`` runs nobody holds, in one transaction, and reads their jobs
        in one query: the runs the work table offers this worker (reserved for the length
        of a lease, so other workers asking meanwhile are offered others), less any this
        worker is still running."""
        moment = now or datetime.now(UTC)
        again = list(self._again)[:limit]
        offered = self.service.reserve_runs(moment, self.lease, limit - len(again))
        wanted = again + [i for i, _ in offered if i not in self._inflight and i not in again]
        if not wanted:
            return []
        dispatches = self.service.claim_batch(
            wanted, self.worker_id, self.lease, moment, module_sha256=self.runner.module_sha256
        )
        for invocation_id in again:
            self._again.pop(invocation_id)
        claimed = [d for d in dispatches if d is not None]
        self.stats.leased_elsewhere += len(dispatches) - len(claimed)
        self.stats.claim_commits += bool(claimed)
        # Leased to this worker now: should reading their jobs fail, the next look claims
        # them again rather than leave them until the lease runs out.
        self._again.update(dict.fromkeys(d.invocation_id for d in claimed))
        jobs = self.service.jobs(list(dict.fromkeys(d.job_id for d in claimed)))
        for dispatch in claimed:
            self._again.pop(dispatch.invocation_id)
            self._inflight[dispatch.invocation_id] = (dispatch.job_id, moment)
        return [self._run(dispatch, jobs[dispatch.job_id], moment) for dispatch in claimed]

    def claim(
        self, invocation_id: UUID, now: datetime | None = None, observed: RunObserver = UNOBSERVED
    ) -> Run | None:
        """Takes the lease on the invocation at ``now`` and reads its job; None if another
        worker holds the lease or the invocation is already finished."""
        moment = now or datetime.now(UTC)
        try:
            dispatch = self.service.claim(
                invocation_id,
                self.worker_id,
                self.lease,
                moment,
                module_sha256=self.runner.module_sha256,
            )
        except LeaseHeld:
            self.stats.leased_elsewhere += 1
            return None
        except InvocationFinished:
            return None  # finished between the work table's read and the claim
        observed.claimed(dispatch, moment + self.lease)
        self._inflight[invocation_id] = (dispatch.job_id, moment)
        return self._run(dispatch, self.service.get(dispatch.job_id), moment)

    def _run(self, dispatch: Dispatch, job: JobView, claimed_at: datetime) -> Run:
        job_input = {
            "invocation_id": str(dispatch.invocation_id),
            "job": {
                "id": str(job.id),
                "attempt": dispatch.attempt,
                "spec": job.spec,
                "settings": job.settings,
            },
        }
        service_url = job.spec.get(SESSION_SERVICE_KEY)
        url = service_url if isinstance(service_url, str) else None
        return Run(dispatch, job_input, url, claimed_at + self.lease)

    def execute(self, run: Run, observed: RunObserver = UNOBSERVED) -> RunOutcome:
        """Runs the integration for a claimed run."""
        outcome = self.runner(run.dispatch, run.job_input)
        observed.ran(outcome.error_kind if outcome.ok is None else None)
        self.stats.runs += 1
        return outcome

    def complete(
        self,
        run: Run,
        outcome: RunOutcome,
        observed: RunObserver = UNOBSERVED,
        completer: Completer | None = None,
    ) -> Completion:
        """Hands the outcome to the guard as the action the declaration maps it to."""
        dispatch = run.dispatch
        completer = completer or self.completer
        action, params = self.declaration.completion(outcome)
        try:
            verdict = completer.complete(dispatch, action, params)
        except InvalidParams as exc:
            # The module said ok with params its action does not take: that is a module error.
            bad = RunOutcome(error_kind="bad_output", message=str(exc))
            action, params = self.declaration.on_failure, failure_params(bad)
            verdict = completer.complete(dispatch, action, params)
        observed.completed(action, verdict)
        self._inflight.pop(dispatch.invocation_id, None)
        self.stats.count(verdict)
        if isinstance(verdict, Discarded) and action == self.declaration.on_success:
            self.stats.discarded_sessions += 1
        return Completion(action, params, verdict)

    def compensate(
        self, run: Run, completion: Completion, observed: RunObserver = UNOBSERVED
    ) -> bool:
        """A discarded success may have left a real session behind: stop it where the job
        said its sessions live, and record that on the invocation (invariant 4). Never the
        session the job holds: with fenced calls a rerun of the run that spawned it is answered
        with that same session, and its (duplicate) completion must not stop a healthy job's.
        That cannot change after this look: only the run that created a session can make a job
        hold it, and that run is finished. A session the job no longer holds (it failed since)
        is stopped here like any other; ``domain.orphan`` says which states hold one."""
        session_id = completion.params.get("session_id")
        if not (
            isinstance(completion.verdict, Discarded)
            and completion.action == self.declaration.on_success
            and self.sessions is not None
            and isinstance(session_id, str)
            and run.service_url is not None
        ):
            return False
        job = self.service.get(run.dispatch.job_id)
        if holds_session(job.state, job.session_id, session_id):
            return False
        stopped = self.sessions.stop(run.service_url, session_id)
        observed.compensated(session_id, stopped=stopped)
        if not stopped:
            return False  # left for reconciliation
        self.service.compensate(run.dispatch.invocation_id, session_id)
        self.stats.compensated += 1
        return True

    # -- sweeps ------------------------------------------------------------------------------

    def expire_overdue(self, now: datetime) -> int:
        """Applies the Ready timeout to jobs whose run is in flight here, counted from the claim:
        the everyday way a job moves on while its invocation is running, and so of late
        completions. Returns how many jobs it failed."""
        limit = self.timeouts.get(JobState.READY)
        if limit is None:
            return 0
        claimed = list(self._inflight.values())
        overdue = {job: None for job, since in claimed if job and now - since >= limit}
        return sum(self.service.expire(job_id, now, self.timeouts) for job_id in overdue)

    def sweep_deadlines(self, now: datetime) -> int:
        """At most every ``sweep_interval``: fails jobs that sat in Queued, Running or
        Finalizing past their state timeout. Ready is left to ``expire_overdue``, which counts
        from the claim, so time spent waiting for a worker never times a job out."""
        if now - self._swept_at < self.sweep_interval:
            return 0
        self._swept_at = now
        due = self.service.overdue_jobs(now, self.timeouts, (JobState.READY,))
        return sum(self.service.expire(job_id, now, self.timeouts) for job_id in due)

    def reconcile_due(self, now: datetime) -> ReconcileReport | None:
        """Reconciles every session service the store's jobs name once ``reconcile_interval``
        has passed since the last time, or since the first call (a worker starting does not
        add to a burst of restarts); see ``integrations/reconcile.py``. Else None."""
        if self.reconciler is None or self.reconcile_interval is None:
            return None
        if self._reconciled_at is None:
            self._reconciled_at = now
        if now - self._reconciled_at < self.reconcile_interval:
            return None
        self._reconciled_at = now
        report = self.reconciler.reconcile_all(now)
        self.stats.orphans_stopped += report.stopped
        return report
