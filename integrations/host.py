"""The host side of guest ABI v1: the ``sequent.log`` and ``sequent.http_call`` imports and the
helpers that move bytes in and out of guest linear memory (DESIGN.md §3).

Why it is shaped this way:

* A Python exception that escapes a host function becomes a wasmtime trap *and* is parked in a
  process-global slot of wasmtime-py that the next trap in any thread may re-raise. So host
  functions here never raise: a bad pointer, bad JSON, a refused or failing call becomes an
  error value the guest reads; a broken ABI (the guest's ``alloc`` misbehaving) is *recorded* on
  the invocation's :class:`HostSession` so the runtime classifies the run afterwards.
* The functions are defined once on the process-wide ``Linker`` (store-independent), so they find
  the invocation they serve through a thread-local binding: a wasm call runs synchronously on
  the thread that started it, and so do the host functions it calls.
* What an ``http_call`` actually does (Cedar, HTTP) is injected through :class:`HostCalls`; this
  module only validates, moves bytes and JSON, enforces per-invocation caps and keeps a record.
"""

from __future__ import annotations

import ctypes
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, cast

from wasmtime import (
    Caller,
    Func,
    FuncType,
    Instance,
    Linker,
    Memory,
    Store,
    Trap,
    ValType,
    WasmtimeError,
)
from wasmtime import _ffi as _raw  # wasmtime-py's own ctypes bindings: see "calling into the guest"

