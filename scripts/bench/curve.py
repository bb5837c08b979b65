"""The cost curve (DESIGN.md §7): what a guarded completion costs and how long a new worker
takes to its first dispatch, against ever more history in the store. Both should be flat.

One store per backend grows through the points (``BenchConfig.curve_points``: 10k and 100k
events by default, ``--curve 10000,100000,1000000`` for the §7 size), filled with finished jobs
(history.py). At each point:

* **completions**: n submitted jobs completed one by one through ``svc.complete`` (the guarded
  path: load job + invocation, decide, save both), each timed: p50, p99 and completions/s.
* **worker start**: one freshly submitted job, then a real ``sequent worker`` process
  (processes.py); first dispatch is the time from its spawn until the store shows that job's
  invocation claimed by it (its ``Claimed``: interpreter start, store and module opened, its
  work found, the claim saved), polled through the service's public reads; ``running_s`` is
  until the job is Running (the completion applied). Peak RSS is the worker's VmHWM when the
  claim is seen. The baseline is the same start against an empty store (a policy and the job).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domain import CurationService, JobState
from domain.cedar import default_policies
from integrations.session_service import SessionService
from scripts.bench.batched import submitted_dispatches
from scripts.bench.harness import (
    CURVE,
    CURVE_COMPLETION,
    CURVE_START,
    LARGE_EVENTS,
    TIME_UNIT,
    Bench,
    Measurement,
    Target,
    Timings,
    load_average,
)
from scripts.bench.history import EVENTS_PER_JOB, fill_history
from scripts.bench.processes import spawn_worker, wait_until
from scripts.bench.stores import ScratchStore, open_store, scratch_stores

CURVE_FLAT = 0.8  # "flat": the last point's p50 (and p99) at most 1/0.8 of the first's
START_TARGET_US = 1_000_000.0  # first dispatch within 1 s at LARGE_EVENTS
RSS_TARGET_MB = 150.0  # and the worker's peak RSS then
START_TIMEOUT_SECONDS = 1800.0


@dataclass(frozen=True)
class Start:
    first_dispatch_s: float  # spawn -> its invocation claimed by it, in the store
    running_s: float  # spawn -> the job Running (its completion applied)
    peak_rss_mb: float  # VmHWM when the claim was seen
    applied: int  # from the worker's own stats once stopped

    def to_json(self) -> dict[str, Any]:
        return vars(self).copy()


@dataclass(frozen=True)
class Point:
    events: int  # in the store when the point was measured
    fill: Mapping[str, float]
    completions: Timings
    starts: Sequence[Start]

    def completion_json(self) -> dict[str, Any]:
        return {
            "events": self.events,
            **self.completions.summary(),
            "completions_per_s": self.completions.rate(),
            "fill": dict(self.fill),
        }

    def start_json(self) -> dict[str, Any]:
        return {"events": self.events, **starts_json(self.starts)}


def starts_json(starts: Sequence[Start]) -> dict[str, Any]:
    timings = start_timings(starts)
    return {
        "first_dispatch_p50_s": timings.percentile_us(0.5) / 1e6,
        "peak_rss_mb": max(s.peak_rss_mb for s in starts),
        "starts": [s.to_json() for s in starts],
    }


def start_timings(starts: Sequence[Start]) -> Timings:
    timings = Timings()
    for start in starts:
        timings.add(round(start.first_dispatch_s * 1e9))
    return timings


class Starter:
    """Starts a worker against the store for one freshly submitted job, as an operator would
    have submitted it, and watches it to the first dispatch."""

    def __init__(self, svc: CurationService, url: str, spec: Mapping[str, Any], logs: Path):
        self.svc, self.url, self.spec, self.logs = svc, url, dict(spec), logs
        self.started = 0

    def start(self) -> Start:
        dispatch = self.svc.submit(self.svc.create_job(self.spec))
        self.started += 1
        worker_id = f"bench-start-{self.started}"
        worker = spawn_worker(self.url, worker_id, self.logs)
        try:
            claimed_at = wait_until(
                lambda: self.svc.invocation(dispatch.invocation_id).lease_holder == worker_id,
                [worker], START_TIMEOUT_SECONDS, "its first claim",
            )  # fmt: skip
            rss = worker.peak_rss_mb()
            running_at = wait_until(
                lambda: self.svc.get(dispatch.job_id).state == JobState.RUNNING,
                [worker], START_TIMEOUT_SECONDS, "the job to run",
            )  # fmt: skip
        except BaseException:
            worker.kill()
            raise
        stats = worker.stop()
        return Start(
            first_dispatch_s=claimed_at - worker.spawned_at,
            running_s=running_at - worker.spawned_at,
            peak_rss_mb=rss or 0.0,
            applied=int(stats.get("applied", 0)),
        )


def measure(bench: Bench) -> list[Measurement]:
    results: list[Measurement] = []
    with SessionService() as sessions:
        for store in scratch_stores(bench, CURVE, bench.config.backends):
            results += measure_curve(store, bench, sessions)
    return results


def measure_curve(store: ScratchStore, bench: Bench, sessions: SessionService) -> list[Measurement]:
    load = load_average()
    sizes, step, label = bench.config.sizes, bench.step, f"{CURVE} [{store.backend}]"
    rounds = sizes.curve_start_rounds
    logs = Path(tempfile.mkdtemp(prefix="workers-", dir=bench.workdir))
    svc = open_store(store.url)
    try:
        svc.policies.add_policy(default_policies(sessions.url), reason="bench")
        starter = Starter(svc, store.url, {"session_service": sessions.url}, logs)
        step(f"{label}: a first worker (builds and caches the module)")
        starter.start()
        step(f"{label}: worker start on an empty store")
        empty = [starter.start() for _ in range(rounds)]
        points: list[Point] = []
        for target in bench.config.curve_points:
            missing = target - head(svc)
            step(f"{label}: filling the store to {target:,} events")
            filled = fill_history(svc, missing) if missing >= EVENTS_PER_JOB else None
            events = head(svc)
            step(f"{label}: {sizes.curve_completions} completions at {events:,} events")
            completions = time_completions(svc, sizes.curve_completions)
            step(f"{label}: worker start at {events:,} events")
            starts = [starter.start() for _ in range(rounds)]
            fill = {"events": 0, "seconds": 0.0, "events_per_s": 0.0}
            if filled is not None:
                fill = {"events": filled.events, "seconds": filled.seconds,
                        "events_per_s": filled.events_per_s}  # fmt: skip
            points.append(Point(events, fill, completions, starts))
    finally:
        svc.close()
    return [
        completion_measurement(store.backend, points, load),
        start_measurement(store.backend, points, empty, load),
    ]


def head(svc: CurationService) -> int:
    return svc.recorder.max_notification_id() or 0


def time_completions(svc: CurationService, n: int) -> Timings:
    """n guarded completions one by one, each timed, after a tenth as many untimed."""
    warmup = max(2, n // 10)
    dispatches = submitted_dispatches(svc, n + warmup)
    timings = Timings()
    for index, dispatch in enumerate(dispatches):
        started = time.perf_counter_ns()
        svc.complete(dispatch, "SessionSpawned", {"session_id": f"s-{dispatch.job_id}"})
        if index >= warmup:
            timings.add(time.perf_counter_ns() - started)
    return timings


def completion_measurement(
    backend: str, points: Sequence[Point], load: float | None
) -> Measurement:
    first, last = points[0].completions, points[-1].completions
    p99_ratio = first.percentile_us(0.99) / last.percentile_us(0.99)
    return Measurement(
        name=CURVE_COMPLETION,
        backend=backend,
        unit=TIME_UNIT,
        value=last.percentile_us(0.5),
        baseline=first.percentile_us(0.5),
        n=last.n,
        p50=last.percentile_us(0.5),
        p99=last.percentile_us(0.99),
        target=Target(CURVE_FLAT, "ratio", ">="),
        notes=(
            f"value: p50 of one guarded svc.complete (one by one) with {points[-1].events:,} "
            f"events in the store; baseline: the same at {points[0].events:,} events (the "
            "curve's first point), so ratio = how flat the cost is (1.0: flat). The store is "
            "filled with finished jobs (create -> configure -> submit -> claim -> "
            "SessionSpawned -> complete -> finalize) written through the library's recorder. "
            f"Target: ratio >= {CURVE_FLAT} for the p50 and for the p99 (details.p99_ratio, "
            "details.p99_meets). details.points: p50, p99 and completions/s at each point."
        ),
        details={
            "loadavg_1m": load,
            "points": [p.completion_json() for p in points],
            "p99_ratio": p99_ratio,
            "p99_meets": p99_ratio >= CURVE_FLAT,
        },
    )


def start_measurement(
    backend: str, points: Sequence[Point], empty: Sequence[Start], load: float | None
) -> Measurement:
    last, baseline = start_timings(points[-1].starts), start_timings(empty)
    rss = max(s.peak_rss_mb for s in points[-1].starts)
    events = points[-1].events
    return Measurement(
        name=CURVE_START,
        backend=backend,
        unit=TIME_UNIT,
        value=last.percentile_us(0.5),
        baseline=baseline.percentile_us(0.5),
        n=last.n,
        p50=last.percentile_us(0.5),
        p99=last.percentile_us(0.99),
        target=Target(START_TARGET_US, "value", "<="),
        notes=(
            "value: p50 time from spawning a `sequent worker` process until the store shows "
            f"the one job submitted for it claimed by it, with {events:,} events in the store "
            "(details.points: each start's first dispatch, time to Running, and the worker's "
            "peak RSS (VmHWM) at its first claim); baseline: the same start against an empty "
            f"store. Targets at {LARGE_EVENTS:,} events (--curve ...,{LARGE_EVENTS}): first "
            f"dispatch <= {START_TARGET_US / 1e6:g} s and peak RSS <= {RSS_TARGET_MB:g} MB "
            "(details.rss_meets)."
        ),
        details={
            "loadavg_1m": load,
            "empty_store": starts_json(empty),
            "points": [p.start_json() for p in points],
            "peak_rss_mb": rss,
            "rss_target_mb": RSS_TARGET_MB,
            "rss_meets": rss <= RSS_TARGET_MB,
            "targets_at_events": LARGE_EVENTS,
            "targets_apply": events >= LARGE_EVENTS,
        },
    )
