"""The session service's HTTP client.

``SessionClient`` wraps one ``urllib3.PoolManager`` (pooled keep-alive connections per host,
configurable timeouts, safe to share between threads; no retries, no redirects, no proxy from
the environment). Transport failures (refused, reset, timeout) and unexpected answers raise
:class:`SessionServiceError` with a ``kind``; :meth:`SessionClient.request` is the generic call
the wasm host function ``http_call`` makes after Cedar allowed it.

Why urllib3 and not httpx: a POST to a loopback service costs the calling thread 325 us of CPU
through httpx and 143 us through urllib3 (measured here, the service in another process), and
this call is in every run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import quote, urljoin

import urllib3
from urllib3.exceptions import (
    HTTPError,
    LocationParseError,
    LocationValueError,
    NewConnectionError,
)
from urllib3.exceptions import TimeoutError as Timeout

DEFAULT_MAX_RESPONSE_BYTES = 1 << 20
READ_CHUNK = 64 * 1024


ErrorKind = Literal["http_error", "bad_request"]


class SessionServiceError(Exception):
    """A session-service call that did not get a usable answer.

    ``kind`` is ``"http_error"`` (refused, reset, timeout, unexpected status or body) or
    ``"bad_request"`` (the request itself is malformed: bad URL, scheme, method or header).
    ``status`` is the HTTP status when there was one.
    """

    def __init__(self, kind: ErrorKind, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message
        self.status = status

    def as_json(self) -> dict[str, Any]:
        return {"error": {"kind": self.kind, "message": self.message}}


class SessionClient:
    """HTTP client for the session service over one pooled ``urllib3.PoolManager``
    (thread-safe).

    ``base_url`` is the service root (``SessionService.url``); :meth:`request` also takes
    absolute URLs. ``timeout`` bounds each read, ``connect_timeout`` the connect.
    """

    def __init__(
        self,
        base_url: str = "",
        *,
        timeout: float = 10.0,
        connect_timeout: float = 2.0,
        max_connections: int = 64,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_response_bytes = max_response_bytes
        self._pool = urllib3.PoolManager(
            num_pools=16,
            maxsize=max_connections,
            block=False,
            timeout=urllib3.Timeout(connect=connect_timeout, read=timeout),
            retries=False,
        )

    def close(self) -> None:
        self._pool.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None = None,
        body: str | bytes | None = None,
    ) -> dict[str, Any]:
        """Send one request; return ``{"status": int, "headers": {lower-case: str}, "body": str}``.

        Any HTTP status is a return value; only a missing answer raises
        :class:`SessionServiceError` (``http_error``: refused, reset, timeout, response over
        ``max_response_bytes``; ``bad_request``: malformed method, URL or headers). The body is
        decoded as UTF-8 (invalid bytes replaced).
        """
        if not method or not method.isascii() or not method.isalpha():
            raise SessionServiceError("bad_request", f"invalid HTTP method {method!r}")
        target = self._absolute(url)
        content = body.encode("utf-8") if isinstance(body, str) else body
        try:
            response = self._pool.request(
                method.upper(),
                target,
                body=content,
                headers=self._checked_headers(headers or {}),
                preload_content=False,
                redirect=False,
            )
            try:
                data = self._read_limited(response, method, url)
            except BaseException:
                response.close()  # part read: the connection cannot carry another request
                raise
            response.release_conn()
        except (LocationParseError, LocationValueError) as exc:
            raise SessionServiceError(
                "bad_request", f"{method} {url}: {type(exc).__name__}: {exc}"
            ) from exc
        except (UnicodeError, ValueError, TypeError) as exc:  # e.g. non-ASCII header values
            raise SessionServiceError("bad_request", f"{method} {url}: {exc}") from exc
        except NewConnectionError as exc:  # refused; urllib3 also files it under timeouts
            raise SessionServiceError(
                "http_error", f"{method} {url}: {type(exc).__name__}: {exc}"
            ) from exc
        except Timeout as exc:
            raise SessionServiceError(
                "http_error", f"{method} {url}: timed out ({type(exc).__name__})"
            ) from exc
        except (HTTPError, OSError) as exc:
            raise SessionServiceError(
                "http_error", f"{method} {url}: {type(exc).__name__}: {exc}"
            ) from exc
        return {
            "status": response.status,
            "headers": {k.lower(): v for k, v in response.headers.items()},
            "body": data.decode("utf-8", errors="replace"),
        }

    def _absolute(self, url: str) -> str:
        if "://" in url:
            scheme = url.split("://", 1)[0].lower()
            if scheme not in ("http", "https"):
                raise SessionServiceError("bad_request", f"unsupported scheme in {url!r}")
            return url
        if not self.base_url:
            raise SessionServiceError("bad_request", f"relative URL {url!r} and no base URL")
        return urljoin(self.base_url + "/", url.lstrip("/"))

    @staticmethod
    def _checked_headers(headers: Mapping[str, str]) -> dict[str, str]:
        """Headers as given, refused when no HTTP/1.1 request could carry them."""
        for name, value in headers.items():
            if not name or not name.isascii() or any(c in name for c in " :\r\n\t"):
                raise SessionServiceError("bad_request", f"invalid header name {name!r}")
            if any(c in value for c in "\r\n\x00") or not value.isascii():
                raise SessionServiceError("bad_request", f"invalid value for header {name!r}")
        return dict(headers)

    def _read_limited(self, response: urllib3.BaseHTTPResponse, method: str, url: str) -> bytes:
        chunks: list[bytes] = []
        size = 0
        for chunk in response.stream(READ_CHUNK):
            size += len(chunk)
            if size > self.max_response_bytes:
                raise SessionServiceError(
                    "http_error",
                    f"{method} {url}: response exceeds {self.max_response_bytes} bytes",
                    status=response.status,
                )
            chunks.append(chunk)
        return b"".join(chunks)

    # -- the session API -----------------------------------------------------------------------

    def create(self, message: Mapping[str, Any]) -> str:
        """POST the session message; return the new session id."""
        answer = self.request(
            "POST",
            "/sessions",
            {"content-type": "application/json"},
            json.dumps(dict(message), separators=(",", ":")),
        )
        body = self._expect(answer, "POST /sessions", 201, 200)
        session_id = body.get("session_id") if isinstance(body, dict) else None
        if not isinstance(session_id, str):
            raise SessionServiceError(
                "http_error", "POST /sessions: answer has no session_id", status=answer["status"]
            )
        return session_id

    def delete(self, session_id: str, service_url: str = "") -> bool:
        """DELETE the session: True if it was deleted, False if the service did not know it.
        ``service_url`` names another service than ``base_url``."""
        path = f"/sessions/{quote(session_id, safe='')}"  # one path segment, whatever it holds
        answer = self.request("DELETE", f"{service_url.rstrip('/')}{path}")
        if answer["status"] == 404:
            return False
        self._expect(answer, f"DELETE /sessions/{session_id}", 204, 200)
        return True

    def list(self, service_url: str = "") -> list[dict[str, Any]]:
        """The live sessions: ``[{"session_id", "message", "created"}, …]``, each with the
        ``idempotency_key`` it was created with where the service records one.
        ``service_url`` names another service than ``base_url``."""
        url = f"{service_url.rstrip('/')}/sessions"
        body = self._expect(self.request("GET", url), "GET /sessions", 200)
        if not isinstance(body, list):
            raise SessionServiceError("http_error", "GET /sessions: answer is not a list")
        return body

    @staticmethod
    def _expect(answer: dict[str, Any], what: str, *ok: int) -> Any:
        status: int = answer["status"]
        text: str = answer["body"]
        if status not in ok:
            raise SessionServiceError(
                "http_error", f"{what}: status {status}: {text[:200]}", status=status
            )
        if not text:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise SessionServiceError(
                "http_error", f"{what}: answer is not JSON: {exc}", status=status
            ) from exc
