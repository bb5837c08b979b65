"""The wasm sandbox: one engine per process, modules compiled once, a fresh store per run, and
every way a run can go wrong turned into a classified :class:`RunResult` (DESIGN.md §3).

Why it is shaped this way:

* Compiling is the expensive step (milliseconds), instantiating is cheap (microseconds). So the
  ``Engine`` and ``Linker`` are process-wide, a module is compiled once per sha256 of its wasm
  bytes (in memory, and optionally serialized to a directory so the next process skips the
  compiler), and its imports are resolved once into an ``InstancePre``. A run only creates a
  ``Store``, instantiates (from slots reserved once: see :data:`POOL_SIZES`), and calls
  ``alloc`` and ``run``.
* A guest is untrusted, so a run is bounded by fuel (instructions), an epoch deadline (wall clock:
  a daemon thread ticks the engine epoch), a store memory limit, and caps on output size and
  ``http_call`` count. None of them may take the host process down: a run *returns* what went
  wrong instead of raising.
* Classification is data: trap codes and instantiate errors map to kinds through tables, and when
  several pieces of evidence exist (a trap *and* a broken ABI, say) :data:`PRECEDENCE` picks the
  root cause. The host's own record of a denied or failed ``http_call`` is trusted over whatever
  the guest claims.

How ``memory_limit`` is detected: ``store.set_limits`` makes ``memory.grow`` past the limit return
-1 inside the guest, which the host cannot observe directly (the C API has no grow-failure hook).
So a run is ``memory_limit`` when (a) instantiation needs more memory or table space than allowed,
(b) the guest's ``alloc`` answers -1 to the host, or (c) the guest traps with an out-of-memory
symptom (``unreachable`` - what Rust/Zig/C allocators do on failure - or an out-of-bounds access)
while its linear memory is within :func:`memory_headroom` of the limit.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from wasmtime import (
    Config,
    Engine,
    ExportType,
    FuncType,
    InstancePre,
    Linker,
    Memory,
    MemoryType,
    Module,
    Store,
    Trap,
    TrapCode,
    WasmtimeError,
)
from wasmtime import _ffi as _raw  # the pooling allocator has no wrapper in wasmtime-py

from domain.values import json_problems
from integrations.host import (
    COMPACT_ENCODER,
    GuestAbiError,
    HostCalls,
    HostSession,
    HttpCallSummary,
    LogLine,
    NoNetwork,
    bound,
    call_guest,
    define_host_functions,
    guest_exports,
    read_guest,
    strict_json,
    unpack,
    write_guest,
)
from integrations.limits import PAGE_BYTES, SandboxLimits
from integrations.module_files import ModuleRejected, read_module, to_wasm

log = logging.getLogger(__name__)

Outcome = Literal["ok", "error", "failed"]
ErrorKind = Literal[
    "fuel_exhausted",
    "timeout",
    "memory_limit",
    "trap",
    "bad_output",
    "abi_error",
    "link_error",
    "denied",
    "http_error",
]

EPOCH_TICK_SECONDS: Final = 0.01

# The pooling allocator: a fresh store per run, but its instance, memory and tables come from
# slots reserved once per process (address space only; a slot is zeroed when it is given back),
# which takes about a third off instantiating a store and tearing it down. The pool caps only
# what a slot *can* hold; what a run may use is still its store's limits. A module no slot can
# hold (compiling says so) gets a default engine instead, so it is judged exactly as it would
# be without a pool. More than POOLED_RUNS runs at once would fail to instantiate (link_error);
# a dispatcher runs at most its concurrency (16) at once. No pool (this wasmtime-py lacks the
# calls, or the address space cannot be reserved): every engine allocates per store.
# A slot given back is reset in place (its module's image copied back, zeroes elsewhere) up to
# KEEP_RESIDENT bytes of its memory and tables, and by madvise beyond: a guest whose memory fits
# (build_session_message's 192 KiB does) then finds its pages still mapped next run, where
# madvise would cost a TLB shootdown and a page fault per page touched again (with the mprotect
# of a grown memory, about a quarter of a run). The cost is resident memory: up to
# 320 KiB in each slot that has been used (a run reuses its module's last slot when it is free).
POOLED_RUNS: Final = 1000
KEEP_RESIDENT: Final = {"linear_memory_keep_resident": 256 * 1024, "table_keep_resident": 64 * 1024}
POOL_SIZES: Final[Mapping[str, int]] = {
    "total_core_instances": POOLED_RUNS,
    "total_memories": POOLED_RUNS,
    "total_tables": 4 * POOLED_RUNS,
    "max_tables_per_module": 4,
    "max_memory_size": 1 << 32,
    **KEEP_RESIDENT,
}
POOLING: Final = all(
    hasattr(_raw, f"wasmtime_pooling_allocation_config_{name}")
    for name in ("new", "delete", *(f"{setter}_set" for setter in POOL_SIZES))
) and hasattr(_raw, "wasmtime_pooling_allocation_strategy_set")
ABI_VERSION: Final = 1

# guest export name -> the extern it must be ("memory" or a function signature)
REQUIRED_EXPORTS: Final[Mapping[str, str]] = {
    "memory": "memory",
    "alloc": "(i32) -> i32",
    "run": "(i32, i32) -> i64",
}

# trap code -> kind; every other code is "trap" (with the code in the message)
TRAP_KINDS: Final[Mapping[TrapCode, ErrorKind]] = {
    TrapCode.OUT_OF_FUEL: "fuel_exhausted",
    TrapCode.INTERRUPT: "timeout",
}

# what the limit was, appended to the message of a run stopped by one
LIMIT_NOTES: Final[Mapping[ErrorKind, str]] = {
    "fuel_exhausted": "fuel limit {limits.fuel}",
    "timeout": "wall-clock limit {limits.wall_clock_seconds:g} s",
}

# traps that mean "out of memory" when linear memory is at the limit
OOM_SYMPTOMS: Final = frozenset({TrapCode.UNREACHABLE, TrapCode.MEMORY_OUT_OF_BOUNDS})

# instantiate error text -> kind; anything else at instantiation is a link_error
INSTANTIATE_ERRORS: Final[tuple[tuple[str, ErrorKind], ...]] = (
    ("exceeds memory limits", "memory_limit"),
    ("exceeds table limits", "memory_limit"),
)

# the host's record of a refused http_call -> error_kind of a run whose guest then reported error
REFUSAL_KINDS: Final[Mapping[str, ErrorKind]] = {"denied": "denied", "http_error": "http_error"}

# when a run leaves several pieces of evidence, the first kind here is the root cause
PRECEDENCE: Final[tuple[ErrorKind, ...]] = (
    "fuel_exhausted",
    "timeout",
    "memory_limit",
    "abi_error",
    "link_error",
    "trap",
    "bad_output",
)


@dataclass(frozen=True)
class LoadedModule:
    """A compiled module; ``pre`` is None when it does not fit the ABI (then ``link_problem``)."""

    sha256: str
    size: int
    module: Module
    pre: InstancePre | None
    link_problem: str | None
    engine: Engine | None = None  # the engine it was compiled for, when not the runtime's


@dataclass(frozen=True)
class RunResult:
    """What one invocation did. ``output`` is the guest's ``ok`` or ``error`` object."""

    outcome: Outcome
    error_kind: ErrorKind | None
    message: str
    output: dict[str, Any] | None
    fuel_used: int
    seconds: float
    module_sha256: str
    http_calls: tuple[HttpCallSummary, ...] = ()
    logs: tuple[LogLine, ...] = ()
    decision_id: str | None = None
    http_calls_over_limit: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "error_kind": self.error_kind,
            "message": self.message,
            "output": self.output,
            "fuel_used": self.fuel_used,
            "seconds": self.seconds,
            "module_sha256": self.module_sha256,
            "decision_id": self.decision_id,
            "http_calls": len(self.http_calls),
        }


