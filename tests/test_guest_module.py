"""The real ``build_session_message`` guest module, run against a real session service.

Every behaviour test runs twice: in the project's sandbox (``integrations.runtime.Runtime``, real
limits and host functions) and in a minimal, independent wasmtime harness defined here that
implements guest ABI v1 (DESIGN.md §3) literally - ``alloc`` + ``run`` exported, ``sequent.log``
and ``sequent.http_call`` imported, packed ``(ptr << 32) | len`` results, the host writing its
response through the guest's ``alloc``. The second keeps the module honest to the written ABI
rather than to one implementation of it, and can feed inputs the sandbox never sends (non-JSON).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from integrations.limits import SandboxLimits
from integrations.modules import build
from integrations.modules.build import build_session_message_wasm, sha256_file
from integrations.runtime import Runtime
from integrations.session_client import SessionClient, SessionServiceError
from integrations.session_service import SessionService

HttpHandler = Callable[[dict[str, Any]], dict[str, Any]]
MASK32 = 0xFFFF_FFFF
MASK64 = 0xFFFF_FFFF_FFFF_FFFF
INFO = 1


# -- a minimal ABI v1 harness (test-only) -----------------------------------------------------


@dataclass
class GuestRun:
    output: dict[str, Any]
    logs: list[tuple[int, str]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)


class AbiHarness:
    """One engine and compiled module; a fresh store and linker per run. Host functions never
    raise into wasmtime: every failure becomes an error value for the guest."""

    def __init__(self, wasm: Path) -> None:
        self.engine = wasmtime.Engine()
        self.module = wasmtime.Module.from_file(self.engine, str(wasm))

    def run(self, payload: dict[str, Any] | bytes, http: HttpHandler) -> GuestRun:
        store = wasmtime.Store(self.engine)
        linker = wasmtime.Linker(self.engine)
        record = GuestRun(output={})
        i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()

        def read(caller: wasmtime.Caller, ptr: int, length: int) -> bytes:
            memory = caller.get("memory")
            assert isinstance(memory, wasmtime.Memory)
            return bytes(memory.read(caller, ptr, ptr + length))

        def log(caller: wasmtime.Caller, level: int, ptr: int, length: int) -> None:
            record.logs.append((level, read(caller, ptr, length).decode("utf-8", "replace")))

        def http_call(caller: wasmtime.Caller, ptr: int, length: int) -> int:
            try:
                request = json.loads(read(caller, ptr, length))
                record.requests.append(request)
                response = http(request)
            except Exception as exc:  # never raise into wasmtime
                response = {"error": {"kind": "bad_request", "message": str(exc)}}
            data = json.dumps(response).encode()
            alloc = caller.get("alloc")
            memory = caller.get("memory")
            assert isinstance(alloc, wasmtime.Func)
            assert isinstance(memory, wasmtime.Memory)
            out: int = alloc(caller, len(data))
            memory.write(caller, data, out)
            return ((out << 32) | len(data)) & MASK64

        linker.define_func("sequent", "log", wasmtime.FuncType([i32, i32, i32], []), log, True)
        linker.define_func(
            "sequent", "http_call", wasmtime.FuncType([i32, i32], [i64]), http_call, True
        )
        instance = linker.instantiate(store, self.module)
        exports = instance.exports(store)
        memory, alloc, run = exports["memory"], exports["alloc"], exports["run"]
        assert isinstance(memory, wasmtime.Memory)
        assert isinstance(alloc, wasmtime.Func)
        assert isinstance(run, wasmtime.Func)
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        ptr = alloc(store, len(data))
        memory.write(store, data, ptr)
        packed = run(store, ptr, len(data)) & MASK64
        out_ptr, out_len = packed >> 32, packed & MASK32
        record.output = json.loads(bytes(memory.read(store, out_ptr, out_ptr + out_len)))
        return record


class SandboxDriver:
    """The module in the project's sandbox, with a HostCalls that forwards to ``http``."""

    def __init__(self, wasm: Path) -> None:
        self.runtime = Runtime()
        self.module = self.runtime.load(wasm.read_bytes())

    def run(self, payload: dict[str, Any] | bytes, http: HttpHandler) -> GuestRun:
        record = GuestRun(output={})

        class Host:
            def http_call(self, request: dict[str, Any]) -> dict[str, Any]:
                record.requests.append(request)
                return http(request)

            def log(self, level: int, message: str) -> None:
                record.logs.append((level, message))

        data = json.loads(payload) if isinstance(payload, bytes) else payload
        result = self.runtime.run(self.module, data, Host())
        assert result.outcome in ("ok", "error"), result  # the module itself never fails
        assert result.output is not None
        record.output = {result.outcome: result.output}
        return record


