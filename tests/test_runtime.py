"""The sandbox runtime: every bad module gets its exact classification, the host process stays up
and the next good run still works; modules compile once; the disk cache spares a new process the
compiler. Fixtures are one small WAT file per behaviour under ``tests/modules``.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from wasmtime import wat2wasm

from integrations.host import NoNetwork, guest_error, pack, unpack
from integrations.invoke import invoke_module, sample_input
from integrations.limits import SandboxLimits
from integrations.module_files import ModuleRejected
from integrations.runtime import RunResult, Runtime

MODULES = Path(__file__).parent / "modules"
INPUT: dict[str, Any] = {
    "invocation_id": "inv-1",
    "job": {"id": "job-1", "attempt": 1, "spec": {"target": "t"}, "settings": {}},
}
CANNED = {"status": 201, "headers": {"content-type": "application/json"}, "body": '{"id":"s-1"}'}
FAST_FUEL = SandboxLimits(fuel=5_000_000)


def wat(name: str) -> str:
    return (MODULES / name).read_text()


class Canned:
    """A HostCalls that answers every http_call with one fixed response and keeps what it saw."""

    def __init__(self, response: dict[str, Any] | None = None) -> None:
        self.response = response if response is not None else CANNED
        self.requests: list[dict[str, Any]] = []
        self.logs: list[tuple[int, str]] = []

    def http_call(self, request: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(request)
        return self.response

    def log(self, level: int, message: str) -> None:
        self.logs.append((level, message))


class Slow(Canned):
    def http_call(self, request: dict[str, Any]) -> dict[str, Any]:
        time.sleep(0.3)
        return super().http_call(request)


class Raising(Canned):
    def http_call(self, request: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("connection reset by peer")


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return Runtime()


def assert_healthy(runtime: Runtime) -> None:
    """After any failure, the same process still runs the good module correctly."""
    host = Canned()
    result = runtime.run(wat("echo.wat"), INPUT, host)
    assert (result.outcome, result.error_kind) == ("ok", None), result.message
    assert result.output == {"input": INPUT, "response": CANNED}


def run_bad(
    runtime: Runtime, name: str, limits: SandboxLimits | None = None, host: Any = None
) -> RunResult:
    result = runtime.run(wat(name), INPUT, host, limits)
    assert_healthy(runtime)
    return result


# --- the good module ----------------------------------------------------------------------


def test_echo_logs_calls_the_host_and_returns_ok(runtime: Runtime) -> None:
    host = Canned()
    result = runtime.run(wat("echo.wat"), INPUT, host)
    assert result.outcome == "ok"
    assert result.error_kind is None
    assert result.output == {"input": INPUT, "response": CANNED}
    assert host.requests == [
        {
            "method": "POST",
            "url": "http://sessions.test/sessions",
            "headers": {"content-type": "application/json"},
            "body": '{"job":"echo"}',
        }
    ]
    assert host.logs == [(1, "echo: calling http_call")]
    assert [(line.level, line.message) for line in result.logs] == host.logs
    assert [(c.method, c.url, c.status) for c in result.http_calls] == [
        ("POST", "http://sessions.test/sessions", 201)
    ]
    assert result.decision_id is None
    assert 0 < result.fuel_used < 10_000
    assert result.seconds > 0
    assert len(result.module_sha256) == 64


def test_no_network_denies_and_the_guest_still_returns(runtime: Runtime) -> None:
    host = NoNetwork()
    result = runtime.run(wat("echo.wat"), INPUT, host)
    assert result.outcome == "ok"
    assert result.output is not None
    assert result.output["response"] == guest_error("denied", "no network in this sandbox run")
    assert host.logs == [(1, "echo: calling http_call")]
    assert len(host.requests) == 1


def test_to_json_has_the_cli_keys(runtime: Runtime) -> None:
    document = runtime.run(wat("echo.wat"), INPUT, Canned()).to_json()
    assert {"outcome", "error_kind", "message", "output", "fuel_used", "seconds"} <= set(document)
    assert document["http_calls"] == 1
    json.dumps(document)


# --- limits -------------------------------------------------------------------------------


def test_loop_forever_exhausts_fuel(runtime: Runtime) -> None:
    result = run_bad(runtime, "loop_forever.wat", FAST_FUEL)
    assert (result.outcome, result.error_kind) == ("failed", "fuel_exhausted")
    assert "OUT_OF_FUEL" in result.message
    assert result.fuel_used == FAST_FUEL.fuel


def test_loop_forever_with_plenty_of_fuel_times_out(runtime: Runtime) -> None:
    limits = SandboxLimits(fuel=10**15, wall_clock_seconds=0.2)
    result = run_bad(runtime, "loop_forever.wat", limits)
    assert (result.outcome, result.error_kind) == ("failed", "timeout")
    assert "INTERRUPT" in result.message
    assert 0.15 <= result.seconds < 2.0


def test_a_slow_host_call_counts_against_the_wall_clock(runtime: Runtime) -> None:
    result = run_bad(runtime, "echo.wat", SandboxLimits(wall_clock_seconds=0.2), Slow())
    assert (result.outcome, result.error_kind) == ("failed", "timeout")
    assert len(result.http_calls) == 1


def test_growing_memory_past_the_limit(runtime: Runtime) -> None:
    result = run_bad(runtime, "grow_memory.wat")
    assert (result.outcome, result.error_kind) == ("failed", "memory_limit")
    assert "67108864 of 67108864" in result.message


def test_growing_memory_past_a_smaller_limit(runtime: Runtime) -> None:
    result = run_bad(runtime, "grow_memory.wat", SandboxLimits(memory_bytes=2 * 1024 * 1024))
    assert (result.outcome, result.error_kind) == ("failed", "memory_limit")


def test_initial_memory_over_the_limit(runtime: Runtime) -> None:
    result = run_bad(runtime, "big_initial_memory.wat")
    assert (result.outcome, result.error_kind) == ("failed", "memory_limit")
    assert "2000 pages" in result.message


def test_alloc_answering_minus_one_is_out_of_memory(runtime: Runtime) -> None:
    result = run_bad(runtime, "alloc_fails.wat")
    assert (result.outcome, result.error_kind) == ("failed", "memory_limit")
    assert "returned -1" in result.message


def test_output_over_the_limit(runtime: Runtime) -> None:
    result = run_bad(runtime, "oversized_output.wat")
    assert (result.outcome, result.error_kind) == ("failed", "bad_output")
    assert "2097152 bytes exceeds the 1048576-byte limit" in result.message


# --- traps --------------------------------------------------------------------------------


def test_unreachable_is_a_trap_with_its_code(runtime: Runtime) -> None:
    result = run_bad(runtime, "unreachable.wat")
    assert (result.outcome, result.error_kind) == ("failed", "trap")
    assert result.message.startswith("UNREACHABLE:")
    assert "\n" not in result.message


def test_integer_divide_by_zero_is_a_trap(runtime: Runtime) -> None:
    result = run_bad(runtime, "divide_by_zero.wat")
    assert (result.outcome, result.error_kind) == ("failed", "trap")
    assert result.message.startswith("INTEGER_DIVISION_BY_ZERO:")


# --- linking ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("no_run_export.wat", "missing export 'run'"),
        ("run_wrong_signature.wat", "export 'run' is (i32) -> i32"),
        ("no_alloc_export.wat", "missing export 'alloc'"),
        ("unknown_import.wat", "sequent::spawn_process"),
    ],
)
def test_link_errors(runtime: Runtime, name: str, expected: str) -> None:
    result = run_bad(runtime, name)
    assert (result.outcome, result.error_kind) == ("failed", "link_error")
    assert expected in result.message
    assert result.fuel_used == 0


def test_alloc_out_of_bounds_breaks_the_abi(runtime: Runtime) -> None:
    result = run_bad(runtime, "alloc_out_of_bounds.wat")
    assert (result.outcome, result.error_kind) == ("failed", "abi_error")
    assert "outside linear memory" in result.message


# --- output -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("out_of_bounds_output.wat", "outside linear memory"),
        ("non_utf8_output.wat", "not UTF-8"),
        ("non_json_output.wat", "not JSON"),
        ("neither_ok_nor_error.wat", 'must be {"ok"'),
    ],
)
def test_bad_output(runtime: Runtime, name: str, expected: str) -> None:
    result = run_bad(runtime, name)
    assert (result.outcome, result.error_kind) == ("failed", "bad_output")
    assert expected in result.message
    assert result.output is None


# --- http_call ----------------------------------------------------------------------------


def test_http_call_with_a_bad_pointer_is_an_error_value(runtime: Runtime) -> None:
    host = Canned()
    result = run_bad(runtime, "http_bad_pointer.wat", host=host)
    assert result.outcome == "ok"
    assert result.output is not None
    error = result.output["response"]["error"]
    assert error["kind"] == "bad_request"
    assert "out of bounds" in error["message"]
    assert host.requests == []
    assert result.error_kind is None


def test_http_call_with_malformed_json_is_bad_request(runtime: Runtime) -> None:
    host = Canned()
    result = run_bad(runtime, "http_malformed_request.wat", host=host)
    assert result.outcome == "ok"
    assert result.output is not None
    assert result.output["response"]["error"]["kind"] == "bad_request"
    assert "not JSON" in result.output["response"]["error"]["message"]
    assert host.requests == []


def test_http_call_in_a_loop_stops_at_the_cap(runtime: Runtime) -> None:
    host = Canned()
    result = run_bad(runtime, "http_loop.wat", host=host)
    assert result.outcome == "ok"
    assert len(host.requests) == 16
    assert len(result.http_calls) == 16
    assert result.http_calls_over_limit == 84
    assert result.output is not None
    last = result.output["response"]["error"]
    assert last["kind"] == "denied"
    assert "limit of 16" in last["message"]
    assert result.decision_id is None


def test_http_call_cap_is_configurable(runtime: Runtime) -> None:
    result = run_bad(runtime, "http_loop.wat", SandboxLimits(http_calls=3), Canned())
    assert (len(result.http_calls), result.http_calls_over_limit) == (3, 97)


def test_host_denial_wins_over_what_the_guest_claims(runtime: Runtime) -> None:
    denial = guest_error("denied", "not permitted by policy", decision_id="dec-7")
    result = run_bad(runtime, "http_then_error.wat", host=Canned(denial))
    assert (result.outcome, result.error_kind) == ("error", "denied")
    assert result.decision_id == "dec-7"
    assert result.output == {"kind": "http_error", "message": "the session service did not answer"}


def test_host_http_error_is_mirrored(runtime: Runtime) -> None:
    result = run_bad(runtime, "http_then_error.wat", host=Raising())
    assert (result.outcome, result.error_kind) == ("error", "http_error")
    assert result.decision_id is None
    assert result.http_calls[0].error_kind == "http_error"


def test_oversized_host_response_reaches_the_guest_as_http_error(runtime: Runtime) -> None:
    huge = {"status": 200, "headers": {}, "body": "x" * 2048}
    limits = SandboxLimits(http_response_bytes=1024)
    result = run_bad(runtime, "http_then_error.wat", limits, Canned(huge))
    assert (result.outcome, result.error_kind) == ("error", "http_error")


def test_guest_error_claim_without_host_record_is_not_trusted(runtime: Runtime) -> None:
    result = run_bad(runtime, "http_then_error.wat", host=Canned())
    assert (result.outcome, result.error_kind) == ("error", None)
    assert result.output is not None
    assert result.output["kind"] == "http_error"


# --- the process stays up -----------------------------------------------------------------

BAD_MODULES = (
    "loop_forever.wat",
    "grow_memory.wat",
    "big_initial_memory.wat",
    "unreachable.wat",
    "divide_by_zero.wat",
    "no_run_export.wat",
    "run_wrong_signature.wat",
    "no_alloc_export.wat",
    "unknown_import.wat",
    "alloc_out_of_bounds.wat",
    "alloc_fails.wat",
    "out_of_bounds_output.wat",
    "non_utf8_output.wat",
    "non_json_output.wat",
    "neither_ok_nor_error.wat",
    "oversized_output.wat",
    "http_bad_pointer.wat",
    "http_malformed_request.wat",
    "http_loop.wat",
    "http_then_error.wat",
)


def test_every_bad_module_in_one_process_then_a_good_one() -> None:
    runtime = Runtime(FAST_FUEL)
    kinds = {name: runtime.run(wat(name), INPUT).error_kind for name in BAD_MODULES}
    assert kinds["loop_forever.wat"] == "fuel_exhausted"
    assert kinds["unknown_import.wat"] == "link_error"
    assert sorted(MODULES.glob("*.wat")) == sorted(
        MODULES / name for name in (*BAD_MODULES, "echo.wat", "fresh_memory.wat")
    )
    assert_healthy(runtime)


def test_a_run_never_sees_the_memory_of_the_run_before(runtime: Runtime) -> None:
    """Runs of one module reuse a pool slot whose pages stay resident (runtime.KEEP_RESIDENT):
    each must still start from the module's own image, and zeroes where it has none."""
    loaded = runtime.load(wat("fresh_memory.wat"))
    results = [runtime.run(loaded, INPUT) for _ in range(3)]
    assert [(r.outcome, r.output) for r in results] == [("ok", {})] * 3, results[-1].message


