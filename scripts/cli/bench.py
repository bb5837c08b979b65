"""``sequent bench [--quick] [--only NAME,...] [--pg URL] [--scale F] [--events N]
[--curve N,N,...] [--plot FILE.png] [--json]`` (DESIGN.md §5, §7).

The measurements themselves live in the bench package (scripts/bench/); this module is the
command: its parser, the progress bar on stderr (when stderr is a terminal), the rich tables,
and ``--json``, which prints a list with one object per measurement (and backend) as
scripts/bench/__init__.py documents.

``--db postgresql://…`` (or ``--pg URL``) adds the PostgreSQL backend to the store-bound
measurements, in a temporary schema dropped afterwards; any other ``--db`` is not used, since
the benchmark always works in throwaway stores.

``--curve 10000,100000,1000000`` sets the cost curve's points (events in the store; default
10k and 100k, 1k and 10k with --quick); ``--plot FILE.png`` also draws the cost curve and every
measurement against its target (scripts/bench/plot.py).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from scripts.bench import (
    COUNT_UNIT,
    CURVE_COMPLETION,
    CURVE_START,
    MEASUREMENT_NAMES,
    SANDBOX,
    BenchConfig,
    Measurement,
    UnknownMeasurement,
    default_names,
    parse_names,
    run_bench,
)
from scripts.cli.args import Args, Handler, Subcommands, add_command, positive_float, positive_int
from scripts.cli.output import OneLineParser, emit

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def measurement_names(text: str) -> list[str]:
    """argparse type of ``--only``: an unknown name is a one-line usage error."""
    try:
        return parse_names(text)
    except UnknownMeasurement as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def event_counts(text: str) -> tuple[int, ...]:
    """argparse type of ``--curve``: ``10000,100000`` -> (10000, 100000), ascending."""
    counts = sorted({positive_int(part.strip()) for part in text.split(",") if part.strip()})
    if not counts:
        raise argparse.ArgumentTypeError(f"expected event counts like 10000,100000, got {text!r}")
    return tuple(counts)


def png_path(text: str) -> Path:
    """argparse type of ``--plot``: a .png file in a folder that exists."""
    path = Path(text)
    if path.suffix.lower() != ".png":
        raise argparse.ArgumentTypeError(f"expected a .png file, got {text!r}")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"no folder {str(path.parent)!r} to write {path.name} in")
    return path


def pg_url_of(args: Args) -> str | None:
    if getattr(args, "pg", None):
        return str(args.pg)
    db = getattr(args, "db", None)
    return db if isinstance(db, str) and db.startswith(POSTGRES_SCHEMES) else None


def run_bench_command(args: Args) -> int:
    config = BenchConfig(
        quick=args.quick,
        scale=args.scale,
        pg_url=pg_url_of(args),
        rebuild_events=args.events,
        curve=args.curve,
    )
    names = args.only or default_names(args.quick)
    with progress_bar(len(names)) as step:
        results = run_bench(names, config, step)
    if args.plot is not None:
        from scripts.bench.plot import plot  # noqa: PLC0415  (matplotlib only when asked)

        plot(results, args.plot)
    return emit(args.json, [m.to_json() for m in results], lambda out, _: render(out, results))


@contextmanager
def progress_bar(total: int) -> Iterator[Callable[[str], None]]:
    """A step callback: a measurement's name advances the bar, anything else retitles it."""
    stderr = Console(stderr=True)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=stderr, transient=True, disable=not stderr.is_terminal) as bar:
        task = bar.add_task("bench", total=total)
        seen: set[str] = set()

        def step(label: str) -> None:
            if label in MEASUREMENT_NAMES:
                if seen:
                    bar.advance(task)
                seen.add(label)
            bar.update(task, description=label)

        yield step


# -- rendering ---------------------------------------------------------------------------------


def figure(value: float, unit: str) -> str:
    """A compact figure: ``4,537/s`` for a rate, ``333.6µs`` for a time, ``5.00`` for a count."""
    if not math.isfinite(value):
        return str(value)
    if unit == COUNT_UNIT:
        return f"{value:.2f}"
    if unit == "us":
        if value < 1_000:
            return f"{value:,.1f}µs"
        return f"{value / 1e3:,.1f}ms" if value >= 10_000 else f"{value / 1e3:,.2f}ms"
    return f"{value:,.0f}/s" if value >= 100 else f"{value:,.2f}/s"


def target_text(m: Measurement) -> str:
    if m.target is None:
        return "-"
    op = {">=": "≥", "<=": "≤"}[m.target.op]
    if m.target.on == "ratio":
        return f"ratio{op}{m.target.value:g}"
    return f"{op}{figure(m.target.value, m.unit)}"


def target_cell(m: Measurement) -> Text:
    """The target and whether it is met: ``ratio≥0.7 no`` (red) or ``≤200.0µs yes`` (green)."""
    if m.meets is None:
        return Text(target_text(m))
    return Text(f"{target_text(m)} {'yes' if m.meets else 'no'}", "green" if m.meets else "red")


