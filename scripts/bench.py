"""``sequent bench``: the performance targets of DESIGN.md §7, measured as ratios in one process.

Every measurement runs its own baseline in the same process, interleaved with it in rounds, so a
shared or noisy machine slows both sides alike; a ratio from one run is comparable with another's
while the absolute figures are not. Each result is one :class:`Measurement`:

``name, backend, unit, value, baseline, ratio, better, target, target_on, target_op, meets, n,
p50, p99, latency_unit, notes, details``

* ``value`` and ``baseline`` are in ``unit``: a rate (``ops/s``, ``cycles/s``, ``jobs/s``,
  ``events/s``, ``completions/s``; higher is better) or a time (``us``, also for the audit's
  50 ms target; lower is better). ``better`` says which.
* ``ratio`` is always *speed relative to the baseline*, so higher is always better and 1.0 means
  "as fast as the baseline": ``value / baseline`` for rates, ``baseline / value`` for times.
* ``target`` applies to ``target_on`` (``"ratio"`` or ``"value"``) with ``target_op`` (``>=`` or
  ``<=``); ``meets`` is that comparison, or None when §7 sets no target.
* ``p50`` / ``p99`` are per-operation latencies of the measured path in ``latency_unit`` (us),
  nearest-rank percentiles over ``n`` samples (so ``p50 <= p99``).
* ``details`` holds the breakdown (e.g. compile / instantiate / run / Cedar for the sandbox) and the
  machine's load average when the measurement started, as a hint of the noise it ran in.

The stores are always throwaway (temporary SQLite files, a temporary PostgreSQL schema dropped
afterwards): a benchmark never writes into the store you work with.

The store-bound measurements (the completion path, the rebuild, the audit timeline) run on SQLite
(the completion path also in memory) and, given a PostgreSQL URL, on PostgreSQL too; the batched
completions run on PostgreSQL only and are left out without one. The rebuild's log holds 100k
events (10k with --quick, times --scale); ``--events N`` (``BenchConfig(rebuild_events=N)``)
sets it outright, e.g. 1,000,000 for the peak-RSS target.
"""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from uuid import UUID

import anyio
import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, DomainEvent, event
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder
from eventsourcing.utils import get_topic
from psycopg import sql

from bootstrap import Settings, build_system
from bootstrap.settings import POLICY_STALENESS_SECONDS
from domain import CurationService, Dispatch
from domain.invocation import DEFAULT_INTEGRATION, Invocation
from domain.job import CurationJob
from domain.outcomes import Applied
from domain.service import SNAPSHOT_INTERVAL, completion_values
from domain.store_url import parse_store_url, postgres_conninfo
from domain.transitions import TRANSITIONS
from integrations.authorizer import AuthzOutcome, CedarAuthorizer, default_policies
from integrations.host import (
    HostSession,
    bound,
    call_guest,
    guest_exports,
    write_guest,
)
from integrations.invoke import sample_input
from integrations.modules.build import PROJECT_ROOT, build_session_message_wasm
from integrations.runtime import LoadedModule, Runtime, SandboxLimits
from integrations.sandboxed import AuthorizedHost
from integrations.session_client import SessionClient
from integrations.session_service import SessionService
from projections.rebuild import REBUILD_BATCH
from projections.runner import Projections
from projections.timeline import Timeline
from scripts.race import RaceConfig, run_race

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
MEASUREMENT_NAMES: tuple[str, ...] = (GUARDED, SANDBOX, CYCLES, RACE, REBUILD, AUDIT, BATCHED)
SKIPPED_WHEN_QUICK = frozenset({RACE})  # unless named with --only
USES_POSTGRES = frozenset({GUARDED, REBUILD, AUDIT, BATCHED})  # with --pg; BATCHED only there

TIME_UNIT = "us"
RATE_UNITS = frozenset({"ops/s", "cycles/s", "jobs/s", "events/s", "completions/s"})
SANDBOX_SERVICE = "http://127.0.0.1:9"  # sample_input()'s session service; never contacted
CANNED_BODY = '{"session_id":"s-bench","created":0}'
ECHO_MODULE = PROJECT_ROOT / "tests" / "modules" / "echo.wat"
MINIMAL_MODULE = PROJECT_ROOT / "integrations" / "modules" / "examples" / "minimal.wat"
RACE_SEED = 7


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

    @property
    def better(self) -> Better:
        return "lower" if self.unit == TIME_UNIT else "higher"

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
)


LARGE_EVENTS = 1_000_000


@dataclass(frozen=True)
class BenchConfig:
    quick: bool = False
    scale: float = 1.0
    pg_url: str | None = None  # adds the PostgreSQL backend to the store-bound measurements
    # The rebuild's log size when set (``sequent bench --events N``); else the sizes' own.
    rebuild_events: int | None = None

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


