"""Reconciliation (invariant 4 after any crash): the orphan rule as a pure decision, and the
reconciler against the real loopback session service and against a service that reports the
idempotency key each session was created with."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import anyio
import pytest

from bootstrap import Settings, build_system
from domain import CurationService, Dispatch, JobState
from domain.orphan import DEFAULT_GRACE, Finding, OrphanSession, judge, orphan_id
from integrations.dispatcher import Dispatcher, RunOutcome
from integrations.reconcile import Reconciler, ReconcileReport
from integrations.session_client import SessionClient, SessionServiceError
from integrations.session_service import SessionService
from simulation.clock import VirtualClock
from simulation.sessions import SessionModels
from tests.support.fakes import FixedRunner, event_count

# -- the rule ----------------------------------------------------------------------------------


@dataclass
class FakeCreator:
    finished: bool


HOUR = timedelta(hours=1)


@pytest.mark.parametrize(
    ("creator", "held", "age", "finding"),
    [
        (FakeCreator(finished=False), {"s"}, HOUR, Finding.IN_FLIGHT),  # in flight comes first
        (FakeCreator(finished=False), set(), 100 * HOUR, Finding.IN_FLIGHT),  # whatever its age
        (FakeCreator(finished=True), {"s"}, HOUR, Finding.HELD),
        (None, {"s"}, 100 * HOUR, Finding.HELD),
        (FakeCreator(finished=True), set(), timedelta(0), Finding.ORPHAN),  # age is no excuse
        (None, set(), DEFAULT_GRACE - timedelta(seconds=1), Finding.TOO_YOUNG),
        (None, set(), DEFAULT_GRACE, Finding.ORPHAN),
    ],
)
def test_the_orphan_rule_in_order(
    creator: FakeCreator | None, held: set[str], age: timedelta, finding: Finding
) -> None:
    assert judge("s", age, creator, held) == finding


# -- against the real loopback session service ------------------------------------------------


@pytest.fixture
def client() -> Iterator[SessionClient]:
    with SessionClient(timeout=5.0) as c:
        yield c


def post(client: SessionClient, url: str, dispatch: Dispatch) -> str:
    """A worker's POST, with the fencing token the host sets."""
    answer = client.request(
        "POST",
        f"{url}/sessions",
        {"content-type": "application/json", "Idempotency-Key": str(dispatch.invocation_id)},
        json.dumps({"job_id": str(dispatch.job_id), "invocation_id": str(dispatch.invocation_id)}),
    )
    assert answer["status"] == 201
    session_id: str = json.loads(answer["body"])["session_id"]
    return session_id


def running_job(svc: CurationService, client: SessionClient, url: str) -> str:
    """A job whose run spawned its session and was applied: it holds that session."""
    dispatch = svc.submit(svc.create_job({"session_service": url}))
    session_id = post(client, url, dispatch)
    svc.complete(dispatch, "SessionSpawned", {"session_id": session_id})
    assert svc.get(dispatch.job_id).state == JobState.RUNNING
    return session_id


def dead_workers_session(svc: CurationService, client: SessionClient, url: str) -> tuple[str, UUID]:
    """A worker claims a run, POSTs, and dies before completing. The worker that takes the
    run over gets a 500 from the service and completes it as a failure: the run is finished,
    and the first worker's session is held by nobody."""
    dispatch = svc.submit(svc.create_job({"session_service": url}))
    long_ago = datetime.now(UTC) - timedelta(minutes=10)
    svc.claim(dispatch.invocation_id, "dead", timedelta(minutes=1), long_ago, module_sha256="")
    session_id = post(client, url, dispatch)
    svc.claim(dispatch.invocation_id, "takeover", timedelta(minutes=1), module_sha256="")
    svc.complete(dispatch, "Fail", {"reason": "service_error", "message": "status 500"})
    return session_id, dispatch.invocation_id


def where_recorded(svc: CurationService, session_id: str, url: str, creator: UUID) -> list[str]:
    places = []
    if session_id in svc.invocation(creator).orphans_stopped:
        places.append("creator")
    if list(svc.events.get(orphan_id(url, session_id))):
        places.append("orphan record")
    return places