def test_concurrent_runs_each_see_their_own_host() -> None:
    runtime = Runtime()
    loaded = runtime.load(wat("echo.wat"))
    seen: dict[int, list[RunResult]] = {n: [] for n in range(8)}

    def worker(n: int) -> None:
        for _ in range(20):
            seen[n].append(runtime.run(loaded, INPUT, Canned({"status": 200, "body": str(n)})))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for n, results in seen.items():
        assert len(results) == 20
        expected = {"input": INPUT, "response": {"status": 200, "body": str(n)}}
        assert all(r.outcome == "ok" and r.output == expected for r in results)


# --- loading ------------------------------------------------------------------------------


def test_not_wasm_is_rejected(runtime: Runtime) -> None:
    with pytest.raises(ModuleRejected) as caught:
        runtime.load(b"\x7fELF\x02\x01\x01\x00\xff\xfe binary junk")
    assert caught.value.reason == "not_wasm"
    with pytest.raises(ModuleRejected) as caught:
        runtime.load("this is a text file, not a module")
    assert caught.value.reason == "not_wasm"


def test_invalid_wasm_binary_is_rejected(runtime: Runtime) -> None:
    with pytest.raises(ModuleRejected) as caught:
        runtime.load(b"\0asm\x01\0\0\0\x99garbage")
    assert caught.value.reason == "invalid"
    assert "\n" not in str(caught.value)


