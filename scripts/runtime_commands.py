"""The CLI commands that run integrations: ``race``, ``invoke`` and ``worker``.

They differ from the store commands in cli.py (one service call each) in that they wire the
whole system through the composition root and may run for a while, so they live here; cli.py
adds their parsers and handlers to its table.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console
from rich.table import Table

from bootstrap import Settings, build_system
from domain import StoreURLError
from integrations.host import NoNetwork
from integrations.invoke import invoke_module, sample_input
from integrations.runtime import SandboxLimits
from scripts.output import EXIT_OK, OneLineParser, console, positive_int, print_json
from scripts.race import RaceConfig, run_race

Args = argparse.Namespace

RACE_KEYS = (
    "jobs", "running", "completed", "failed", "wrongly_failed", "stale_completions", "applied",
    "discarded", "compensated", "denied", "orphan_sessions", "timeouts", "events", "seconds",
)  # fmt: skip


# -- race -------------------------------------------------------------------------------------


def run_race_command(args: Args) -> int:
    modes = (False, True) if args.compare else (args.baseline,)
    if args.compare and args.db:
        raise StoreURLError(args.db, "--compare runs two fresh SQLite stores; leave out --db")
    results = [
        run_race(
            RaceConfig(jobs=args.jobs, seed=args.seed, baseline=baseline),
            args.db,
            progress=sys.stderr.isatty(),
        )
        for baseline in modes
    ]
    if args.json:
        print_json(results if args.compare else results[0])
    else:
        console().print(race_table(results))
    return EXIT_OK


def race_table(results: Sequence[Mapping[str, Any]]) -> Table:
    seed, jobs = results[0]["seed"], results[0]["jobs"]
    table = Table(title=f"race: {jobs} jobs, seed {seed}", title_justify="left")
    table.add_column("figure")
    for result in results:
        table.add_column(str(result["mode"]), justify="right")
    for key in RACE_KEYS:
        table.add_row(key, *(str(r[key]) for r in results))
    return table


# -- invoke -----------------------------------------------------------------------------------


def run_invoke_command(args: Args) -> int:
    job_input = args.input if args.input is not None else sample_input()
    limits = SandboxLimits(
        fuel=args.fuel or SandboxLimits.fuel,
        wall_clock_seconds=args.timeout or SandboxLimits.wall_clock_seconds,
    )
    if args.no_network:
        result = invoke_module(args.module, job_input, NoNetwork(), limits)
    else:
        settings = Settings.from_env(store_url=args.db, module=args.module, limits=limits)
        system = build_system(settings)
        try:
            job = job_input.get("job", {}) if isinstance(job_input, dict) else {}
            host = system.runner.host_for(
                str(job.get("id", "")), str(job_input.get("invocation_id", ""))
            )
            result = system.runtime.run(system.module, job_input, host, limits)
        finally:
            system.close()
    payload = result.to_json()
    if args.json:
        print_json(payload)
    else:
        render_invoke(console(), payload)
    return EXIT_OK


def render_invoke(out: Console, payload: Mapping[str, Any]) -> None:
    table = Table(title="sandbox run", title_justify="left", show_header=False)
    for key, value in payload.items():
        table.add_row(key, value if isinstance(value, str) else json.dumps(value))
    out.print(table)


# -- worker -----------------------------------------------------------------------------------


def run_worker_command(args: Args) -> int:
    system = build_system(Settings.from_env(store_url=args.db))
    try:
        dispatcher = system.dispatcher(
            concurrency=args.concurrency,
            lease=timedelta(seconds=args.lease),
            worker_id=args.worker_id,
        )
        if args.once:
            anyio.run(dispatcher.run_once)
        else:
            anyio.run(dispatcher.run, stop_on_signals().is_set)
        stats = asdict(dispatcher.stats)
    finally:
        system.close()
    if args.json:
        print_json(stats)
    else:
        console().print(" ".join(f"{k}={v}" for k, v in stats.items()))
    return EXIT_OK


def stop_on_signals() -> threading.Event:
    """SIGTERM or SIGINT asks the worker to finish what it has in flight and stop."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


# -- parsers ----------------------------------------------------------------------------------


def add_runtime_commands(sub: Any, common: OneLineParser, json_value: Any) -> None:
    race = sub.add_parser(
        "race",
        parents=[common],
        help="run the incident end to end with real parts (guarded, or --baseline)",
        description="N jobs submitted at once against two loopback session services; Cedar "
        "denies one of them until the decisions are approved; slow answers make runs complete "
        "late. Without --db each run uses a fresh SQLite file under .sequent/.",
    )
    race.add_argument("--jobs", type=positive_int, default=10, metavar="N")
    race.add_argument("--seed", type=int, default=7, metavar="S")
    mode = race.add_mutually_exclusive_group()
    mode.add_argument("--baseline", action="store_true", help="the incident's unguarded handling")
    mode.add_argument("--compare", action="store_true", help="both runs, side by side")
    race.set_defaults(command="race")

    invoke = sub.add_parser("invoke", parents=[common], help="run one module once in the sandbox")
    invoke.add_argument("--module", type=Path, required=True, metavar="FILE", help=".wasm or .wat")
    invoke.add_argument("--input", type=json_value, default=None, metavar="JSON")
    invoke.add_argument("--fuel", type=positive_int, default=None)
    invoke.add_argument("--timeout", type=float, default=None, metavar="SECONDS")
    invoke.add_argument(
        "--no-network",
        action="store_true",
        help="answer every http_call 'denied' instead of asking Cedar and calling out",
    )
    invoke.set_defaults(command="invoke")

    worker = sub.add_parser("worker", parents=[common], help="run a dispatcher against --db")
    worker.add_argument("--concurrency", type=positive_int, default=16)
    worker.add_argument("--lease", type=float, default=60.0, metavar="SECONDS")
    worker.add_argument("--worker-id", default=None)
    worker.add_argument("--once", action="store_true", help="run what is pending, then exit")
    worker.set_defaults(command="worker")


HANDLERS = {
    "race": run_race_command,
    "invoke": run_invoke_command,
    "worker": run_worker_command,
}