def test_a_dead_workers_session_is_stopped_and_recorded_once(
    svc: CurationService, sessions: SessionService, client: SessionClient
) -> None:
    held = running_job(svc, client, sessions.url)
    orphan, creator = dead_workers_session(svc, client, sessions.url)
    listed = {s["session_id"]: s.get("idempotency_key") for s in client.list(sessions.url)}
    assert listed[orphan] == str(creator)  # the service says which run created it

    report = Reconciler(svc, client).reconcile(sessions.url)  # young, but its run is finished

    assert report == ReconcileReport(checked=2, orphans=1, stopped=1)
    assert list(sessions.sessions) == [held]
    assert sessions.deleted == [orphan]
    assert where_recorded(svc, orphan, sessions.url, creator) == ["creator"]


def test_held_and_in_flight_sessions_are_left_alone(
    svc: CurationService, sessions: SessionService, client: SessionClient
) -> None:
    held = running_job(svc, client, sessions.url)
    in_flight = svc.submit(svc.create_job({"session_service": sessions.url}))
    posted = post(client, sessions.url, in_flight)  # its completion is still on its way
    before = event_count(svc)

    report = Reconciler(svc, client).reconcile(sessions.url)

    assert report == ReconcileReport(checked=2, orphans=0, stopped=0)
    assert set(sessions.sessions) == {held, posted}
    assert event_count(svc) == before


def test_reconciling_twice_changes_nothing_the_second_time(
    svc: CurationService, sessions: SessionService, client: SessionClient
) -> None:
    running_job(svc, client, sessions.url)
    dead_workers_session(svc, client, sessions.url)
    reconciler = Reconciler(svc, client, grace=timedelta(0))
    first = reconciler.reconcile(sessions.url)
    after_first = event_count(svc)

    second = reconciler.reconcile(sessions.url)

    assert (first.stopped, second) == (1, ReconcileReport(checked=1, orphans=0, stopped=0))
    assert event_count(svc) == after_first
    assert len(sessions.deleted) == 1


def test_an_unreachable_service_is_reported_and_the_others_still_reconciled(
    svc: CurationService, sessions: SessionService, client: SessionClient
) -> None:
    with SessionService(seed=6) as down:
        down_url = down.url
    svc.create_job({"session_service": down_url})
    dead_workers_session(svc, client, sessions.url)
    reconciler = Reconciler(svc, client, grace=timedelta(0))

    with pytest.raises(SessionServiceError):
        reconciler.reconcile(down_url)
    report = reconciler.reconcile_all()

    assert report == ReconcileReport(checked=1, orphans=1, stopped=1, unreachable=(down_url,))
    assert reconciler.services() == sorted([down_url, sessions.url])  # by URL


def test_a_session_its_delete_fails_for_is_left_for_the_next_pass(
    svc: CurationService, client: SessionClient
) -> None:
    with SessionService(seed=7, failure_rate=1.0, inject=("DELETE",)) as failing:
        orphan, creator = dead_workers_session(svc, client, failing.url)
        report = Reconciler(svc, client, grace=timedelta(0)).reconcile(failing.url)
        assert report == ReconcileReport(checked=1, orphans=1, stopped=0)
        assert list(failing.sessions) == [orphan]
    assert where_recorded(svc, orphan, failing.url, creator) == []


def test_a_worker_reconciles_as_it_runs(
    svc: CurationService, sessions: SessionService, client: SessionClient
) -> None:
    orphan, _ = dead_workers_session(svc, client, sessions.url)
    reconciler = Reconciler(svc, client, grace=timedelta(0))
    runner = FixedRunner(RunOutcome(ok={"session_id": "x"}))
    worker = Dispatcher(svc, runner, reconciler=reconciler, reconcile_interval=0.05)

    async def until_stopped() -> None:
        with anyio.fail_after(10):
            await worker.run(until=lambda: worker.stats.orphans_stopped > 0)

    anyio.run(until_stopped)
    assert sessions.deleted == [orphan]