def test_module_over_the_size_limit_is_rejected_before_compiling() -> None:
    runtime = Runtime(SandboxLimits(module_bytes=1024))
    with pytest.raises(ModuleRejected) as caught:
        runtime.load(b"\0asm\x01\0\0\0" + b"\0" * 1024)
    assert caught.value.reason == "too_large"
    assert runtime.stats.compiled == 0
    default = Runtime()
    with pytest.raises(ModuleRejected, match="too_large"):
        default.load(b"\0asm\x01\0\0\0" + b"\0" * (10 * 1024 * 1024))


def test_same_bytes_compile_once() -> None:
    runtime = Runtime()
    first = runtime.load(wat("echo.wat"))
    second = runtime.load(bytes(wat2wasm(wat("echo.wat"))))
    assert first is second
    assert (runtime.stats.compiled, runtime.stats.memory_hits) == (1, 1)
    assert runtime.cached(first.sha256) is first


def test_disk_cache_spares_a_fresh_runtime_the_compiler(tmp_path: Path) -> None:
    cache = tmp_path / "module-cache"
    warm = Runtime(cache_dir=cache)
    loaded = warm.load(wat("echo.wat"))
    assert (warm.stats.compiled, warm.stats.serialized) == (1, 1)
    path = warm.cache_path(loaded.sha256)
    assert path is not None
    assert path.is_file()

    fresh = Runtime(cache_dir=cache)
    again = fresh.load(wat("echo.wat"))
    assert (fresh.stats.compiled, fresh.stats.deserialized) == (0, 1)
    assert again.sha256 == loaded.sha256
    assert fresh.run(again, INPUT, Canned()).outcome == "ok"