@dataclass
class CacheStats:
    """Where loaded modules came from; tests and benchmarks read these counters."""

    compiled: int = 0
    deserialized: int = 0
    memory_hits: int = 0
    serialized: int = 0


# --- the process-wide engine --------------------------------------------------------------


@dataclass(frozen=True)
class _Process:
    engine: Engine
    linker: Linker
    # Set when ``engine`` is pooled: a default engine for the modules the pool cannot hold
    # (compiling rejects them), so they load and are judged exactly as without a pool.
    unpooled: tuple[Engine, Linker] | None


_PROCESS: _Process | None = None
_PROCESS_LOCK = threading.Lock()


def process_engine() -> tuple[Engine, Linker]:
    """The one Engine (fuel + epoch interruption) and Linker (host functions) of this process."""
    process = _process()
    return process.engine, process.linker


def _process() -> _Process:
    global _PROCESS  # noqa: PLW0603 - a lazily created process singleton
    with _PROCESS_LOCK:
        if _PROCESS is None:
            _PROCESS = _start_process()
        return _PROCESS


def _start_process() -> _Process:
    pooled = _pooled_engine() if POOLING else None
    engine = pooled or Engine(_config())
    unpooled = Engine(_config()) if pooled is not None else None
    engines = (engine,) if unpooled is None else (engine, unpooled)
    ticker = threading.Thread(
        target=_tick_forever, args=(engines,), name="sequent-epoch-ticker", daemon=True
    )
    ticker.start()
    return _Process(
        engine, _linker(engine), (unpooled, _linker(unpooled)) if unpooled is not None else None
    )


