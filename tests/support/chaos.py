"""Chaos with real processes (issue 9): ``sequent worker`` processes sharing one store are killed
with SIGKILL and restarted, their PostgreSQL backends are terminated (and, opted in, the server
restarted) while they run, and afterwards everything the store and the session service hold is
checked against DESIGN.md §1.

The fault schedule is drawn from a seed and keyed to progress (how many sessions the service
has created), not to the clock: the same seed puts the same faults at the same points of the
run, so a failing seed replays the same schedule (the interleaving of the processes still
varies from run to run).

Only this run's connections are ever terminated: every worker opens the store with
``?application_name=<the run's own name>`` and the terminating query matches that name in the
current database, so other clients of the same server are never touched.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import IO, Any, Literal
from uuid import UUID

import psycopg

from domain import CurationService, Dispatch, JobState, StoreUnavailable
from domain.cedar import default_policies
from integrations.session_service import SessionService
from tests.support.fakes import open_projections
from tests.support.oracle import log

SEQUENT = str(Path(sys.executable).parent / "sequent")
FaultKind = Literal["kill", "terminate", "restart_server"]

# An invocation's events in order: started, claimed at least once (every run is leased), then
# for each completion that reached it Finished and exactly one verdict, and perhaps the session
# it left behind stopped (by its compensation or by reconciliation).
INVOCATION_STORY = re.compile(
    r"Started( Claimed)+( Finished (Applied|Discarded)( Compensated| OrphanStopped)*)+"
)
# Where the store records that a session was stopped: the event name and its session field.
STOP_RECORDS = {"Compensated", "OrphanStopped", "Stopped"}
JOB_STORY = ["Created", "Submitted", "SessionSpawned"]


@dataclass(frozen=True)
class ChaosConfig:
    jobs: int
    workers: int
    kills: int
    terminations: int = 0
    server_restarts: int = 0
    seed: int = 0
    lease: float = 3.0  # short, so a killed worker's runs are taken over within the test
    concurrency: int = 8
    reconcile_every: float = 2.0  # each worker's periodic reconciliation, under the chaos too
    stall_seconds: float = 120.0  # hang guard: no progress for this long fails the run

    def replay(self) -> str:
        return f"replay with SEQUENT_CHAOS_SEED={self.seed} ({self})"


@dataclass(frozen=True)
class Fault:
    at: int  # fires once the session service has created this many sessions
    kind: FaultKind
    slot: int = 0  # the worker a kill hits
    same_id: bool = False  # restarted under the killed worker's id: it reclaims its own leases


def schedule(config: ChaosConfig) -> list[Fault]:
    """The run's faults in firing order, from the seed alone. They fall within the first 90% of
    the jobs, so each lands while work is still in flight."""
    rng = random.Random(f"sequent-chaos/{config.seed}")
    span = max(1, config.jobs * 9 // 10)
    faults = [
        Fault(rng.randrange(span), "kill", rng.randrange(config.workers), rng.random() < 0.5)
        for _ in range(config.kills)
    ]
    faults += [Fault(rng.randrange(span), "terminate") for _ in range(config.terminations)]
    faults += [Fault(rng.randrange(span), "restart_server") for _ in range(config.server_restarts)]
    return sorted(faults, key=lambda f: f.at)


def with_param(url: str, name: str, value: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{name}={value}"


def terminate_backends(server: str, application_name: str) -> int:
    """Terminates every session of this database named ``application_name`` (never this one's
    or another client's); returns how many there were."""
    with psycopg.connect(server, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = %s "
            "AND pid <> pg_backend_pid()",
            (application_name,),
        ).fetchall()
    return sum(1 for (terminated,) in rows if terminated)


def restart_command(setting: str) -> list[str]:
    """How to restart the server under test: ``1`` means the local cluster ``main`` (every
    client of it loses its connections: only for a server nobody else uses); anything else is
    the command itself, e.g. a ``pg_ctl -D DIR restart`` for a private cluster."""
    if setting == "1":
        version = sorted(os.listdir("/etc/postgresql"))[-1]
        return ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"]
    return shlex.split(setting)


def restart_server(command: Sequence[str]) -> None:
    # No pipes: a server started by the command would hold them open for good.
    subprocess.run(
        command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120
    )


def prepare(url: str, sessions: SessionService, jobs: int) -> list[Dispatch]:
    """A permit for the session service and ``jobs`` submitted jobs, before any worker runs."""
    svc = CurationService.open(url)
    try:
        svc.policies.add_policy(default_policies(sessions.url))
        return [
            svc.submit(svc.create_job({"target": f"t{n}", "session_service": sessions.url}))
            for n in range(jobs)
        ]
    finally:
        svc.close()


# -- the worker processes ----------------------------------------------------------------------


@dataclass
class _Worker:
    worker_id: str
    process: subprocess.Popen[str]
    stdout: IO[str]  # read back for its stats once it stops
    stderr: IO[str]
    started_at: float = field(default_factory=time.monotonic)

    @property
    def log(self) -> Path:
        return Path(self.stderr.name)

    def close(self) -> None:
        self.stdout.close()
        self.stderr.close()


@dataclass
class Workers:
    """``count`` ``sequent worker`` processes on ``url``; a slot is killed and restarted as a
    fresh process (a new worker id unless ``same_id``)."""

    url: str
    count: int
    logs: Path
    lease: float
    concurrency: int
    reconcile_every: float
    started: int = 0
    killed: int = 0
    slots: dict[int, _Worker] = field(default_factory=dict)
    exits: list[tuple[str, int, dict[str, Any] | None]] = field(default_factory=list)
    died: list[str] = field(default_factory=list)

    def start_all(self) -> None:
        for slot in range(self.count):
            self.start(slot, f"w{slot}.0")

    def start(self, slot: int, worker_id: str) -> None:
        self.started += 1
        name = f"{self.started:03d}-{worker_id}"
        # Files, not pipes: nobody reads a pipe while the worker runs, and a full one would
        # block the worker on its next log line.
        stdout = (self.logs / f"{name}.out").open("w+")
        stderr = (self.logs / f"{name}.err").open("w")
        process = subprocess.Popen(
            [SEQUENT, "worker", "--json", "--db", self.url, "--worker-id", worker_id,
             "--lease", str(self.lease), "--concurrency", str(self.concurrency),
             "--reconcile-every", str(self.reconcile_every)],
            stdout=stdout,
            stderr=stderr,
            text=True,
            cwd=self.logs,
        )  # fmt: skip
        self.slots[slot] = _Worker(worker_id, process, stdout, stderr)

    def kill_and_restart(self, slot: int, same_id: bool) -> bool:
        """SIGKILLs the slot's worker and starts another; True if it was alive when killed.
        One found dead already died unbidden: it is recorded in ``died``."""
        worker = self.slots[slot]
        alive = worker.process.poll() is None
        worker.process.kill()
        worker.process.wait()
        worker.close()
        self.killed += alive
        if not alive:
            self.died.append(f"{worker.worker_id} exited {worker.process.returncode}: "
                             f"{tail(worker.log)}")  # fmt: skip
        base, _, generation = worker.worker_id.rpartition(".")
        self.start(slot, worker.worker_id if same_id else f"{base}.{int(generation) + 1}")
        return alive

    def crashed(self) -> list[str]:
        """Workers that exited although nobody stopped them, with the end of their stderr."""
        return self.died + [
            f"{w.worker_id} exited {w.process.returncode}: {tail(w.log)}"
            for w in self.slots.values()
            if w.process.poll() is not None
        ]

    def stop(self) -> None:
        """SIGTERM to each: it finishes what it has in flight and prints its stats."""
        for worker in self.slots.values():
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        for worker in self.slots.values():
            try:
                code = worker.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                code = worker.process.wait()
            worker.stdout.seek(0)
            text = worker.stdout.read()
            worker.close()
            stats = json.loads(text) if code == 0 and text.strip() else None
            if stats is None:
                stats = {"seconds_alive": round(time.monotonic() - worker.started_at, 2)}
            self.exits.append((worker.worker_id, code, stats))

    def kill_all(self) -> None:
        for worker in self.slots.values():
            worker.process.kill()
            worker.process.wait()
            worker.close()


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# -- the run -----------------------------------------------------------------------------------


@dataclass
class ChaosRun:
    config: ChaosConfig
    faults: list[Fault]
    kills: int = 0  # of live workers
    terminations: int = 0
    backends_terminated: int = 0
    server_restarts: int = 0
    projection_catch_ups: int = 0
    projection_store_errors: int = 0
    worker_exits: list[tuple[str, int, dict[str, Any] | None]] = field(default_factory=list)
    worker_logs: Counter[str] = field(default_factory=Counter)


# What the workers' stderr says, counted over every process of the run (the killed ones too).
LOG_SIGNS = {
    "runs_retried": "left for a retry:",  # a run cut short by the store, run again
    "loop_retries": "store call failed, retrying",  # a look at the store, taken again
    "start_retries": "store unavailable while starting",  # opening the store, tried again
    "tracebacks": "Traceback (most recent call last)",  # anything the worker did not expect
}


def read_worker_logs(logs: Path) -> Counter[str]:
    text = "".join(path.read_text(errors="replace") for path in sorted(logs.glob("*.err")))
    return Counter({name: text.count(sign) for name, sign in LOG_SIGNS.items()})


class ChaosStalled(AssertionError):
    pass


def run_chaos(
    config: ChaosConfig,
    url: str,
    sessions: SessionService,
    logs: Path,
    *,
    server: str | None = None,
    application_name: str | None = None,
    restart: Sequence[str] = (),
    poll: float = 0.1,
    catch_up_every: float = 1.0,
) -> ChaosRun:
    """Runs the workers through the schedule until every invocation is finished, then stops
    them. Meanwhile read models are caught up over a connection the terminations also hit.
    Raises ChaosStalled if a worker dies unbidden or nothing moves (no session created, no
    invocation finished) for ``stall_seconds``."""
    run = ChaosRun(config, schedule(config))
    workers = Workers(
        url, config.workers, logs, config.lease, config.concurrency, config.reconcile_every
    )
    observer = CurationService.open(url)
    projections = open_projections(url)
    faults = list(run.faults)
    try:
        workers.start_all()
        last_seen: tuple[int, int] = (-1, -1)
        moved_at, caught_up_at = time.monotonic(), 0.0
        while True:
            progress = len(sessions.sessions) + len(sessions.deleted)
            while faults and faults[0].at <= progress:
                fire(faults.pop(0), run, workers, server, application_name, restart)
            crashed = workers.crashed()
            if crashed:
                raise ChaosStalled(f"a worker died unbidden: {crashed}; {config.replay()}")
            open_runs = _open_runs(observer)
            if not faults and open_runs == 0:
                break
            now = time.monotonic()
            if now - caught_up_at >= catch_up_every:
                caught_up_at = now
                run.projection_catch_ups += 1
                try:
                    projections.catch_up()
                except StoreUnavailable:
                    run.projection_store_errors += 1
            if (progress, open_runs) != last_seen:
                last_seen, moved_at = (progress, open_runs), now
            elif now - moved_at > config.stall_seconds:
                raise ChaosStalled(
                    f"stuck at {progress} sessions, {open_runs} open runs for "
                    f"{config.stall_seconds} s; {config.replay()}"
                )
            time.sleep(poll)
        workers.stop()
        run.kills = workers.killed
        run.worker_exits = workers.exits
        run.worker_logs = read_worker_logs(logs)
        return run
    except BaseException:
        workers.kill_all()
        raise
    finally:
        projections.close()
        observer.close()


def _open_runs(store: CurationService) -> int:
    """Invocations started and not finished; -1 when the store could not say (look again)."""
    try:
        return len(store.open_runs())
    except StoreUnavailable:
        return -1


def fire(
    fault: Fault,
    run: ChaosRun,
    workers: Workers,
    server: str | None,
    application_name: str | None,
    restart: Sequence[str],
) -> None:
    if fault.kind == "kill":
        workers.kill_and_restart(fault.slot, fault.same_id)
    elif fault.kind == "terminate":
        assert server is not None, "terminations need the server's URL"
        assert application_name is not None, "and the name of this run's sessions"
        run.terminations += 1
        run.backends_terminated += terminate_backends(server, application_name)
    else:
        assert restart, "server restarts need the command that restarts it"
        restart_server(restart)
        run.server_restarts += 1


# -- the checks --------------------------------------------------------------------------------


@dataclass
class Findings:
    violations: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)

    def violate(self, what: str) -> None:
        if len(self.violations) < 50:
            self.violations.append(what)
        self.counts["violations"] += 1


