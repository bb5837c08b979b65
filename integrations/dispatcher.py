"""The dispatcher: finds started-but-unfinished invocations in the store, leases each, runs its
integration, and hands the outcome back through the guard (DESIGN.md §3).

Work is found in the store, not in a queue, so several worker processes can share one database;
the lease (an OCC write on the invocation) keeps two of them off the same run, and a crashed
worker's lease simply expires. Execution is at-least-once: a second completion of the same run is
a recorded ``duplicate``, never a second effect.
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
    CurationService,
    Discarded,
    Dispatch,
    InvalidParams,
    InvocationFinished,
    JobState,
    LeaseHeld,
    Verdict,
)
from domain.transitions import STATE_TIMEOUTS
from integrations.observer import DispatchObserver, RunObserver, Unobserved

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

    def __call__(self, dispatch: Dispatch, job_input: dict[str, Any]) -> RunOutcome: ...


class Completer(Protocol):
    def complete(
        self, dispatch: Dispatch, action: str, params: Mapping[str, Any] | None = None
    ) -> Verdict: ...


class SessionStopper(Protocol):
    def stop(self, service_url: str, session_id: str) -> bool: ...


# Where a job's spec names the session service its integration talks to.
SESSION_SERVICE_KEY = "session_service"

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
    leased_elsewhere: int = 0
    errors: int = 0
    timeouts: int = 0

    def count(self, verdict: Verdict) -> None:
        if isinstance(verdict, Applied):
            self.applied += 1
            return
        self.discarded[str(verdict.reason)] = self.discarded.get(str(verdict.reason), 0) + 1


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
        declaration: Declaration | None = None,
        worker_id: str | None = None,
        lease: timedelta = timedelta(seconds=60),
        concurrency: int = 16,
        poll_interval: float = 0.02,
        sweep_interval: float = 1.0,
        timeouts: Mapping[JobState, timedelta] = STATE_TIMEOUTS,
        observer: DispatchObserver | None = None,
    ) -> None:
        self.service = service
        self.runner = runner
        self.completer: Completer = completer or service
        self.sessions = sessions
        self.declaration = declaration or Declaration()
        self.worker_id = worker_id or default_worker_id()
        self.lease = lease
        self.limiter = anyio.CapacityLimiter(concurrency)
        self.poll_interval = poll_interval
        self.sweep_interval = sweep_interval
        self.timeouts = timeouts
        self.observer: DispatchObserver = observer or Unobserved()
        self.stats = DispatchStats()
        self._feed = service.pending_invocations()
        self._deadlines = service.job_deadlines(timeouts)
        self._swept_at = datetime.min.replace(tzinfo=UTC)
        # invocation -> (its job once claimed, since when); and invocations leased elsewhere.
        self._inflight: dict[UUID, tuple[UUID | None, datetime]] = {}
        self._not_before: dict[UUID, datetime] = {}
        self.pending: list[UUID] = []  # as of the last look at the store

    # -- the loop ---------------------------------------------------------------------------

    async def run(self, until: Callable[[], bool] = lambda: False) -> None:
        """Dispatches until ``until()`` is true and nothing is in flight."""
        async with anyio.create_task_group() as tg:
            while not (until() and not self._inflight):
                await self._start_pending(tg)
                await self._expire_overdue()
                await self._sweep_deadlines()
                await anyio.sleep(self.poll_interval)

    async def run_once(self) -> None:
        """Processes what is pending now and returns when it is all done (tests, `--once`)."""
        async with anyio.create_task_group() as tg:
            await self._start_pending(tg)

    async def _start_pending(self, tg: anyio.abc.TaskGroup) -> None:
        now = datetime.now(UTC)
        self.pending = await anyio.to_thread.run_sync(self._feed.refresh)
        for invocation_id in self.pending:
            if invocation_id in self._inflight or self._not_before.get(invocation_id, now) > now:
                continue
            self._inflight[invocation_id] = (None, now)
            tg.start_soon(self._process, invocation_id)

    async def _process(self, invocation_id: UUID) -> None:
        try:
            await anyio.to_thread.run_sync(self.process, invocation_id, limiter=self.limiter)
        except Exception:
            # The worker stays up; the lease expires and this or another worker runs it again.
            log.exception("invocation %s left for a retry after its lease", invocation_id)
            self.stats.errors += 1
        finally:
            self._inflight.pop(invocation_id, None)

    async def _expire_overdue(self) -> None:
        """Applies the Ready timeout to jobs whose run is still in flight here: the everyday
        way a job moves on while its invocation is running, and so of late completions."""
        limit = self.timeouts.get(JobState.READY)
        if limit is None:
            return
        now = datetime.now(UTC)
        overdue = {
            job for job, since in list(self._inflight.values()) if job and now - since >= limit
        }
        for job_id in overdue:
            if await anyio.to_thread.run_sync(self.service.expire, job_id, now, self.timeouts):
                self.stats.timeouts += 1

    async def _sweep_deadlines(self) -> None:
        """Every ``sweep_interval``: fails jobs that sat in Queued, Running or Finalizing past
        their state timeout. Ready is left to ``_expire_overdue``, which counts from the claim,
        so time spent waiting for a worker never times a job out."""
        now = datetime.now(UTC)
        if (now - self._swept_at).total_seconds() < self.sweep_interval:
            return
        self._swept_at = now
        due = await anyio.to_thread.run_sync(self._deadlines.due, now, (JobState.READY,))
        for job_id in due:
            if await anyio.to_thread.run_sync(self.service.expire, job_id, now, self.timeouts):
                self.stats.timeouts += 1

    # -- one invocation ---------------------------------------------------------------------

    def process(self, invocation_id: UUID) -> Verdict | None:
        """Claims, runs and completes one invocation; None if another worker has it."""
        with self.observer.run(invocation_id) as run:
            return self._process_observed(invocation_id, run)

    def _process_observed(self, invocation_id: UUID, run: RunObserver) -> Verdict | None:
        try:
            with run.step("claim"):
                claimed_at = datetime.now(UTC)
                dispatch = self.service.claim(
                    invocation_id,
                    self.worker_id,
                    self.lease,
                    claimed_at,
                    module_sha256=self.runner.module_sha256,
                )
        except LeaseHeld as held:
            self._not_before[invocation_id] = held.until  # another worker's; look again later
            self.stats.leased_elsewhere += 1
            return None
        except InvocationFinished:
            return None  # finished between the feed's read and the claim
        run.claimed(dispatch, claimed_at + self.lease)
        self._not_before.pop(invocation_id, None)
        self._inflight[invocation_id] = (dispatch.job_id, datetime.now(UTC))
        job = self.service.get(dispatch.job_id)
        job_input = {
            "invocation_id": str(invocation_id),
            "job": {
                "id": str(job.id),
                "attempt": dispatch.attempt,
                "spec": job.spec,
                "settings": job.settings,
            },
        }
        with run.step("sandbox"):
            outcome = self.runner(dispatch, job_input)
        run.ran(outcome.error_kind if outcome.ok is None else None)
        self.stats.runs += 1
        with run.step("completion"):
            verdict = self._complete(dispatch, outcome, job.spec.get(SESSION_SERVICE_KEY), run)
        self.stats.count(verdict)
        return verdict

    def _complete(
        self, dispatch: Dispatch, outcome: RunOutcome, service_url: object, run: RunObserver
    ) -> Verdict:
        action, params = self.declaration.completion(outcome)
        try:
            verdict = self.completer.complete(dispatch, action, params)
        except InvalidParams as exc:
            # The module said ok with params its action does not take: that is a module error.
            bad = RunOutcome(error_kind="bad_output", message=str(exc))
            action, params = self.declaration.on_failure, failure_params(bad)
            verdict = self.completer.complete(dispatch, action, params)
        run.completed(action, verdict)
        if isinstance(verdict, Discarded) and action == self.declaration.on_success:
            self._compensate(dispatch, params, service_url, run)
        return verdict

    def _compensate(
        self, dispatch: Dispatch, params: Mapping[str, Any], service_url: object, run: RunObserver
    ) -> None:
        """A discarded SessionSpawned may have left a real session behind: stop it where the
        job said its sessions live, and record that on the invocation (invariant 4). Never the
        session the job holds: with fenced calls a rerun of the run that spawned it is answered
        with that same session, and its (duplicate) completion must not stop a healthy job's."""
        session_id = params.get("session_id")
        if self.sessions is None or not isinstance(session_id, str):
            return
        if not isinstance(service_url, str):
            return
        if self.service.get(dispatch.job_id).session_id == session_id:
            return
        stopped = self.sessions.stop(service_url, session_id)
        if stopped:
            self.service.compensate(dispatch.invocation_id, session_id)
            self.stats.compensated += 1
        run.compensated(session_id, stopped=stopped)
