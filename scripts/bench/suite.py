"""The suite: which module measures which name, in the order of DESIGN.md §7, and
``run_bench``, which runs a selection of them in a scratch directory it removes afterwards."""

from __future__ import annotations

import gc
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from domain.store_url import parse_store_url
from scripts.bench import (
    audit,
    batched,
    completions,
    curve,
    cycles,
    race,
    rebuild,
    sandbox,
    transactions,
    workers,
)
from scripts.bench.harness import (
    AUDIT,
    BATCHED,
    CURVE,
    CYCLES,
    GUARDED,
    RACE,
    REBUILD,
    SANDBOX,
    TRANSACTIONS,
    USES_POSTGRES,
    WORKERS,
    Bench,
    BenchConfig,
    Measurement,
    Step,
    default_names,
)

MEASURES: Mapping[str, Callable[[Bench], list[Measurement]]] = {
    GUARDED: completions.measure,
    SANDBOX: sandbox.measure,
    CYCLES: cycles.measure,
    RACE: race.measure,
    REBUILD: rebuild.measure,
    AUDIT: audit.measure,
    BATCHED: batched.measure,
    TRANSACTIONS: transactions.measure,
    WORKERS: workers.measure,
    CURVE: curve.measure,
}


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
        results: list[Measurement] = []
        for name in chosen:
            bench.step(name)
            gc.collect()
            results += MEASURES[name](bench)
        return results
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
