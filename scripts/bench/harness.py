"""The harness every measurement shares: the measurement names, what one result holds
(``Target``, ``Measurement``), per-operation ``Timings``, how many operations each measurement
times (``Sizes``, ``BenchConfig``), and ``Bench``, what a measurement is handed."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

Better = Literal["higher", "lower"]
TargetOn = Literal["ratio", "value"]
TargetOp = Literal[">=", "<="]

GUARDED = "guarded_completion_vs_bare_loop"
SANDBOX = "sandbox_invocation_overhead"
CYCLES = "job_cycles_per_second"
RACE = "race_jobs_per_second"
REBUILD = "rebuild_job_status_vs_raw_scan"
AUDIT = "audit_timeline_10k"
BATCHED = "completions_per_second_batched"
TRANSACTIONS = "transactions_per_cycle"
WORKERS = "worker_processes"
CURVE = "cost_curve"
MEASUREMENT_NAMES: tuple[str, ...] = (
    GUARDED, SANDBOX, CYCLES, RACE, REBUILD, AUDIT, BATCHED, TRANSACTIONS, WORKERS, CURVE
)  # fmt: skip
# The cost curve's results are named apart: the completion path and the worker's start.
CURVE_COMPLETION = "cost_curve_completion"
CURVE_START = "cost_curve_worker_start"
SKIPPED_WHEN_QUICK = frozenset({RACE})  # unless named with --only
# With --pg; BATCHED and WORKERS only there.
USES_POSTGRES = frozenset({GUARDED, REBUILD, AUDIT, BATCHED, TRANSACTIONS, WORKERS, CURVE})

TIME_UNIT = "us"
COUNT_UNIT = "transactions/cycle"
RATE_UNITS = frozenset({"ops/s", "cycles/s", "jobs/s", "events/s", "completions/s"})
LOWER_IS_BETTER = frozenset({TIME_UNIT, COUNT_UNIT})


# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What §7 asks of a measurement: ``on`` (its ratio or its value) ``op`` ``value``."""

    value: float
    on: TargetOn
    op: TargetOp

    def met(self, value: float, ratio: float) -> bool:
        measured = ratio if self.on == "ratio" else value
        return measured >= self.value if self.op == ">=" else measured <= self.value


@dataclass(frozen=True)
class Measurement:
    name: str
    unit: str
    value: float
    baseline: float
    n: int
    p50: float
    p99: float
    notes: str
    target: Target | None = None
    backend: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def latency(
        cls,
        name: str,
        measured: Timings,
        baseline: Timings,
        *,
        ceiling_us: float,
        notes: str,
        details: Mapping[str, Any],
        backend: str | None = None,
    ) -> Measurement:
        """A time measurement: the p50 of ``measured`` against the p50 of ``baseline`` (lower
        is better), with §7's target a ceiling on the p50, in us."""
        return cls(
            name=name,
            backend=backend,
            unit=TIME_UNIT,
            value=measured.percentile_us(0.5),
            baseline=baseline.percentile_us(0.5),
            n=measured.n,
            p50=measured.percentile_us(0.5),
            p99=measured.percentile_us(0.99),
            target=Target(ceiling_us, "value", "<="),
            notes=notes,
            details=details,
        )

    @property
    def better(self) -> Better:
        return "lower" if self.unit in LOWER_IS_BETTER else "higher"

    @property
    def ratio(self) -> float:
        """Speed relative to the baseline (higher is better, whatever the unit)."""
        if self.better == "higher":
            return self.value / self.baseline if self.baseline else math.inf
        return self.baseline / self.value if self.value else math.inf

    @property
    def meets(self) -> bool | None:
        return None if self.target is None else self.target.met(self.value, self.ratio)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "backend": self.backend,
            "unit": self.unit,
            "value": self.value,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "better": self.better,
            "target": None if self.target is None else self.target.value,
            "target_on": None if self.target is None else self.target.on,
            "target_op": None if self.target is None else self.target.op,
            "meets": self.meets,
            "n": self.n,
            "p50": self.p50,
            "p99": self.p99,
            "latency_unit": TIME_UNIT,
            "notes": self.notes,
            "details": dict(self.details),
        }


class Timings:
    """Per-operation durations in nanoseconds."""

    def __init__(self) -> None:
        self.ns: list[int] = []

    def add(self, ns: int) -> None:
        self.ns.append(ns)

    def extend(self, other: Timings) -> None:
        self.ns.extend(other.ns)

    @property
    def n(self) -> int:
        return len(self.ns)

    @property
    def seconds(self) -> float:
        return sum(self.ns) / 1e9

    def rate(self) -> float:
        """Operations per second of time spent in them."""
        return self.n / self.seconds if self.ns else 0.0

    def percentile_us(self, q: float) -> float:
        """Nearest-rank percentile in microseconds (0 < q <= 1)."""
        if not self.ns:
            return 0.0
        ordered = sorted(self.ns)
        rank = max(1, math.ceil(q * len(ordered)))
        return ordered[rank - 1] / 1e3

    def summary(self) -> dict[str, float]:
        return {"n": self.n, "p50": self.percentile_us(0.5), "p99": self.percentile_us(0.99)}