Driver = AbiHarness | SandboxDriver


def forward_to(client: SessionClient) -> HttpHandler:
    """What the real host does after Cedar allowed the call: SessionClient.request."""

    def call(request: dict[str, Any]) -> dict[str, Any]:
        try:
            return client.request(
                request["method"], request["url"], request.get("headers"), request.get("body")
            )
        except SessionServiceError as exc:
            return exc.as_json()

    return call


def answer(response: dict[str, Any]) -> HttpHandler:
    return lambda _request: response


def invocation(service_url: str | None, **spec: Any) -> dict[str, Any]:
    if service_url is not None:
        spec["session_service"] = service_url
    return {
        "invocation_id": "inv-7",
        "job": {
            "id": "job-42",
            "attempt": 3,
            "spec": {"target": "https://curate.example/api", **spec},
            "settings": {"depth": 2, "tags": ["a", "b"]},
        },
    }


@pytest.fixture(scope="module")
def wasm() -> Path:
    return build_session_message_wasm()


@pytest.fixture(scope="module", params=["sandbox", "abi"])
def harness(wasm: Path, request: pytest.FixtureRequest) -> Driver:
    return SandboxDriver(wasm) if request.param == "sandbox" else AbiHarness(wasm)


@pytest.fixture(scope="module")
def abi_harness(wasm: Path) -> AbiHarness:
    return AbiHarness(wasm)


@pytest.fixture
def client(sessions: SessionService) -> Iterator[SessionClient]:
    with SessionClient(sessions.url, timeout=5.0) as c:
        yield c


# -- behaviour ----------------------------------------------------------------------------------


def test_abi_v1_exports_and_imports(wasm: Path) -> None:
    module = wasmtime.Module.from_file(wasmtime.Engine(), str(wasm))
    exports = {e.name: e.type for e in module.exports}
    assert set(exports) == {"memory", "alloc", "run"}
    assert isinstance(exports["memory"], wasmtime.MemoryType)

    def sig(t: Any) -> tuple[list[str], list[str]]:
        return [str(p) for p in t.params], [str(r) for r in t.results]

    assert sig(exports["alloc"]) == (["i32"], ["i32"])
    assert sig(exports["run"]) == (["i32", "i32"], ["i64"])
    imports = {(i.module, i.name): sig(i.type) for i in module.imports}
    assert imports == {
        ("sequent", "log"): (["i32", "i32", "i32"], []),
        ("sequent", "http_call"): (["i32", "i32"], ["i64"]),
    }


def test_creates_the_session_with_the_right_message(
    harness: Driver, sessions: SessionService, client: SessionClient
) -> None:
    run = harness.run(invocation(sessions.url), forward_to(client))

    assert len(sessions.sessions) == 1
    (session_id, session), *_ = sessions.sessions.items()
    assert run.output == {"ok": {"session_id": session_id}}
    assert session.message == {
        "job_id": "job-42",
        "attempt": 3,
        "invocation_id": "inv-7",
        "target": "https://curate.example/api",
        "settings": {"depth": 2, "tags": ["a", "b"]},
    }
    assert [(r.method, r.path, r.status) for r in sessions.requests] == [("POST", "/sessions", 201)]
    assert len(run.logs) == 1
    level, line = run.logs[0]
    assert level == INFO
    assert session_id in line
    assert "201" in line


def test_http_call_request_shape(harness: Driver) -> None:
    run = harness.run(
        invocation("http://127.0.0.1:9/"),  # trailing slash is trimmed
        answer({"status": 201, "headers": {}, "body": '{"session_id": "s-x"}'}),
    )
    assert run.output == {"ok": {"session_id": "s-x"}}
    (request,) = run.requests
    assert request["method"] == "POST"
    assert request["url"] == "http://127.0.0.1:9/sessions"
    assert request["headers"] == {"content-type": "application/json"}
    assert isinstance(request["body"], str)
    assert json.loads(request["body"])["job_id"] == "job-42"
    assert set(request) == {"method", "url", "headers", "body"}