def check_store(
    svc: CurationService, dispatches: Sequence[Dispatch], sessions: SessionService
) -> Findings:
    """DESIGN.md §1 over the whole store after a chaos run, read back from the log alone (every
    job was submitted once and nothing else was done to it):

    * the log: notification ids strictly increasing; each aggregate's versions 1, 2, … n with
      nothing missing or repeated;
    * every job Created, Submitted, SessionSpawned and nothing else (no Fail of any kind), and
      its view Running with the session its invocation's Applied completion named;
    * every invocation Started, Claimed+, then per completion Finished and exactly one verdict;
      exactly one Applied, every other verdict Discarded(duplicate), and every run of it
      answered with the same session (the fencing token held);
    * the session service created exactly one session per job, and the live sessions are
      exactly those the jobs hold (no orphan, no stopped healthy session); every session the
      service deleted is recorded as stopped (Compensated, OrphanStopped or an OrphanSession).
    """
    found = Findings()
    stories: dict[UUID, list[str]] = defaultdict(list)
    events: dict[UUID, list[Any]] = defaultdict(list)
    last_id = 0
    for notification, event in log(svc):
        if notification.id <= last_id:
            found.violate(f"notification {notification.id} after {last_id}")
        last_id = notification.id
        aggregate = notification.originator_id
        if notification.originator_version != len(stories[aggregate]) + 1:
            found.violate(
                f"{aggregate}: version {notification.originator_version} after "
                f"{len(stories[aggregate])}"
            )
        stories[aggregate].append(notification.topic.rsplit(".", 1)[-1])
        events[aggregate].append(event)
        found.counts["events"] += 1
    held: dict[str, UUID] = {}
    for dispatch in dispatches:
        _check_job(svc, dispatch, stories, events, held, found)
    recorded = {
        e.session_id for story in events.values() for e in story if _name(e) in STOP_RECORDS
    }
    found.counts["stops_recorded"] = len(recorded)
    unrecorded = set(sessions.deleted) - recorded
    if unrecorded:
        found.violate(f"{len(unrecorded)} sessions stopped silently: {sorted(unrecorded)[:5]}")
    found.counts["invocations"] = sum(1 for story in stories.values() if story[0] == "Started")
    created = len(sessions.sessions) + len(sessions.deleted)
    found.counts["sessions_created"] = created
    if created != len(dispatches):
        found.violate(f"{created} sessions created for {len(dispatches)} jobs")
    live = set(sessions.sessions)
    orphans = live - set(held)
    found.counts["orphan_sessions"] = len(orphans)
    if orphans:
        found.violate(f"{len(orphans)} live sessions no job holds: {sorted(orphans)[:5]}")
    stopped = set(held) - live
    if stopped:
        found.violate(f"{len(stopped)} sessions jobs hold were stopped: {sorted(stopped)[:5]}")
    return found


