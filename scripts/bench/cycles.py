"""Full job cycles per second through the real dispatcher (DESIGN.md §7): create, configure and
submit, then claim, wasm, Cedar, a POST to a loopback session service and the guarded
SessionSpawned, wired by bootstrap.build_system; against the same domain steps one by one with
no claim, wasm, Cedar or HTTP."""

from __future__ import annotations

import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from bootstrap import Settings, build_system
from domain import CurationService
from domain.cedar import default_policies
from integrations.dispatcher import Run
from integrations.session_client import SessionClient
from integrations.session_service import SessionService
from scripts.bench.harness import (
    CYCLES,
    Bench,
    Measurement,
    Target,
    Timings,
    load_average,
    timed,
)
from scripts.bench.stores import open_store


def measure(bench: Bench) -> list[Measurement]:
    sizes, workdir, step = bench.config.sizes, bench.workdir, bench.step
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
            process_run = dispatcher.process_run

            def timed_process(run: Run) -> Any:
                started = time.perf_counter_ns()
                try:
                    return process_run(run)
                finally:
                    per_invocation.add(time.perf_counter_ns() - started)

            # Times each run the real dispatcher's loop processes (it calls self.process_run).
            setattr(dispatcher, "process_run", timed_process)  # noqa: B010
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
    return [
        Measurement(
            name=CYCLES,
            unit="cycles/s",
            value=cycles / (prep + dispatch),
            baseline=baseline.rate(),
            n=cycles,
            p50=per_invocation.percentile_us(0.5),
            p99=per_invocation.percentile_us(0.99),
            target=Target(1000.0, "value", ">="),
            notes=(
                "value: jobs per second through create -> configure -> submit (start_jobs, "
                f"batches of {batch}), then Dispatcher.run_once over the batch (claims in "
                "groups, wasm, Cedar, POST to a "
                "loopback SessionService, guarded SessionSpawned), on SQLite, wired by "
                "bootstrap.build_system; baseline: the same domain steps with no claim, wasm, "
                "Cedar or HTTP (create -> configure -> submit -> complete(SessionSpawned)), one "
                "by one. p50/p99: one invocation inside the dispatcher (claim + run + complete), "
                "under its 16-way concurrency, so including the wait for the GIL and SQLite's one "
                "writer."
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
                "completion_commits": dispatcher.group.stats.commits,
                "largest_completion_group": dispatcher.group.stats.largest,
                "baseline": baseline.summary(),
                "http_post_roundtrip": http.summary(),
            },
        )
    ]


def _post_session(client: SessionClient, url: str) -> None:
    client.request("POST", f"{url}/sessions", {"content-type": "application/json"}, "{}")


def _cycle_batch(
    svc: CurationService, dispatcher: Any, spec: Mapping[str, Any], batch: int
) -> tuple[float, float]:
    """(seconds creating/configuring/submitting, seconds dispatching) for one batch: the jobs
    started as an operator starting many does (``start_jobs``, one transaction), then the
    dispatcher's loop until they have all run."""
    started = time.perf_counter()
    specs = [{**spec, "target": f"https://bench.example/{index}"} for index in range(batch)]
    svc.start_jobs(specs, {"priority": "normal"})
    prepared = time.perf_counter()
    anyio.run(dispatcher.run_once)
    return prepared - started, time.perf_counter() - prepared


def _bare_cycles(path: Path, n: int) -> Timings:
    svc = open_store(f"sqlite:///{path}")
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