def results_table(results: Sequence[Measurement]) -> Table:
    table = Table(
        title="sequent bench: ratio = speed relative to the baseline (higher is better); "
        "p50/p99 per operation",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("measurement", no_wrap=True)
    table.add_column("store", no_wrap=True)
    for column in ("value", "baseline", "ratio", "target met", "n", "p50", "p99"):
        table.add_column(column, justify="right", no_wrap=True)
    for m in results:
        table.add_row(
            m.name, m.backend or "-", figure(m.value, m.unit), figure(m.baseline, m.unit),
            f"{m.ratio:.3f}", target_cell(m), str(m.n), figure(m.p50, "us"),
            figure(m.p99, "us"),
        )  # fmt: skip
    return table


def breakdown_table(m: Measurement) -> Table | None:
    breakdown: dict[str, dict[str, Any]] = dict(m.details.get("breakdown", {}))
    if not breakdown:
        return None
    table = Table(title=f"{m.name}: breakdown", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("step", no_wrap=True)
    for column in ("n", "p50", "p99"):
        table.add_column(column, justify="right")
    for step, figures in breakdown.items():
        table.add_row(
            step,
            str(figures["n"]),
            figure(float(figures["p50"]), "us"),
            figure(float(figures["p99"]), "us"),
        )
    return table


def curve_table(results: Sequence[Measurement]) -> Table | None:
    """The cost curve, one row per backend and point: completions and the worker's start."""
    starts = {m.backend: m for m in results if m.name == CURVE_START}
    curves = [m for m in results if m.name == CURVE_COMPLETION]
    if not curves:
        return None
    table = Table(title="cost curve", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("store", no_wrap=True)
    for column in ("events", "completion p50", "p99", "completions/s", "first dispatch",
                   "worker RSS"):  # fmt: skip
        table.add_column(column, justify="right", no_wrap=True)
    for m in curves:
        start = starts.get(m.backend)
        start_points = list(start.details["points"]) if start else []
        for index, point in enumerate(m.details["points"]):
            at = start_points[index] if index < len(start_points) else None
            table.add_row(
                m.backend or "-", f"{point['events']:,}", figure(point["p50"], "us"),
                figure(point["p99"], "us"), figure(point["completions_per_s"], "ops/s"),
                f"{at['first_dispatch_p50_s']:.2f}s" if at else "-",
                f"{at['peak_rss_mb']:.0f}MB" if at else "-",
            )  # fmt: skip
    return table


# The side targets a measurement's details say it meets or not, beside its headline one.
SIDE_TARGETS = {
    "p99_meets": "p99 flat",
    "rss_meets": "peak RSS",
    "claims_lost_meets": "claims lost",
    "total_meets": "reads and writes",
}


def extra_ratios(m: Measurement) -> str:
    parts = [
        f"{key} {float(m.details[key]):.3f}"
        for key in ("ratio_vs_bare_single", "ratio_vs_library_scan", "p99_ratio")
        if key in m.details
    ]
    parts += [
        f"{label} {'met' if m.details[key] else 'NOT met'}"
        for key, label in SIDE_TARGETS.items()
        if key in m.details
    ]
    load = m.details.get("loadavg_1m")
    if load is not None:
        parts.append(f"load average {load}")
    return f" [{'; '.join(parts)}]" if parts else ""


def render(out: Console, results: Sequence[Measurement]) -> None:
    out.print(results_table(results))
    for m in results:
        if m.name == SANDBOX and (table := breakdown_table(m)) is not None:
            out.print(table)
    if (curve := curve_table(results)) is not None:
        out.print(curve)
    for m in results:
        label = f"{m.name} ({m.backend})" if m.backend else m.name
        out.print(Text.assemble((label, "bold"), f"{extra_ratios(m)}: {m.notes}"))


# -- parser ------------------------------------------------------------------------------------


def add_parsers(sub: Subcommands, common: OneLineParser) -> None:
    bench = add_command(
        sub,
        common,
        "bench",
        help="the benchmark suite of DESIGN.md §7, as ratios against baselines run alongside",
        description="Measures the guarded completion against a bare eventsourcing loop (memory, "
        "SQLite, and PostgreSQL with --pg or --db postgresql://...), the sandbox invocation "
        "overhead with its breakdown, full job cycles through the dispatcher, the race, the "
        "rebuild, the audit timeline, group commit, database transactions per job cycle, 1, 2 "
        "and 4 worker processes on PostgreSQL, and the cost curve (completion latency and "
        "worker start against ever more events in the store). Stores are throwaway; the "
        "figures are noisy on a shared machine, the ratios less so.",
    )
    bench.add_argument(
        "--quick", action="store_true", help="small n and no race: under 20 s on 2 cores"
    )
    bench.add_argument(
        "--only",
        type=measurement_names,
        default=None,
        metavar="NAME,...",
        help=f"run only these (of {', '.join(MEASUREMENT_NAMES)})",
    )
    bench.add_argument(
        "--pg",
        default=None,
        metavar="URL",
        help="PostgreSQL server: adds it to the store-bound measurements (and runs the worker "
        "processes and batched completions, PostgreSQL only)",
    )
    bench.add_argument(
        "--scale",
        type=positive_float,
        default=1.0,
        metavar="F",
        help="multiply every n by F (e.g. 0.05 for a smoke run)",
    )
    bench.add_argument(
        "--events",
        type=positive_int,
        default=None,
        metavar="N",
        help="events in the rebuild's log (default 100,000; 10,000 with --quick); "
        "1000000 checks the peak-RSS target",
    )
    bench.add_argument(
        "--curve",
        type=event_counts,
        default=None,
        metavar="N,N,...",
        help="the cost curve's points, events in the store (default 10000,100000; 1000,10000 "
        "with --quick); 10000,100000,1000000 checks the worker-start and flat-cost targets",
    )
    bench.add_argument(
        "--plot",
        type=png_path,
        default=None,
        metavar="FILE.png",
        help="also draw the cost curve and each measurement against its target into FILE.png",
    )


HANDLERS: Mapping[str, Handler] = {"bench": run_bench_command}
