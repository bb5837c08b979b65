"""The worker's telemetry (DESIGN.md §9): its own Prometheus counters and histograms, and one
OpenTelemetry span per invocation run.

``Telemetry`` is the dispatcher's observer (``integrations/observer.py``). Per run it opens the
span ``sequent.invocation`` with a child per step — ``sequent.claim``, ``sequent.sandbox`` (the
guest's ``sequent.http_call`` spans, each with its Cedar decision, are its children: the host
opens them through ``http_call_span`` while the guest runs) and ``sequent.completion`` with the
verdict and reason — and counts what the run came to in its own registry, which ``sequent
worker --metrics-port N`` serves. These are this process's figures since it started; the
store-wide totals are the console's (``console/metrics.py``, from the read models).

Spans go through the OpenTelemetry API only, to whatever tracer provider the process has
installed (none: the API's no-op, at the cost of a few attribute writes per run). Exporting is
the user's choice: an SDK set up in-process or by ``opentelemetry-instrument``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from threading import Thread
from typing import Any
from uuid import UUID
from wsgiref.simple_server import WSGIServer

from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Span
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.process_collector import ProcessCollector

from domain import Applied, Discarded, Dispatch, Verdict
from domain import observability as o
from integrations.authorizer import AuthzOutcome
from integrations.observer import Step

# Sandbox runs take from well under a millisecond (a denial) to the wall-clock limit (30 s).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

STEP_SPANS: Mapping[Step, str] = {
    "claim": o.CLAIM_SPAN,
    "sandbox": o.SANDBOX_SPAN,
    "completion": o.COMPLETION_SPAN,
}


# Made once: before a provider is installed this is the API's proxy, which hands every span to
# the provider installed later (an SDK set up after import, opentelemetry-instrument).
_TRACER = trace.get_tracer(o.TRACER_NAME)


def tracer() -> trace.Tracer:
    return _TRACER


def tracing() -> bool:
    """Whether a tracer provider (an SDK) is installed. Without one every span is the API's
    no-op and entering it the only cost (tens of microseconds a run), so runs skip them."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def verdict_labels(verdict: Verdict) -> tuple[str, str]:
    """(verdict, reason) as the completions metric labels them; an applied one has no reason."""
    if isinstance(verdict, Applied):
        return o.APPLIED_LABEL, ""
    return o.DISCARDED_LABEL, str(verdict.reason)


class Telemetry:
    """The dispatcher's observer: metrics in ``registry`` (its own unless given), spans through
    the OpenTelemetry API."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True) -> None:
        self.registry = registry or CollectorRegistry()
        if process:  # the process_* figures (CPU, memory, open files) beside sequent's own
            ProcessCollector(registry=self.registry)

        def counter(metric: o.Metric) -> Counter:
            return Counter(metric.name, metric.help, metric.labels, registry=self.registry)

        self.completions = counter(o.COMPLETIONS)
        self.sandbox_failures = counter(o.SANDBOX_FAILURES)
        self.leases_expired = counter(o.LEASES_EXPIRED)
        self.compensations = counter(o.COMPENSATIONS)
        self.orphans = counter(o.ORPHANS)
        self.duration = Histogram(
            o.INVOCATION_DURATION.name,
            o.INVOCATION_DURATION.help,
            registry=self.registry,
            buckets=DURATION_BUCKETS,
        )

    @contextmanager
    def run(self, invocation_id: UUID) -> Iterator[ObservedRun]:
        attributes: dict[str, Any] = {o.INVOCATION_ID: str(invocation_id)}
        if not tracing():
            yield ObservedRun(self, INVALID_SPAN, attributes, traced=False)
            return
        with tracer().start_as_current_span(o.RUN_SPAN, attributes=attributes) as span:
            yield ObservedRun(self, span, attributes, traced=True)

    def serve(self, port: int, host: str = "127.0.0.1") -> MetricsServer:
        """Serves this registry as Prometheus text on http://host:port/metrics until closed."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        return MetricsServer(server, thread)