def timed(op: Callable[[], object], into: Timings) -> None:
    started = time.perf_counter_ns()
    op()
    into.add(time.perf_counter_ns() - started)


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# -- sizes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How many operations each measurement times (warm-ups not counted)."""

    completions_memory: int
    completions_sqlite: int
    completions_postgres: int
    completion_rounds: int
    sandbox_runs: int
    compiles_cold: int
    compiles_disk: int
    compile_hits: int
    cycle_batch: int
    cycle_rounds: int
    cycle_baseline: int
    race_jobs: int
    rebuild_events: int  # events in the log the rebuild replays (see BenchConfig.rebuild_events)
    rebuild_rounds: int
    audit_events: int  # events of the one job the audit timeline loads
    audit_runs: int
    batched_completions: int  # completions through complete_batch, in batches of BATCH_SIZE
    single_completions: int  # completions one by one (the baseline)
    batched_rounds: int
    transaction_jobs: int  # job cycles whose transactions are counted
    worker_jobs: int  # jobs the 1, 2 and 4 worker processes run
    curve_events: int  # events in the store at the cost curve's first point (then x10)
    curve_completions: int  # guarded completions timed at each point
    curve_start_rounds: int  # worker starts timed at each point

    def scaled(self, factor: float) -> Sizes:
        """Every count times ``factor``, at least 2 (rounds at least 1, batches at least 2)."""
        values = {
            name: max(1 if name.endswith("rounds") else 2, round(count * factor))
            for name, count in vars(self).items()
        }
        return replace(self, **values)


QUICK = Sizes(
    completions_memory=2000,
    completions_sqlite=300,
    completions_postgres=400,
    completion_rounds=4,
    sandbox_runs=1000,
    compiles_cold=3,
    compiles_disk=10,
    compile_hits=500,
    cycle_batch=150,
    cycle_rounds=2,
    cycle_baseline=150,
    race_jobs=100,
    rebuild_events=10_000,
    rebuild_rounds=2,
    audit_events=2000,
    audit_runs=10,
    batched_completions=1000,
    single_completions=300,
    batched_rounds=2,
    transaction_jobs=50,
    worker_jobs=100,
    curve_events=1000,
    curve_completions=200,
    curve_start_rounds=1,
)
FULL = Sizes(
    completions_memory=6000,
    completions_sqlite=800,
    completions_postgres=2000,
    completion_rounds=8,
    sandbox_runs=3000,
    compiles_cold=10,
    compiles_disk=20,
    compile_hits=2000,
    cycle_batch=250,
    cycle_rounds=4,
    cycle_baseline=400,
    race_jobs=1000,
    rebuild_events=100_000,
    rebuild_rounds=3,
    audit_events=10_000,
    audit_runs=30,
    batched_completions=4000,
    single_completions=1000,
    batched_rounds=4,
    transaction_jobs=200,
    worker_jobs=600,
    curve_events=10_000,
    curve_completions=1000,
    curve_start_rounds=3,
)


LARGE_EVENTS = 1_000_000


@dataclass(frozen=True)
class BenchConfig:
    quick: bool = False
    scale: float = 1.0
    pg_url: str | None = None  # adds the PostgreSQL backend to the store-bound measurements
    # The rebuild's log size when set (``sequent bench --events N``); else the sizes' own.
    rebuild_events: int | None = None
    # The cost curve's points, events in the store (``sequent bench --curve N,N``); else the
    # sizes' first point and ten times it.
    curve: tuple[int, ...] | None = None

    @property
    def sizes(self) -> Sizes:
        base = QUICK if self.quick else FULL
        return base.scaled(self.scale) if self.scale != 1.0 else base

    @property
    def rebuild_event_count(self) -> int:
        if self.rebuild_events is not None:
            return self.rebuild_events
        return self.sizes.rebuild_events

    @property
    def curve_points(self) -> tuple[int, ...]:
        if self.curve is not None:
            return self.curve
        first = self.sizes.curve_events
        return (first, first * 10)

    @property
    def backends(self) -> list[str]:
        """The stores of the store-bound measurements: SQLite, and PostgreSQL with --pg."""
        return ["sqlite", "postgresql"] if self.pg_url else ["sqlite"]


def default_names(quick: bool) -> list[str]:
    return [n for n in MEASUREMENT_NAMES if not (quick and n in SKIPPED_WHEN_QUICK)]


class UnknownMeasurement(ValueError):
    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        known = ", ".join(MEASUREMENT_NAMES)
        super().__init__(f"unknown measurement(s) {', '.join(self.names)} (known: {known})")


def parse_names(text: str) -> list[str]:
    """``a,b`` -> ["a", "b"] in the suite's order; UnknownMeasurement for any other name."""
    wanted = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in wanted if name not in MEASUREMENT_NAMES]
    if unknown or not wanted:
        raise UnknownMeasurement(unknown or [repr(text)])
    return [name for name in MEASUREMENT_NAMES if name in wanted]


Step = Callable[[str], None]


@dataclass(frozen=True)
class Bench:
    """What a measurement is handed: the run's configuration, a scratch directory for its
    throwaway stores, and the progress callback (a label per step)."""

    config: BenchConfig
    workdir: Path
    step: Step = lambda _: None
