"""``sequent bench``: the performance targets of DESIGN.md §7, measured as ratios in one process.

The harness (harness.py: results, timings, sizes, configuration) runs one module per
measurement (completions, sandbox, cycles, race, rebuild, audit, batched, transactions,
workers, curve) in throwaway stores (stores.py), with fakes apart (fakes.py); suite.py says
which module measures which name. Helpers: history.py fills a store with finished jobs through
the library's recorder, processes.py starts and watches real ``sequent worker`` processes,
transactions.py counts the transactions an application's datastore runs
(``counting_transactions``), and plot.py draws ``--plot``.

Every measurement runs its own baseline in the same process, interleaved with it in rounds, so a
shared or noisy machine slows both sides alike; a ratio from one run is comparable with another's
while the absolute figures are not. Each result is one :class:`Measurement`:

``name, backend, unit, value, baseline, ratio, better, target, target_on, target_op, meets, n,
p50, p99, latency_unit, notes, details``

* ``value`` and ``baseline`` are in ``unit``: a rate (``ops/s``, ``cycles/s``, ``jobs/s``,
  ``events/s``, ``completions/s``; higher is better), a time (``us``, also for the audit's
  20 ms target and the worker's 1 s start; lower is better) or a count
  (``transactions/cycle``; lower is better). ``better`` says which.
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

Transactions per cycle run on SQLite and, with --pg, PostgreSQL; the worker processes (1, 2
and 4) on PostgreSQL only; the guarded completion also as ``postgresql+db_functions`` (the
library's insert function) with --pg. The cost curve (``cost_curve``) gives two results per
backend, ``cost_curve_completion`` and ``cost_curve_worker_start``, over a store it grows
through its points: 10k and 100k events (1k and 10k with --quick, times --scale), or
``--curve N,N,...`` (``BenchConfig(curve=...)``), e.g. 10000,100000,1000000 for §7's size.
"""

from scripts.bench.harness import (
    AUDIT,
    BATCHED,
    COUNT_UNIT,
    CURVE,
    CURVE_COMPLETION,
    CURVE_START,
    CYCLES,
    FULL,
    GUARDED,
    MEASUREMENT_NAMES,
    QUICK,
    RACE,
    RATE_UNITS,
    REBUILD,
    SANDBOX,
    TIME_UNIT,
    TRANSACTIONS,
    WORKERS,
    BenchConfig,
    Measurement,
    Sizes,
    Target,
    Timings,
    UnknownMeasurement,
    default_names,
    parse_names,
)
from scripts.bench.suite import run_bench

__all__ = [
    "AUDIT",
    "BATCHED",
    "COUNT_UNIT",
    "CURVE",
    "CURVE_COMPLETION",
    "CURVE_START",
    "CYCLES",
    "FULL",
    "GUARDED",
    "MEASUREMENT_NAMES",
    "QUICK",
    "RACE",
    "RATE_UNITS",
    "REBUILD",
    "SANDBOX",
    "TIME_UNIT",
    "TRANSACTIONS",
    "WORKERS",
    "BenchConfig",
    "Measurement",
    "Sizes",
    "Target",
    "Timings",
    "UnknownMeasurement",
    "default_names",
    "parse_names",
    "run_bench",
]