MASK32: Final = 0xFFFF_FFFF
MASK64: Final = 0xFFFF_FFFF_FFFF_FFFF
LOG_LEVELS: Final = ("debug", "info", "warn", "error", "fatal")
MAX_LOG_CHARS: Final = 4096
REQUEST_KEYS: Final = frozenset({"method", "url", "headers", "body"})
REFUSAL_KINDS: Final = frozenset({"denied", "http_error"})
GUEST_ERROR_KINDS: Final = frozenset({"denied", "http_error", "bad_request"})
# Headers only the host sets (DESIGN.md §3): Host comes from the URL Cedar checked, the fencing
# token and attempt from the invocation, the length from the body; hop-by-hop headers (RFC 9110
# §7.6.1, and every Proxy-*) manage the host's own connection. A guest's copies are dropped, so
# it cannot reach another virtual host, forge another invocation's key or desync the framing.
HOST_SET_HEADERS: Final = frozenset(
    {"host", "idempotency-key", "sequent-attempt", "content-length"}
)
HOP_BY_HOP_HEADERS: Final = frozenset(
    {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"}
)


class HostCalls(Protocol):
    """What the host does for a guest. The runtime moves bytes; implementations decide and act.

    ``http_call`` receives a validated request ``{"method", "url", "headers", "body"}``, whose
    headers hold none of :data:`HOST_SET_HEADERS` nor any hop-by-hop one (the implementation
    sets what it needs of those), and answers ``{"status", "headers", "body"}`` or
    ``{"error": {"kind": "denied" | "http_error" | "bad_request", "message", "decision_id"?}}``.
    It should not raise; if it does, the guest sees an ``http_error``.
    """

    def http_call(self, request: dict[str, Any]) -> dict[str, Any]: ...

    def log(self, level: int, message: str) -> None: ...


class NoNetwork:
    """A :class:`HostCalls` with no network: every call is denied, log lines are kept."""

    def __init__(self) -> None:
        self.logs: list[tuple[int, str]] = []
        self.requests: list[dict[str, Any]] = []

    def http_call(self, request: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(request)
        return guest_error("denied", "no network in this sandbox run")

    def log(self, level: int, message: str) -> None:
        self.logs.append((level, message))


@dataclass(frozen=True)
class LogLine:
    level: int
    message: str


@dataclass(frozen=True)
class HttpCallSummary:
    """One ``http_call`` the host handled, without bodies."""

    method: str | None
    url: str | None
    status: int | None
    error_kind: str | None
    decision_id: str | None = None


@dataclass(frozen=True)
class HostRefusal:
    """The host's own record of a denied or failed call, trusted over what the guest claims."""

    kind: str
    message: str
    decision_id: str | None


class GuestAbiError(Exception):
    """The guest broke the ABI while the host wrote into it; ``kind`` is how to classify it."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass
class HostSession:
    """Everything the host functions learn during one invocation."""

    host: HostCalls
    max_http_calls: int
    max_response_bytes: int
    max_log_lines: int
    http_calls: list[HttpCallSummary] = field(default_factory=list)
    logs: list[LogLine] = field(default_factory=list)
    logs_dropped: int = 0
    http_calls_over_limit: int = 0
    refusal: HostRefusal | None = None
    decision_id: str | None = None
    abi_failure: GuestAbiError | None = None
    inner_trap: Trap | None = None
    exports: GuestExports | None = None

    def record_abi(self, failure: GuestAbiError) -> None:
        if self.abi_failure is None:
            self.abi_failure = failure

    def record_response(self, request: dict[str, Any], response: dict[str, Any]) -> None:
        error = response.get("error")
        kind = error.get("kind") if isinstance(error, dict) else None
        decision = error.get("decision_id") if isinstance(error, dict) else None
        decision_id = decision if isinstance(decision, str) else None
        status = response.get("status")
        self.http_calls.append(
            HttpCallSummary(
                method=request.get("method"),
                url=request.get("url"),
                status=status if isinstance(status, int) else None,
                error_kind=kind if isinstance(kind, str) else None,
                decision_id=decision_id,
            )
        )
        if isinstance(error, dict) and kind in REFUSAL_KINDS:
            self.record_refusal(str(kind), str(error.get("message", "")), decision_id)

    def record_refusal(self, kind: str, message: str, decision_id: str | None = None) -> None:
        self.refusal = HostRefusal(kind, message, decision_id)
        if kind == "denied" and decision_id is not None:
            self.decision_id = decision_id


_BOUND = threading.local()


class bound:
    """Make ``session`` the one the host functions serve on this thread for the duration.
    (A class, not a generator: entered on every run, where @contextmanager costs a few us.)"""

    __slots__ = ("previous", "session")

    def __init__(self, session: HostSession) -> None:
        self.session = session
        self.previous: HostSession | None = None

    def __enter__(self) -> HostSession:
        self.previous = getattr(_BOUND, "session", None)
        _BOUND.session = self.session
        return self.session

    def __exit__(self, *exc: object) -> None:
        _BOUND.session = self.previous


def current_session() -> HostSession | None:
    session: HostSession | None = getattr(_BOUND, "session", None)
    return session


# --- guest memory helpers ---------------------------------------------------------------


def pack(ptr: int, length: int) -> int:
    """``(ptr << 32) | len`` as the signed i64 wasm sees."""
    value = ((ptr & MASK32) << 32) | (length & MASK32)
    return value - (1 << 64) if value >= 1 << 63 else value


def unpack(value: int) -> tuple[int, int]:
    unsigned = value & MASK64
    return unsigned >> 32, unsigned & MASK32


def _memory_now(memory: Memory, store: Store | Caller) -> tuple[int, int]:
    """(base address, byte length) of linear memory as it is now: growing may move it. One
    context and handle for both, where wasmtime-py's two methods would each look them up."""
    if not FAST_PATH:
        return ctypes.addressof(memory.data_ptr(store).contents), memory.data_len(store)
    context, handle = store._context(), ctypes.byref(memory._memory)
    base = ctypes.addressof(_raw.wasmtime_memory_data(context, handle).contents)
    return base, int(_raw.wasmtime_memory_data_size(context, handle))


def read_guest(memory: Memory, store: Store | Caller, ptr: int, length: int) -> bytes | None:
    """The bytes at ``[ptr, ptr + length)``, or None when that range is outside the memory."""
    start, size = ptr & MASK32, length & MASK32
    base, limit = _memory_now(memory, store)
    if start + size > limit:
        return None
    return ctypes.string_at(base + start, size) if size else b""


def write_guest(store: Store | Caller, exports: GuestExports, data: bytes) -> int:
    """Ask the guest's ``alloc`` for a buffer, copy ``data`` into it, return its address.

    Raises :class:`GuestAbiError` when alloc reports no memory (-1) or hands back a buffer
    outside linear memory; a trap inside alloc propagates as :class:`wasmtime.Trap`.
    """
    result = call_guest(store, exports.alloc, (len(data),), wide=False)
    if result == -1:
        raise GuestAbiError("memory_limit", f"alloc({len(data)}) returned -1: guest out of memory")
    ptr = result & MASK32
    base, limit = _memory_now(exports.memory, store)
    if ptr + len(data) > limit:
        raise GuestAbiError(
            "abi_error", f"alloc({len(data)}) returned {ptr:#x}, outside linear memory"
        )
    if data:
        ctypes.memmove(base + ptr, data, len(data))
    return ptr


# --- calling into the guest -------------------------------------------------------------
#
# The public ``Func.__call__`` re-reads the function's type and boxes every value on each call
# (~18 us), and ``Instance.exports`` wraps every export (~40 us): together most of a run's cost.
# ABI v1 signatures are checked once at load, so these helpers call through wasmtime-py's own
# ctypes bindings instead (``wasmtime_func_call_unchecked``, ``wasmtime_instance_export_get``):
# a few us each. If a wasmtime-py lacks those names, FAST_PATH is False and the public API runs.

_RAW_NAMES: Final = (
    "wasmtime_func_call_unchecked",
    "wasmtime_val_raw_t",
    "wasmtime_instance_export_get",
    "wasmtime_extern_t",
    "wasm_trap_t",
    "wasmtime_memory_data",
    "wasmtime_memory_data_size",
)
FAST_PATH: Final = all(hasattr(_raw, name) for name in _RAW_NAMES)
_EXPORT_NAMES: Final = {name: name.encode() for name in ("memory", "alloc", "run")}


@dataclass(frozen=True)
class GuestExports:
    """The three exports of ABI v1, resolved once per instance."""

    memory: Memory
    alloc: Func
    run: Func


def guest_exports(instance: Instance, store: Store) -> GuestExports:
    """Resolve ``memory``, ``alloc`` and ``run``; GuestAbiError if they are not what was checked."""
    found: dict[str, object]
    if FAST_PATH:
        found = {name: _export_raw(instance, store, name) for name in _EXPORT_NAMES}
    else:
        exports = instance.exports(store)
        found = {name: exports.get(name) for name in _EXPORT_NAMES}
    memory, alloc, run = found["memory"], found["alloc"], found["run"]
    if isinstance(memory, Memory) and isinstance(alloc, Func) and isinstance(run, Func):
        return GuestExports(memory, alloc, run)
    raise GuestAbiError("abi_error", "exports do not match what was checked at load")


def _export_raw(instance: Instance, store: Store, name: str) -> Memory | Func | None:
    item = _raw.wasmtime_extern_t()
    encoded = _EXPORT_NAMES[name]
    context = store._context()
    if not _raw.wasmtime_instance_export_get(
        context, ctypes.byref(instance._instance), encoded, len(encoded), ctypes.byref(item)
    ):
        return None
    kind = cast(int, item.kind)  # a c_uint8 field reads as int
    if kind == _raw.WASMTIME_EXTERN_FUNC.value:
        return Func._from_raw(item.of.func)
    if kind == _raw.WASMTIME_EXTERN_MEMORY.value:
        return Memory._from_raw(item.of.memory)
    return None


def call_guest(store: Store | Caller, func: Func, args: tuple[int, ...], *, wide: bool) -> int:
    """Call a guest function of integer params and one i32 (or, ``wide``, i64) result.

    Only for exports whose signature was checked at load. Traps raise :class:`wasmtime.Trap`.
    """
    if not FAST_PATH:
        result = func(store, *args)
        if not isinstance(result, int):
            raise GuestAbiError("abi_error", f"guest returned {result!r}, not an integer")
        return result
    values = (_raw.wasmtime_val_raw_t * max(len(args), 1))()
    for index, arg in enumerate(args):
        values[index].i32 = arg
    trap = ctypes.POINTER(_raw.wasm_trap_t)()
    error = _raw.wasmtime_func_call_unchecked(
        store._context(), ctypes.byref(func._func), values, len(values), ctypes.byref(trap)
    )
    if error:
        raise WasmtimeError._from_ptr(error)
    if trap:
        raise Trap._from_ptr(trap)
    return int(values[0].i64 if wide else values[0].i32)


def guest_error(kind: str, message: str, decision_id: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"kind": kind, "message": message}
    if decision_id is not None:
        error["decision_id"] = decision_id
    return {"error": error}


# --- request validation -----------------------------------------------------------------


def parse_request(raw: bytes) -> dict[str, Any] | str:
    """A normalised ``{"method", "url", "headers", "body"}`` or the reason the bytes are not one."""
    try:
        request = strict_json(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return "request is not UTF-8"
    except (ValueError, RecursionError) as exc:
        return f"request is not JSON: {exc}"
    if not isinstance(request, dict):
        return "request must be a JSON object"
    return _check_request(request)


def _check_request(request: dict[str, Any]) -> dict[str, Any] | str:
    unknown = set(request) - REQUEST_KEYS
    if unknown:
        return f"unknown request keys: {', '.join(sorted(unknown))}"
    method, url = request.get("method"), request.get("url")
    if not isinstance(method, str) or not method:
        return "request.method must be a non-empty string"
    if not isinstance(url, str) or not url:
        return "request.url must be a non-empty string"
    headers = request.get("headers")
    headers = {} if headers is None else headers
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        return "request.headers must be an object of strings"
    return {
        "method": method.upper(),
        "url": url,
        "headers": guest_headers(headers),
        "body": request.get("body"),
    }


def guest_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` without those the host sets itself, nor those the guest's own ``Connection``
    header names (which makes them hop-by-hop too)."""
    named = {
        token.strip().lower()
        for name, value in headers.items()
        if name.strip().lower() == "connection"
        for token in value.split(",")
    }
    return {
        name: value
        for name, value in headers.items()
        if not _host_owned(name.strip().lower()) and name.strip().lower() not in named
    }


def _host_owned(name: str) -> bool:
    return name in HOST_SET_HEADERS or name in HOP_BY_HOP_HEADERS or name.startswith("proxy-")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Built once: json.loads and json.dumps given any option build a new decoder or encoder per call.
_STRICT_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)
_STRICT_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
COMPACT_ENCODER: Final = json.JSONEncoder(separators=(",", ":"))


def strict_json(text: str) -> Any:
    """``text`` as JSON, refusing NaN and the infinities; ValueError or RecursionError if not."""
    return _STRICT_DECODER.decode(text)


# --- the host functions -----------------------------------------------------------------


def define_host_functions(linker: Linker) -> None:
    """Define ``sequent.log`` and ``sequent.http_call`` on a (process-wide) linker."""
    i32, i64 = ValType.i32(), ValType.i64()
    log_type, http_call_type = FuncType([i32, i32, i32], []), FuncType([i32, i32], [i64])
    if RAW_HOST_FUNCTIONS:
        _define_raw(linker, b"log", log_type, _raw_log)
        _define_raw(linker, b"http_call", http_call_type, _raw_http_call)
        return
    linker.define_func("sequent", "log", log_type, _log, access_caller=True)
    linker.define_func("sequent", "http_call", http_call_type, _http_call, access_caller=True)


# wasmtime-py's own trampoline boxes every parameter in a ``Val`` and, for an i64 result, builds
# and compares three ``ValType``s per call. The signatures above are fixed, so the host functions
# are entered through wasmtime's unchecked callback instead: parameters and result are read and
# written as raw slots. Neither callback may raise (see the module docstring): both catch
# everything and answer as the public path would.
_RAW_HOST_NAMES: Final = (
    "wasmtime_linker_define_func_unchecked",
    "wasmtime_func_unchecked_callback_t",
    "wasmtime_caller_t",
)
RAW_HOST_FUNCTIONS: Final = FAST_PATH and all(hasattr(_raw, name) for name in _RAW_HOST_NAMES)
_HOST_MODULE: Final = b"sequent"
_NO_FINALIZER: Final = ctypes.CFUNCTYPE(None, ctypes.c_void_p)()  # NULL: nothing to free


def _define_raw(linker: Linker, name: bytes, ty: FuncType, callback: Any) -> None:
    error = _raw.wasmtime_linker_define_func_unchecked(
        linker.ptr(), _HOST_MODULE, len(_HOST_MODULE), name, len(name), ty.ptr(), callback,
        None, _NO_FINALIZER,
    )  # fmt: skip
    if error:
        raise WasmtimeError._from_ptr(error)


def _log_entry(env: object, caller_ptr: Any, slots: Any, count: int) -> int:
    try:
        caller = Caller(caller_ptr)
        try:
            _log(caller, slots[0].i32, slots[1].i32, slots[2].i32)
        finally:
            caller._invalidate()
    except BaseException as exc:  # never into wasmtime (_log itself already catches)
        _record_escape("log", exc)
    return 0


def _http_call_entry(env: object, caller_ptr: Any, slots: Any, count: int) -> int:
    packed = 0
    try:
        caller = Caller(caller_ptr)
        try:
            packed = _http_call(caller, slots[0].i32, slots[1].i32)
        finally:
            caller._invalidate()
    except BaseException as exc:  # never into wasmtime (_http_call itself already catches)
        _record_escape("http_call", exc)
    slots[0].i64 = packed
    return 0


def _record_escape(name: str, exc: BaseException) -> None:
    session = current_session()
    if session is not None:
        session.record_abi(GuestAbiError("abi_error", f"{name} failed in the host: {exc!r}"))


# The ctypes callbacks must live as long as the process-wide linker that holds them.
_raw_log = _raw.wasmtime_func_unchecked_callback_t(_log_entry) if RAW_HOST_FUNCTIONS else None
_raw_http_call = (
    _raw.wasmtime_func_unchecked_callback_t(_http_call_entry) if RAW_HOST_FUNCTIONS else None
)


def _log(caller: Caller, level: int, ptr: int, length: int) -> None:
    session = current_session()
    if session is None:
        return
    try:
        _log_line(session, caller, level, ptr, length)
    except BaseException as exc:  # never into wasmtime
        session.record_abi(GuestAbiError("abi_error", f"log failed in the host: {exc!r}"))


def _log_line(session: HostSession, caller: Caller, level: int, ptr: int, length: int) -> None:
    if len(session.logs) >= session.max_log_lines:
        session.logs_dropped += 1
        return
    exports = session.exports
    raw = read_guest(exports.memory, caller, ptr, length) if exports is not None else None
    if raw is None:
        text = f"[sequent: log message out of bounds (ptr={ptr & MASK32:#x}, len={length})]"
    else:
        text = raw.decode("utf-8", errors="replace")[:MAX_LOG_CHARS]
    line = LogLine(min(max(level, 0), len(LOG_LEVELS) - 1), text)
    session.logs.append(line)
    try:
        session.host.log(line.level, line.message)
    except Exception:  # a failing log sink must not fail the guest
        session.logs_dropped += 1


def _http_call(caller: Caller, ptr: int, length: int) -> int:
    session = current_session()
    if session is None:
        return 0
    try:
        response = _answer(session, caller, ptr, length)
        return _deliver(session, caller, response)
    except BaseException as exc:  # never into wasmtime
        session.record_abi(GuestAbiError("abi_error", f"http_call failed in the host: {exc!r}"))
        return 0


def _answer(session: HostSession, caller: Caller, ptr: int, length: int) -> dict[str, Any]:
    """The response the guest should read: the host's answer or an error value."""
    exports = session.exports
    raw = read_guest(exports.memory, caller, ptr, length) if exports is not None else None
    if raw is None:
        message = f"request pointer out of bounds (ptr={ptr & MASK32:#x}, len={length & MASK32})"
        return _refuse(session, {}, "bad_request", message)
    parsed = parse_request(raw)
    if isinstance(parsed, str):
        return _refuse(session, {}, "bad_request", parsed)
    if len(session.http_calls) >= session.max_http_calls:
        session.http_calls_over_limit += 1
        limit = f"http_call limit of {session.max_http_calls} per invocation reached"
        return guest_error("denied", limit)
    return _call_host(session, parsed)


def _refuse(
    session: HostSession, request: dict[str, Any], kind: str, message: str
) -> dict[str, Any]:
    response = guest_error(kind, message)
    session.record_response(request, response)
    return response


def _call_host(session: HostSession, request: dict[str, Any]) -> dict[str, Any]:
    try:
        response = session.host.http_call(request)
    except Exception as exc:
        return _refuse(session, request, "http_error", f"host http_call raised {exc!r}")
    if not isinstance(response, dict):
        return _refuse(session, request, "http_error", "host answered a non-object")
    session.record_response(request, response)
    return response


def _deliver(session: HostSession, caller: Caller, response: dict[str, Any]) -> int:
    """Encode ``response`` and write it into the guest; packed 0 when that is impossible."""
    data = _encode_response(session, response)
    if session.exports is None:  # called from a start function, before run
        session.record_abi(GuestAbiError("abi_error", "http_call before the module was running"))
        return 0
    try:
        return pack(write_guest(caller, session.exports, data), len(data))
    except GuestAbiError as failure:
        session.record_abi(failure)
    except Trap as trap:
        session.inner_trap = session.inner_trap or trap
    except WasmtimeError as exc:
        session.record_abi(GuestAbiError("abi_error", f"calling alloc failed: {exc}"))
    return 0


def _encode_response(session: HostSession, response: dict[str, Any]) -> bytes:
    """The response as JSON bytes; one the guest cannot be given becomes an http_error."""
    try:
        data = _encoded(response)
    except (TypeError, ValueError, RecursionError) as exc:
        problem = f"host response is not JSON: {exc}"
    else:
        if len(data) <= session.max_response_bytes:
            return data
        problem = f"response of {len(data)} bytes exceeds {session.max_response_bytes}"
    session.record_refusal("http_error", problem)
    return _encoded(guest_error("http_error", problem))


def _encoded(value: dict[str, Any]) -> bytes:
    return _STRICT_ENCODER.encode(value).encode("utf-8")
