"""The audit timeline of one long job (DESIGN.md §7): what ``sequent audit`` reads
(``Timeline.load`` + ``state_at(latest)``) for a job of 10k events snapshotted by the service,
against a bare read of every event of the job."""

from __future__ import annotations

import time
from uuid import UUID

from domain import CurationService
from domain.job import CurationJob
from domain.service import SNAPSHOT_INTERVAL
from projections.timeline import Timeline
from scripts.bench.harness import (
    AUDIT,
    Bench,
    Measurement,
    Step,
    Timings,
    load_average,
    timed,
)
from scripts.bench.stores import ScratchStore, open_store, scratch_stores

AUDIT_TARGET_US = 20_000.0  # 20 ms (DESIGN.md §7)
AUDIT_SAVE_EVENTS = 500  # progress events per save while writing the job


def long_job(svc: CurationService, events: int) -> UUID:
    """One job of ``events`` events through the service: create, submit, SessionSpawned (a
    guarded completion), then ProgressRecorded saved AUDIT_SAVE_EVENTS at a time by
    ``svc.save``, which takes the service's snapshots (every SNAPSHOT_INTERVAL versions)."""
    job_id = svc.create_job({"target": "https://bench.example/long"})
    dispatch = svc.submit(job_id)
    svc.complete(dispatch, "SessionSpawned", {"session_id": "s-long"})
    job: CurationJob = svc.repository.get(job_id)
    step = 0
    while job.version < events:
        for _ in range(min(AUDIT_SAVE_EVENTS, events - job.version)):
            job.record_progress({"step": step, "note": f"fetched page {step}"})
            step += 1
        svc.save(job)
    return job_id


def measure(bench: Bench) -> list[Measurement]:
    sizes = bench.config.sizes
    return [
        measure_audit(store, sizes.audit_events, sizes.audit_runs, bench.step)
        for store in scratch_stores(bench, AUDIT, bench.config.backends)
    ]


def measure_audit(store: ScratchStore, events: int, runs: int, step: Step) -> Measurement:
    backend = store.backend
    load = load_average()
    svc = open_store(store.url)
    total, loads, states, baseline = Timings(), Timings(), Timings(), Timings()
    try:
        step(f"{AUDIT} [{backend}]: writing a job of {events:,} events")
        job_id = long_job(svc, max(4, events))
        snapshots = len(svc.snapshots.recorder.select_events(job_id)) if svc.snapshots else 0

        def timeline() -> None:
            t0 = time.perf_counter_ns()
            loaded = Timeline.load(svc, job_id)
            t1 = time.perf_counter_ns()
            loaded.state_at(loaded.version)
            t2 = time.perf_counter_ns()
            loads.add(t1 - t0)
            states.add(t2 - t1)
            total.add(t2 - t0)

        def bare() -> None:
            timed(lambda: list(svc.events.get(job_id)), baseline)

        job_events = len(list(svc.events.get(job_id)))
        warmup = max(2, runs // 10)
        for _ in range(warmup):
            timeline()
            bare()
        for timings in (total, loads, states, baseline):
            timings.ns.clear()
        step(f"{AUDIT} [{backend}]: {runs} loads")
        for index in range(runs):  # alternating which goes first
            for run in (timeline, bare) if index % 2 == 0 else (bare, timeline):
                run()
    finally:
        svc.close()
    return Measurement.latency(
        AUDIT,
        total,
        baseline,
        backend=backend,
        ceiling_us=AUDIT_TARGET_US,
        notes=(
            f"value: p50 of Timeline.load(svc, job_id) + state_at(latest) (what `sequent audit` "
            f"reads) for one job of {job_events:,} events (create, submit, SessionSpawned, "
            f"progress), snapshotted every {SNAPSHOT_INTERVAL} versions by the service, in "
            "a store holding nothing else; baseline: p50 of a bare list(svc.events.get(job_id)) "
            "(every event of the job read and decoded). ratio = baseline / value. In us: "
            f"the target is {AUDIT_TARGET_US / 1e3:g} ms = {AUDIT_TARGET_US:,.0f} us."
        ),
        details={
            "loadavg_1m": load,
            "job_events": job_events,
            "snapshots": snapshots,
            "warmup": warmup,
            "p50_ms": total.percentile_us(0.5) / 1e3,
            "baseline_p50_ms": baseline.percentile_us(0.5) / 1e3,
            "breakdown": {
                "timeline_load": loads.summary(),
                "state_at_latest": states.summary(),
                "total": total.summary(),
                "bare_events_get": baseline.summary(),
            },
        },
    )