def test_spec_and_settings_pass_through_exactly(harness: Driver) -> None:
    payload = invocation("http://svc", target={"url": "u", "weights": [0.1, 1e300]})
    payload["job"]["settings"] = {"big": 123456789012345678901234567890, "unicode": "é ✓ \u0000"}
    run = harness.run(payload, answer({"status": 200, "headers": {}, "body": '{"session_id":"s"}'}))
    message = json.loads(run.requests[0]["body"])
    assert message["target"] == {"url": "u", "weights": [0.1, 1e300]}
    assert message["settings"] == payload["job"]["settings"]


def test_missing_target_and_settings_default_to_null_and_empty(harness: Driver) -> None:
    payload: dict[str, Any] = {
        "invocation_id": "i",
        "job": {"id": "j", "attempt": 1, "spec": {"session_service": "http://svc"}},
    }
    run = harness.run(payload, answer({"status": 201, "headers": {}, "body": '{"session_id":"s"}'}))
    message = json.loads(run.requests[0]["body"])
    assert message == {
        "job_id": "j",
        "attempt": 1,
        "invocation_id": "i",
        "target": None,
        "settings": {},
    }


def test_a_500_is_an_http_error(harness: Driver, client: SessionClient) -> None:
    with SessionService(failure_rate=1.0) as failing:
        run = harness.run(invocation(failing.url), forward_to(client))
        assert failing.sessions == {}
    assert run.output == {"error": {"kind": "http_error", "message": "status 500"}}
    assert [level for level, _ in run.logs] == [INFO]


def test_a_denial_comes_back_denied_with_its_decision_id(harness: Driver) -> None:
    denial = {"error": {"kind": "denied", "message": "no policy permits", "decision_id": "d-1"}}
    run = harness.run(invocation("http://svc"), answer(denial))
    assert run.output == {
        "error": {"kind": "denied", "message": "no policy permits", "decision_id": "d-1"}
    }


def test_a_host_error_without_decision_id(harness: Driver) -> None:
    run = harness.run(
        invocation("http://svc"), answer({"error": {"kind": "http_error", "message": "refused"}})
    )
    assert run.output == {"error": {"kind": "http_error", "message": "refused"}}


def test_a_down_service_is_an_http_error(
    harness: Driver, sessions: SessionService, client: SessionClient
) -> None:
    sessions.down()
    run = harness.run(invocation(sessions.url), forward_to(client))
    assert run.output["error"]["kind"] == "http_error"
    assert "Connection refused" in run.output["error"]["message"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("not json", "response body is not valid JSON"),
        ('{"id": "s-1"}', "response body has no session_id"),
        ('{"session_id": 7}', "response body has no session_id"),
    ],
)
def test_unusable_success_bodies_are_http_errors(harness: Driver, body: str, message: str) -> None:
    run = harness.run(
        invocation("http://svc"), answer({"status": 201, "headers": {}, "body": body})
    )
    assert run.output == {"error": {"kind": "http_error", "message": message}}


def test_malformed_host_responses_are_http_errors(harness: Driver) -> None:
    run = harness.run(invocation("http://svc"), answer({"headers": {}}))
    assert run.output["error"]["kind"] == "http_error"
    run = harness.run(invocation("http://svc"), answer({"status": 201, "headers": {}}))
    assert run.output == {"error": {"kind": "http_error", "message": "response has no body"}}


def test_missing_session_service_is_bad_input(harness: Driver) -> None:
    calls: list[dict[str, Any]] = []

    def never(request: dict[str, Any]) -> dict[str, Any]:
        calls.append(request)
        return {"status": 201, "headers": {}, "body": "{}"}

    run = harness.run(invocation(None), never)
    assert run.output["error"]["kind"] == "bad_input"
    assert "session_service" in run.output["error"]["message"]
    assert calls == []


