"""``sequent bench``: the performance targets of DESIGN.md §7, measured as ratios in one process.

Every measurement runs its own baseline in the same process, interleaved with it in rounds, so a
shared or noisy machine slows both sides alike; a ratio from one run is comparable with another's
while the absolute figures are not. Each result is one :class:`Measurement`:

``name, backend, unit, value, baseline, ratio, better, target, target_on, target_op, meets, n,
p50, p99, latency_unit, notes, details``

* ``value`` and ``baseline`` are in ``unit``: a rate (``ops/s``, ``cycles/s``, ``jobs/s``; higher
  is better) or a time (``us``; lower is better). ``better`` says which.
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
"""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import tempfile
import time
import uuid
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
from eventsourcing.utils import get_topic
from psycopg import sql
from wasmtime import Store

from domain import CurationService, Dispatch
from domain.invocation import DEFAULT_INTEGRATION
from domain.job import CurationJob
from domain.storage import parse_store_url, postgres_conninfo
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
from integrations.runtime import LoadedModule, Runtime, SandboxLimits, epoch_ticks
from integrations.sandboxed import AuthorizedHost
from integrations.sessions import SessionClient, SessionService
from scripts import compose
from scripts.race import RaceConfig, run_race

Better = Literal["higher", "lower"]
TargetOn = Literal["ratio", "value"]
TargetOp = Literal[">=", "<="]

GUARDED = "guarded_completion_vs_bare_loop"
SANDBOX = "sandbox_invocation_overhead"
CYCLES = "job_cycles_per_second"
RACE = "race_jobs_per_second"
MEASUREMENT_NAMES: tuple[str, ...] = (GUARDED, SANDBOX, CYCLES, RACE)
SKIPPED_WHEN_QUICK = frozenset({RACE})  # unless named with --only

TIME_UNIT = "us"
RATE_UNITS = frozenset({"ops/s", "cycles/s", "jobs/s"})
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
)


@dataclass(frozen=True)
class BenchConfig:
    quick: bool = False
    scale: float = 1.0
    pg_url: str | None = None  # adds the PostgreSQL backend to the completion measurement

    @property
    def sizes(self) -> Sizes:
        base = QUICK if self.quick else FULL
        return base.scaled(self.scale) if self.scale != 1.0 else base


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


def run_bench(
    names: Sequence[str] | None = None,
    config: BenchConfig | None = None,
    step: Step | None = None,
) -> list[Measurement]:
    """Runs the named measurements (default: the suite, less the race when quick)."""
    config = config or BenchConfig()
    chosen = list(names) if names is not None else default_names(config.quick)
    if config.pg_url and GUARDED in chosen:
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


def fresh_store(runtime: Runtime, limits: SandboxLimits) -> Store:
    """A store limited as the runtime limits every invocation's store."""
    store = Store(runtime.engine)
    store.set_fuel(limits.fuel)
    store.set_limits(
        memory_size=limits.memory_bytes,
        table_elements=limits.table_elements,
        instances=1,
        memories=1,
    )
    store.set_epoch_deadline(epoch_ticks(limits.wall_clock_seconds))
    return store


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
        store = fresh_store(runtime, limits)
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
    svc.policies.max_staleness = compose.POLICY_STALENESS_SECONDS
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
        system = compose.build(f"sqlite:///{workdir / 'cycles.db'}")
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
            "scripts.compose.build; baseline: the same domain steps with no claim, wasm, Cedar "
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