def test_a_corrupt_cache_file_is_recompiled(tmp_path: Path) -> None:
    sha = Runtime().load(wat("echo.wat")).sha256
    (tmp_path / f"{sha}.cwasm").write_bytes(b"not a serialized module")
    runtime = Runtime(cache_dir=tmp_path)
    assert runtime.run(wat("echo.wat"), INPUT, Canned()).outcome == "ok"
    assert (runtime.stats.deserialized, runtime.stats.compiled) == (0, 1)


@pytest.mark.parametrize(
    "bad",
    [{"fuel": -1}, {"wall_clock_seconds": 0}, {"memory_bytes": 1024}, {"http_calls": -1}],
)
def test_nonsense_limits_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must"):
        SandboxLimits(**bad)


# --- guest-memory helpers -----------------------------------------------------------------


@pytest.mark.parametrize(("ptr", "length"), [(0, 0), (16, 5), (0xFFFF_FFFF, 0xFFFF_FFFF)])
def test_pack_round_trips_as_a_signed_i64(ptr: int, length: int) -> None:
    packed = pack(ptr, length)
    assert -(2**63) <= packed < 2**63
    assert unpack(packed) == (ptr, length)


# --- invoke -------------------------------------------------------------------------------


def test_invoke_module_runs_a_wat_file_on_the_sample_input() -> None:
    result = invoke_module(MODULES / "echo.wat", None)
    assert result.outcome == "ok"
    assert result.output is not None
    assert result.output["input"] == sample_input()
    assert result.output["response"]["error"]["kind"] == "denied"


def test_invoke_module_runs_a_wasm_file(tmp_path: Path) -> None:
    path = tmp_path / "echo.wasm"
    path.write_bytes(wat2wasm(wat("echo.wat")))
    result = invoke_module(path, INPUT, Canned())
    assert result.output == {"input": INPUT, "response": CANNED}


def test_invoke_module_classifies_a_bad_module() -> None:
    result = invoke_module(MODULES / "loop_forever.wat", None, limits=FAST_FUEL)
    assert (result.outcome, result.error_kind) == ("failed", "fuel_exhausted")


def test_invoke_module_rejects_missing_and_oversized_files(tmp_path: Path) -> None:
    with pytest.raises(ModuleRejected) as caught:
        invoke_module(tmp_path / "missing.wasm", None)
    assert caught.value.reason == "unreadable"
    big = tmp_path / "big.wasm"
    big.write_bytes(b"\0asm\x01\0\0\0" + b"\0" * 2048)
    with pytest.raises(ModuleRejected) as caught:
        invoke_module(big, None, limits=SandboxLimits(module_bytes=1024))
    assert caught.value.reason == "too_large"
