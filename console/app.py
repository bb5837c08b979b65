"""The console as an ASGI application (Starlette): read-only pages rendered on the server from
Jinja2 templates, and ``/metrics``.

Read-only: every route answers GET and HEAD only (anything else is a 405), and the handlers
call queries alone. Each page is a plain function that runs in Starlette's thread pool (the
read models' drivers block). What the store holds reaches a page only through a template
variable, and the templates are autoescaped, so a spec of ``<script>`` shows as that text; the
responses also forbid scripts outright (``Content-Security-Policy``), as the console has none.

Errors are pages, never tracebacks: an id or version that names nothing is a 404, a filter
value no row can have a 400, a store that cannot be read a 503, anything else a 500 whose
details go to the log.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from console import pages
from console.metrics import read_model_registry
from domain import CurationService, InvocationNotFound, JobNotFound, MalformedId, SequentError
from projections import Projections
from projections.errors import UnknownFilter, VersionOutOfRange

log = logging.getLogger(__name__)

NOT_FOUND = (MalformedId, JobNotFound, InvocationNotFound, VersionOutOfRange)
BAD_QUERY = (pages.BadQuery, UnknownFilter)
HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
NAV = (
    ("/", "Jobs"),
    ("/discarded", "Discarded"),
    ("/decisions", "Decisions"),
    ("/status", "Status"),
    ("/metrics", "Metrics"),
)


def templates() -> Jinja2Templates:
    env = Environment(
        loader=PackageLoader("console", "templates"),
        autoescape=True,  # every page: what the store holds is text, never markup
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["nav"] = NAV
    env.filters["short"] = lambda value: str(value)[:8] if value else "-"
    return Jinja2Templates(env=env)


class SecurityHeaders:
    """Adds HEADERS to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend((k.lower().encode(), v.encode()) for k, v in HEADERS.items())
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def console_app(
    service: CurationService, projections: Projections, *, following: bool = False
) -> Starlette:
    """The console over ``service``'s store and its read models. ``following``: whether a
    Follower keeps the read models at the head (the status page says so)."""
    view = templates()
    registry = read_model_registry(projections)

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        context.setdefault("path", request.url.path)
        return view.TemplateResponse(request, name, context, status_code=status_code)

    def jobs(request: Request) -> Response:
        q = request.query_params
        data = pages.jobs_page(projections, q.get("state"), q.get("page"))
        return page(request, "jobs.html", data=data, title="Jobs")

    def job(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        data = pages.job_page(service, projections, job_id, request.query_params.get("at"))
        return page(request, "job.html", data=data, title=f"Job {data.audit['job']}")

    def job_json(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        audit = pages.job_audit(service, projections, job_id, request.query_params.get("at"))
        return JSONResponse(audit)

    def discarded(request: Request) -> Response:
        data = pages.discarded_page(projections, request.query_params.get("reason"))
        return page(request, "discarded.html", data=data, title="Discarded completions")

    def decisions(request: Request) -> Response:
        data = pages.decisions_page(projections, request.query_params.get("status"))
        return page(request, "decisions.html", data=data, title="Decisions")

    def status(request: Request) -> Response:
        data = pages.status_page(projections, following)
        return page(request, "status.html", data=data, title="Status")

    def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def error_page(request: Request, status: int, title: str, message: str) -> Response:
        return page(request, "error.html", status, title=title, status=status, message=message)

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_page(request, 404, "Not found", str(exc))

    async def bad_query(request: Request, exc: Exception) -> Response:
        return error_page(request, 400, "Bad request", str(exc))

    async def store_error(request: Request, exc: Exception) -> Response:
        log.warning("%s: %s", request.url.path, exc)
        return error_page(request, 503, "The store could not be read", str(exc))

    async def http_error(request: Request, exc: Exception) -> Response:
        code = exc.status_code if isinstance(exc, HTTPException) else 500
        message = "no such page" if code == 404 else str(getattr(exc, "detail", ""))
        return error_page(request, code, "Not found" if code == 404 else "Error", message)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("%s failed", request.url.path, exc_info=exc)
        return error_page(request, 500, "Internal error", "the console failed; see its log")

    handlers: dict[Any, Any] = {
        **dict.fromkeys(NOT_FOUND, not_found),
        **dict.fromkeys(BAD_QUERY, bad_query),
        SequentError: store_error,  # after the more specific ones: matched by the class's MRO
        HTTPException: http_error,
        Exception: server_error,
    }
    routes = [
        Route("/", jobs),
        Route("/jobs/{job_id}", job),
        Route("/jobs/{job_id}/audit.json", job_json),
        Route("/discarded", discarded),
        Route("/decisions", decisions),
        Route("/status", status),
        Route("/metrics", metrics),
    ]
    return Starlette(
        routes=routes, exception_handlers=handlers, middleware=[Middleware(SecurityHeaders)]
    )