def _check_job(
    svc: CurationService,
    dispatch: Dispatch,
    stories: dict[UUID, list[str]],
    events: dict[UUID, list[Any]],
    held: dict[str, UUID],
    found: Findings,
) -> None:
    job, invocation = dispatch.job_id, dispatch.invocation_id
    story, runs = stories.get(job, []), stories.get(invocation, [])
    if "Failed" in story:
        found.counts["wrongly_failed"] += 1
    if story != JOB_STORY:
        found.violate(f"job {job}: {story}")
    if not INVOCATION_STORY.fullmatch(" ".join(runs)):
        found.violate(f"invocation {invocation}: {runs}")
    found.counts["claims"] += runs.count("Claimed")
    found.counts["completions"] += runs.count("Finished")
    found.counts["compensated"] += runs.count("Compensated")
    found.counts["orphans_stopped"] += runs.count("OrphanStopped")
    if runs.count("Applied") != 1:
        found.violate(f"invocation {invocation}: {runs.count('Applied')} Applied")
    reasons = [str(e.reason) for e in events.get(invocation, []) if _name(e) == "Discarded"]
    found.counts.update(f"discarded_{reason}" for reason in reasons)
    if set(reasons) - {"duplicate"}:
        found.violate(f"invocation {invocation}: discarded {reasons}")
    claimers = [e.worker for e in events.get(invocation, []) if _name(e) == "Claimed"]
    found.counts["claims_taken_over"] += sum(1 for a, b in pairwise(claimers) if a != b)
    spawned = {
        e.params.get("session_id") for e in events.get(invocation, []) if _name(e) == "Finished"
    }
    if len(spawned) != 1:
        answered = sorted(map(str, spawned))
        found.violate(f"invocation {invocation}: its runs were answered {answered}")
    view = svc.get(job)
    if view.state != JobState.RUNNING or view.session_id not in spawned:
        found.violate(f"job {job}: {view.state} holding {view.session_id}, spawned {spawned}")
    if view.session_id is not None:
        if view.session_id in held:
            found.violate(f"session {view.session_id} held by {held[view.session_id]} and {job}")
        held[view.session_id] = job


def _name(event: Any) -> str:
    return type(event).__name__


def summary(run: ChaosRun, found: Findings, verify: Any) -> dict[str, Any]:
    """One JSON-able line for the report: what the chaos did and what the store holds."""
    stats: Counter[str] = Counter()
    for _, _, worker_stats in run.worker_exits:
        for key, value in (worker_stats or {}).items():
            if isinstance(value, int):
                stats[key] += value
    return {
        "seed": run.config.seed,
        "jobs": run.config.jobs,
        "workers": run.config.workers,
        "kills": run.kills,
        "terminations": run.terminations,
        "backends_terminated": run.backends_terminated,
        "server_restarts": run.server_restarts,
        "projection_catch_ups": run.projection_catch_ups,
        "projection_store_errors": run.projection_store_errors,
        "final_workers": [(name, code) for name, code, _ in run.worker_exits],
        "final_worker_stats": dict(stats),
        "worker_logs": dict(run.worker_logs),
        "verify": {"ok": verify.ok, "checked": verify.checked, "drifted": verify.drifted,
                   "missing": verify.missing, "extra": verify.extra},
        **dict(found.counts),
    }  # fmt: skip
