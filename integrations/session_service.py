"""The session service on loopback (DESIGN.md §3, "Session service"): what a job's integration
spawns sessions in, run by the demo, the race, the benchmark and the tests.

``SessionService`` is a real HTTP/1.1 server (``http.server.ThreadingHTTPServer`` on 127.0.0.1, an
ephemeral port by default) running in a daemon thread:

* ``POST /sessions`` — body: the session message (a JSON object) → 201
  ``{"session_id": "s-…", "created": <unix seconds>}``; a body that is not a JSON object → 400.
  With an ``Idempotency-Key`` header (sequent's host sets the invocation id), a key seen before
  answers 200 with the session its first request created (live or since deleted) and creates
  nothing: however often an invocation runs, it spawns at most one session.
* ``DELETE /sessions/{id}`` → 204, or 404 if no such live session.
* ``GET /sessions`` → 200 ``[{"session_id", "message", "created"}, …]`` (live sessions, oldest
  first), each with the ``idempotency_key`` it was created with, if any; ``GET /sessions/{id}``
  → 200 one session, or 404.
* Every error has a JSON body ``{"error": "<text>"}``; unknown paths are 404, other methods 405.

Fault injection is seeded and decided per request *index* (0, 1, 2, … in arrival order), never by
a shared random stream, so the same seed marks the same indexes slow or failing however the
requests interleave. :meth:`SessionService.plan` returns the decision for an index without sending
anything. For each request whose method is in ``inject`` (default: all):

* ``latency`` — base delay in seconds before the request is handled: a constant, a ``(min, max)``
  range drawn uniformly from the seeded generator, or a function of the request index;
* ``slow_fraction`` / ``slow_every`` — a seeded fraction of requests, and/or every Nth request
  (indexes N-1, 2N-1, …), is delayed by ``slow_latency`` on top: these are the late completions of
  the race;
* ``failure_rate`` — a seeded fraction of requests is answered 500 without doing anything.

The delay happens *before* the request is acted upon, so a session is created when its slow
response is about to be sent. Stopping the service interrupts pending delays.

Two ways to be unavailable: :meth:`SessionService.down` closes the listening socket and every open
connection, so clients get "connection refused" (the port is kept; :meth:`up` listens on it
again); ``down(mode="503")`` keeps listening and answers every request 503.
"""

from __future__ import annotations

import contextlib
import json
import random
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import unquote, urlsplit

Latency = float | tuple[float, float] | Callable[[int], float]
DownMode = Literal["refuse", "503"]

MAX_BODY_BYTES = 1 << 20


@dataclass(frozen=True)
class Session:
    """A live session held by the service."""

    session_id: str
    message: dict[str, Any]
    created: float  # unix seconds
    idempotency_key: str | None = None  # the key of the request that created it

    def as_json(self) -> dict[str, Any]:
        item = {"session_id": self.session_id, "message": self.message, "created": self.created}
        if self.idempotency_key is not None:
            # Reconciliation names the run a session came from by it (integrations/reconcile.py)
            item["idempotency_key"] = self.idempotency_key
        return item


@dataclass(frozen=True)
class Fault:
    """What the service does to request ``index``: wait ``delay`` seconds, then maybe fail."""

    index: int
    delay: float
    slow: bool
    fail: bool


@dataclass(frozen=True)
class RequestRecord:
    """One request the service answered (or dropped: status 0)."""

    index: int
    method: str
    path: str
    status: int
    delay: float
    slow: bool
    connection: int  # 1-based number of the TCP connection it arrived on
    at: float  # unix seconds when the answer was decided (just before it is sent)
    headers: tuple[tuple[str, str], ...] = ()  # as received, names lower-cased, in order


