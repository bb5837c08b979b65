"""The race (``sequent race``, scripts/cli/race.py) as a measurement: jobs per second guarded
against the same seed with the incident's unguarded completions, and per job the time from
Created to its last SessionSpawned, read back from the log. DESIGN.md §7 sets no target."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from domain.log import JOB_CREATED, JOB_SESSION_SPAWNED, log_reader
from scripts.bench.harness import RACE, Bench, Measurement, Timings, load_average
from scripts.bench.stores import open_store
from scripts.cli.race import RaceConfig, run_race

RACE_SEED = 7


def measure(bench: Bench) -> list[Measurement]:
    jobs, workdir, step = bench.config.sizes.race_jobs, bench.workdir, bench.step
    load = load_average()
    results = {}
    latencies = Timings()
    for baseline in (False, True):
        mode = "baseline" if baseline else "guarded"
        step(f"{RACE}: {jobs} jobs, {mode}")
        url = f"sqlite:///{workdir / f'race-{mode}.db'}"
        results[mode] = run_race(RaceConfig(jobs=jobs, seed=RACE_SEED, baseline=baseline), url)
        if not baseline:
            latencies = time_to_running(url)
    guarded, unguarded = results["guarded"], results["baseline"]
    keys = ("running", "failed", "wrongly_failed", "stale_completions", "applied", "discarded",
            "orphan_sessions", "timeouts", "runs", "events", "seconds")  # fmt: skip
    return [
        Measurement(
            name=RACE,
            unit="jobs/s",
            value=guarded["jobs"] / guarded["seconds"],
            baseline=unguarded["jobs"] / unguarded["seconds"],
            n=guarded["jobs"],
            p50=latencies.percentile_us(0.5),
            p99=latencies.percentile_us(0.99),
            notes=(
                f"value: scripts.cli.race.run_race with {jobs} jobs, seed {RACE_SEED}, guarded, on "
                "SQLite (jobs / the race's own seconds, set-up excluded); baseline: the same seed "
                "with the incident's unguarded completions (--baseline), which does different "
                "work: jobs it wrongly fails are not retried. Both are dominated by the seeded "
                "slow answers (1.5 s) and Ready timeouts the race injects. p50/p99: per job, from "
                "Created to its last SessionSpawned. §7 sets no target."
            ),
            details={
                "loadavg_1m": load,
                "guarded": {k: guarded[k] for k in keys},
                "baseline": {k: unguarded[k] for k in keys},
            },
        )
    ]


def time_to_running(url: str) -> Timings:
    """Per job: from its Created event to its last SessionSpawned, read from the store."""
    svc = open_store(url)
    created: dict[UUID, datetime] = {}
    running: dict[UUID, datetime] = {}
    try:
        for notice in log_reader(svc.recorder, svc.mapper).notices(
            (JOB_CREATED, JOB_SESSION_SPAWNED)
        ):
            into = created if notice.topic == JOB_CREATED else running
            into[notice.originator_id] = notice.event.timestamp
    finally:
        svc.close()
    timings = Timings()
    for job_id, finished in running.items():
        if job_id in created:
            timings.add(int((finished - created[job_id]).total_seconds() * 1e9))
    return timings