class MetricsServer:
    """The worker's ``--metrics-port`` endpoint: a daemon thread, shut down with the worker."""

    def __init__(self, server: WSGIServer, thread: Thread) -> None:
        self.server = server
        self.thread = thread

    @property
    def url(self) -> str:
        host, port = self.server.socket.getsockname()[:2]
        return f"http://{host}:{port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ObservedRun:
    """One run: its span, the step span open now, and when its lease runs out."""

    def __init__(
        self, telemetry: Telemetry, span: Span, attributes: dict[str, Any], *, traced: bool
    ) -> None:
        self.telemetry = telemetry
        self.span = span
        self.traced = traced
        self.attributes = attributes  # what every span of the run carries, once known
        self.lease_until: datetime | None = None
        self._step: Span | None = None

    @contextmanager
    def _step_span(self, name: Step) -> Iterator[Span]:
        with tracer().start_as_current_span(STEP_SPANS[name], attributes=self.attributes) as span:
            self._step = span
            try:
                with self._timed(name):
                    yield span
            finally:
                self._step = None

    def _timed(self, name: Step) -> AbstractContextManager[object]:
        return self.telemetry.duration.time() if name == "sandbox" else nullcontext()

    def step(self, name: Step) -> AbstractContextManager[object]:
        return self._step_span(name) if self.traced else self._timed(name)

    def _set(self, attributes: Mapping[str, Any]) -> None:
        """On the run's span and on the step's (so each step span reads on its own)."""
        self.span.set_attributes(attributes)
        if self._step is not None:
            self._step.set_attributes(attributes)

    def claimed(self, dispatch: Dispatch, lease_until: datetime) -> None:
        self.lease_until = lease_until
        self.attributes.update({o.JOB_ID: str(dispatch.job_id), o.ATTEMPT: dispatch.attempt})
        self._set(self.attributes)

    def ran(self, error_kind: str | None) -> None:
        if error_kind is None:
            self.span.set_attributes({o.OUTCOME: "ok"})
            return
        self.telemetry.sandbox_failures.labels(error_kind).inc()
        self.span.set_attributes({o.OUTCOME: "error", o.ERROR_KIND: error_kind})

    def completed(self, action: str, verdict: Verdict) -> None:
        label, reason = verdict_labels(verdict)
        self.telemetry.completions.labels(label, reason).inc()
        self._set({o.ACTION: action, o.VERDICT: label, o.REASON: reason})
        if self.lease_until is not None and datetime.now(UTC) > self.lease_until:
            self.telemetry.leases_expired.inc()
        if isinstance(verdict, Discarded):
            self.span.add_event(
                "discarded",
                {o.REASON: reason, "sequent.job_version_seen": verdict.job_version_seen},
            )

    def compensated(self, session_id: str, *, stopped: bool) -> None:
        (self.telemetry.compensations if stopped else self.telemetry.orphans).inc()
        self.span.add_event(
            "compensation", {"sequent.session_id": session_id, "sequent.stopped": stopped}
        )


# -- http_call ----------------------------------------------------------------------------------


class HttpCallSpan:
    """The span of one guest ``http_call``: its Cedar decision, then the answer."""

    def __init__(self, span: Span) -> None:
        self.span = span

    def decided(self, decision: AuthzOutcome) -> None:
        attributes: dict[str, Any] = {
            o.CEDAR_DECISION: "allow" if decision.allowed else "deny",
            "sequent.cedar.resource": decision.resource,
        }
        if decision.decision_id is not None:
            attributes[o.DECISION_ID] = decision.decision_id
        if not decision.allowed:
            attributes["sequent.cedar.reason"] = decision.reason[:200]
        self.span.set_attributes(attributes)

    def answered(self, answer: Mapping[str, Any]) -> None:
        status = answer.get("status")
        if isinstance(status, int):
            self.span.set_attribute("http.response.status_code", status)
            return
        error = answer.get("error")
        if isinstance(error, Mapping):
            self.span.set_attribute(o.ERROR_KIND, str(error.get("kind", "")))


@contextmanager
def http_call_span(
    method: str, job_id: str, invocation_id: str, attempt: int
) -> Iterator[HttpCallSpan]:
    """Around one ``http_call`` the host makes for a guest. The URL is on the span only as the
    Cedar resource it was checked as (scheme://host:port/first-segment), never with a query."""
    if not tracing():
        yield HttpCallSpan(INVALID_SPAN)
        return
    attributes: dict[str, str | int] = {
        "http.request.method": method.upper()[:16],
        o.JOB_ID: job_id,
        o.INVOCATION_ID: invocation_id,
        o.ATTEMPT: attempt,
    }
    with tracer().start_as_current_span(o.HTTP_CALL_SPAN, attributes=attributes) as span:
        yield HttpCallSpan(span)
