"""The sandbox's invocation overhead excluding the network (DESIGN.md §7): one run of the real
build_session_message module (fresh store, instantiate, run, its http_call Cedar-checked and
answered by a canned client) against the same run of a minimal echo guest with no Cedar, with
each step timed on its own as the breakdown."""

from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from bootstrap import Settings
from domain.cedar import default_policies
from domain.invocation import DEFAULT_INTEGRATION
from integrations.authorizer import AuthzOutcome, CedarAuthorizer
from integrations.host import HostSession, bound, call_guest, guest_exports, write_guest
from integrations.invoke import sample_input
from integrations.limits import SandboxLimits
from integrations.modules.build import build_session_message_wasm
from integrations.runtime import LoadedModule, Runtime
from integrations.sandboxed import AuthorizedHost
from scripts.bench.fakes import CannedClient, CannedHost, TimedAuthorizer
from scripts.bench.harness import (
    SANDBOX,
    Bench,
    Measurement,
    Timings,
    load_average,
    timed,
)
from scripts.bench.stores import open_store

SANDBOX_TARGET_US = 150.0  # DESIGN.md §7: p50 ≤ 150 us
SANDBOX_SERVICE = "http://127.0.0.1:9"  # sample_input()'s session service; never contacted
# The baseline guest: it logs, makes one http_call and echoes; shipped with the bench.
ECHO_MODULE = Path(__file__).with_name("echo.wat")


@dataclass
class Phases:
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
        authorizer: TimedAuthorizer,
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


def measure(bench: Bench) -> list[Measurement]:
    sizes, workdir, step = bench.config.sizes, bench.workdir, bench.step
    load = load_average()
    limits = SandboxLimits()
    step(f"{SANDBOX}: compile")
    # Built where bootstrap.build_system builds it (the job cycles' dispatcher), so once.
    wasm = build_session_message_wasm(Settings.from_env().modules_dir).read_bytes()
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
    svc = open_store("memory://")
    svc.policies.add_policy(default_policies(SANDBOX_SERVICE), reason="bench")
    authorizer = TimedAuthorizer(svc.policies)
    client = CannedClient()
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
    baseline_module = runtime.load(ECHO_MODULE.read_text())
    canned = CannedHost()
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
    phases = Phases()
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
    return [
        Measurement.latency(
            SANDBOX,
            total,
            baseline,
            ceiling_us=SANDBOX_TARGET_US,
            notes=(
                "value: p50 of one Runtime.run of the real build_session_message module (fresh "
                "store + instantiate + run, its http_call Cedar-checked by CedarAuthorizer over a "
                "memory:// PolicyBook, then answered 201 by a canned session client: no network); "
                f"baseline: p50 of the same run of {ECHO_MODULE.name} (one http_call answered by a "
                "canned host, no Cedar). ratio = baseline / value. details.breakdown: each step "
                "timed on its own, in us."
            ),
            details={
                "loadavg_1m": load,
                "module_bytes": len(wasm),
                "module_sha256": module.sha256,
                "baseline_module": ECHO_MODULE.name,
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
    ]


def _payload(job_input: Mapping[str, Any]) -> bytes:
    return json.dumps(job_input, separators=(",", ":")).encode("utf-8")
