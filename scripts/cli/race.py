"""``sequent race``: the incident, end to end, with every real part (DESIGN.md §1, §5).

N jobs are submitted at once against two loopback session services. A seeded Cedar policy
permits only the first, so the runs that call the second are denied and their jobs fail. The
decisions are approved, the failed jobs retried and resubmitted. The session services are
seeded to answer a share of requests slowly, and the dispatcher times out runs that take longer
than the Ready timeout, so earlier invocations complete late: the stale completions the guard
exists for.

``--baseline`` replays the same seed with the completion handling of the incident: completions
are not correlated with their invocation, and a 409 (``InvalidTransition``) is treated as the
integration's own failure and dispatched as ``Fail``. That behaviour lives only in
``simulation/incident.py`` (``sequent simulate --baseline`` replays it too), never in
``domain/``. ``--compare`` runs both, side by side.

The benchmark (scripts/bench/race.py) times ``run_race`` too.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
import anyio.to_thread
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bootstrap import Settings, System, build_system
from domain import (
    CurationService,
    Dispatch,
    JobState,
    StoreURLError,
    Verdict,
)
from domain.cedar import default_policies
from integrations.session_service import SessionService
from scripts.cli.args import Args, Handler, Subcommands, add_command, positive_int
from scripts.cli.output import OneLineParser, emit
from simulation.incident import IncidentCompleter

SETTLED = frozenset({JobState.RUNNING, JobState.FAILED, JobState.COMPLETED})
# Failures an operator retries after approving decisions; anything else is left as it is.
RETRIED_REASONS = frozenset({"authorization_denied", "timeout"})
OPERATOR = "race-operator"


@dataclass(frozen=True)
class RaceConfig:
    jobs: int = 10
    seed: int = 7
    baseline: bool = False
    permitted_share: float = 0.6  # jobs whose session service the seeded policy permits
    slow_fraction: float = 0.25  # requests the session services answer late
    slow_latency: float = 1.5  # seconds: well past the Ready timeout
    ready_timeout: float = 0.3  # seconds a run may take before its job is failed(timeout)
    max_rounds: int = 8
    concurrency: int = 32


class CountingCompleter:
    """Counts the completions that arrive for a run the job has already left (stale), by the
    same test the guard applies, then hands the completion on unchanged."""

    def __init__(self, service: CurationService, inner: Any) -> None:
        self.service = service
        self.inner = inner
        self.stale = 0

    def complete(
        self, dispatch: Dispatch, action: str, params: Mapping[str, Any] | None = None
    ) -> Verdict:
        job = self.service.get(dispatch.job_id)
        if (job.current_invocation, job.version) != (
            dispatch.invocation_id,
            dispatch.expected_version,
        ):
            self.stale += 1
        verdict: Verdict = self.inner.complete(dispatch, action, params)
        return verdict


def default_db(config: RaceConfig) -> str:
    mode = "baseline" if config.baseline else "guarded"
    path = Path(".sequent") / f"race-{config.seed}-{config.jobs}-{mode}.db"
    path.unlink(missing_ok=True)
    return f"sqlite:///{path}"


@contextmanager
def session_services(config: RaceConfig) -> Iterator[tuple[SessionService, SessionService]]:
    def service(seed: int) -> SessionService:
        return SessionService(
            latency=0.0,
            slow_fraction=config.slow_fraction,
            slow_latency=config.slow_latency,
            seed=seed,
            inject=("POST",),
        )

    with service(config.seed) as permitted, service(config.seed + 1) as gated:
        yield permitted, gated


def run_race(
    config: RaceConfig, db: str | None = None, *, progress: bool = False
) -> dict[str, Any]:
    """Runs one race and returns the figures of DESIGN.md §5. ``seconds`` counts from the first
    job created, not the set-up (a cold build of the guest module takes seconds)."""
    with ExitStack() as stack:
        permitted, gated = stack.enter_context(session_services(config))
        system = build_system(Settings.from_env(store_url=db or default_db(config)))
        stack.callback(system.close)
        started = time.perf_counter()
        svc = system.service
        svc.policies.add_policy(default_policies(permitted.url), reason="race: seed policy")
        inner = IncidentCompleter(svc) if config.baseline else svc
        counting = CountingCompleter(svc, inner)
        dispatcher = system.dispatcher(
            completer=counting,
            compensate=not config.baseline,
            concurrency=config.concurrency,
            timeouts={JobState.READY: timedelta(seconds=config.ready_timeout)},
        )
        rng = random.Random(config.seed)
        specs = [
            {
                "target": f"https://curation.example/feeds/{n}",
                "session_service": permitted.url
                if rng.random() < config.permitted_share
                else gated.url,
            }
            for n in range(config.jobs)
        ]
        orchestra = Orchestra(system, specs, config, show=progress)
        anyio.run(orchestra.play, dispatcher)
        return figures(system, orchestra.job_ids, (permitted, gated), dispatcher, counting, config,
                       time.perf_counter() - started)  # fmt: skip


class Orchestra:
    """The operators' side of the race: submit, wait, approve, retry, until the jobs run."""

    def __init__(
        self, system: System, specs: list[dict[str, Any]], config: RaceConfig, show: bool
    ) -> None:
        self.svc = system.service
        self.projections = system.projections
        self.specs = specs
        self.config = config
        self.show = show
        self.job_ids: list[UUID] = []
        self.done = False

    async def play(self, dispatcher: Any) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(dispatcher.run, lambda: self.done and not dispatcher.pending)
            await anyio.to_thread.run_sync(self._submit_all)
            with self._progress() as (bar, task):
                for _ in range(self.config.max_rounds):
                    await self._until_settled(bar, task)
                    if not await anyio.to_thread.run_sync(self._approve_and_retry):
                        break
            self.done = True

    def _submit_all(self) -> None:
        self.job_ids = [self.svc.create_job(spec) for spec in self.specs]
        for job_id in self.job_ids:
            self.svc.submit(job_id)

    async def _until_settled(self, bar: Progress, task: Any) -> None:
        unsettled = list(self.job_ids)
        while unsettled:
            states = await anyio.to_thread.run_sync(self._states, unsettled)
            unsettled = [j for j, s in zip(unsettled, states, strict=True) if s not in SETTLED]
            bar.update(task, completed=len(self.job_ids) - len(unsettled))
            await anyio.sleep(0.05)

    def _states(self, job_ids: list[UUID]) -> list[str]:
        return [self.svc.get(j).state for j in job_ids]

    def _approve_and_retry(self) -> int:
        self.projections.catch_up()
        for decision in self.projections.decisions("pending"):
            self.svc.policies.approve(decision.decision_id, by=OPERATOR)
        retried = 0
        for job_id in self.job_ids:
            job = self.svc.get(job_id)
            if (
                job.state == JobState.FAILED
                and (job.failure or {}).get("reason") in RETRIED_REASONS
            ):
                self.svc.retry(job_id)
                self.svc.submit(job_id)
                retried += 1
        return retried

    @contextmanager
    def _progress(self) -> Iterator[tuple[Progress, Any]]:
        console = Console(stderr=True)
        with Progress(console=console, transient=True, disable=not self.show) as bar:
            yield bar, bar.add_task("jobs settled", total=len(self.specs))


