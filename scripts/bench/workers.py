"""Several ``sequent worker`` processes on one PostgreSQL store (DESIGN.md §7, issue 10): jobs
per second with 1, 2 and 4 of them, and the claims each lost to another.

For each count, in a store of its own (so no count inherits another's history): a policy for a
loopback session service; the workers started (processes.py) and waited for until each serves
its metrics (store open, module loaded); then the jobs submitted in one transaction, as a
burst. Throughput is jobs / (the last SessionSpawned's timestamp - the moment the submitting
transaction returned): until all are Running. The workers are then stopped with SIGTERM and
their own stats read back: ``leased_elsewhere`` (a claim that found, or raced into, another
worker's lease) per run is the claims-lost figure. The store says the rest: invocations
claimed more than once, and completions discarded. Without --pg it is left out.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from domain import CurationService
from domain.cedar import default_policies
from domain.log import CLAIMED, DISCARDED, JOB_SESSION_SPAWNED, log_reader
from integrations.session_service import SessionService
from scripts.bench.batched import submitted_dispatches
from scripts.bench.harness import WORKERS, Bench, Measurement, Target, load_average
from scripts.bench.processes import WorkerProcess, spawn_worker, wait_until
from scripts.bench.stores import open_store, scratch_store

WORKER_COUNTS = (1, 2, 4)
CLAIMS_LOST_TARGET_PCT = 5.0
READY_SECONDS = 120.0


def measure(bench: Bench) -> list[Measurement]:
    if not bench.config.pg_url:
        bench.step(f"{WORKERS}: skipped (PostgreSQL only: give --pg URL)")
        return []
    load = load_average()
    jobs = bench.config.sizes.worker_jobs
    with SessionService() as sessions:
        runs = [run_workers(bench, count, jobs, sessions) for count in WORKER_COUNTS]
    one, most = runs[0], runs[-1]
    lost = max(run["claims_lost_pct"] for run in runs)
    return [
        Measurement(
            name=WORKERS,
            backend="postgresql",
            unit="jobs/s",
            value=most["jobs_per_s"],
            baseline=one["jobs_per_s"],
            n=jobs * len(runs),
            p50=most["seconds"] * 1e6,
            p99=most["seconds"] * 1e6,
            target=Target(1.0, "ratio", ">="),
            notes=(
                f"value: jobs/s with {WORKER_COUNTS[-1]} `sequent worker` processes on one "
                f"PostgreSQL store, {jobs} jobs submitted in one transaction once the workers are "
                "up, until the last is Running (its SessionSpawned's timestamp), each job's "
                "claim, wasm, Cedar, POST to a loopback session service and guarded completion; "
                f"baseline: the same with 1 worker. Target: ratio >= 1 (throughput does not fall "
                f"as workers are added) and claims lost to another worker <= "
                f"{CLAIMS_LOST_TARGET_PCT:g}% of runs with every count (details.claims_lost_meets; "
                "from each worker's own leased_elsewhere). p50/p99: the whole burst's seconds "
                f"with {WORKER_COUNTS[-1]}. details.runs: each count."
            ),
            details={
                "loadavg_1m": load,
                "jobs": jobs,
                "runs": runs,
                "claims_lost_pct_max": lost,
                "claims_lost_target_pct": CLAIMS_LOST_TARGET_PCT,
                "claims_lost_meets": lost <= CLAIMS_LOST_TARGET_PCT,
            },
        )
    ]


def run_workers(bench: Bench, count: int, jobs: int, sessions: SessionService) -> dict[str, Any]:
    bench.step(f"{WORKERS} [postgresql]: {count} worker(s), {jobs} jobs")
    logs = Path(tempfile.mkdtemp(prefix=f"workers-{count}-", dir=bench.workdir))
    with scratch_store("postgresql", bench.workdir, bench.config.pg_url, "workers") as store:
        svc = open_store(store.url)
        try:
            svc.policies.add_policy(default_policies(sessions.url), reason="bench")
            workers = [spawn_worker(store.url, f"w{i + 1}", logs, metrics=True)
                       for i in range(count)]  # fmt: skip
            try:
                wait_until(lambda: all(w.ready() for w in workers), workers, READY_SECONDS,
                           "the workers to start", interval=0.05)  # fmt: skip
                after = svc.recorder.max_notification_id() or 0
                dispatches = submitted_dispatches(
                    svc, jobs, {"session_service": sessions.url}, chunk=jobs
                )
                submitted_at = datetime.now(UTC)
                wait_until(lambda: spawned(svc, after) >= jobs, workers,
                           READY_SECONDS + jobs, "every job to run", interval=0.1)  # fmt: skip
            except BaseException:
                for worker in workers:
                    worker.kill()
                raise
            stats = [worker.stop() for worker in workers]
            return burst(svc, after, submitted_at, len(dispatches), workers, stats)
        finally:
            svc.close()


def spawned(svc: CurationService, after: int) -> int:
    reader = log_reader(svc.recorder, svc.mapper)
    return sum(1 for _ in reader.notices((JOB_SESSION_SPAWNED,), after=after))


def burst(
    svc: CurationService,
    after: int,
    submitted_at: datetime,
    jobs: int,
    workers: Sequence[WorkerProcess],
    stats: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """One count's figures, from the store's log since ``after`` and the workers' stats."""
    reader = log_reader(svc.recorder, svc.mapper)
    last_spawned = submitted_at
    claims: Counter[str] = Counter()
    discarded = 0
    for notice in reader.notices((JOB_SESSION_SPAWNED, CLAIMED, DISCARDED), after=after):
        if notice.topic == JOB_SESSION_SPAWNED:
            last_spawned = max(last_spawned, notice.event.timestamp)
        elif notice.topic == CLAIMED:
            claims[notice.key] += 1
        else:
            discarded += 1
    seconds = (last_spawned - submitted_at).total_seconds()
    runs = sum(int(s["runs"]) for s in stats)
    lost = sum(int(s["leased_elsewhere"]) for s in stats)
    return {
        "workers": len(workers),
        "jobs": jobs,
        "seconds": seconds,
        "jobs_per_s": jobs / seconds if seconds > 0 else 0.0,
        "runs": runs,
        "applied": sum(int(s["applied"]) for s in stats),
        "leased_elsewhere": lost,
        "claims_lost_pct": 100.0 * lost / runs if runs else 0.0,
        "runs_per_worker": [int(s["runs"]) for s in stats],
        "invocations_claimed_more_than_once": sum(1 for n in claims.values() if n > 1),
        "discarded": discarded,
        "errors": sum(int(s["errors"]) for s in stats),
        "store_retries": sum(int(s["store_retries"]) for s in stats),
    }