@dataclass
class _State:
    """Everything the handler threads share, guarded by ``lock``."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sessions: dict[str, Session] = field(default_factory=dict)
    by_idempotency_key: dict[str, Session] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    requests: list[RequestRecord] = field(default_factory=list)
    next_index: int = 0
    connections: int = 0
    open_sockets: set[socket.socket] = field(default_factory=set)
    down_mode: DownMode | None = None
    stopping: threading.Event = field(default_factory=threading.Event)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 1024  # listen backlog (capped by somaxconn); the default 5 resets bursts

    def __init__(self, address: tuple[str, int], service: SessionService) -> None:
        self.service = service
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        state = self.service._state
        with state.lock:
            state.connections += 1
            state.open_sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.service._state.lock:
            self.service._state.open_sockets.discard(request)
        super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one TCP connection serves many requests
    server_version = "sequent-sessions/1"
    timeout = 60.0  # idle keep-alive connections are closed after this
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stalls
    server: _Server

    connection_number = 0

    def setup(self) -> None:
        super().setup()
        with self.server.service._state.lock:
            self.connection_number = self.server.service._state.connections

    def log_message(self, format: str, *args: Any) -> None:
        return  # quiet: requests are recorded in SessionService.requests

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        service = self.server.service
        state = service._state
        with state.lock:
            index = state.next_index
            state.next_index += 1
        path = urlsplit(self.path).path
        headers = tuple((name.lower(), value) for name, value in self.headers.items())
        body = self._read_body()
        fault = service.plan(index) if self.command in service.inject else None
        delay = fault.delay if fault is not None else 0.0
        slow = fault.slow if fault is not None else False
        if delay > 0 and state.stopping.wait(delay):
            self._drop(index, path, delay, slow)  # stopped while waiting: no answer
            return
        if state.down_mode == "refuse":
            self._drop(index, path, delay, slow)
            return
        if state.down_mode == "503":
            status, payload = 503, {"error": "session service unavailable"}
        elif fault is not None and fault.fail:
            status, payload = 500, {"error": f"injected failure (request {index})"}
        elif body is None:
            status, payload = 413, {"error": f"request body exceeds {MAX_BODY_BYTES} bytes"}
        else:
            key = self.headers.get("Idempotency-Key") or None
            status, payload = service._handle(self.command, path, body, key)
        # recorded before answering, so a client that has its answer also sees the record
        with state.lock:
            state.requests.append(
                RequestRecord(
                    index,
                    self.command,
                    path,
                    status,
                    delay,
                    slow,
                    self.connection_number,
                    time.time(),
                    headers,
                )
            )
        self._respond(status, payload)

    def _read_body(self) -> bytes | None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if length > MAX_BODY_BYTES:
            self.close_connection = True  # unread body: the connection cannot be reused
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _respond(self, status: int, payload: Any) -> None:
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        if payload is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    def _drop(self, index: int, path: str, delay: float, slow: bool) -> None:
        state = self.server.service._state
        with state.lock:
            state.requests.append(
                RequestRecord(
                    index, self.command, path, 0, delay, slow, self.connection_number, time.time()
                )
            )
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class SessionService:
    """A real loopback HTTP session service with seeded latency and failure injection.

    Use as a context manager (``with SessionService(seed=7) as svc: svc.url``) or call
    :meth:`start` / :meth:`stop`. See the module docstring for endpoints and fault semantics.
    """

    def __init__(
        self,
        *,
        latency: Latency = 0.0,
        slow_fraction: float = 0.0,
        slow_every: int | None = None,
        slow_latency: float = 1.0,
        failure_rate: float = 0.0,
        seed: int = 0,
        inject: Collection[str] = ("GET", "POST", "DELETE", "PUT", "PATCH"),
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if isinstance(latency, tuple) and not 0 <= latency[0] <= latency[1]:
            raise ValueError(f"latency range must be 0 <= min <= max, got {latency}")
        if isinstance(latency, int | float) and latency < 0:
            raise ValueError(f"latency must be >= 0, got {latency}")
        for name, rate in (("slow_fraction", slow_fraction), ("failure_rate", failure_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {rate}")
        if slow_every is not None and slow_every < 1:
            raise ValueError(f"slow_every must be >= 1, got {slow_every}")
        self.latency = latency
        self.slow_fraction = slow_fraction
        self.slow_every = slow_every
        self.slow_latency = slow_latency
        self.failure_rate = failure_rate
        self.seed = seed
        self.inject = frozenset(m.upper() for m in inject)
        self._host = host
        self._port = port
        self._state = _State()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lifecycle = threading.Lock()
        self._started = False

    # -- fault plan ----------------------------------------------------------------------------

    def plan(self, index: int) -> Fault:
        """The seeded fault decision for request ``index`` (pure: same seed, same answer)."""
        rng = random.Random(f"sequent-sessions/{self.seed}/{index}")
        # Always three draws in the same order, so one knob never shifts another's choices.
        u_latency, u_slow, u_fail = rng.random(), rng.random(), rng.random()
        if callable(self.latency):
            base = float(self.latency(index))
        elif isinstance(self.latency, tuple):
            low, high = self.latency
            base = low + (high - low) * u_latency
        else:
            base = float(self.latency)
        slow = u_slow < self.slow_fraction or (
            self.slow_every is not None and (index + 1) % self.slow_every == 0
        )
        fail = u_fail < self.failure_rate
        return Fault(index, base + (self.slow_latency if slow else 0.0), slow, fail)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> Self:
        with self._lifecycle:
            if self._started:
                raise RuntimeError("SessionService already started")
            self._started = True
            self._listen()
        return self

    def _listen(self) -> None:
        server = _Server((self._host, self._port), self)
        self._port = server.server_address[1]  # keep the port across down()/up()
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"session-service:{self._port}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()

    def _close_listener(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        with self._state.lock:
            sockets = list(self._state.open_sockets)
        for sock in sockets:  # handler threads blocked on keep-alive reads wake up and exit
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        """Stop serving: pending delays are cut short, open connections closed. Idempotent."""
        with self._lifecycle:
            self._state.stopping.set()
            self._close_listener()

    def down(self, *, mode: DownMode = "refuse") -> None:
        """Make the service unavailable.

        ``"refuse"``: close the listening socket and every open connection (clients see
        connection refused or reset). ``"503"``: keep listening, answer every request 503.
        """
        with self._lifecycle:
            self._require_started()
            self._state.down_mode = mode
            if mode == "refuse":
                self._close_listener()

    def up(self) -> None:
        """Serve again on the same port after :meth:`down`."""
        with self._lifecycle:
            self._require_started()
            if self._state.stopping.is_set():
                raise RuntimeError("SessionService was stopped; start a new one")
            if self._server is None:
                self._listen()
            self._state.down_mode = None

    def _require_started(self) -> None:
        if not self._started:
            raise RuntimeError("SessionService is not started")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- observation ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        self._require_started()
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234`` (stable across down()/up())."""
        return f"http://{self._host}:{self.port}"

    @property
    def sessions(self) -> dict[str, Session]:
        """Snapshot of the live sessions by id (insertion = creation order)."""
        with self._state.lock:
            return dict(self._state.sessions)

    @property
    def deleted(self) -> list[str]:
        """Ids of sessions deleted so far, in order."""
        with self._state.lock:
            return list(self._state.deleted)

    @property
    def requests(self) -> list[RequestRecord]:
        """Every answered (or dropped, status 0) request, in the order the answers were decided.

        A request's record exists before its answer is sent, so a caller that got its answer
        always finds the record here."""
        with self._state.lock:
            return list(self._state.requests)

    @property
    def connections(self) -> int:
        """TCP connections accepted so far."""
        with self._state.lock:
            return self._state.connections

    def stats(self) -> dict[str, Any]:
        with self._state.lock:
            by_status = Counter(r.status for r in self._state.requests)
            return {
                "requests": len(self._state.requests),
                "connections": self._state.connections,
                "by_status": dict(sorted(by_status.items())),
                "slow": sum(1 for r in self._state.requests if r.slow),
                "live_sessions": len(self._state.sessions),
                "deleted_sessions": len(self._state.deleted),
            }

    # -- request handling (called from handler threads) ----------------------------------------

    def _handle(
        self, method: str, path: str, body: bytes, idempotency_key: str | None
    ) -> tuple[int, Any]:
        parts = [unquote(p) for p in path.split("/") if p]
        if not parts or parts[0] != "sessions" or len(parts) > 2:
            return 404, {"error": f"no such resource: {path}"}
        if len(parts) == 1:
            return self._collection(method, body, idempotency_key)
        return self._item(method, parts[1])

    def _collection(self, method: str, body: bytes, idempotency_key: str | None) -> tuple[int, Any]:
        if method == "POST":
            return self._create(body, idempotency_key)
        if method == "GET":
            with self._state.lock:
                return 200, [s.as_json() for s in self._state.sessions.values()]
        return 405, {"error": f"{method} not allowed on /sessions"}

    def _item(self, method: str, session_id: str) -> tuple[int, Any]:
        if method == "DELETE":
            with self._state.lock:
                if self._state.sessions.pop(session_id, None) is None:
                    return 404, {"error": f"no such session: {session_id}"}
                self._state.deleted.append(session_id)
            return 204, None
        if method == "GET":
            with self._state.lock:
                session = self._state.sessions.get(session_id)
            if session is None:
                return 404, {"error": f"no such session: {session_id}"}
            return 200, session.as_json()
        return 405, {"error": f"{method} not allowed on /sessions/{{id}}"}

    def _create(self, body: bytes, idempotency_key: str | None) -> tuple[int, Any]:
        try:
            message = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return 400, {"error": f"body is not valid JSON: {exc}"}
        if not isinstance(message, dict):
            return 400, {"error": "session message must be a JSON object"}
        with self._state.lock:  # look-up and creation in one step: two racing requests, one session
            first = self._state.by_idempotency_key.get(idempotency_key or "")
            if first is not None:
                return 200, {"session_id": first.session_id, "created": first.created}
            session = Session(f"s-{uuid.uuid4().hex[:16]}", message, time.time(), idempotency_key)
            self._state.sessions[session.session_id] = session
            if idempotency_key is not None:
                self._state.by_idempotency_key[idempotency_key] = session
        return 201, {"session_id": session.session_id, "created": session.created}


# ----------------------------------------------------------------------------------------------
# client
