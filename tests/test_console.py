"""The console's pages, in process, on every store: what each shows, that the job page carries
the audit's data, that whatever the store holds is escaped, and that a bad id is a 404 page.

The incident is walked by hand through the service (as ``sequent demo`` does), so these run
in milliseconds: attempt 1's run A is denied by Cedar, the decision is approved, the job is
retried and run B spawns a session; then A completes late, is discarded as superseded, and its
session is compensated.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from uuid import UUID

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from console import console_app
from domain import CurationService, Discarded, Dispatch, StoreUnavailable
from projections import Projections
from tests.support.cli import Cli
from tests.support.console import request, text_of

XSS = "<script>alert(1)</script>"
XSS_SESSION = "<img src=x onerror=alert(2)>"
ENDPOINT = "http://127.0.0.1:9/sessions"


@dataclass(frozen=True)
class Incident:
    job_id: UUID
    a: Dispatch  # the stale run
    b: Dispatch  # the retry's run
    decision_id: UUID


def walk_incident(svc: CurationService, session_b: str = "s-b") -> Incident:
    job_id = svc.create_job({"target": XSS, "session_service": "http://127.0.0.1:9"})
    a = svc.submit(job_id)
    decision = svc.policies.request_decision(
        integration="build_session_message",
        endpoint=ENDPOINT,
        job_id=str(job_id),
        invocation_id=str(a.invocation_id),
        reason="no policy permits it",
    )
    svc.fail(job_id, reason="authorization_denied", message="denied", decision_id=str(decision))
    svc.policies.approve(decision, by="tester")
    svc.retry(job_id)
    b = svc.submit(job_id)
    svc.complete(b, "SessionSpawned", {"session_id": session_b})
    late = svc.complete(a, "SessionSpawned", {"session_id": "s-a"})
    assert isinstance(late, Discarded)
    svc.compensate(a.invocation_id, "s-a")
    return Incident(job_id, a, b, decision)


@pytest.fixture
def projections(svc: CurationService) -> Projections:
    return Projections(svc)


@pytest.fixture
def app(svc: CurationService, projections: Projections) -> Starlette:
    return console_app(svc, projections)


@pytest.fixture
def incident(svc: CurationService, projections: Projections) -> Incident:
    walked = walk_incident(svc)
    projections.catch_up()
    return walked


def ok(app: Starlette, path: str) -> str:
    answer = request(app, path)
    assert answer.status_code == 200, (path, answer.text[-500:])
    assert answer.headers["content-type"].startswith("text/html")
    return answer.text


# -- the pages ----------------------------------------------------------------------------------


def test_the_jobs_page_counts_jobs_per_state_and_filters_by_state(
    app: Starlette, svc: CurationService, projections: Projections, incident: Incident
) -> None:
    queued = svc.create_job({"target": "t"})
    projections.catch_up()
    html = ok(app, "/")
    assert "2 jobs in the store" in html
    assert re.search(r"Running</span><b>1</b>", html)
    assert re.search(r"Queued</span><b>1</b>", html)
    assert re.search(r"Failed</span><b>0</b>", html)
    assert str(incident.job_id) in html
    assert str(queued) in html
    running = ok(app, "/?state=Running")
    assert str(incident.job_id) in running
    assert str(queued) not in running


def test_the_jobs_page_is_newest_first_and_paged(
    app: Starlette, svc: CurationService, projections: Projections
) -> None:
    jobs = [svc.create_job({"n": n}) for n in range(55)]
    projections.catch_up()
    first = ok(app, "/")
    listed = re.findall(r'href="/jobs/([0-9a-f-]{36})"', first)
    assert listed == [str(j) for j in reversed(jobs)][:50]
    assert "page 1 of 2 (55 jobs)" in first
    assert 'href="/?page=2"' in first
    second = ok(app, "/?page=2")
    assert re.findall(r'href="/jobs/([0-9a-f-]{36})"', second) == [str(j) for j in jobs[4::-1]]
    assert 'href="/?page=1"' in second


def test_the_job_page_has_a_lane_for_the_job_and_one_per_run(
    app: Starlette, incident: Incident
) -> None:
    html = ok(app, f"/jobs/{incident.job_id}")
    lanes = re.findall(r'<th id="lane-[^"]+" class="lane[^"]*" data-lane="([^"]+)"', html)
    assert lanes == ["job", "A", "B", "cedar"]
    assert "run A" in text_of(html, "lane-A")
    assert "discarded: superseded" in text_of(html, "lane-A")
    assert "discarded" not in text_of(html, "lane-B")


def test_the_job_page_marks_the_discarded_run_with_its_reason_and_what_it_saw(
    app: Starlette, incident: Incident
) -> None:
    html = ok(app, f"/jobs/{incident.job_id}")
    discarded = re.findall(r'<div class="ev discarded" id="([^"]+)"', html)
    applied = re.findall(r'<div class="ev applied" id="([^"]+)"', html)
    assert len(discarded) == 1
    assert len(applied) == 1
    cell = text_of(html, discarded[0])
    assert "Discarded: superseded" in cell
    assert "job was Running at v6" in cell  # the job state and version the guard saw
    assert "left session s-a" in cell


def test_the_compensation_is_linked_to_the_discarded_run_both_ways(
    app: Starlette, incident: Incident
) -> None:
    html = ok(app, f"/jobs/{incident.job_id}")
    [discarded] = re.findall(r'<div class="ev discarded" id="([^"]+)"', html)
    [compensated] = re.findall(r'<div class="ev compensated" id="([^"]+)"', html)
    assert "stopped session s-a" in text_of(html, compensated)
    assert f'<a href="#{discarded}">for the discarded completion</a>' in html
    assert f'<a href="#{compensated}">compensated</a>' in html


def test_the_job_page_shows_the_cedar_decisions_on_the_job(
    app: Starlette, incident: Incident
) -> None:
    html = ok(app, f"/jobs/{incident.job_id}")
    requested = text_of(html, "decision-1-v1")
    assert "decision 1: denied, pending" in requested
    assert "http_call http://127.0.0.1:9/sessions" in requested
    assert "by tester" in text_of(html, "decision-1-v2")
    assert "asked by run A" in html


def test_time_travel_shows_the_job_as_of_a_version_with_steps_to_the_next(
    app: Starlette, incident: Incident
) -> None:
    html = ok(app, f"/jobs/{incident.job_id}?at=1")
    assert text_of(html, "state-at") == "Queued"
    assert "As of version 1 of 6" in text_of(html, "as-of")
    assert 'id="prev"' not in html
    assert 'href="?at=2#time-travel" id="next"' in html
    ready = ok(app, f"/jobs/{incident.job_id}?at=2")
    assert text_of(ready, "state-at") == "Ready"
    assert 'href="?at=1#time-travel" id="prev"' in ready
    now = ok(app, f"/jobs/{incident.job_id}")
    assert text_of(now, "state-at") == "Running"
    assert 'id="next"' not in now


def test_events_after_the_version_shown_are_faded(app: Starlette, incident: Incident) -> None:
    html = ok(app, f"/jobs/{incident.job_id}?at=1")
    cells = re.findall(r'<div class="ev ([^"]*)" id="([^"]+)"', html)
    assert ("job", "job-v1") in cells
    assert all(kind.endswith(" later") for kind, anchor in cells if anchor != "job-v1")


def test_the_job_page_shows_the_data_sequent_audit_json_prints(
    shared_store_url: str, sequent: Cli
) -> None:
    svc = CurationService.open(shared_store_url)
    try:
        incident = walk_incident(svc)
        projections = Projections(svc)
        app = console_app(svc, projections)
        for query, argv in (("", ()), ("?at=1", ("--at", "1"))):
            page = request(app, f"/jobs/{incident.job_id}/audit.json{query}")
            assert page.status_code == 200
            printed = sequent("audit", str(incident.job_id), "--db", shared_store_url,
                              "--json", *argv).json()  # fmt: skip
            assert page.json() == printed
    finally:
        svc.close()


def test_the_discarded_page_lists_discards_and_filters_by_reason(
    app: Starlette, incident: Incident
) -> None:
    html = ok(app, "/discarded")
    table = text_of(html, "discarded")
    assert "superseded" in table
    assert str(incident.job_id)[:8] in table
    assert re.search(r">superseded<b>1</b>", html)
    assert re.search(r">duplicate<b>0</b>", html)
    assert str(incident.job_id)[:8] in text_of(ok(app, "/discarded?reason=superseded"), "discarded")
    assert "No discarded completions for duplicate" in ok(app, "/discarded?reason=duplicate")


def test_the_decisions_page_lists_decisions_by_status(app: Starlette, incident: Incident) -> None:
    approved = ok(app, "/decisions?status=approved")
    assert str(incident.decision_id) in approved
    assert "tester" in approved
    assert "No decisions pending" in ok(app, "/decisions?status=pending")
    assert re.search(r">approved<b>1</b>", ok(app, "/decisions"))


def test_the_status_page_shows_each_read_model_lag_in_events_and_seconds(
    app: Starlette, svc: CurationService, projections: Projections, incident: Incident
) -> None:
    caught_up = ok(app, "/status")
    for name in projections.names:
        assert f'data-projection="{name}"' in caught_up
    svc.create_job({"target": "later"})
    time.sleep(0.05)
    behind = ok(app, "/status")
    rows = re.findall(
        r'data-projection="job_status">\s*<td[^>]*>job_status</td>\s*<td>(\d+)</td>\s*'
        r"<td>(\d+)</td>\s*<td>(\d+)</td>\s*<td>([\d.]+)</td>",
        behind,
    )
    [(position, head, events, seconds)] = rows
    assert int(head) - int(position) == int(events) == 1
    assert float(seconds) >= 0.05


def test_metrics_are_the_read_models_totals(app: Starlette, incident: Incident) -> None:
    answer = request(app, "/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }
    assert samples[("sequent_completions_total", (("reason", ""), ("verdict", "applied")))] == 1
    discarded = (("reason", "superseded"), ("verdict", "discarded"))
    assert samples[("sequent_completions_total", discarded)] == 1
    assert samples[("sequent_compensations_total", ())] == 1
    assert samples[("sequent_orphans_total", ())] == 0
    assert samples[("sequent_jobs", (("state", "Running"),))] == 1
    assert samples[("sequent_jobs", (("state", "Failed"),))] == 0
    assert samples[("sequent_decisions", (("status", "approved"),))] == 1
    lag = {k[1][0][1]: v for k, v in samples.items() if k[0] == "sequent_projection_lag_events"}
    assert lag == dict.fromkeys(("job_status", "dispatch_audit", "sessions", "decisions"), 0)
    skipped = {k[1][0][1]: v for k, v in samples.items()
               if k[0] == "sequent_projection_skipped_events"}  # fmt: skip
    assert skipped == lag


# -- escaping, errors, read-only ----------------------------------------------------------------


@pytest.fixture
def hostile(svc: CurationService, projections: Projections) -> Incident:
    walked = walk_incident(svc, session_b=XSS_SESSION)
    projections.catch_up()
    return walked


@pytest.mark.parametrize("page", ["/", "/jobs/{job}", "/jobs/{job}?at=1", "/discarded",
                                  "/decisions", "/status"])  # fmt: skip
def test_what_the_store_holds_is_shown_as_text_never_as_markup(
    app: Starlette, hostile: Incident, page: str
) -> None:
    html = ok(app, page.format(job=hostile.job_id))
    assert "<script" not in html
    assert "<img" not in html
    if page.startswith("/jobs/"):
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # the spec, as text
    if page in ("/", "/jobs/{job}"):
        assert "&lt;img src=x onerror=alert(2)&gt;" in html  # the session id, as text


def test_every_page_forbids_scripts_and_framing(app: Starlette, incident: Incident) -> None:
    for path in ("/", f"/jobs/{incident.job_id}", "/metrics", "/jobs/nope"):
        headers = request(app, path).headers
        assert "default-src 'none'" in headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("path", "status", "says"),
    [
        ("/jobs/not-a-uuid", 404, "not-a-uuid"),
        ("/jobs/00000000-0000-4000-8000-000000000000", 404, "not found"),
        ("/jobs/{decision}", 404, "not found"),  # an id, but of a decision
        ("/jobs/{job}?at=0", 404, "version"),
        ("/jobs/{job}?at=99", 404, "version"),
        ("/jobs/{job}/audit.json?at=99", 404, "version"),
        ("/jobs/{job}?at=two", 400, "whole number"),
        ("/?state=Bogus", 400, "Queued"),
        ("/?page=0", 400, "whole number"),
        ("/discarded?reason=late", 400, "superseded"),
        ("/decisions?status=maybe", 400, "pending"),
        ("/no/such/page", 404, "no such page"),
    ],
)
def test_a_bad_request_is_an_error_page_never_a_traceback(
    app: Starlette, incident: Incident, path: str, status: int, says: str
) -> None:
    answer = request(app, path.format(job=incident.job_id, decision=incident.decision_id))
    assert answer.status_code == status
    assert answer.headers["content-type"].startswith("text/html")
    assert says in text_of(answer.text, "message")
    assert "Traceback" not in answer.text
    assert 'href="/"' in answer.text


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_the_console_is_read_only(app: Starlette, incident: Incident, method: str) -> None:
    for path in ("/", f"/jobs/{incident.job_id}", "/metrics"):
        assert request(app, path, method).status_code == 405


def test_a_store_that_fails_is_a_503_page(app: Starlette, monkeypatch: pytest.MonkeyPatch,
                                          projections: Projections) -> None:  # fmt: skip
    def unavailable(*args: object, **kwargs: object) -> None:
        raise StoreUnavailable("sqlite:///gone.db", "disk I/O error")

    monkeypatch.setattr(projections, "jobs", unavailable)
    answer = request(app, "/")
    assert answer.status_code == 503
    assert "disk I/O error" in text_of(answer.text, "message")


def test_an_unexpected_failure_is_a_500_page_without_details(
    app: Starlette, monkeypatch: pytest.MonkeyPatch, projections: Projections
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(projections, "decisions", broken)
    answer: httpx.Response = request(app, "/decisions")
    assert answer.status_code == 500
    assert "secret internals" not in answer.text
    assert "Traceback" not in answer.text
