"""``sequent simulate`` (DESIGN.md §1's invariants checked over seeded runs of the whole system)
and ``sequent reconcile`` (invariant 4 restored after crashes: every session no job holds is
stopped and recorded).

``simulate`` runs ``simulation.simulate`` on a store of its own per seed (memory; ``--db`` is not
used), checks the read models' replay parity every tenth seed, shows a progress bar on a
terminal, and exits 1 when any seed broke an invariant, printing the command that replays the
first one. ``reconcile`` starts from ``bootstrap.open_reconciler``: the store and a session
client, no sandbox.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import Progress

from bootstrap import open_reconciler
from domain import CurationService
from integrations.reconcile import ReconcileReport
from integrations.session_client import SessionServiceError
from projections import Projections
from scripts.cli.args import Args, Handler, Subcommands, add_command, positive_int
from scripts.cli.output import (
    EXIT_FAILED,
    EXIT_OK,
    OneLineParser,
    UsageError,
    emit,
    fields_table,
    report,
)
from scripts.cli.root import settings
from simulation import DEFAULT_STEPS, simulate

PARITY_EVERY = 10  # seeds between two read-model parity checks (a verify costs about a seed)
TRACE_TAIL = 12  # lines of a failing seed's trace shown on a terminal

# -- simulate -----------------------------------------------------------------------------------


def read_model_drift(service: CurationService) -> list[str]:
    """Invariant 5 at the end of a seed: the read models replay to what they hold."""
    verified = Projections(service).verify()
    if verified.ok:
        return []
    return [f"read models: {verified.drifted} drifted, {verified.missing} missing"]


def run_simulate(args: Args) -> int:
    with progress_bar(args.seeds, show=not args.json and sys.stderr.isatty()) as advance:
        summary = simulate(
            args.seeds,
            args.start,
            args.baseline,
            steps=args.steps,
            processes=args.processes,
            end_check=read_model_drift,
            end_check_every=PARITY_EVERY,
            progress=advance,
        )
    emit(args.json, summary, render_simulate)
    return EXIT_FAILED if summary["violations"] else EXIT_OK


@contextmanager
def progress_bar(total: int, *, show: bool) -> Iterator[Any]:
    """A callback that advances a bar of ``total`` seeds, drawn on stderr when ``show``."""
    with Progress(console=Console(file=sys.stderr), transient=True, disable=not show) as bar:
        task = bar.add_task("seeds", total=total)
        yield lambda done: bar.advance(task, done)


def render_simulate(out: Console, summary: Mapping[str, Any]) -> None:
    keys = ("seeds", "steps", "violations", "first_failing_seed", "seconds")
    out.print(fields_table("simulate", {k: summary[k] for k in keys}))
    if summary["first_failing_seed"] is None:
        out.print("every invariant held after every step")
        return
    out.print(f"seed {summary['first_failing_seed']}: {summary['violation']}")
    for line in summary["trace"][-TRACE_TAIL:]:
        out.print(f"  {line}", markup=False)
    out.print(f"replay: {summary['replay']}", markup=False)


# -- reconcile ----------------------------------------------------------------------------------


def run_reconcile(args: Args) -> int:
    with open_reconciler(settings(args)) as reconciler:
        if args.service_url is None:
            found = reconciler.reconcile_all()
        else:
            try:
                found = reconciler.reconcile(args.service_url)
            except SessionServiceError as exc:
                if exc.kind == "bad_request":
                    raise UsageError(f"--service-url: {exc.message}") from None
                return report(exc)
    emit(args.json, found, render_reconcile)
    return EXIT_FAILED if found.unreachable else EXIT_OK


def render_reconcile(out: Console, found: ReconcileReport) -> None:
    out.print(
        f"{found.checked} live sessions checked, {found.orphans} held by no job, "
        f"{found.stopped} stopped and recorded"
    )
    for url in found.unreachable:
        out.print(f"unreachable: {url} (its orphans wait for the next pass)", markup=False)


HANDLERS: Mapping[str, Handler] = {"simulate": run_simulate, "reconcile": run_reconcile}


def add_parsers(sub: Subcommands, common: OneLineParser) -> None:
    simulate_parser = add_command(
        sub,
        common,
        "simulate",
        help="run the whole system under seeded faults, checking the invariants after each step",
        description="Each seed drives the real domain, guard, dispatcher steps, Cedar and "
        "reconciler on a memory store of its own with a virtual clock, through crashes, lost, "
        "late and repeated answers, timeouts, denials and approvals; the same seed always "
        "replays the same run. --db is not used.",
    )
    simulate_parser.add_argument("--seeds", type=positive_int, required=True, metavar="N")
    simulate_parser.add_argument("--start", type=int, default=0, metavar="S", help="first seed")
    simulate_parser.add_argument(
        "--steps", type=positive_int, default=DEFAULT_STEPS, metavar="K", help="actions per seed"
    )
    simulate_parser.add_argument(
        "--baseline", action="store_true", help="the incident's completion handling"
    )
    simulate_parser.add_argument("--processes", type=positive_int, default=2, metavar="P")

    reconcile_parser = add_command(
        sub,
        common,
        "reconcile",
        help="stop and record the sessions no job holds",
        description="Compares a session service's live sessions with what the jobs in --db "
        "hold, and stops every orphan: a session whose run is finished and no job holds, or "
        "one no run can be named for that is older than the grace period. Without "
        "--service-url, every session service a job names.",
    )
    reconcile_parser.add_argument("--service-url", default=None, metavar="URL")