def wrongly_failed(svc: CurationService, job_id: UUID) -> bool:
    """A job failed while it was Running: nothing in the race has a reason to do that."""
    previous = ""
    for entry in svc.history(job_id, invocations=False):
        if entry.name == "Failed" and previous in ("SessionSpawned", "ProgressRecorded"):
            return True
        previous = entry.name
    return False


def denied(system: System) -> int:
    system.projections.catch_up()
    return len(system.projections.decisions())


def figures(
    system: System,
    job_ids: list[UUID],
    services: tuple[SessionService, ...],
    dispatcher: Any,
    counting: CountingCompleter,
    config: RaceConfig,
    seconds: float,
) -> dict[str, Any]:
    svc = system.service
    jobs = [svc.get(j) for j in job_ids]
    states = [j.state for j in jobs]
    owned = {j.session_id for j in jobs if j.state == JobState.RUNNING}
    live = [s for service in services for s in service.sessions]
    stats = dispatcher.stats
    return {
        "mode": "baseline" if config.baseline else "guarded",
        "jobs": len(jobs),
        "seed": config.seed,
        "running": states.count(JobState.RUNNING),
        "completed": states.count(JobState.COMPLETED),
        "failed": states.count(JobState.FAILED),
        "wrongly_failed": sum(wrongly_failed(svc, j) for j in job_ids),
        "stale_completions": counting.stale,
        "applied": stats.applied,
        "discarded": sum(stats.discarded.values()),
        "discarded_by_reason": dict(sorted(stats.discarded.items())),
        "discarded_sessions": stats.discarded_sessions,
        "compensated": stats.compensated,
        "denied": denied(system),
        "orphan_sessions": sum(1 for s in live if s not in owned),
        "timeouts": stats.timeouts,
        "runs": stats.runs,
        "events": svc.recorder.max_notification_id() or 0,
        "seconds": round(seconds, 3),
    }


# -- the command ------------------------------------------------------------------------------

RACE_KEYS = (
    "jobs", "running", "completed", "failed", "wrongly_failed", "stale_completions", "applied",
    "discarded", "compensated", "denied", "orphan_sessions", "timeouts", "events", "seconds",
)  # fmt: skip


def run_race_command(args: Args) -> int:
    modes = (False, True) if args.compare else (args.baseline,)
    if args.compare and args.db:
        raise StoreURLError(args.db, "--compare runs two fresh SQLite stores; leave out --db")
    results = [
        run_race(
            RaceConfig(jobs=args.jobs, seed=args.seed, baseline=baseline),
            args.db,
            progress=sys.stderr.isatty(),
        )
        for baseline in modes
    ]
    return emit(
        args.json,
        results if args.compare else results[0],
        lambda out, _: out.print(race_table(results)),
    )


def race_table(results: Sequence[Mapping[str, Any]]) -> Table:
    seed, jobs = results[0]["seed"], results[0]["jobs"]
    table = Table(title=f"race: {jobs} jobs, seed {seed}", title_justify="left")
    table.add_column("figure")
    for result in results:
        table.add_column(str(result["mode"]), justify="right")
    for key in RACE_KEYS:
        table.add_row(key, *(str(r[key]) for r in results))
    return table


HANDLERS: Mapping[str, Handler] = {"race": run_race_command}


def add_parsers(sub: Subcommands, common: OneLineParser) -> None:
    race = add_command(
        sub,
        common,
        "race",
        help="run the incident end to end with real parts (guarded, or --baseline)",
        description="N jobs submitted at once against two loopback session services; Cedar "
        "denies one of them until the decisions are approved; slow answers make runs complete "
        "late. Without --db each run uses a fresh SQLite file under .sequent/.",
    )
    race.add_argument("--jobs", type=positive_int, default=10, metavar="N")
    race.add_argument("--seed", type=int, default=7, metavar="S")
    mode = race.add_mutually_exclusive_group()
    mode.add_argument("--baseline", action="store_true", help="the incident's unguarded handling")
    mode.add_argument("--compare", action="store_true", help="both runs, side by side")
