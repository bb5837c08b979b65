"""Guarded completions per second against a bare ``eventsourcing`` get->command->save loop on
the same kind of store (DESIGN.md §7, first row), in memory, on SQLite and, with --pg, on
PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.postgres import PostgresFactory

from domain import CurationService, Dispatch
from domain.store_url import parse_store_url
from scripts.bench.harness import (
    GUARDED,
    Bench,
    Measurement,
    Sizes,
    Target,
    Timings,
    load_average,
)
from scripts.bench.stores import ScratchStore, open_store, scratch_stores

# The library's PostgreSQL option: events inserted by a database function (one statement in
# autocommit, no table lock, and the recorder's _insert_events hook skipped).
DB_FUNCTIONS_BACKEND = "postgresql+db_functions"
DB_FUNCTIONS_ENV = {PostgresFactory.POSTGRES_ENABLE_DB_FUNCTIONS: "y"}
GUARDED_TARGET = 0.9  # DESIGN.md §7: against the bare pair doing the same storage work


def measure(bench: Bench) -> list[Measurement]:
    sizes = bench.config.sizes
    n = {"memory": sizes.completions_memory, "sqlite": sizes.completions_sqlite,
         "postgresql": sizes.completions_postgres}  # fmt: skip
    backends = ["memory", *bench.config.backends]
    results = [
        measure_completions(store, n[store.backend], sizes)
        for store in scratch_stores(bench, GUARDED, backends)
    ]
    if bench.config.pg_url:
        # The bare loop in a schema of its own: the library names its insert function after the
        # schema and not the table, so a second application in one schema would replace the
        # service's function with its own (the service's events going into the bare table).
        for store, bare in zip(
            scratch_stores(bench, GUARDED, ["postgresql"]),
            scratch_stores(bench, GUARDED, ["postgresql"]),
            strict=True,
        ):
            variant, bare_variant = (
                replace(s, backend=DB_FUNCTIONS_BACKEND, env={**s.env, **DB_FUNCTIONS_ENV})
                for s in (store, bare)
            )
            results.append(measure_completions(variant, n["postgresql"], sizes, bare_variant))
    return results


def open_scratch(store: ScratchStore) -> CurationService:
    """The store as bootstrap opens it, or, for a variant with library options of its own
    (``store.env`` beyond what its URL says), the service over that env."""
    if store.backend == DB_FUNCTIONS_BACKEND:
        return CurationService(store.env, url=store.url)
    return open_store(store.url)


class _Counter(Aggregate):
    """The trivial aggregate of the bare loop."""

    def __init__(self) -> None:
        self.count = 0

    @event("Incremented")
    def increment(self) -> None:
        self.count += 1


class _BareApp(Application[UUID]):
    name = "SequentBenchBare"  # its own tables, beside the service's in a shared store


def bare_env(store: ScratchStore) -> dict[str, str]:
    """Where the bare Application keeps its events: on SQLite a second file in the store's
    folder (so neither loop waits on the other's writer lock), elsewhere the store itself (the
    application's own tables, named after it)."""
    if store.backend != "sqlite":
        return store.env
    folder = Path(store.env["SQLITE_DBNAME"]).parent
    return parse_store_url(f"sqlite:///{folder / 'bare.db'}").env


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
    store: ScratchStore, n: int, sizes: Sizes, bare_store: ScratchStore | None = None
) -> Measurement:
    """``bare_store``: where the bare loops keep their events (default: beside the service's)."""
    load = load_average()
    warmup = max(2, n // 10)
    svc = open_scratch(store)
    bare = _BareApp(bare_env(bare_store or store))
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
    vs_single = guarded.rate() / single.rate()
    return Measurement(
        name=GUARDED,
        backend=store.backend,
        unit="ops/s",
        value=guarded.rate(),
        baseline=pair.rate(),
        n=guarded.n,
        p50=guarded.percentile_us(0.5),
        p99=guarded.percentile_us(0.99),
        target=Target(GUARDED_TARGET, "ratio", ">="),
        notes=(
            "value: guarded svc.complete() per second (load job + invocation, decide, save both "
            "in one transaction); baseline (DESIGN.md §7): a bare eventsourcing pair doing the "
            "same storage work on the same kind of store (two aggregates loaded, 3 events "
            "read, 3 written, one save) with no guard. details.bare: a bare get->command->save "
            "of one trivial aggregate (2 read, 1 written), and the ratio against it."
        ),
        details={
            "loadavg_1m": load,
            "warmup": warmup,
            "rounds": rounds,
            "bare": {**single.summary(), "ops_per_s": single.rate()},
            "bare_pair": {**pair.summary(), "ops_per_s": pair.rate()},
            "ratio_vs_bare_single": vs_single,
            "aggregates_written_per_op": {"guarded": 2, "bare": 1, "bare_pair": 2},
            "events_per_op": {
                "guarded": {"read": 3, "written": 3},
                "bare": {"read": 2, "written": 1},
                "bare_pair": {"read": 3, "written": 3},
            },
        },
    )