@dataclass
class Bench:
    """One run of the suite: its configuration and a scratch directory for throwaway stores."""

    config: BenchConfig
    workdir: Path
    step: Step = lambda _: None

    def run(self, names: Sequence[str]) -> Iterator[Measurement]:
        runners: Mapping[str, Callable[[], list[Measurement]]] = {
            GUARDED: self.guarded_completion,
            SANDBOX: self.sandbox_overhead,
            CYCLES: self.job_cycles,
            RACE: self.race,
            REBUILD: self.rebuild,
            AUDIT: self.audit_timeline,
            BATCHED: self.batched_completions,
        }
        for name in names:
            self.step(name)
            gc.collect()
            yield from runners[name]()

    # -- 1. guarded completion vs a bare eventsourcing loop ----------------------------------

    def guarded_completion(self) -> list[Measurement]:
        sizes = self.config.sizes
        backends = [("memory", sizes.completions_memory), ("sqlite", sizes.completions_sqlite)]
        if self.config.pg_url:
            backends.append(("postgresql", sizes.completions_postgres))
        results = []
        for backend, n in backends:
            self.step(f"{GUARDED} [{backend}]")
            with completion_stores(backend, self.workdir, self.config.pg_url) as (url, bare_env):
                results.append(measure_completions(backend, url, bare_env, n, sizes))
        return results

    # -- 2. sandbox invocation overhead ------------------------------------------------------

    def sandbox_overhead(self) -> list[Measurement]:
        return [measure_sandbox(self.config.sizes, self.workdir, self.step)]

    # -- 3. full job cycles through the real dispatcher --------------------------------------

    def job_cycles(self) -> list[Measurement]:
        return [measure_job_cycles(self.config.sizes, self.workdir, self.step)]

    # -- 4. the race -------------------------------------------------------------------------

    def race(self) -> list[Measurement]:
        return [measure_race(self.config.sizes.race_jobs, self.workdir, self.step)]

    # -- 5. rebuild of job_status vs a raw scan of the log -----------------------------------

    def rebuild(self) -> list[Measurement]:
        events = self.config.rebuild_event_count
        rounds = self.config.sizes.rebuild_rounds if events <= 200_000 else 1
        results = []
        for backend in self.config.backends:
            self.step(f"{REBUILD} [{backend}]")
            with scratch_store(backend, self.workdir, self.config.pg_url, "rebuild") as store:
                results.append(measure_rebuild(backend, store, events, rounds, self.step))
        return results

    # -- 6. the audit timeline of one long job -----------------------------------------------

    def audit_timeline(self) -> list[Measurement]:
        sizes = self.config.sizes
        results = []
        for backend in self.config.backends:
            self.step(f"{AUDIT} [{backend}]")
            with scratch_store(backend, self.workdir, self.config.pg_url, "audit") as store:
                results.append(
                    measure_audit(backend, store, sizes.audit_events, sizes.audit_runs, self.step)
                )
        return results

    # -- 7. batched (group-commit) completions on PostgreSQL ---------------------------------

    def batched_completions(self) -> list[Measurement]:
        if not self.config.pg_url:
            self.step(f"{BATCHED}: skipped (PostgreSQL only: give --pg URL)")
            return []
        self.step(f"{BATCHED} [postgresql]")
        with scratch_store("postgresql", self.workdir, self.config.pg_url, "batched") as store:
            return [measure_batched(store, self.config.sizes, self.step)]


def run_bench(
    names: Sequence[str] | None = None,
    config: BenchConfig | None = None,
    step: Step | None = None,
) -> list[Measurement]:
    """Runs the named measurements (default: the suite, less the race when quick)."""
    config = config or BenchConfig()
    chosen = list(names) if names is not None else default_names(config.quick)
    if config.pg_url and USES_POSTGRES.intersection(chosen):
        parse_store_url(config.pg_url).prepare()  # an unusable server fails before any work
    workdir = Path(tempfile.mkdtemp(prefix="sequent-bench-"))
    try:
        bench = Bench(config, workdir, step or (lambda _: None))
        return list(bench.run(chosen))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# == 1. guarded completion ===================================================================


class _Counter(Aggregate):
    """The trivial aggregate of the bare loop."""

    def __init__(self) -> None:
        self.count = 0

    @event("Incremented")
    def increment(self) -> None:
        self.count += 1


class _BareApp(Application[UUID]):
    name = "SequentBenchBare"  # its own tables, beside the service's in a shared store


@contextmanager
def completion_stores(
    backend: str, workdir: Path, pg_url: str | None
) -> Iterator[tuple[str, dict[str, str]]]:
    """(URL for the CurationService, env for the bare Application) on one kind of store."""
    if backend == "memory":
        yield "memory://", parse_store_url("memory://").env
    elif backend == "sqlite":
        folder = Path(tempfile.mkdtemp(prefix="completions-", dir=workdir))
        bare = parse_store_url(f"sqlite:///{folder / 'bare.db'}")
        yield f"sqlite:///{folder / 'guarded.db'}", bare.env
    else:
        assert pg_url is not None
        url, schema = with_temporary_schema(pg_url)
        config = parse_store_url(url)
        config.prepare()
        try:
            yield url, config.env
        finally:
            drop_schema(config.env, schema)


def with_temporary_schema(url: str) -> tuple[str, str]:
    schema = f"sequent_bench_{uuid.uuid4().hex[:12]}"
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "schema"] + [("schema", schema)]
    return urlunsplit(parts._replace(query=urlencode(query))), schema