@pytest.mark.parametrize("payload", [b"{not json", b"[1, 2, 3]", b"", b"\xff\xfe", b"null"])
def test_input_that_is_not_a_json_object_is_bad_input(
    abi_harness: AbiHarness, payload: bytes
) -> None:
    run = abi_harness.run(payload, answer({"status": 201, "headers": {}, "body": "{}"}))
    assert run.output["error"]["kind"] == "bad_input"
    assert run.requests == []


@pytest.mark.parametrize(
    "payload",
    [
        b"{}",
        b'{"job": {"id": "j", "attempt": 1, "spec": {"session_service": "http://s"}}}',
        b'{"invocation_id": "i", "job": {"id": "j", "attempt": 1, "spec": "no"}}',
        b'{"invocation_id": "i", "job": [1]}',
        b'{"invocation_id": "i", "job": {"id": "j", "attempt": 1, "spec": {"session_service": 5}}}',
    ],
)
def test_malformed_input_is_bad_input(harness: Driver, payload: bytes) -> None:
    run = harness.run(payload, answer({"status": 201, "headers": {}, "body": "{}"}))
    assert run.output["error"]["kind"] == "bad_input"
    assert run.requests == []


def test_concurrent_invocations_in_fresh_stores(
    harness: Driver, sessions: SessionService, client: SessionClient
) -> None:
    def one(n: int) -> dict[str, Any]:
        payload = invocation(sessions.url)
        payload["invocation_id"] = f"inv-{n}"
        return harness.run(payload, forward_to(client)).output

    with ThreadPoolExecutor(max_workers=8) as pool:
        outputs = list(pool.map(one, range(40)))
    ids = [o["ok"]["session_id"] for o in outputs]
    assert len(set(ids)) == 40
    assert set(ids) == set(sessions.sessions)
    assert {s.message["invocation_id"] for s in sessions.sessions.values()} == {
        f"inv-{n}" for n in range(40)
    }


def test_input_larger_than_guest_memory_is_a_memory_limit(wasm: Path) -> None:
    """The guest's alloc answers -1 when it cannot grow; the sandbox classifies, nothing crashes."""
    runtime = Runtime(SandboxLimits(memory_bytes=4 << 20))
    payload = invocation("http://svc")
    payload["job"]["settings"] = {"blob": "x" * (6 << 20)}
    result = runtime.run(wasm.read_bytes(), payload, None)
    assert (result.outcome, result.error_kind) == ("failed", "memory_limit")
    ok = runtime.run(wasm.read_bytes(), invocation(None), None)  # the next run is unaffected
    assert ok.output is not None
    assert ok.output["kind"] == "bad_input"


# -- the build -----------------------------------------------------------------------------------


def test_build_is_cached_by_content(wasm: Path) -> None:
    mtime = wasm.stat().st_mtime_ns
    again = build_session_message_wasm()
    assert again == wasm
    assert again.stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert build.cache_key()[:32] in wasm.name


def test_module_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(build.MODULE_DIR_ENV, str(tmp_path))
    assert build.module_dir() == tmp_path


def test_cache_key_changes_with_the_source(tmp_path: Path) -> None:
    copy = tmp_path / "src"
    shutil.copytree(build.SOURCE_DIR, copy)
    assert build.cache_key(copy) == build.cache_key()
    main = copy / build.ENTRY
    main.write_text(main.read_text() + "\n// changed\n")
    assert build.cache_key(copy) != build.cache_key()


def test_reproducible_build_is_byte_identical(tmp_path: Path, wasm: Path) -> None:
    dirs = [tmp_path / "a", tmp_path / "b"]
    with ThreadPoolExecutor(max_workers=2) as pool:  # two independent cold builds
        paths = list(pool.map(lambda d: build_session_message_wasm(d, force=True), dirs))
    first, second = (p.read_bytes() for p in paths)
    assert first == second
    assert first == wasm.read_bytes()
    assert sha256_file(paths[0]) == sha256_file(wasm)
    assert len(first) < 1 << 20


def test_build_errors_are_typed(tmp_path: Path) -> None:
    broken = tmp_path / "src"
    broken.mkdir()
    (broken / build.ENTRY).write_text("this is not zig\n")
    with pytest.raises(build.ModuleBuildError, match="failed"):
        build.compile_module(tmp_path / "out.wasm", broken)
    assert not (tmp_path / "out.wasm").exists()
