"""The worker's telemetry: an OpenTelemetry span per invocation run (claim, sandbox, each
http_call with its Cedar decision, the completion with its verdict and reason), read with the
SDK's in-memory exporter, and the worker's own Prometheus metrics, with every real part (the
Zig guest in wasmtime, Cedar, the loopback session service)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bootstrap import Settings, System, build_system
from domain import CurationService, Dispatch
from domain import observability as o
from domain.cedar import default_policies
from integrations.session_service import SessionService
from integrations.telemetry import Telemetry
from tests.support.tracing import recorded_spans

CHECKOUT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Runs:
    stale: Dispatch  # run A of a job that was retried: its completion is superseded
    current: Dispatch  # run B of that job: applied
    denied: Dispatch  # a job whose session service no policy permits: Fail applied
    telemetry: Telemetry
    spans: tuple[ReadableSpan, ...]


@pytest.fixture
def system(shared_store_url: str) -> Iterator[System]:
    with build_system(Settings.from_env(store_url=shared_store_url)) as built:
        yield built


def run_three(system: System, permitted: SessionService, gated: SessionService) -> Runs:
    svc: CurationService = system.service
    svc.policies.add_policy(default_policies(permitted.url), reason="test")
    job = svc.create_job({"target": "t", "session_service": permitted.url})
    stale = svc.submit(job)
    svc.fail(job, reason="operator", message="moved on before its run")
    svc.retry(job)
    current = svc.submit(job)
    denied = svc.submit(svc.create_job({"target": "t", "session_service": gated.url}))
    telemetry = Telemetry()
    with recorded_spans() as exporter:
        anyio.run(system.dispatcher(observer=telemetry).run_once)
        spans = tuple(exporter.get_finished_spans())
    return Runs(stale, current, denied, telemetry, spans)


@pytest.fixture
def runs(system: System, sessions: SessionService) -> Iterator[Runs]:
    with SessionService(seed=3) as gated:
        yield run_three(system, sessions, gated)


def of_run(runs: Runs, dispatch: Dispatch) -> list[ReadableSpan]:
    """The spans of the trace whose run span is ``dispatch``'s invocation."""
    [root] = [s for s in runs.spans if s.name == "sequent.invocation"
              and attrs(s)["sequent.invocation_id"] == str(dispatch.invocation_id)]  # fmt: skip
    assert root.context is not None
    return [s for s in runs.spans if s.context and s.context.trace_id == root.context.trace_id]


def attrs(span: ReadableSpan) -> Mapping[str, Any]:
    return dict(span.attributes or {})


