"""The loopback session service and its client: real sockets, real threads, seeded faults."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from integrations.session_client import SessionClient, SessionServiceError
from integrations.session_service import SessionService


@pytest.fixture
def client(sessions: SessionService) -> Iterator[SessionClient]:
    with SessionClient(sessions.url, timeout=5.0) as c:
        yield c


def test_url_is_an_ephemeral_loopback_port(sessions: SessionService) -> None:
    assert sessions.url.startswith("http://127.0.0.1:")
    assert sessions.port > 0
    with socket.create_connection(("127.0.0.1", sessions.port), timeout=2):
        pass


def test_create_list_delete(sessions: SessionService, client: SessionClient) -> None:
    message = {"job_id": "j-1", "attempt": 2, "invocation_id": "i-1", "target": "t"}
    sid = client.create(message)
    assert sid.startswith("s-")
    assert sessions.sessions[sid].message == message

    listed = client.list()
    assert [s["session_id"] for s in listed] == [sid]
    assert listed[0]["message"] == message
    assert isinstance(listed[0]["created"], float)

    assert client.delete(sid) is True
    assert client.delete(sid) is False  # 404: already gone
    assert client.delete("s-never-existed") is False
    assert client.list() == []
    assert sessions.sessions == {}
    assert sessions.deleted == [sid]
    statuses = [(r.method, r.status) for r in sessions.requests]
    assert statuses == [
        ("POST", 201),
        ("GET", 200),
        ("DELETE", 204),
        ("DELETE", 404),
        ("DELETE", 404),
        ("GET", 200),
    ]


def test_get_lists_only_live_sessions_in_creation_order(client: SessionClient) -> None:
    ids = [client.create({"n": n}) for n in range(5)]
    client.delete(ids[1])
    client.delete(ids[3])
    listed = client.list()
    assert [s["session_id"] for s in listed] == [ids[0], ids[2], ids[4]]
    assert [s["message"]["n"] for s in listed] == [0, 2, 4]


def test_get_one_session_and_unknown_routes(
    sessions: SessionService, client: SessionClient
) -> None:
    sid = client.create({"x": 1})
    one = client.request("GET", f"/sessions/{sid}")
    assert one["status"] == 200
    assert json.loads(one["body"])["message"] == {"x": 1}
    assert client.request("GET", "/sessions/nope")["status"] == 404
    assert client.request("GET", "/elsewhere")["status"] == 404
    assert client.request("PUT", "/sessions")["status"] == 405
    assert client.request("POST", f"/sessions/{sid}")["status"] == 405


@pytest.mark.parametrize("body", ["not json", "[1, 2]", '"a string"', "\xff"])
def test_bad_json_is_400_with_a_json_error(client: SessionClient, body: str) -> None:
    answer = client.request("POST", "/sessions", {"content-type": "application/json"}, body)
    assert answer["status"] == 400
    assert answer["headers"]["content-type"] == "application/json"
    assert "error" in json.loads(answer["body"])


def test_non_utf8_body_is_400(client: SessionClient) -> None:
    answer = client.request("POST", "/sessions", {}, b"\xff\xfe{}")
    assert answer["status"] == 400


def test_create_raises_typed_error_on_400(client: SessionClient) -> None:
    with pytest.raises(SessionServiceError) as info:
        client._expect(client.request("POST", "/sessions", {}, "nope"), "POST /sessions", 201)
    assert info.value.kind == "http_error"
    assert info.value.status == 400


def test_fifty_concurrent_creates_all_succeed_with_unique_ids(sessions: SessionService) -> None:
    barrier = threading.Barrier(50)
    with SessionClient(sessions.url, timeout=10.0) as client:

        def create(n: int) -> str:
            barrier.wait(timeout=10)
            return client.create({"job_id": f"j-{n}", "attempt": 1})

        with ThreadPoolExecutor(max_workers=50) as pool:
            ids = list(pool.map(create, range(50)))
    assert len(set(ids)) == 50
    live = sessions.sessions
    assert set(live) == set(ids)
    assert sorted(s.message["job_id"] for s in live.values()) == sorted(f"j-{n}" for n in range(50))
    assert [r.status for r in sessions.requests] == [201] * 50
    assert sorted(r.index for r in sessions.requests) == list(range(50))


def test_one_client_reuses_its_connection() -> None:
    with SessionService() as svc, SessionClient(svc.url) as client:
        for n in range(100):
            client.create({"n": n})
        client.list()
        assert len(svc.requests) == 101
        assert svc.connections == 1
        assert {r.connection for r in svc.requests} == {1}


def test_fresh_clients_each_open_a_connection() -> None:
    with SessionService() as svc:
        for n in range(3):
            with SessionClient(svc.url) as client:
                client.create({"n": n})
        assert svc.connections == 3


# -- seeded fault injection -------------------------------------------------------------------


def _slow_indexes(svc: SessionService, n: int) -> set[int]:
    return {i for i in range(n) if svc.plan(i).slow}


def test_fault_plan_is_a_pure_function_of_seed_and_index() -> None:
    a = SessionService(seed=42, slow_fraction=0.2, failure_rate=0.1, latency=(0.001, 0.01))
    b = SessionService(seed=42, slow_fraction=0.2, failure_rate=0.1, latency=(0.001, 0.01))
    c = SessionService(seed=43, slow_fraction=0.2, failure_rate=0.1, latency=(0.001, 0.01))
    plan_a = [a.plan(i) for i in range(500)]
    assert plan_a == [b.plan(i) for i in range(500)]
    # asking in another order gives the same answers (no shared random stream)
    assert [a.plan(i) for i in reversed(range(500))] == list(reversed(plan_a))
    assert plan_a != [c.plan(i) for i in range(500)]
    slow = _slow_indexes(a, 500)
    assert 60 <= len(slow) <= 140  # ~20 %
    assert 25 <= sum(f.fail for f in plan_a) <= 80  # ~10 %
    assert all(0.001 <= f.delay - (a.slow_latency if f.slow else 0) <= 0.01 for f in plan_a)


def test_knobs_do_not_shift_each_other() -> None:
    only_slow = SessionService(seed=5, slow_fraction=0.3)
    slow_and_fail = SessionService(seed=5, slow_fraction=0.3, failure_rate=0.5)
    assert _slow_indexes(only_slow, 200) == _slow_indexes(slow_and_fail, 200)


def test_every_nth_request_is_slow_and_latency_can_be_a_function() -> None:
    svc = SessionService(slow_every=4, slow_latency=0.5, latency=lambda i: i / 1000)
    assert _slow_indexes(svc, 12) == {3, 7, 11}
    assert svc.plan(3).delay == pytest.approx(0.503)
    assert svc.plan(2).delay == pytest.approx(0.002)


def test_same_seed_same_slow_requests_on_the_wire() -> None:
    """Two real runs with one seed delay exactly the same request indexes."""

    def run() -> tuple[set[int], float]:
        with (
            SessionService(seed=9, slow_fraction=0.25, slow_latency=0.05) as svc,
            SessionClient(svc.url) as client,
        ):
            started = time.perf_counter()
            for n in range(40):
                client.create({"n": n})
            elapsed = time.perf_counter() - started
            return {r.index for r in svc.requests if r.slow}, elapsed

    slow_1, elapsed = run()
    slow_2, _ = run()
    assert slow_1 == slow_2
    assert slow_1 == _slow_indexes(SessionService(seed=9, slow_fraction=0.25), 40)
    assert 3 <= len(slow_1) <= 20
    assert elapsed >= 0.05 * len(slow_1)  # the delays really happened


def test_slow_requests_complete_late_under_concurrency() -> None:
    """With concurrent requests, a slow one finishes after later, fast ones: a late completion."""
    with (
        SessionService(seed=3, slow_every=5, slow_latency=0.3) as svc,
        SessionClient(svc.url) as client,
        ThreadPoolExecutor(max_workers=10) as pool,
    ):
        list(pool.map(lambda n: client.create({"n": n}), range(10)))
        order = [r.index for r in svc.requests]
    assert {4, 9} <= set(order)
    assert order.index(4) > order.index(5) or order.index(4) > order.index(8)
    assert sorted(order) == list(range(10))


def test_failure_injection_answers_500_for_the_seeded_subset() -> None:
    with SessionService(seed=11, failure_rate=0.3) as svc, SessionClient(svc.url) as client:
        expected = {i for i in range(60) if svc.plan(i).fail}
        assert 5 <= len(expected) <= 35
        errors: dict[int, SessionServiceError] = {}
        for n in range(60):
            try:
                client.create({"n": n})
            except SessionServiceError as exc:
                errors[n] = exc
        assert set(errors) == expected
        assert {(e.kind, e.status) for e in errors.values()} == {("http_error", 500)}
        assert {r.index for r in svc.requests if r.status == 500} == expected
        assert len(svc.sessions) == 60 - len(expected)  # a 500 creates nothing


def test_injection_can_be_limited_to_some_methods() -> None:
    with (
        SessionService(seed=1, failure_rate=1.0, inject=["POST"]) as svc,
        SessionClient(svc.url) as client,
    ):
        with pytest.raises(SessionServiceError):
            client.create({})
        assert client.list() == []
        assert client.delete("s-x") is False


def test_stop_cuts_pending_delays_short() -> None:
    svc = SessionService(latency=30.0).start()
    client = SessionClient(svc.url, timeout=10.0)
    errors: list[SessionServiceError] = []

    def call() -> None:
        try:
            client.create({})
        except SessionServiceError as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.2)
    started = time.perf_counter()
    svc.stop()
    thread.join(timeout=5)
    client.close()
    assert not thread.is_alive()
    assert time.perf_counter() - started < 3
    assert [e.kind for e in errors] == ["http_error"]
    assert svc.sessions == {}


# -- unavailability ---------------------------------------------------------------------------


def test_down_service_is_a_typed_error_quickly_and_up_serves_again(
    sessions: SessionService, client: SessionClient
) -> None:
    client.create({"before": True})  # the client now holds a pooled keep-alive connection
    url = sessions.url
    sessions.down()
    for call in (lambda: client.create({}), client.list, lambda: client.delete("s-1")):
        started = time.perf_counter()
        with pytest.raises(SessionServiceError) as info:
            call()
        assert info.value.kind == "http_error"
        assert time.perf_counter() - started < 1.0
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/sessions", timeout=1)

    sessions.up()
    assert sessions.url == url
    client.create({"after": True})
    assert len(client.list()) == 2  # sessions survive an outage


def test_down_in_503_mode(sessions: SessionService, client: SessionClient) -> None:
    sessions.down(mode="503")
    answer = client.request("GET", "/sessions")
    assert answer["status"] == 503
    with pytest.raises(SessionServiceError) as info:
        client.create({})
    assert (info.value.kind, info.value.status) == ("http_error", 503)
    sessions.up()
    assert client.list() == []


def test_nothing_listening_is_a_typed_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens here
    with (
        SessionClient(f"http://127.0.0.1:{port}", connect_timeout=1.0) as client,
        pytest.raises(SessionServiceError) as info,
    ):
        client.create({})
    assert info.value.kind == "http_error"
    assert "Connection refused" in info.value.message


def test_timeout_is_a_typed_error() -> None:
    with (
        SessionService(latency=2.0) as svc,
        SessionClient(svc.url, timeout=0.2) as client,
    ):
        started = time.perf_counter()
        with pytest.raises(SessionServiceError) as info:
            client.create({})
        assert time.perf_counter() - started < 1.5
    assert info.value.kind == "http_error"
    assert "timed out" in info.value.message


# -- the generic request used by http_call -----------------------------------------------------


def test_request_returns_status_headers_body(sessions: SessionService) -> None:
    with SessionClient(timeout=5.0) as client:  # no base URL: absolute URLs, as http_call sends
        answer = client.request(
            "POST",
            f"{sessions.url}/sessions",
            {"content-type": "application/json"},
            json.dumps({"job_id": "j"}),
        )
    assert answer["status"] == 201
    assert answer["headers"]["content-type"] == "application/json"
    assert json.loads(answer["body"])["session_id"] in sessions.sessions
    assert set(answer) == {"status", "headers", "body"}


@pytest.mark.parametrize(
    ("method", "url"),
    [("POST", "ftp://127.0.0.1/sessions"), ("POST", "not a url"), ("PO ST", "http://x/")],
)
def test_request_rejects_malformed_requests_as_bad_request(method: str, url: str) -> None:
    with SessionClient() as client, pytest.raises(SessionServiceError) as info:
        client.request(method, url)
    assert info.value.kind == "bad_request"


def test_request_caps_the_response_size(sessions: SessionService) -> None:
    with SessionClient(sessions.url, max_response_bytes=200) as client:
        for n in range(5):
            client.create({"n": n, "padding": "x" * 40})
        with pytest.raises(SessionServiceError) as info:
            client.list()
    assert info.value.kind == "http_error"
    assert "exceeds 200 bytes" in info.value.message


def test_oversized_request_body_is_413(sessions: SessionService, client: SessionClient) -> None:
    answer = client.request("POST", "/sessions", {}, b"x" * ((1 << 20) + 1))
    assert answer["status"] == 413
    assert sessions.sessions == {}


def test_bad_configuration_is_rejected() -> None:
    with pytest.raises(ValueError, match="failure_rate"):
        SessionService(failure_rate=1.5)
    with pytest.raises(ValueError, match="latency"):
        SessionService(latency=(2.0, 1.0))
    with pytest.raises(ValueError, match="slow_every"):
        SessionService(slow_every=0)
    with pytest.raises(RuntimeError, match="not started"):
        _ = SessionService().url
