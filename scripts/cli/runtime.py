"""``sequent invoke`` (one module, once, in the sandbox) and ``sequent worker`` (a dispatcher
process): the commands that run integrations, so they wire the whole system through
``bootstrap.build_system`` rather than the store alone."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console

from bootstrap import Settings, System, build_system
from domain import StoreUnavailable
from integrations.host import NoNetwork
from integrations.invoke import invoke_module, sample_input
from integrations.limits import SandboxLimits
from integrations.telemetry import Telemetry
from scripts.cli.args import (
    Args,
    Handler,
    Subcommands,
    add_command,
    json_value,
    port_number,
    positive_int,
)
from scripts.cli.output import OneLineParser, emit, fields_table
from scripts.cli.root import settings
from scripts.cli.signals import stop_on_signals

log = logging.getLogger(__name__)

# A worker rides out a database that drops it while it starts (a restart, a terminated backend)
# as its loop does once it runs; a store still unavailable after this long is an error.
START_PATIENCE_SECONDS = 15.0
START_RETRY_SECONDS = 0.5


def run_invoke(args: Args) -> int:
    job_input = args.input if args.input is not None else sample_input()
    limits = SandboxLimits(
        fuel=args.fuel or SandboxLimits.fuel,
        wall_clock_seconds=args.timeout or SandboxLimits.wall_clock_seconds,
    )
    if args.no_network:  # no store, no Cedar, no session client: nothing to wire
        result = invoke_module(args.module, job_input, NoNetwork(), limits)
    else:
        with build_system(settings(args, module=args.module, limits=limits)) as system:
            job = job_input.get("job", {}) if isinstance(job_input, dict) else {}
            host = system.runner.host_for(
                str(job.get("id", "")), str(job_input.get("invocation_id", ""))
            )
            result = system.runtime.run(system.module, job_input, host, limits)
    return emit(args.json, result.to_json(), render_invoke)


def render_invoke(out: Console, payload: Mapping[str, Any]) -> None:
    out.print(fields_table("sandbox run", payload))


def run_worker(args: Args) -> int:
    # Before the slow start (opening the store, compiling the module): a SIGTERM meanwhile is
    # then a clean stop with nothing run, not death by the signal.
    stop = None if args.once else stop_on_signals()
    telemetry = Telemetry()  # spans always (a no-op without a tracer provider); metrics below
    with start_system(settings(args), stop or threading.Event()) as system, ExitStack() as stack:
        if args.metrics_port is not None:
            endpoint = stack.enter_context(telemetry.serve(args.metrics_port, args.metrics_host))
            print(f"sequent worker: metrics at {endpoint.url}", file=sys.stderr, flush=True)
        dispatcher = system.dispatcher(
            concurrency=args.concurrency,
            lease=timedelta(seconds=args.lease),
            worker_id=args.worker_id,
            reconcile_interval=args.reconcile_every or None,
            observer=telemetry,
        )
        if stop is None:
            anyio.run(dispatcher.run_once)
        else:
            anyio.run(dispatcher.run, stop.is_set)
        group = dispatcher.group.stats
        stats = {
            **asdict(dispatcher.stats),
            "completion_commits": group.commits,  # transactions its completions took
            "largest_completion_group": group.largest,
        }
    return emit(
        args.json, stats, lambda out, _: out.print(" ".join(f"{k}={v}" for k, v in stats.items()))
    )


def start_system(config: Settings, stop: threading.Event) -> System:
    """``build_system``, tried again every START_RETRY_SECONDS for START_PATIENCE_SECONDS
    while the store is unavailable (the first failure logged as a warning); opening a store is
    idempotent, so an attempt cut short is safe to repeat. A stop asked for meanwhile ends the
    trying."""
    give_up = time.monotonic() + START_PATIENCE_SECONDS
    tries = 0
    while True:
        try:
            return build_system(config)
        except StoreUnavailable as exc:
            if time.monotonic() >= give_up or stop.is_set():
                raise
            tries += 1
            # Said once, with how long it will go on; the same line every half second tells
            # an operator nothing more.
            level = logging.WARNING if tries == 1 else logging.DEBUG
            log.log(level, "store unavailable while starting, retrying for up to %.0f s: %s",
                    START_PATIENCE_SECONDS, exc)  # fmt: skip
            stop.wait(START_RETRY_SECONDS)


HANDLERS: Mapping[str, Handler] = {"invoke": run_invoke, "worker": run_worker}


def add_parsers(sub: Subcommands, common: OneLineParser) -> None:
    invoke = add_command(sub, common, "invoke", help="run one module once in the sandbox")
    invoke.add_argument("--module", type=Path, required=True, metavar="FILE", help=".wasm or .wat")
    invoke.add_argument("--input", type=json_value, default=None, metavar="JSON")
    invoke.add_argument("--fuel", type=positive_int, default=None)
    invoke.add_argument("--timeout", type=float, default=None, metavar="SECONDS")
    invoke.add_argument(
        "--no-network",
        action="store_true",
        help="answer every http_call 'denied' instead of asking Cedar and calling out",
    )

    worker = add_command(sub, common, "worker", help="run a dispatcher against --db")
    worker.add_argument(
        "--concurrency",
        type=positive_int,
        default=16,
        help="runs at once; they are claimed, and their completions saved, in groups",
    )
    worker.add_argument(
        "--lease",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long a claim keeps a run from other workers (a crashed worker's runs wait "
        "this long)",
    )
    worker.add_argument("--worker-id", default=None, help="default: HOST:PID")
    worker.add_argument(
        "--once",
        action="store_true",
        help="run every run the store offers now (more as runs finish), then exit",
    )
    worker.add_argument(
        "--reconcile-every",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="stop and record the sessions no job holds this often (0: never)",
    )
    worker.add_argument(
        "--metrics-port",
        type=port_number,
        default=None,
        metavar="N",
        help="serve this worker's own Prometheus metrics on http://HOST:N/metrics (0: any port)",
    )
    worker.add_argument(
        "--metrics-host", default="127.0.0.1", metavar="HOST", help="(default: loopback)"
    )