def _linker(engine: Engine) -> Linker:
    linker = Linker(engine)
    define_host_functions(linker)
    return linker


def _config() -> Config:
    config = Config()
    config.consume_fuel = True
    config.epoch_interruption = True
    config.cranelift_opt_level = "speed"
    return config


def _pooled_engine() -> Engine | None:
    """An engine whose stores take instances, memories and tables from a pool reserved once,
    or None when this wasmtime or this machine will not have one (then each store allocates
    its own, as wasmtime does by default). The pool only caps what a slot *can* hold; what a
    run may use is still the store's limits (``Runtime.new_store``)."""
    pool = _raw.wasmtime_pooling_allocation_config_new()
    for setter, value in POOL_SIZES.items():
        getattr(_raw, f"wasmtime_pooling_allocation_config_{setter}_set")(pool, value)
    config = _config()
    _raw.wasmtime_pooling_allocation_strategy_set(config.ptr(), pool)
    _raw.wasmtime_pooling_allocation_config_delete(pool)
    try:
        return Engine(config)
    except WasmtimeError as exc:  # e.g. the address space cannot be reserved
        log.warning("wasm instance pool unavailable, allocating per run: %s", _first_line(str(exc)))
        return None


def _tick_forever(engines: tuple[Engine, ...]) -> None:
    while True:
        time.sleep(EPOCH_TICK_SECONDS)
        for engine in engines:
            engine.increment_epoch()


def epoch_ticks(seconds: float) -> int:
    return max(1, math.ceil(seconds / EPOCH_TICK_SECONDS))


# --- loading ------------------------------------------------------------------------------


