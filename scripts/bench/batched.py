"""Guarded completions per second with group commit (``complete_batch``, DESIGN.md §7) against
the same completions one by one, on PostgreSQL only: without --pg it is left out."""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from domain import CurationService, Dispatch
from domain.invocation import Invocation
from domain.job import CurationJob
from scripts.bench.harness import (
    BATCHED,
    Bench,
    Measurement,
    Sizes,
    Step,
    Target,
    Timings,
    load_average,
)
from scripts.bench.stores import ScratchStore, open_store, scratch_stores, submitted_job

BATCH_SIZE = 200
BATCHED_TARGET = 5000.0  # completions/s
PREPARE_CHUNK = 200  # jobs (with their invocations) per save while preparing


def submitted_dispatches(
    svc: CurationService,
    n: int,
    spec: Mapping[str, Any] | None = None,
    chunk: int = PREPARE_CHUNK,
) -> list[Dispatch]:
    """n submitted jobs, as create_job + submit would leave them (Created, Submitted; the
    invocation Started), saved ``chunk`` jobs per transaction; ``spec`` as submitted_job's."""
    dispatches: list[Dispatch] = []
    for first in range(0, n, chunk):
        aggregates: list[CurationJob | Invocation] = []
        for index in range(first, min(first + chunk, n)):
            job, invocation = submitted_job(svc, index, spec)
            aggregates += [job, invocation]
            dispatches.append(
                Dispatch(job.id, invocation.id, invocation.expected_version, job.attempt)
            )
        svc.save(*aggregates)
    return dispatches


def measure(bench: Bench) -> list[Measurement]:
    if not bench.config.pg_url:
        bench.step(f"{BATCHED}: skipped (PostgreSQL only: give --pg URL)")
        return []
    return [
        measure_batched(store, bench.config.sizes, bench.step)
        for store in scratch_stores(bench, BATCHED, ["postgresql"])
    ]


def measure_batched(store: ScratchStore, sizes: Sizes, step: Step) -> Measurement:
    load = load_average()
    n_batched, n_single = sizes.batched_completions, sizes.single_completions
    warmup = max(2, min(BATCH_SIZE, n_batched // 10))
    svc = open_store(store.url)
    batched, single = Timings(), Timings()  # per complete_batch call; per complete call
    verdicts: Counter[str] = Counter()
    try:
        step(f"{BATCHED} [postgresql]: submitting {n_batched + n_single + 2 * warmup:,} jobs")
        dispatches = submitted_dispatches(svc, n_batched + n_single + 2 * warmup)
        warm, rest = dispatches[: 2 * warmup], dispatches[2 * warmup :]
        to_batch, to_single = rest[:n_batched], rest[n_batched:]

        def completion(d: Dispatch) -> tuple[Dispatch, str, dict[str, Any]]:
            return d, "SessionSpawned", {"session_id": f"s-{d.job_id}"}

        def complete_batch(chunk: Sequence[Dispatch], into: Timings | None) -> None:
            started = time.perf_counter_ns()
            outcome = svc.complete_batch([completion(d) for d in chunk])
            if into is not None:
                into.add(time.perf_counter_ns() - started)
            verdicts.update(type(v).__name__ for v in outcome)

        def complete_one(d: Dispatch, into: Timings | None) -> None:
            started = time.perf_counter_ns()
            verdict = svc.complete(*completion(d))
            if into is not None:
                into.add(time.perf_counter_ns() - started)
            verdicts[type(verdict).__name__] += 1

        complete_batch(warm[:warmup], None)
        for d in warm[warmup:]:
            complete_one(d, None)
        verdicts.clear()
        rounds = max(1, sizes.batched_rounds)
        chunks = [to_batch[i : i + BATCH_SIZE] for i in range(0, len(to_batch), BATCH_SIZE)]

        def batched_round(r: int) -> None:
            for chunk in chunks[r::rounds]:
                complete_batch(chunk, batched)

        def single_round(r: int) -> None:
            for d in to_single[r::rounds]:
                complete_one(d, single)

        loops: list[Callable[[int], None]] = [batched_round, single_round]
        for r in range(rounds):  # interleaved, alternating which goes first
            step(f"{BATCHED} [postgresql]: round {r + 1} of {rounds}")
            for loop in loops[r % 2 :] + loops[: r % 2]:
                loop(r)
    finally:
        svc.close()
    value = len(to_batch) / batched.seconds
    baseline = single.rate()
    return Measurement(
        name=BATCHED,
        backend="postgresql",
        unit="completions/s",
        value=value,
        baseline=baseline,
        n=len(to_batch),
        p50=batched.percentile_us(0.5),
        p99=batched.percentile_us(0.99),
        target=Target(BATCHED_TARGET, "value", ">="),
        notes=(
            f"value: guarded completions/s through svc.complete_batch, {BATCH_SIZE} submitted "
            "dispatches per call (each decided in order, all saved in one transaction: group "
            "commit), on PostgreSQL; baseline: the same completions one by one through "
            "svc.complete (one transaction each). Interleaved in rounds. p50/p99: one "
            f"complete_batch call of {BATCH_SIZE}. Jobs prepared as create_job + submit leave "
            f"them, {PREPARE_CHUNK} per transaction."
        ),
        details={
            "loadavg_1m": load,
            "batch_size": BATCH_SIZE,
            "batches": batched.n,
            "rounds": rounds,
            "warmup": warmup,
            "verdicts": dict(verdicts),
            "per_completion_us_batched": batched.seconds / len(to_batch) * 1e6,
            "one_by_one": single.summary(),
            "speedup": value / baseline if baseline else math.inf,
        },
    )