def named(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def parent_of(span: ReadableSpan, spans: list[ReadableSpan]) -> ReadableSpan:
    assert span.parent is not None
    [parent] = [s for s in spans if s.context and s.context.span_id == span.parent.span_id]
    return parent


# -- traces -------------------------------------------------------------------------------------


def test_each_run_is_one_trace_of_claim_sandbox_and_completion(runs: Runs) -> None:
    for dispatch in (runs.stale, runs.current, runs.denied):
        spans = of_run(runs, dispatch)
        [root] = named(spans, "sequent.invocation")
        assert root.parent is None
        for step in ("sequent.claim", "sequent.sandbox", "sequent.completion"):
            [span] = named(spans, step)
            assert parent_of(span, spans) is root
        [claim] = named(spans, "sequent.claim")
        [sandbox] = named(spans, "sequent.sandbox")
        [completion] = named(spans, "sequent.completion")
        assert claim.start_time is not None
        assert sandbox.start_time is not None
        assert completion.start_time is not None
        assert claim.start_time <= sandbox.start_time <= completion.start_time


def test_the_spans_carry_the_job_the_invocation_and_the_attempt(runs: Runs) -> None:
    for dispatch in (runs.stale, runs.current, runs.denied):
        spans = of_run(runs, dispatch)
        for span in named(spans, "sequent.invocation") + named(spans, "sequent.completion"):
            a = attrs(span)
            assert a["sequent.job_id"] == str(dispatch.job_id)
            assert a["sequent.invocation_id"] == str(dispatch.invocation_id)
            assert a["sequent.attempt"] == dispatch.attempt
    assert attrs(named(of_run(runs, runs.current), "sequent.invocation")[0])["sequent.attempt"] == 2


def test_the_completion_span_has_the_verdict_and_reason(runs: Runs) -> None:
    def completion(dispatch: Dispatch) -> Mapping[str, Any]:
        [span] = named(of_run(runs, dispatch), "sequent.completion")
        return attrs(span)

    stale, current, denied = (completion(d) for d in (runs.stale, runs.current, runs.denied))
    assert (stale["sequent.verdict"], stale["sequent.reason"]) == ("discarded", "superseded")
    assert stale["sequent.action"] == "SessionSpawned"
    assert (current["sequent.verdict"], current["sequent.reason"]) == ("applied", "")
    assert (denied["sequent.verdict"], denied["sequent.action"]) == ("applied", "Fail")
    [root] = named(of_run(runs, runs.stale), "sequent.invocation")
    assert (attrs(root)["sequent.verdict"], attrs(root)["sequent.reason"]) == (
        "discarded", "superseded",
    )  # fmt: skip
    assert [e.name for e in root.events] == ["discarded", "compensation"]


def test_each_http_call_span_has_its_cedar_decision(runs: Runs, system: System) -> None:
    allowed_spans = of_run(runs, runs.current)
    [allowed] = named(allowed_spans, "sequent.http_call")
    assert parent_of(allowed, allowed_spans).name == "sequent.sandbox"
    a = attrs(allowed)
    assert a["sequent.cedar.decision"] == "allow"
    assert a["http.request.method"] == "POST"
    assert a["http.response.status_code"] == 201
    assert a["sequent.job_id"] == str(runs.current.job_id)
    assert a["sequent.invocation_id"] == str(runs.current.invocation_id)
    assert a["sequent.cedar.resource"].endswith('/sessions"')

    [denied] = named(of_run(runs, runs.denied), "sequent.http_call")
    d = attrs(denied)
    assert d["sequent.cedar.decision"] == "deny"
    system.projections.catch_up()
    [pending] = system.projections.decisions("pending", job_id=str(runs.denied.job_id))
    assert d["sequent.cedar.decision_id"] == pending.decision_id
    assert "http.response.status_code" not in d, "a denied call never leaves the host"
    [root] = named(of_run(runs, runs.denied), "sequent.invocation")
    assert attrs(root)["sequent.error_kind"] == "denied"


# -- the worker's metrics ------------------------------------------------------------------------


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_worker_counts_its_own_completions_failures_and_durations(runs: Runs) -> None:
    seen = samples(generate_latest(runs.telemetry.registry).decode())
    completions = {labels: v for (name, labels), v in seen.items()
                   if name == "sequent_completions_total"}  # fmt: skip
    assert completions == {
        (("reason", ""), ("verdict", "applied")): 2,
        (("reason", "superseded"), ("verdict", "discarded")): 1,
    }
    assert seen[("sequent_sandbox_failures_total", (("kind", "denied"),))] == 1
    assert seen[("sequent_invocation_duration_seconds_count", ())] == 3
    assert seen[("sequent_invocation_duration_seconds_sum", ())] > 0
    assert seen[("sequent_compensations_total", ())] == 1
    assert seen[("sequent_orphans_total", ())] == 0
    assert seen[("sequent_leases_expired_total", ())] == 0
    assert any(name.startswith("process_") for name, _ in seen)


def test_the_metrics_endpoint_serves_the_registry(runs: Runs) -> None:
    with runs.telemetry.serve(0) as endpoint:
        assert endpoint.url.startswith("http://127.0.0.1:")
        answer = httpx.get(endpoint.url, timeout=5)
    assert answer.status_code == 200
    seen = samples(answer.text)
    assert seen[("sequent_completions_total", (("reason", "superseded"), ("verdict", "discarded")))]


def test_sequent_worker_serves_its_metrics_until_it_stops(shared_store_url: str) -> None:
    """``sequent worker --metrics-port 0`` says where its metrics are, serves them while it
    runs, and stops cleanly on SIGTERM."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "scripts.cli", "worker", "--db", shared_store_url,
         "--metrics-port", "0", "--json"],
        cwd=CHECKOUT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert worker.stderr is not None
        line = worker.stderr.readline()
        assert line.startswith("sequent worker: metrics at http://127.0.0.1:"), line
        url = line.split(" at ", 1)[1].strip()
        answer = httpx.get(url, timeout=5)
        assert answer.status_code == 200
        assert "# TYPE sequent_completions_total counter" in answer.text
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert worker.returncode == 0, err
    assert '"runs": 0' in out
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=2)


def test_the_readme_names_every_metric_and_no_other() -> None:
    exposed = {m.exposed for m in vars(o).values() if isinstance(m, o.Metric)}
    readme = (CHECKOUT / "README.md").read_text()
    table = readme[readme.index("| metric | type |") : readme.index("After `sequent race")]
    assert set(re.findall(r"^\| `(sequent_\w+)`", table, re.MULTILINE)) == exposed