def test_the_worker_reconciles_at_most_once_an_interval(svc: CurationService) -> None:
    calls: list[datetime] = []

    class Counting:
        def reconcile_all(self, now: datetime | None = None) -> ReconcileReport:
            assert now is not None
            calls.append(now)
            return ReconcileReport()

    runner = FixedRunner(RunOutcome(ok={"session_id": "x"}))
    worker = Dispatcher(svc, runner, reconciler=Counting(), reconcile_interval=60)
    start = datetime(2030, 1, 1, tzinfo=UTC)
    for seconds in (0, 30, 59, 60, 61, 121):
        worker.reconcile_due(start + timedelta(seconds=seconds))
    assert [(c - start).seconds for c in calls] == [60, 121]  # counted from the first look
    off = Dispatcher(svc, runner, reconciler=Counting(), reconcile_interval=None)
    assert off.reconcile_due(start) is None
    assert len(calls) == 2


# -- against a service that reports keys (the simulation's model of the fenced service) -------


FENCED = "http://fenced:80"


@pytest.fixture
def fenced() -> SessionModels:
    return SessionModels(VirtualClock(datetime.now(UTC)), {FENCED: "f"})


def create(models: SessionModels, dispatch: Dispatch) -> str:
    """A run's POST, keyed with its invocation."""
    message: dict[str, Any] = {"invocation_id": str(dispatch.invocation_id)}
    return models.create(FENCED, message, str(dispatch.invocation_id))


def test_an_orphan_is_recorded_on_the_run_its_key_names(
    svc: CurationService, fenced: SessionModels
) -> None:
    dispatch = svc.submit(svc.create_job({"session_service": FENCED}))
    lost = create(fenced, dispatch)  # its answer was lost: the run failed
    svc.complete(dispatch, "Fail", {"reason": "service_error", "message": "connection reset"})

    report = Reconciler(svc, fenced).reconcile(FENCED)

    assert report == ReconcileReport(checked=1, orphans=1, stopped=1)
    assert svc.invocation(dispatch.invocation_id).orphans_stopped == [lost]
    assert [e.name for e in svc.invocation_history(dispatch.invocation_id)][-1] == "OrphanStopped"


def test_a_session_of_an_unfinished_run_is_never_an_orphan_whatever_its_age(
    svc: CurationService, fenced: SessionModels
) -> None:
    dispatch = svc.submit(svc.create_job({"session_service": FENCED}))
    create(fenced, dispatch)
    a_day_later = fenced.clock.advance(timedelta(days=1))
    report = Reconciler(svc, fenced).reconcile(FENCED, a_day_later)
    assert report == ReconcileReport(checked=1, orphans=0, stopped=0)


def test_a_failed_job_holds_no_session(svc: CurationService, fenced: SessionModels) -> None:
    dispatch = svc.submit(svc.create_job({"session_service": FENCED}))
    session_id = create(fenced, dispatch)
    svc.complete(dispatch, "SessionSpawned", {"session_id": session_id})
    reconciler = Reconciler(svc, fenced)
    assert reconciler.reconcile(FENCED).orphans == 0  # Running: held
    svc.fail(dispatch.job_id, reason="timeout")

    assert reconciler.reconcile(FENCED).stopped == 1
    assert svc.invocation(dispatch.invocation_id).orphans_stopped == [session_id]


def test_a_keyless_session_is_recorded_once_on_its_own(
    svc: CurationService, fenced: SessionModels
) -> None:
    svc.create_job({"session_service": FENCED})
    stray = fenced.create(FENCED, {"note": "made by hand"}, None)
    reconciler = Reconciler(svc, fenced)
    assert reconciler.reconcile_all().orphans == 0  # too young to judge
    fenced.clock.advance(DEFAULT_GRACE)

    assert reconciler.reconcile_all(fenced.clock.now).stopped == 1
    record: object = svc.repository.get(orphan_id(FENCED, stray))
    assert isinstance(record, OrphanSession)
    assert (record.session_id, record.idempotency_key) == (stray, None)


def test_the_systems_workers_reconcile_unless_compensation_is_off(store_url: str) -> None:
    with build_system(Settings.from_env(store_url=store_url)) as system:
        assert isinstance(system.dispatcher().reconciler, Reconciler)
        assert system.dispatcher(compensate=False).reconciler is None
