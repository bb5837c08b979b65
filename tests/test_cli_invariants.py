"""``sequent simulate`` and ``sequent reconcile`` through the in-process ``sequent`` fixture."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from domain import CurationService
from integrations.session_client import SessionClient
from integrations.session_service import SessionService
from tests.support.cli import Cli

SUMMARY_KEYS = {"seeds", "steps", "violations", "first_failing_seed", "seconds"}


def test_simulate_reports_its_seeds_and_that_every_invariant_held(sequent: Cli) -> None:
    summary = sequent("simulate", "--seeds", "20", "--steps", "25", "--processes", "1", "--json")
    payload = summary.json()
    assert set(payload) == SUMMARY_KEYS
    assert (payload["seeds"], payload["violations"], payload["first_failing_seed"]) == (20, 0, None)
    assert payload["steps"] >= 20 * 25


def test_simulate_runs_across_processes(sequent: Cli) -> None:
    one = sequent("simulate", "--seeds", "60", "--start", "40", "--processes", "1", "--json")
    two = sequent("simulate", "--seeds", "60", "--start", "40", "--processes", "2", "--json")
    assert one.json()["steps"] == two.json()["steps"]


def test_a_failing_simulation_exits_1_and_says_how_to_replay_its_seed(sequent: Cli) -> None:
    ran = sequent("simulate", "--seeds", "100", "--baseline", "--processes", "1", "--json")
    payload = ran.failed_json()
    seed = payload["first_failing_seed"]
    assert payload["violations"] > 0
    assert payload["replay"] == f"sequent simulate --seeds 1 --start {seed} --steps 30 --baseline"

    replayed = sequent(*payload["replay"].split()[1:], "--json").failed_json()
    assert (replayed["first_failing_seed"], replayed["violation"]) == (seed, payload["violation"])
    assert replayed["trace"] == payload["trace"]

    shown = sequent(*payload["replay"].split()[1:])
    assert shown.code == 1
    assert f"replay: {payload['replay']}" in shown.out
    assert payload["violation"] in shown.out


def test_simulate_needs_its_seed_count(sequent: Cli) -> None:
    ran = sequent("simulate", "--steps", "5")
    assert ran.code == 2
    assert "--seeds" in ran.error_line()


def dead_workers_session(svc: CurationService, url: str) -> tuple[str, UUID]:
    """A run whose worker POSTed and died; the worker that took it over got a 500."""
    dispatch = svc.submit(svc.create_job({"session_service": url}))
    long_ago = datetime.now(UTC) - timedelta(minutes=10)
    svc.claim(dispatch.invocation_id, "dead", timedelta(minutes=1), long_ago, module_sha256="")
    with SessionClient(url) as client:
        answer = client.request(
            "POST",
            "/sessions",
            {"Idempotency-Key": str(dispatch.invocation_id)},
            json.dumps({"invocation_id": str(dispatch.invocation_id)}),
        )
    svc.complete(dispatch, "Fail", {"reason": "service_error", "message": "status 500"})
    return json.loads(answer["body"])["session_id"], dispatch.invocation_id


@pytest.fixture
def store(shared_store_url: str) -> Iterator[CurationService]:
    """A store another process (the command) opens too."""
    svc = CurationService.open(shared_store_url)
    yield svc
    svc.close()


def test_reconcile_stops_and_records_the_orphans_of_a_service(
    sequent: Cli, shared_store_url: str, store: CurationService, sessions: SessionService
) -> None:
    orphan, creator = dead_workers_session(store, sessions.url)
    args = ("reconcile", "--db", shared_store_url, "--service-url", sessions.url, "--json")

    first = sequent(*args).json()
    again = sequent(*args).json()

    assert first == {"checked": 1, "orphans": 1, "stopped": 1, "unreachable": []}
    assert again == {"checked": 0, "orphans": 0, "stopped": 0, "unreachable": []}
    assert sessions.deleted == [orphan]
    assert store.invocation(creator).orphans_stopped == [orphan]


def test_reconcile_without_a_url_visits_every_service_jobs_name(
    sequent: Cli, shared_store_url: str, store: CurationService, sessions: SessionService
) -> None:
    with SessionService(seed=9) as gone:
        gone_url = gone.url
    store.create_job({"session_service": gone_url})
    dead_workers_session(store, sessions.url)

    ran = sequent("reconcile", "--db", shared_store_url, "--json")

    assert ran.failed_json() == {
        "checked": 1, "orphans": 1, "stopped": 1, "unreachable": [gone_url],
    }  # fmt: skip
    human = sequent("reconcile", "--db", shared_store_url)
    assert human.code == 1
    assert f"unreachable: {gone_url}" in human.out


def test_reconcile_of_a_service_that_cannot_be_asked_is_one_error_line(
    sequent: Cli, shared_store_url: str
) -> None:
    with SessionService(seed=9) as gone:
        gone_url = gone.url
    refused = sequent("reconcile", "--db", shared_store_url, "--service-url", gone_url)
    assert refused.code == 1
    assert "Connection refused" in refused.error_line() or "ConnectError" in refused.error_line()
    bad = sequent("reconcile", "--db", shared_store_url, "--service-url", "gopher://x")
    assert bad.code == 2
    assert "--service-url" in bad.error_line()


def test_a_worker_can_be_told_how_often_to_reconcile(sequent: Cli, shared_store_url: str) -> None:
    ran = sequent("worker", "--db", shared_store_url, "--once", "--reconcile-every", "0", "--json")
    assert ran.json()["orphans_stopped"] == 0
