"""Outbound calls carry the host's fencing token and nothing a guest forged: the host owns Host,
Idempotency-Key, Sequent-Attempt, Content-Length and every hop-by-hop header, and the session
service creates one session per key however often an invocation runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import pytest

from bootstrap import Settings, build_system
from domain import CurationService, Dispatch, JobState
from domain.cedar import default_policies
from integrations.authorizer import CedarAuthorizer
from integrations.host import guest_headers
from integrations.runtime import Runtime
from integrations.sandboxed import SandboxRunner
from integrations.session_client import SessionClient
from integrations.session_service import RequestRecord, SessionService

# In a folder of its own: tests/modules/*.wat are the misbehaving modules and echo.wat, and
# this one runs to "ok" (what it forges is dropped, not failed).
FORGED_HEADERS = Path(__file__).parent / "modules" / "fencing" / "forged_headers.wat"


@pytest.fixture
def runner(sessions: SessionService) -> Iterator[SandboxRunner]:
    svc = CurationService.open("memory://")
    svc.policies.add_policy(default_policies(sessions.url))
    runtime = Runtime()
    client = SessionClient()
    yield SandboxRunner(
        runtime, runtime.load_file(FORGED_HEADERS), CedarAuthorizer(svc.policies), client
    )
    client.close()
    svc.close()


def values(record: RequestRecord, name: str) -> list[str]:
    return [value for header, value in record.headers if header == name]


def test_a_guest_cannot_set_the_host_the_fencing_token_or_hop_by_hop_headers(
    sessions: SessionService, runner: SandboxRunner
) -> None:
    dispatch = Dispatch(uuid4(), uuid4(), expected_version=2, attempt=3)
    outcome = runner(dispatch, {"url": f"{sessions.url}/sessions"})
    assert outcome.ok is not None, outcome
    assert outcome.ok["response"]["status"] == 201
    [record] = sessions.requests
    assert values(record, "host") == [f"127.0.0.1:{sessions.port}"]
    assert values(record, "idempotency-key") == [str(dispatch.invocation_id)]
    assert values(record, "sequent-attempt") == ["3"]
    assert values(record, "content-length") == [str(len('{"forged":true}'))]
    assert "close" not in values(record, "connection")
    for dropped in ("x-hop", "transfer-encoding", "proxy-authorization", "upgrade"):
        assert values(record, dropped) == [], dropped
    assert values(record, "x-guest") == ["kept"]
    assert values(record, "content-type") == ["application/json"]
    assert [s.message for s in sessions.sessions.values()] == [{"forged": True}]


def test_a_rerun_of_one_invocation_gets_the_session_its_first_run_created(
    sessions: SessionService, runner: SandboxRunner
) -> None:
    def response(dispatch: Dispatch) -> dict[str, Any]:
        outcome = runner(dispatch, {"url": f"{sessions.url}/sessions"})
        assert outcome.ok is not None, outcome
        answer: dict[str, Any] = outcome.ok["response"]
        return answer

    dispatch = Dispatch(uuid4(), uuid4(), expected_version=2, attempt=1)
    first, again = response(dispatch), response(dispatch)  # a lease taken over, say
    other = response(Dispatch(uuid4(), uuid4(), expected_version=2, attempt=1))
    assert [first["status"], again["status"], other["status"]] == [201, 200, 201]
    assert again["body"] == first["body"]
    assert len(sessions.sessions) == 2, "one session per invocation"


def test_two_posts_with_one_idempotency_key_make_one_session(sessions: SessionService) -> None:
    key = {"Idempotency-Key": "invocation-1"}
    answers: list[dict[str, Any]] = []

    def post() -> None:
        answers.append(client.request("POST", "/sessions", key, '{"n": 1}'))

    with SessionClient(sessions.url) as client:
        threads = [threading.Thread(target=post) for _ in range(8)]  # at once, and again later
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        post()
        answer = client.request("POST", "/sessions", None, '{"n": 2}')
    assert sorted(a["status"] for a in answers) == [200] * 8 + [201]
    assert len({a["body"] for a in answers}) == 1, "every answer names the first session"
    assert answer["status"] == 201, "no key, no replay"
    assert len(sessions.sessions) == 2


def test_guest_headers_drop_what_the_host_owns_in_any_spelling() -> None:
    headers = {
        "HOST": "admin.internal",
        " idempotency-key": "forged",
        "Proxy-Anything": "x",
        "keep-alive": "timeout=5",
        "TE": "trailers",
        "Trailer": "X",
        "Connection": "x-named",
        "X-Named": "hop-by-hop, named by Connection",
        "Accept": "application/json",
    }
    assert guest_headers(headers) == {"Accept": "application/json"}


def test_a_run_that_lost_its_lease_never_stops_the_session_its_job_holds() -> None:
    # Worker A's POST is answered slowly; its lease runs out meanwhile and worker B takes the
    # invocation over. B's POST creates the session; A's, with the same key, gets it back.
    with SessionService(latency=lambda i: 3.0 if i == 0 else 0.0, seed=5) as sessions:
        system = build_system(Settings.from_env(store_url="memory://"))
        try:
            svc = system.service
            svc.policies.add_policy(default_policies(sessions.url))
            dispatch = svc.submit(svc.create_job({"target": "t", "session_service": sessions.url}))
            slow = system.dispatcher(worker_id="a", lease=timedelta(seconds=0.2))
            worker_a = threading.Thread(target=anyio.run, args=(slow.run_once,))
            worker_a.start()
            while svc.invocation(dispatch.invocation_id).lease_holder != "a":
                time.sleep(0.01)
            time.sleep(0.4)  # A's lease is over
            anyio.run(system.dispatcher(worker_id="b").run_once)
            worker_a.join()
            job = svc.get(dispatch.job_id)
            assert job.state == JobState.RUNNING
            assert list(sessions.sessions) == [job.session_id], "the job's session is live"
        finally:
            system.close()