class Runtime:
    """Loads modules (content-addressed, compiled once) and runs them in fresh stores."""

    def __init__(
        self, limits: SandboxLimits | None = None, cache_dir: Path | str | None = None
    ) -> None:
        """``cache_dir`` holds serialized native code: it must be as trusted as the program."""
        self.limits = limits or SandboxLimits()
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.stats = CacheStats()
        process = _process()
        self.engine, self.linker, self._unpooled = process.engine, process.linker, process.unpooled
        self._modules: dict[str, LoadedModule] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def load(self, source: bytes | bytearray | str) -> LoadedModule:
        """Compile (or fetch) a module from wasm bytes or WAT text; raises ModuleRejected."""
        wasm = to_wasm(source, self.limits.module_bytes)
        sha = hashlib.sha256(wasm).hexdigest()
        with self._lock:
            cached = self._modules.get(sha)
            key_lock = self._locks.setdefault(sha, threading.Lock())
        if cached is not None:
            self.stats.memory_hits += 1
            return cached
        with key_lock:
            cached = self._modules.get(sha)
            if cached is None:
                cached = self._link(*self._compile(wasm, sha), sha, len(wasm))
                with self._lock:
                    self._modules[sha] = cached
        return cached

    def load_file(self, path: Path) -> LoadedModule:
        """Compile (or fetch) the module in a file; raises ModuleRejected naming the path."""
        source = read_module(path, self.limits.module_bytes)
        try:
            return self.load(source)
        except ModuleRejected as rejected:
            raise ModuleRejected(rejected.reason, f"{path}: {rejected.detail}") from None

    def cached(self, sha256: str) -> LoadedModule | None:
        with self._lock:
            return self._modules.get(sha256)

    def cache_path(self, sha256: str) -> Path | None:
        return self.cache_dir / f"{sha256}.cwasm" if self.cache_dir is not None else None

    def _compile(self, wasm: bytes, sha: str) -> tuple[Module, bool]:
        """The module and whether it is the unpooled engine's (one the pool cannot hold)."""
        path = self.cache_path(sha)
        if path is not None and path.is_file():
            try:
                module = Module.deserialize_file(self.engine, str(path))
            except WasmtimeError as exc:  # another wasmtime version or config: recompile
                log.warning("ignoring module cache %s: %s", path, _first_line(str(exc)))
            else:
                self.stats.deserialized += 1
                return module, False
        try:
            module = Module(self.engine, wasm)
        except WasmtimeError as exc:
            if self._unpooled is None:
                raise ModuleRejected("invalid", _first_line(str(exc))) from None
            # Invalid, or valid but too big for a pool slot: the unpooled engine tells which.
            # Its code is not cached on disk, which holds the pooled engine's.
            try:
                module = Module(self._unpooled[0], wasm)
            except WasmtimeError as unpooled_exc:
                raise ModuleRejected("invalid", _first_line(str(unpooled_exc))) from None
            self.stats.compiled += 1
            return module, True
        self.stats.compiled += 1
        if path is not None:
            self._serialize(module, path)
        return module, False

    def _serialize(self, module: Module, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as out:
                out.write(module.serialize())
            os.replace(tmp, path)
        except (OSError, WasmtimeError) as exc:  # the disk cache is an optimisation only
            log.warning("could not write module cache %s: %s", path, exc)
            return
        self.stats.serialized += 1

    def _link(self, module: Module, unpooled: bool, sha: str, size: int) -> LoadedModule:
        engine, linker = self._unpooled if unpooled and self._unpooled else (None, self.linker)
        problem = abi_problem(module.exports)
        pre = None
        if problem is None:
            try:
                pre = linker.instantiate_pre(module)
            except WasmtimeError as exc:
                problem = _first_line(str(exc))
        return LoadedModule(sha, size, module, pre, problem, engine)

    # --- running ------------------------------------------------------------------------

    def run(
        self,
        module: LoadedModule | bytes | bytearray | str,
        input: Mapping[str, Any],
        host: HostCalls | None = None,
        limits: SandboxLimits | None = None,
    ) -> RunResult:
        """Run ``module`` once on ``input``; never raises for anything the guest does."""
        loaded = module if isinstance(module, LoadedModule) else self.load(module)
        limits = limits or self.limits
        payload = COMPACT_ENCODER.encode(input).encode("utf-8")
        started = time.perf_counter()
        if loaded.pre is None:
            return _link_failure(loaded, started)
        session = HostSession(
            host if host is not None else NoNetwork(),
            max_http_calls=limits.http_calls,
            max_response_bytes=limits.http_response_bytes,
            max_log_lines=limits.log_lines,
        )
        store = self.new_store(limits, loaded.engine)
        with bound(session):
            attempt = _execute(loaded.pre, store, payload, session)
        verdict = _classify(attempt, session, store, limits)
        return _result(loaded, verdict, session, _fuel_used(store, limits), started)

    def new_store(self, limits: SandboxLimits, engine: Engine | None = None) -> Store:
        """A store bounded as every invocation's is (fuel, memory, tables, wall clock), of
        ``engine`` (a module's, when not the runtime's own)."""
        store = Store(engine or self.engine)
        store.set_fuel(limits.fuel)
        store.set_limits(
            memory_size=limits.memory_bytes,
            table_elements=limits.table_elements,
            instances=1,
            memories=1,
        )
        store.set_epoch_deadline(epoch_ticks(limits.wall_clock_seconds))
        return store


def abi_problem(exports: list[ExportType]) -> str | None:
    """Why the module's exports do not fit guest ABI v1, or None when they do."""
    found = {export.name: _describe(export.type) for export in exports}
    for name, wanted in REQUIRED_EXPORTS.items():
        if name not in found:
            return f"missing export {name!r} (ABI v{ABI_VERSION} needs {wanted})"
        if found[name] != wanted:
            return f"export {name!r} is {found[name]}, ABI v{ABI_VERSION} needs {wanted}"
    return None


def _describe(extern: object) -> str:
    if isinstance(extern, MemoryType):
        return "memory"
    if isinstance(extern, FuncType):
        params = ", ".join(str(p) for p in extern.params)
        results = ", ".join(str(r) for r in extern.results) or "()"
        return f"({params}) -> {results}"
    return type(extern).__name__


# --- one run ------------------------------------------------------------------------------


@dataclass
class _Attempt:
    """What happened inside the sandbox, before any judgement."""

    packed: int | None = None
    memory: Memory | None = None
    trap: Trap | None = None
    instantiate_error: str | None = None
    call_error: str | None = None
    input_failure: GuestAbiError | None = None


def _execute(pre: InstancePre, store: Store, payload: bytes, session: HostSession) -> _Attempt:
    attempt = _Attempt()
    try:
        instance = pre.instantiate(store)
    except Trap as trap:  # a start function trapped
        attempt.trap = trap
        return attempt
    except WasmtimeError as exc:
        attempt.instantiate_error = _first_line(str(exc))
        return attempt
    try:
        exports = guest_exports(instance, store)
        session.exports = exports
        attempt.memory = exports.memory
        ptr = write_guest(store, exports, payload)
        attempt.packed = call_guest(store, exports.run, (ptr, len(payload)), wide=True)
    except Trap as trap:
        attempt.trap = trap
    except GuestAbiError as failure:
        attempt.input_failure = failure
    except WasmtimeError as exc:
        attempt.call_error = _first_line(str(exc))
    return attempt


Evidence = tuple[ErrorKind, str]


@dataclass(frozen=True)
class _Verdict:
    outcome: Outcome
    error_kind: ErrorKind | None
    message: str
    output: dict[str, Any] | None = None


def _classify(
    attempt: _Attempt, session: HostSession, store: Store, limits: SandboxLimits
) -> _Verdict:
    evidence = _evidence(attempt, session, store, limits)
    if not evidence and attempt.packed is not None and attempt.memory is not None:
        try:
            return _judge_output(attempt.memory, store, attempt.packed, limits, session)
        except _BadOutput as bad:
            evidence.append(("bad_output", str(bad)))
    if not evidence:
        evidence.append(("abi_error", "run returned no i64"))
    kind, message = min(evidence, key=lambda item: PRECEDENCE.index(item[0]))
    return _Verdict("failed", kind, message)


def _evidence(
    attempt: _Attempt, session: HostSession, store: Store, limits: SandboxLimits
) -> list[Evidence]:
    found: list[Evidence] = []
    memory_bytes = attempt.memory.data_len(store) if attempt.memory is not None else 0
    near_limit = limits.memory_bytes - memory_bytes < memory_headroom(limits)
    for trap in (attempt.trap, session.inner_trap):
        if trap is not None:
            found.append(_trap_evidence(trap, near_limit, memory_bytes, limits))
    for failure in (attempt.input_failure, session.abi_failure):
        if failure is not None:
            found.append((_abi_kind(failure.kind), failure.message))
    if attempt.instantiate_error is not None:
        found.append((_instantiate_kind(attempt.instantiate_error), attempt.instantiate_error))
    if attempt.call_error is not None:
        found.append(("abi_error", f"calling the guest failed: {attempt.call_error}"))
    return found


def memory_headroom(limits: SandboxLimits) -> int:
    """How close to the limit memory must be for an out-of-memory-looking trap to count as one."""
    return max(PAGE_BYTES, limits.memory_bytes // 16)


def _trap_evidence(
    trap: Trap, near_limit: bool, memory_bytes: int, limits: SandboxLimits
) -> Evidence:
    code = trap.trap_code
    kind: ErrorKind = TRAP_KINDS.get(code, "trap") if code is not None else "trap"
    message = f"{code.name if code is not None else 'UNKNOWN'}: {_trap_cause(trap.message)}"
    if kind == "trap" and code in OOM_SYMPTOMS and near_limit:
        used = f"linear memory at {memory_bytes} of {limits.memory_bytes} bytes"
        return "memory_limit", f"{used}, then {message}"
    note = LIMIT_NOTES.get(kind)
    return kind, f"{message} ({note.format(limits=limits)})" if note else message


def _abi_kind(kind: str) -> ErrorKind:
    return "memory_limit" if kind == "memory_limit" else "abi_error"


def _instantiate_kind(message: str) -> ErrorKind:
    return next((kind for text, kind in INSTANTIATE_ERRORS if text in message), "link_error")


class _BadOutput(Exception):
    pass


def _judge_output(
    memory: Memory, store: Store, packed: int, limits: SandboxLimits, session: HostSession
) -> _Verdict:
    value = _read_output(memory, store, packed, limits)
    # Whatever the guest says becomes event data (its ok object a completion's params, its
    # error message a Fail message): held to the same rules as any user JSON.
    problems = json_problems(value, "output")
    if problems:
        raise _BadOutput(problems[0])
    if not isinstance(value, dict) or len(value) != 1:
        raise _BadOutput(_SHAPE)
    if isinstance(value.get("ok"), dict):
        return _Verdict("ok", None, "ok", value["ok"])
    error = value.get("error")
    if not _is_guest_error(error):
        raise _BadOutput(_SHAPE)
    assert isinstance(error, dict)
    refusal = session.refusal
    kind = REFUSAL_KINDS.get(refusal.kind) if refusal is not None else None
    return _Verdict("error", kind, _one_line(f"{error['kind']}: {error['message']}"), error)


_SHAPE: Final = 'output must be {"ok": {...}} or {"error": {"kind": str, "message": str}}'


def _is_guest_error(error: object) -> bool:
    return (
        isinstance(error, dict)
        and isinstance(error.get("kind"), str)
        and isinstance(error.get("message"), str)
    )


def _read_output(memory: Memory, store: Store, packed: int, limits: SandboxLimits) -> object:
    ptr, length = unpack(packed)
    if length > limits.output_bytes:
        raise _BadOutput(f"output of {length} bytes exceeds the {limits.output_bytes}-byte limit")
    raw = read_guest(memory, store, ptr, length)
    if raw is None:
        size = memory.data_len(store)
        raise _BadOutput(f"output at {ptr:#x}+{length} is outside linear memory ({size} bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _BadOutput(f"output is not UTF-8 (byte {exc.start})") from None
    try:
        return strict_json(text)
    except (ValueError, RecursionError) as exc:
        raise _BadOutput(_one_line(f"output is not JSON: {exc}")) from None


# --- results ------------------------------------------------------------------------------


def _result(
    loaded: LoadedModule,
    verdict: _Verdict,
    session: HostSession,
    fuel_used: int,
    started: float,
) -> RunResult:
    return RunResult(
        outcome=verdict.outcome,
        error_kind=verdict.error_kind,
        message=verdict.message,
        output=verdict.output,
        fuel_used=fuel_used,
        seconds=time.perf_counter() - started,
        module_sha256=loaded.sha256,
        http_calls=tuple(session.http_calls),
        logs=tuple(session.logs),
        decision_id=session.decision_id,
        http_calls_over_limit=session.http_calls_over_limit,
    )


def _link_failure(loaded: LoadedModule, started: float) -> RunResult:
    return RunResult(
        outcome="failed",
        error_kind="link_error",
        message=loaded.link_problem or "module does not link",
        output=None,
        fuel_used=0,
        seconds=time.perf_counter() - started,
        module_sha256=loaded.sha256,
    )


def _fuel_used(store: Store, limits: SandboxLimits) -> int:
    try:
        return limits.fuel - store.get_fuel()
    except WasmtimeError:
        return limits.fuel


def _trap_cause(message: str) -> str:
    """wasmtime's trap text is a backtrace then 'Caused by:'; keep the cause, one line."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    cause = lines[-1] if lines else message
    return _one_line(cause.removeprefix("wasm trap: "))


def _first_line(text: str) -> str:
    """wasmtime errors are multi-line ('context / Caused by: / cause'): one line, causes kept."""
    lines = [line.strip() for line in text.splitlines()]
    return _one_line(": ".join(line for line in lines if line and line != "Caused by:"), 300)


def _one_line(text: str, limit: int = 500) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# --- a process default --------------------------------------------------------------------

_DEFAULT: Runtime | None = None
_DEFAULT_LOCK = threading.Lock()


def default_runtime() -> Runtime:
    """A shared Runtime with default limits and no disk cache."""
    global _DEFAULT  # noqa: PLW0603 - a lazily created process singleton
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = Runtime()
        return _DEFAULT


def run(
    module: LoadedModule | bytes | bytearray | str,
    input: Mapping[str, Any],
    host: HostCalls | None = None,
    limits: SandboxLimits | None = None,
) -> RunResult:
    """Run a module once on the process's default :class:`Runtime`."""
    return default_runtime().run(module, input, host, limits)


__all__ = [
    "ABI_VERSION",
    "CacheStats",
    "ErrorKind",
    "LoadedModule",
    "Outcome",
    "RunResult",
    "Runtime",
    "default_runtime",
    "process_engine",
    "run",
]