def drop_schema(env: dict[str, str], schema: str) -> None:
    with psycopg.connect(postgres_conninfo(env), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@dataclass
class _CompletionPaths:
    """The three loops of the completion measurement, over prepared aggregates."""

    svc: CurationService
    bare: _BareApp
    dispatches: list[Dispatch] = field(default_factory=list)
    singles: list[UUID] = field(default_factory=list)
    pairs: list[tuple[UUID, UUID]] = field(default_factory=list)

    def prepare(self, n: int) -> None:
        """n submitted jobs (2 events each, their invocations 1); n bare aggregates of 2 events;
        n bare pairs shaped like a job and its invocation (2 + 1 events)."""
        for index in range(n):
            job_id = self.svc.create_job({"target": f"https://bench.example/{index}"})
            self.dispatches.append(self.svc.submit(job_id))
        chunk: list[_Counter] = []
        for _ in range(n):
            single, first, second = _Counter(), _Counter(), _Counter()
            single.increment()
            first.increment()
            chunk += [single, first, second]
            self.singles.append(single.id)
            self.pairs.append((first.id, second.id))
            if len(chunk) >= 300:
                self.bare.save(*chunk)
                chunk = []
        if chunk:
            self.bare.save(*chunk)

    def guarded(self, dispatch: Dispatch) -> None:
        self.svc.complete(dispatch, "SessionSpawned", {"session_id": f"s-{dispatch.job_id}"})

    def single(self, aggregate_id: UUID) -> None:
        counter: _Counter = self.bare.repository.get(aggregate_id)
        counter.increment()
        self.bare.save(counter)

    def pair(self, ids: tuple[UUID, UUID]) -> None:
        """The guarded path's storage work without the guard: load two aggregates (3 events),
        write 1 + 2 events to them in one save."""
        first: _Counter = self.bare.repository.get(ids[0])
        second: _Counter = self.bare.repository.get(ids[1])
        first.increment()
        second.increment()
        second.increment()
        self.bare.save(first, second)


def measure_completions(
    backend: str, url: str, bare_env: dict[str, str], n: int, sizes: Sizes
) -> Measurement:
    load = load_average()
    warmup = max(2, n // 10)
    svc = CurationService.open(url)
    bare = _BareApp(bare_env)
    try:
        paths = _CompletionPaths(svc, bare)
        paths.prepare(n + warmup)
        guarded, single, pair = Timings(), Timings(), Timings()
        for index in range(warmup):
            paths.guarded(paths.dispatches[index])
            paths.single(paths.singles[index])
            paths.pair(paths.pairs[index])
        rounds = max(1, min(sizes.completion_rounds, n))
        bounds = [warmup + (n * r) // rounds for r in range(rounds + 1)]
        loops: list[tuple[Timings, Callable[[int], None]]] = [
            (guarded, lambda i: paths.guarded(paths.dispatches[i])),
            (single, lambda i: paths.single(paths.singles[i])),
            (pair, lambda i: paths.pair(paths.pairs[i])),
        ]
        for r in range(rounds):  # interleaved, in a rotating order: drift hits every loop
            for into, op in loops[r % 3 :] + loops[: r % 3]:
                for index in range(bounds[r], bounds[r + 1]):
                    started = time.perf_counter_ns()
                    op(index)
                    into.add(time.perf_counter_ns() - started)
    finally:
        svc.close()
        bare.close()
    ratio = guarded.rate() / single.rate()
    return Measurement(
        name=GUARDED,
        backend=backend,
        unit="ops/s",
        value=guarded.rate(),
        baseline=single.rate(),
        n=guarded.n,
        p50=guarded.percentile_us(0.5),
        p99=guarded.percentile_us(0.99),
        target=Target(0.7, "ratio", ">="),
        notes=(
            "value: guarded svc.complete() per second (load job + invocation, decide, save both "
            "in one transaction); baseline: bare eventsourcing get->command->save of a trivial "
            "aggregate on the same kind of store. The guarded path does two aggregates' work "
            "(3 events read, 3 written) against the bare loop's one (2 read, 1 written): see "
            "details.ratio_per_aggregate_write and details.ratio_vs_bare_pair (the same storage "
            "work without the guard)."
        ),
        details={
            "loadavg_1m": load,
            "warmup": warmup,
            "rounds": rounds,
            "bare": single.summary(),
            "bare_pair": {**pair.summary(), "ops_per_s": pair.rate()},
            "ratio_vs_bare_pair": guarded.rate() / pair.rate(),
            "aggregates_written_per_op": {"guarded": 2, "bare": 1, "bare_pair": 2},
            "events_per_op": {
                "guarded": {"read": 3, "written": 3},
                "bare": {"read": 2, "written": 1},
                "bare_pair": {"read": 3, "written": 3},
            },
            "ratio_per_aggregate_write": ratio * 2,
        },
    )


# == 2. sandbox invocation overhead ==========================================================


class _CannedClient(SessionClient):
    """A session client that answers every request 201 with a session, without a network."""

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        body: str | bytes | None = None,
    ) -> dict[str, Any]:
        return {
            "status": 201,
            "headers": {"content-type": "application/json"},
            "body": CANNED_BODY,
        }


class _CannedHost:
    """HostCalls for the baselines: canned 201, no Cedar."""

    def http_call(self, request: dict[str, Any]) -> dict[str, Any]:
        return {"status": 201, "headers": {"content-type": "application/json"}, "body": CANNED_BODY}

    def log(self, level: int, message: str) -> None:
        return None


class _TimedAuthorizer(CedarAuthorizer):
    """The real authorizer, timing each check it makes (Cedar as seen inside a run)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timings = Timings()

    def check(
        self,
        integration: str,
        module_sha256: str,
        method: str,
        url: str,
        job_id: str,
        invocation_id: str,
    ) -> AuthzOutcome:
        started = time.perf_counter_ns()
        outcome = super().check(integration, module_sha256, method, url, job_id, invocation_id)
        self.timings.add(time.perf_counter_ns() - started)
        return outcome


@dataclass
class _Phases:
    """Instantiate, run and teardown of one invocation timed apart: the runtime's steps, by
    hand, with the same limits and host functions."""

    instantiate: Timings = field(default_factory=Timings)
    run: Timings = field(default_factory=Timings)
    guest_excl_cedar: Timings = field(default_factory=Timings)
    teardown: Timings = field(default_factory=Timings)

    def clear(self) -> None:
        for timings in (self.instantiate, self.run, self.guest_excl_cedar, self.teardown):
            timings.ns.clear()

    def once(
        self,
        runtime: Runtime,
        module: LoadedModule,
        payload: bytes,
        host: AuthorizedHost,
        authorizer: _TimedAuthorizer,
    ) -> None:
        assert module.pre is not None
        limits = runtime.limits
        t0 = time.perf_counter_ns()
        store = runtime.new_store(limits)
        instance = module.pre.instantiate(store)
        t1 = time.perf_counter_ns()
        session = HostSession(
            host,
            max_http_calls=limits.http_calls,
            max_response_bytes=limits.http_response_bytes,
            max_log_lines=limits.log_lines,
        )
        checks_before = authorizer.timings.n
        with bound(session):
            exports = guest_exports(instance, store)
            session.exports = exports
            pointer = write_guest(store, exports, payload)
            call_guest(store, exports.run, (pointer, len(payload)), wide=True)
        t2 = time.perf_counter_ns()
        del instance, exports, session
        del store
        t3 = time.perf_counter_ns()
        cedar = sum(authorizer.timings.ns[checks_before:])
        self.instantiate.add(t1 - t0)
        self.run.add(t2 - t1)
        self.guest_excl_cedar.add(t2 - t1 - cedar)
        self.teardown.add(t3 - t2)


def measure_sandbox(sizes: Sizes, workdir: Path, step: Step) -> Measurement:
    load = load_average()
    limits = SandboxLimits()
    step(f"{SANDBOX}: compile")
    wasm = build_session_message_wasm().read_bytes()
    cold, disk, hits = Timings(), Timings(), Timings()
    for _ in range(sizes.compiles_cold):
        fresh = Runtime(limits)
        timed(partial(fresh.load, wasm), cold)
        assert fresh.stats.compiled == 1
    cache = workdir / "module-cache"
    Runtime(limits, cache_dir=cache).load(wasm)  # serializes
    for _ in range(sizes.compiles_disk):
        cached = Runtime(limits, cache_dir=cache)
        timed(partial(cached.load, wasm), disk)
        assert cached.stats.deserialized == 1
    runtime = Runtime(limits)
    module = runtime.load(wasm)
    for _ in range(sizes.compile_hits):
        timed(partial(runtime.load, wasm), hits)

    step(f"{SANDBOX}: instantiate + run + Cedar")
    svc = CurationService.open("memory://")
    svc.policies.max_staleness = POLICY_STALENESS_SECONDS
    svc.policies.add_policy(default_policies(SANDBOX_SERVICE), reason="bench")
    authorizer = _TimedAuthorizer(svc.policies)
    client = _CannedClient()
    job_input = sample_input()
    job_id, invocation_id = job_input["job"]["id"], job_input["invocation_id"]
    host = AuthorizedHost(
        authorizer,
        client,
        integration=DEFAULT_INTEGRATION,
        module_sha256=module.sha256,
        job_id=job_id,
        invocation_id=invocation_id,
    )
    baseline_path = ECHO_MODULE if ECHO_MODULE.is_file() else MINIMAL_MODULE
    baseline_module = runtime.load(baseline_path.read_text())
    canned = _CannedHost()
    payload = _payload(job_input)
    fuel_used = {}
    for label, loaded, calls in (("module", module, host), ("baseline", baseline_module, canned)):
        first = runtime.run(loaded, job_input, calls)
        if first.outcome != "ok":
            raise RuntimeError(f"sandbox bench set-up is broken: {first.to_json()}")
        fuel_used[label] = first.fuel_used
    plain = CedarAuthorizer(svc.policies)  # Cedar on its own, outside any run

    def check() -> AuthzOutcome:
        return plain.check(
            DEFAULT_INTEGRATION, module.sha256, "POST", f"{SANDBOX_SERVICE}/sessions",
            job_id, invocation_id,
        )  # fmt: skip

    total, baseline, no_cedar, cedar_alone = Timings(), Timings(), Timings(), Timings()
    phases = _Phases()
    series: list[Callable[[], None]] = [
        lambda: timed(lambda: runtime.run(module, job_input, host), total),
        lambda: timed(lambda: runtime.run(baseline_module, job_input, canned), baseline),
        lambda: timed(lambda: runtime.run(module, job_input, canned), no_cedar),
        lambda: timed(check, cedar_alone),
        lambda: phases.once(runtime, module, payload, host, authorizer),
    ]
    warmup = max(5, sizes.sandbox_runs // 10)
    for _ in range(warmup):
        for measure in series:
            measure()
    for timings in (total, baseline, no_cedar, cedar_alone, authorizer.timings):
        timings.ns.clear()
    phases.clear()
    gc.collect()
    for index in range(sizes.sandbox_runs):
        offset = index % len(series)  # rotate which series goes first
        for measure in series[offset:] + series[:offset]:
            measure()
    in_run = authorizer.timings  # every check made from inside a run (total and phases)
    client.close()
    svc.close()
    return Measurement(
        name=SANDBOX,
        unit=TIME_UNIT,
        value=total.percentile_us(0.5),
        baseline=baseline.percentile_us(0.5),
        n=total.n,
        p50=total.percentile_us(0.5),
        p99=total.percentile_us(0.99),
        target=Target(200.0, "value", "<="),
        notes=(
            "value: p50 of one Runtime.run of the real build_session_message module "
            "(fresh store + instantiate + run, its http_call Cedar-checked by CedarAuthorizer over "
            "a memory:// PolicyBook, then answered 201 by a canned session client: no network); "
            f"baseline: p50 of the same run of {baseline_path.name} (one http_call answered by a "
            "canned host, no Cedar). ratio = baseline / value. details.breakdown: each step "
            "timed on its own, in us."
        ),
        details={
            "loadavg_1m": load,
            "module_bytes": len(wasm),
            "module_sha256": module.sha256,
            "baseline_module": baseline_path.name,
            "fuel_used": fuel_used,
            "warmup": warmup,
            "breakdown": {
                "compile_cold": cold.summary(),
                "compile_cached_memory_hit": hits.summary(),
                "compile_cached_disk_deserialize": disk.summary(),
                "instantiate": phases.instantiate.summary(),
                "run": phases.run.summary(),
                "run_excl_cedar": phases.guest_excl_cedar.summary(),
                "store_teardown": phases.teardown.summary(),
                "cedar_check_in_run": in_run.summary(),
                "cedar_check_alone": cedar_alone.summary(),
                "invocation_without_cedar": no_cedar.summary(),
                "invocation_total": total.summary(),
                "baseline_invocation": baseline.summary(),
            },
        },
    )


def _payload(job_input: Mapping[str, Any]) -> bytes:
    return json.dumps(job_input, separators=(",", ":")).encode("utf-8")


# == 3. job cycles ===========================================================================


def measure_job_cycles(sizes: Sizes, workdir: Path, step: Step) -> Measurement:
    load = load_average()
    batch, rounds = sizes.cycle_batch, sizes.cycle_rounds
    with SessionService() as sessions:
        step(f"{CYCLES}: dispatcher")
        system = build_system(Settings.from_env(store_url=f"sqlite:///{workdir / 'cycles.db'}"))
        try:
            svc = system.service
            svc.policies.add_policy(default_policies(sessions.url), reason="bench")
            dispatcher = system.dispatcher()
            per_invocation = Timings()
            process = dispatcher.process

            def timed_process(invocation_id: UUID) -> Any:
                started = time.perf_counter_ns()
                try:
                    return process(invocation_id)
                finally:
                    per_invocation.add(time.perf_counter_ns() - started)

            # Times each invocation the real dispatcher processes (it calls self.process).
            setattr(dispatcher, "process", timed_process)  # noqa: B010
            spec = {"session_service": sessions.url}
            _cycle_batch(svc, dispatcher, spec, max(2, batch // 5))  # warm-up
            per_invocation.ns.clear()
            applied_before = dispatcher.stats.applied
            prep = dispatch = 0.0
            for _ in range(rounds):
                prep_s, dispatch_s = _cycle_batch(svc, dispatcher, spec, batch)
                prep += prep_s
                dispatch += dispatch_s
            applied = dispatcher.stats.applied - applied_before
            stats = dispatcher.stats
            http = Timings()
            for _ in range(batch):
                timed(partial(_post_session, system.client, sessions.url), http)
        finally:
            system.close()
        step(f"{CYCLES}: baseline")
        baseline = _bare_cycles(workdir / "cycles-baseline.db", sizes.cycle_baseline)
    cycles = batch * rounds
    return Measurement(
        name=CYCLES,
        unit="cycles/s",
        value=cycles / (prep + dispatch),
        baseline=baseline.rate(),
        n=cycles,
        p50=per_invocation.percentile_us(0.5),
        p99=per_invocation.percentile_us(0.99),
        target=Target(1000.0, "value", ">="),
        notes=(
            "value: jobs per second through create -> configure -> submit (batches of "
            f"{batch}), then Dispatcher.run_once over the batch (claim, wasm, Cedar, POST to a "
            "loopback SessionService, guarded SessionSpawned), on SQLite, wired by "
            "bootstrap.build_system; baseline: the same domain steps with no claim, wasm, Cedar "
            "or HTTP (create -> configure -> submit -> complete(SessionSpawned)), one by one. "
            "p50/p99: one invocation inside the dispatcher (claim + run + complete), under its "
            "16-way concurrency, so including the wait for the GIL and SQLite's one writer."
        ),
        details={
            "loadavg_1m": load,
            "batch": batch,
            "rounds": rounds,
            "applied": applied,
            "dispatch_errors": stats.errors,
            "discarded": dict(stats.discarded),
            "prep_us_per_job": prep / cycles * 1e6,
            "dispatch_us_per_job": dispatch / cycles * 1e6,
            "concurrency": dispatcher.limiter.total_tokens,
            "store_transactions_per_cycle": 5,
            "baseline": baseline.summary(),
            "http_post_roundtrip": http.summary(),
        },
    )


def _post_session(client: SessionClient, url: str) -> None:
    client.request("POST", f"{url}/sessions", {"content-type": "application/json"}, "{}")


def _cycle_batch(
    svc: CurationService, dispatcher: Any, spec: Mapping[str, Any], batch: int
) -> tuple[float, float]:
    """(seconds creating/configuring/submitting, seconds dispatching) for one batch."""
    started = time.perf_counter()
    for index in range(batch):
        job_id = svc.create_job({**spec, "target": f"https://bench.example/{index}"})
        svc.configure(job_id, {"priority": "normal"})
        svc.submit(job_id)
    prepared = time.perf_counter()
    anyio.run(dispatcher.run_once)
    return prepared - started, time.perf_counter() - prepared


def _bare_cycles(path: Path, n: int) -> Timings:
    svc = CurationService.open(f"sqlite:///{path}")
    timings = Timings()
    try:

        def cycle(index: int) -> None:
            job_id = svc.create_job({"target": f"https://bench.example/{index}"})
            svc.configure(job_id, {"priority": "normal"})
            dispatch = svc.submit(job_id)
            svc.complete(dispatch, "SessionSpawned", {"session_id": f"s-{index}"})

        for index in range(max(2, n // 10)):
            cycle(index)
        for index in range(n):
            timed(lambda i=index: cycle(i), timings)  # type: ignore[misc]
    finally:
        svc.close()
    return timings


# == 4. the race =============================================================================


def measure_race(jobs: int, workdir: Path, step: Step) -> Measurement:
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
    return Measurement(
        name=RACE,
        unit="jobs/s",
        value=guarded["jobs"] / guarded["seconds"],
        baseline=unguarded["jobs"] / unguarded["seconds"],
        n=guarded["jobs"],
        p50=latencies.percentile_us(0.5),
        p99=latencies.percentile_us(0.99),
        notes=(
            f"value: scripts.race.run_race with {jobs} jobs, seed {RACE_SEED}, guarded, on SQLite "
            "(jobs / the race's own seconds, set-up excluded); baseline: the same seed with the "
            "incident's unguarded completions (--baseline), which does different work: jobs it "
            "wrongly fails are not retried. Both are dominated by the seeded slow answers (1.5 s) "
            "and Ready timeouts the race injects. p50/p99: per job, from Created to its last "
            "SessionSpawned. §7 sets no target."
        ),
        details={
            "loadavg_1m": load,
            "guarded": {k: guarded[k] for k in keys},
            "baseline": {k: unguarded[k] for k in keys},
        },
    )


def time_to_running(url: str) -> Timings:
    """Per job: from its Created event to its last SessionSpawned, read from the store."""
    created_topic = get_topic(CurationJob) + ".Created"
    spawned_topic = get_topic(CurationJob) + ".SessionSpawned"
    svc = CurationService.open(url)
    created: dict[UUID, datetime] = {}
    running: dict[UUID, datetime] = {}
    try:
        position = 0
        while True:
            notifications = svc.recorder.select_notifications(
                start=position,
                limit=1000,
                topics=(created_topic, spawned_topic),
                inclusive_of_start=False,
            )
            for notification in notifications:
                domain_event = svc.mapper.to_domain_event(notification)
                assert isinstance(domain_event, DomainEvent)
                into = created if notification.topic == created_topic else running
                into[UUID(str(notification.originator_id))] = domain_event.timestamp
            if len(notifications) < 1000:
                break
            position = notifications[-1].id
    finally:
        svc.close()
    timings = Timings()
    for job_id, finished in running.items():
        if job_id in created:
            timings.add(int((finished - created[job_id]).total_seconds() * 1e9))
    return timings


# == stores of the store-bound measurements (5-7) ============================================


@dataclass(frozen=True)
class ScratchStore:
    """A throwaway store: its URL and the env its configuration derives (SQLite file path,
    PostgreSQL connection and schema), for reading its tables without the library."""

    backend: str
    url: str
    env: dict[str, str]


@contextmanager
def scratch_store(
    backend: str, workdir: Path, pg_url: str | None, label: str
) -> Iterator[ScratchStore]:
    """A new SQLite file under ``workdir``, or a temporary PostgreSQL schema dropped after."""
    if backend == "sqlite":
        folder = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=workdir))
        url = f"sqlite:///{folder / f'{label}.db'}"
        yield ScratchStore(backend, url, parse_store_url(url).env)
        return
    assert pg_url is not None
    url, schema = with_temporary_schema(pg_url)
    config = parse_store_url(url)
    config.prepare()
    try:
        yield ScratchStore(backend, url, config.env)
    finally:
        drop_schema(config.env, schema)


# == 5. rebuild of job_status vs a raw scan ==================================================

EVENTS_PER_JOB = 100  # Created, Submitted, SessionSpawned and progress; 3 invocation events
RUNNING_AT_ONCE = 500  # jobs whose progress interleaves in the log
PUT_EVENTS = 5000  # events per transaction while filling the log
SCAN_PAGE = 5000  # rows per page of both raw scans (the rebuild's batch size too)
REBUILD_RATE_TARGET = 100_000.0  # events/s on SQLite (DESIGN.md §7)
RSS_TARGET_MB = 200.0  # peak RSS rebuilding LARGE_EVENTS events


@dataclass(frozen=True)
class FilledLog:
    jobs: int
    job_events: int
    invocation_events: int
    seconds: float

    @property
    def events(self) -> int:
        return self.job_events + self.invocation_events


def fill_log(svc: CurationService, events: int) -> FilledLog:
    """``events`` (at least 6) real domain events in ``svc``'s store, quickly: jobs of about
    EVENTS_PER_JOB events each (Created, Submitted, SessionSpawned, then ProgressRecorded; their
    invocations Started, Finished, Applied), built by the aggregates' own commands as
    CurationService would (``complete`` = ``_decide``'s steps) and put straight into the
    service's event store PUT_EVENTS at a time, RUNNING_AT_ONCE jobs' progress interleaved
    round-robin in the log as concurrent runs would leave it. No snapshots are taken (a rebuild
    reads only the log)."""
    started = time.perf_counter()
    jobs = max(1, events // EVENTS_PER_JOB)
    progress = max(0, events - 6 * jobs)
    pending: list[Any] = []
    job_events = invocation_events = 0

    def put(force: bool = False) -> None:
        nonlocal pending
        if pending and (force or len(pending) >= PUT_EVENTS):
            svc.events.put(pending)
            pending = []

    create = TRANSITIONS["Create"]
    submit = TRANSITIONS["Submit"].validate(None)
    for first in range(0, jobs, RUNNING_AT_ONCE):
        group = range(first, min(first + RUNNING_AT_ONCE, jobs))
        running: list[tuple[CurationJob, int]] = []
        for index in group:
            job = CurationJob(
                **create.validate({"spec": {"target": f"https://bench.example/{index}"}})
            )
            job.perform("Submit", submit)
            invocation = svc._start_invocation(job)
            spawned = completion_values("SessionSpawned", {"session_id": f"s-{index}"})
            job.perform("SessionSpawned", spawned, invocation_id=invocation.id)
            invocation.record("SessionSpawned", spawned, Applied(invocation.id, job.version))
            own, theirs = job.collect_events(), invocation.collect_events()
            pending += [*own, *theirs]
            job_events += len(own)
            invocation_events += len(theirs)
            quota = progress // jobs + (1 if index < progress % jobs else 0)
            running.append((job, quota))
        for step in range(max((q for _, q in running), default=0)):
            for job, quota in running:
                if step < quota:
                    job.record_progress({"step": step, "note": f"fetched page {step}"})
                    pending += job.collect_events()
                    job_events += 1
            put()
        put()
    put(force=True)
    return FilledLog(jobs, job_events, invocation_events, time.perf_counter() - started)


def library_scan(svc: CurationService) -> int:
    """Every notification, through the recorder's ``select_notifications`` in pages."""
    rows, position = 0, 0
    while True:
        page = svc.recorder.select_notifications(
            start=position, limit=SCAN_PAGE, inclusive_of_start=False
        )
        rows += len(page)
        if len(page) < SCAN_PAGE:
            return rows
        position = page[-1].id


def events_table(svc: CurationService) -> str:
    recorder = svc.recorder
    if isinstance(recorder, SQLiteApplicationRecorder | PostgresApplicationRecorder):
        return recorder.events_table_name
    raise TypeError(f"no notification table to scan in a {type(recorder).__name__}")


def bare_cursor_scan(store: ScratchStore, table: str) -> int:
    """Every row of the notification table (the columns a rebuild reads), through a bare
    driver cursor: sqlite3 on the file, or a psycopg server-side cursor; fetched in pages."""
    if store.backend == "sqlite":
        return _sqlite_scan(store.env["SQLITE_DBNAME"], table)
    return _postgres_scan(store.env, table)


def _sqlite_scan(path: str, table: str) -> int:
    rows = 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        cursor = conn.execute(
            "SELECT rowid, originator_id, originator_version, topic, state "
            f'FROM "{table}" ORDER BY rowid'
        )
        while page := cursor.fetchmany(SCAN_PAGE):
            rows += len(page)
    finally:
        conn.close()
    return rows


def _postgres_scan(env: dict[str, str], table: str) -> int:
    rows = 0
    query = sql.SQL(
        "SELECT notification_id, originator_id, originator_version, topic, state "
        "FROM {}.{} ORDER BY notification_id"
    ).format(sql.Identifier(env["POSTGRES_SCHEMA"]), sql.Identifier(table))
    with (
        psycopg.connect(postgres_conninfo(env)) as conn,
        conn.cursor(name="sequent_bench_scan") as cursor,
    ):
        cursor.itersize = SCAN_PAGE
        cursor.execute(query)
        while page := cursor.fetchmany(SCAN_PAGE):
            rows += len(page)
    return rows


# Run as ``python -c _RSS_CHILD URL``: only what a rebuild imports, so its peak RSS is the
# rebuild's and not the benchmark's (wasmtime, anyio...).
_RSS_CHILD = """
import json, resource, sys, time
from projections.runner import Projections

def status_kb(key):
    with open("/proc/self/status") as lines:
        for line in lines:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None

with Projections.open(sys.argv[1]) as projections:
    before = status_kb("VmRSS")
    started = time.perf_counter()
    report = projections.rebuild("job_status", progress=False)
    seconds = time.perf_counter() - started
print(json.dumps({
    "events": report.events,
    "seconds": seconds,
    "equal": report.equal,
    "rss_before_rebuild_kb": before,
    "vmhwm_kb": status_kb("VmHWM"),
    "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
}))
"""


def rebuild_in_child(url: str) -> dict[str, Any]:
    """Rebuilds job_status in a fresh interpreter and returns its peak RSS (VmHWM and
    ru_maxrss, in MB) with the rebuild's events and seconds."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), *sys.path[1:]])}
    done = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, url],
        capture_output=True, text=True, cwd=PROJECT_ROOT, env=env, timeout=1800, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"the rebuild subprocess failed ({done.returncode}): {last}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    mb = {k.removesuffix("_kb") + "_mb": v / 1024 for k, v in figures.items() if k.endswith("_kb")}
    return {
        "events": figures["events"],
        "seconds": figures["seconds"],
        "events_per_s": figures["events"] / figures["seconds"] if figures["seconds"] else 0.0,
        "checksums_equal": figures["equal"],
        **mb,
    }


def measure_rebuild(
    backend: str, store: ScratchStore, events: int, rounds: int, step: Step
) -> Measurement:
    load = load_average()
    svc = CurationService.open(store.url)
    table = events_table(svc)
    rebuilt, library, bare = Timings(), Timings(), Timings()  # one sample per pass
    batches = Timings()
    counts: dict[str, int] = {"rebuild": 0, "library": 0, "bare": 0}
    equal: list[bool] = []
    try:
        step(f"{REBUILD} [{backend}]: writing {events:,} events")
        filled = fill_log(svc, events)
        projections = Projections(svc)
        step(f"{REBUILD} [{backend}]: catching the live views up")
        projections.catch_up()  # the live view at the head: rebuild's own catch-up is a no-op
        library_scan(svc)  # warm-up: the log in the page cache for both scans
        bare_cursor_scan(store, table)
        last = [0]

        def progress(position: int, head: int) -> None:
            now = time.perf_counter_ns()
            if position:  # each call after the first closes one batch (the last: the swap)
                batches.add(now - last[0])
            last[0] = now

        def rebuild() -> None:
            started = time.perf_counter_ns()
            report = projections.rebuild("job_status", progress=progress)
            rebuilt.add(time.perf_counter_ns() - started)
            counts["rebuild"] += report.events
            equal.append(report.equal)

        def scan_library() -> None:
            started = time.perf_counter_ns()
            counts["library"] += library_scan(svc)
            library.add(time.perf_counter_ns() - started)

        def scan_bare() -> None:
            started = time.perf_counter_ns()
            counts["bare"] += bare_cursor_scan(store, table)
            bare.add(time.perf_counter_ns() - started)

        passes: list[Callable[[], None]] = [rebuild, scan_library, scan_bare]
        for r in range(rounds):  # interleaved, in a rotating order
            step(f"{REBUILD} [{backend}]: round {r + 1} of {rounds}")
            for run in passes[r % 3 :] + passes[: r % 3]:
                gc.collect()
                run()
        projections.close()
    finally:
        svc.close()
    step(f"{REBUILD} [{backend}]: peak RSS, in a subprocess")
    child = rebuild_in_child(store.url)
    value = counts["rebuild"] / rebuilt.seconds
    library_rate = counts["library"] / library.seconds
    bare_rate = counts["bare"] / bare.seconds
    rate_target = REBUILD_RATE_TARGET if backend == "sqlite" else None
    peak = float(child["vmhwm_mb"])
    return Measurement(
        name=REBUILD,
        backend=backend,
        unit="events/s",
        value=value,
        baseline=library_rate,
        n=counts["rebuild"],
        p50=batches.percentile_us(0.5),
        p99=batches.percentile_us(0.99),
        target=Target(0.5, "ratio", ">="),
        notes=(
            f"value: events/s of Projections.rebuild('job_status') (shadow tables, replay, swap "
            f"with both checksums; the live view already at the head) over a log of "
            f"{filled.events:,} real domain events ({filled.jobs:,} jobs of about "
            f"{EVENTS_PER_JOB}, {min(RUNNING_AT_ONCE, filled.jobs)} running at once, progress "
            "interleaved), counting the "
            "job events it replays; baseline: rows/s of a raw scan of the whole notification "
            f"table through the library's recorder.select_notifications in pages of {SCAN_PAGE} "
            "(ratio = value / baseline). The same table scanned by a bare driver cursor "
            "(sqlite3 / psycopg server-side) is the second baseline: "
            "details.ratio_vs_bare_cursor_scan. Interleaved in rotating rounds. "
            "p50/p99: per rebuild batch (the last sample is the swap). details.peak_rss: the "
            "same rebuild in a fresh interpreter importing only projections.runner "
            f"(target <= {RSS_TARGET_MB:g} MB at {LARGE_EVENTS:,} events; "
            f"--events {LARGE_EVENTS} for that size). Targets: ratio >= 0.5 (meets), and on SQLite "
            f">= {REBUILD_RATE_TARGET:,.0f} events/s (details.events_per_s_meets)."
        ),
        details={
            "loadavg_1m": load,
            "events_in_log": filled.events,
            "job_events": filled.job_events,
            "invocation_events": filled.invocation_events,
            "jobs": filled.jobs,
            "fill_seconds": round(filled.seconds, 3),
            "rounds": rounds,
            "rebuild_seconds_per_round": rebuilt.seconds / rebuilt.n,
            "checksums_equal": all(equal),
            "library_scan": {
                "rows_per_s": library_rate,
                "seconds_per_scan": library.seconds / library.n,
            },
            "bare_cursor_scan": {
                "rows_per_s": bare_rate,
                "seconds_per_scan": bare.seconds / bare.n,
            },
            "ratio_vs_library_scan": value / library_rate,
            "ratio_vs_bare_cursor_scan": value / bare_rate,
            "log_notifications_per_s": filled.events * rebuilt.n / rebuilt.seconds,
            "events_per_s_target": rate_target,
            "events_per_s_meets": None if rate_target is None else value >= rate_target,
            "batch": {"size": REBUILD_BATCH, **batches.summary()},
            "peak_rss": child,  # vmhwm_mb is the figure; ru_maxrss may count the fork
            "rss_target_mb": RSS_TARGET_MB,
            "rss_target_at_events": LARGE_EVENTS,
            "rss_target_applies": filled.events >= LARGE_EVENTS,
            "rss_meets": peak <= RSS_TARGET_MB,
        },
    )


# == 6. the audit timeline of a long job =====================================================

AUDIT_TARGET_US = 50_000.0  # 50 ms
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


def measure_audit(
    backend: str, store: ScratchStore, events: int, runs: int, step: Step
) -> Measurement:
    load = load_average()
    svc = CurationService.open(store.url)
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
    return Measurement(
        name=AUDIT,
        backend=backend,
        unit=TIME_UNIT,
        value=total.percentile_us(0.5),
        baseline=baseline.percentile_us(0.5),
        n=total.n,
        p50=total.percentile_us(0.5),
        p99=total.percentile_us(0.99),
        target=Target(AUDIT_TARGET_US, "value", "<="),
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


# == 7. batched completions on PostgreSQL ====================================================

BATCH_SIZE = 200
BATCHED_TARGET = 5000.0  # completions/s
PREPARE_CHUNK = 200  # jobs (with their invocations) per save while preparing


def submitted_dispatches(svc: CurationService, n: int) -> list[Dispatch]:
    """n submitted jobs, as create_job + submit would leave them (Created, Submitted; the
    invocation Started), saved PREPARE_CHUNK jobs per transaction."""
    create = TRANSITIONS["Create"]
    submit = TRANSITIONS["Submit"].validate(None)
    dispatches: list[Dispatch] = []
    for first in range(0, n, PREPARE_CHUNK):
        aggregates: list[CurationJob | Invocation] = []
        for index in range(first, min(first + PREPARE_CHUNK, n)):
            job = CurationJob(
                **create.validate({"spec": {"target": f"https://bench.example/{index}"}})
            )
            job.perform("Submit", submit)
            invocation = svc._start_invocation(job)
            aggregates += [job, invocation]
            dispatches.append(
                Dispatch(job.id, invocation.id, invocation.expected_version, job.attempt)
            )
        svc.save(*aggregates)
    return dispatches


def measure_batched(store: ScratchStore, sizes: Sizes, step: Step) -> Measurement:
    load = load_average()
    n_batched, n_single = sizes.batched_completions, sizes.single_completions
    warmup = max(2, min(BATCH_SIZE, n_batched // 10))
    svc = CurationService.open(store.url)
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
