"""The faults the chaos runs found, each pinned on its own: a connection dropped under a
worker's feet is StoreUnavailable, the worker loop looks again instead of dying, a run whose
authorization check lost the store is retried rather than completed with a Fail, and a write
whose backend is terminated mid-transaction commits once or not at all. Also how a chaos run
names its own PostgreSQL sessions (``?application_name=``) so it ends only those."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import psycopg
import pytest
from eventsourcing.persistence import OperationalError
from psycopg import sql

from bootstrap import Settings, System, build_system
from domain import CurationService, Dispatch, JobState, StoreUnavailable, StoreURLError
from domain.cedar import default_policies
from domain.log import Keep, LogReader, Page
from domain.policy_book import PolicyBook
from domain.store_url import parse_store_url, redact
from integrations.authorizer import AuthzOutcome, CedarAuthorizer
from integrations.dispatcher import Dispatcher, RunOutcome
from integrations.sandboxed import SandboxRunner
from integrations.session_service import SessionService
from scripts.cli import runtime
from tests.support.chaos import terminate_backends, with_param
from tests.support.cli import Cli
from tests.support.fakes import FixedRunner

DROPPED = "terminating connection due to administrator command"  # what a worker saw


def submitted(
    svc: CurationService, jobs: int, service_url: str = "http://127.0.0.1:9"
) -> list[Dispatch]:
    return [
        svc.submit(svc.create_job({"target": f"t{n}", "session_service": service_url}))
        for n in range(jobs)
    ]


def schema_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["schema"][0]


# -- the store URL names the sessions ------------------------------------------------------------


@pytest.mark.postgres
def test_every_session_of_a_store_carries_the_urls_application_name(pg_url: str) -> None:
    name = f"sequent-chaos-{schema_of(pg_url)}"
    svc = CurationService.open(with_param(pg_url, "application_name", name))
    try:
        svc.create_job({"target": "t"})
        with svc.recorder.datastore.get_connection() as conn:  # type: ignore[attr-defined]
            shown = conn.execute("SHOW application_name").fetchone()["application_name"]
            pid = conn.info.backend_pid
        with psycopg.connect(pg_url.split("?", maxsplit=1)[0], autocommit=True) as admin:
            named = admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (name,)
            ).fetchall()
    finally:
        svc.close()
    assert shown == name
    assert (pid,) in named
    assert "application_name=sequent-chaos-" in redact(with_param(pg_url, "application_name", name))


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("two words", "application_name must be"),
        ("quote'd", "application_name must be"),
        ("back\\slash", "application_name must be"),
        ("a" * 64, "PostgreSQL keeps only the first 63"),
        ("", "application_name must be"),
    ],
)
def test_an_application_name_postgresql_would_mangle_is_refused(name: str, why: str) -> None:
    with pytest.raises(StoreURLError, match=why):
        parse_store_url(f"postgresql://u@h/db?application_name={name}")


def test_an_application_name_is_for_postgresql_only() -> None:
    with pytest.raises(StoreURLError, match="unknown query parameter"):
        parse_store_url("sqlite:///x.db?application_name=a")


# -- following the log ----------------------------------------------------------------------------


class DropsOnce:
    """A log reader's ``read`` whose call number ``fail_at`` dies the way a terminated
    backend does (the library's error, before any translation)."""

    def __init__(self, reader: LogReader, fail_at: int) -> None:
        self.read_batch = reader.read
        self.calls = 0
        self.fail_at = fail_at

    def read(
        self, after: int, upto: int, topics: Any, limit: int, keep: Keep = lambda page: page
    ) -> tuple[Page, int]:
        self.calls += 1
        if self.calls == self.fail_at:
            raise OperationalError(DROPPED)
        return self.read_batch(after, upto, topics, limit, keep)


def test_a_connection_dropped_mid_read_is_store_unavailable_and_a_follower_resumes(
    shared_store_url: str,
) -> None:
    svc = CurationService.open(shared_store_url)
    try:
        policies = [svc.policies.add_policy(default_policies(f"http://h:{n}")) for n in range(3)]
        book = PolicyBook(svc, batch_size=2)
        flaky = DropsOnce(book._log, fail_at=2)  # the second batch
        book._log.read = flaky.read  # type: ignore[method-assign]
        with pytest.raises(StoreUnavailable, match=DROPPED):
            book.active_policies()
        found = [p.id for p in book.active_policies()]
    finally:
        svc.close()
    assert found == policies


# -- the worker loop -----------------------------------------------------------------------------


def run_until(dispatcher: Dispatcher, until: Callable[[], bool]) -> None:
    async def bounded() -> None:
        with anyio.fail_after(60):  # a hang guard, not a measurement
            await dispatcher.run(until)

    anyio.run(bounded)


def failing(times: int, then: Callable[..., Any]) -> Callable[..., Any]:
    """``then``, except that its first ``times`` calls raise StoreUnavailable."""
    left = [times]

    def call(*args: Any) -> Any:
        if left[0] > 0:
            left[0] -= 1
            raise StoreUnavailable("store", DROPPED)
        return then(*args)

    return call


def test_the_worker_loop_looks_again_when_the_store_drops_instead_of_dying() -> None:
    svc = CurationService.open("memory://")
    try:
        dispatches = submitted(svc, 3)
        dispatcher = Dispatcher(
            svc,
            FixedRunner(RunOutcome(ok={"session_id": "s-1"})),
            store_retry_interval=0.001,
            sweep_interval=0.0,
        )
        svc.reserve_runs = failing(2, svc.reserve_runs)  # type: ignore[method-assign]
        svc.overdue_jobs = failing(1, svc.overdue_jobs)  # type: ignore[method-assign]
        run_until(dispatcher, lambda: dispatcher.stats.runs == len(dispatches))
        states = [svc.get(d.job_id).state for d in dispatches]
    finally:
        svc.close()
    assert states == [JobState.RUNNING] * 3
    assert dispatcher.stats.store_retries == 3
    assert dispatcher.stats.applied == 3


# -- a run whose authorization check lost the store ------------------------------------------------


class StoreFailsOnce(CedarAuthorizer):
    """The real authorizer, except that its first check finds the store unavailable."""

    failed = False

    def check(self, *args: Any, **kwargs: Any) -> AuthzOutcome:
        if not self.failed:
            self.failed = True
            raise StoreUnavailable("store", DROPPED)
        return super().check(*args, **kwargs)


@pytest.fixture
def system() -> Iterator[System]:
    built = build_system(Settings.from_env(store_url="memory://"))
    yield built
    built.close()


def losing_the_store_once(
    system: System, sessions: SessionService
) -> tuple[CurationService, Dispatch, Dispatcher]:
    """One submitted job, and a dispatcher whose first Cedar check loses the store."""
    svc = system.service
    svc.policies.add_policy(default_policies(sessions.url))
    [dispatch] = submitted(svc, 1, sessions.url)
    runner = SandboxRunner(
        system.runtime, system.module, StoreFailsOnce(svc.policies), system.client
    )
    dispatcher = Dispatcher(svc, runner, worker_id="w")
    return svc, dispatch, dispatcher


def test_a_run_whose_authorization_lost_the_store_is_retried_never_failed(
    system: System, sessions: SessionService
) -> None:
    svc, dispatch, dispatcher = losing_the_store_once(system, sessions)
    with pytest.raises(StoreUnavailable):
        dispatcher.process(dispatch.invocation_id)
    assert svc.get(dispatch.job_id).state == JobState.READY, "no Fail for a dropped connection"
    assert svc.invocation(dispatch.invocation_id).verdicts == []
    assert sessions.requests == [], "a run that could not be authorized sends nothing"
    dispatcher.process(dispatch.invocation_id)  # the loop's retry: still this worker's lease
    job = svc.get(dispatch.job_id)
    assert job.state == JobState.RUNNING
    assert list(sessions.sessions) == [job.session_id]
    assert [v["verdict"] for v in svc.invocation(dispatch.invocation_id).verdicts] == ["Applied"]


def test_the_loop_counts_a_run_cut_short_by_the_store_and_runs_it_again(
    system: System, sessions: SessionService
) -> None:
    svc, dispatch, dispatcher = losing_the_store_once(system, sessions)
    run_until(dispatcher, lambda: dispatcher.stats.runs == 1)
    assert dispatcher.stats.store_retries == 1
    assert dispatcher.stats.errors == 0
    assert svc.get(dispatch.job_id).state == JobState.RUNNING


# -- a worker asked to stop while it starts -----------------------------------------------------


def test_a_worker_told_to_stop_while_it_starts_stops_cleanly(
    sequent: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    seen: list[object] = []

    def slow_start(settings: Settings) -> System:
        seen.append(signal.getsignal(signal.SIGTERM))
        if not callable(seen[0]):  # SIGTERM would kill pytest itself: fail instead
            raise RuntimeError("SIGTERM is not handled yet")
        os.kill(os.getpid(), signal.SIGTERM)
        return build_system(settings)

    monkeypatch.setattr(runtime, "build_system", slow_start)
    try:
        ran = sequent("worker", "--json", "--db", "memory://")
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert callable(seen[0]), "SIGTERM handled before the store is opened"
    assert ran.code == 0, ran.err
    assert json.loads(ran.out)["runs"] == 0


def test_a_worker_whose_store_drops_while_it_starts_tries_again(
    sequent: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[int] = []

    def dropped_twice(settings: Settings) -> System:
        attempts.append(len(attempts) + 1)
        if len(attempts) <= 2:
            raise StoreUnavailable("store", DROPPED)
        return build_system(settings)

    monkeypatch.setattr(runtime, "build_system", dropped_twice)
    monkeypatch.setattr(runtime, "START_RETRY_SECONDS", 0.0)
    ran = sequent("worker", "--once", "--json", "--db", "memory://")
    assert ran.code == 0, ran.err
    assert attempts == [1, 2, 3]


def test_a_worker_whose_store_stays_away_says_so_in_one_line(
    sequent: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[int] = []

    def never(settings: Settings) -> System:
        attempts.append(len(attempts) + 1)
        raise StoreUnavailable("store", DROPPED)

    monkeypatch.setattr(runtime, "build_system", never)
    monkeypatch.setattr(runtime, "START_RETRY_SECONDS", 0.01)
    monkeypatch.setattr(runtime, "START_PATIENCE_SECONDS", 0.05)
    ran = sequent("worker", "--once", "--db", "memory://")
    assert ran.code == 1
    assert DROPPED in ran.error_line()
    assert len(attempts) > 1


# -- a real backend terminated mid-transaction -----------------------------------------------------


def waiting_on_a_lock(admin: psycopg.Connection[Any], name: str, besides: set[int]) -> int:
    """The pid of a session named ``name`` blocked on a lock (not one of ``besides``)."""
    for _ in range(500):
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
            "AND wait_event_type = 'Lock'",
            (name,),
        ).fetchall()
        fresh = [pid for (pid,) in rows if pid not in besides]
        if fresh:
            return int(fresh[0])
        time.sleep(0.01)
    raise AssertionError("no session of the store blocked on the lock")


@pytest.mark.postgres
def test_a_write_whose_backend_is_terminated_mid_transaction_commits_exactly_once(
    pg_server: str, pg_url: str
) -> None:
    name = f"sequent-chaos-{schema_of(pg_url)}"
    svc = CurationService.open(with_param(pg_url, "application_name", name))
    events = sql.Identifier(schema_of(pg_url), "sequent_events")
    try:
        [dispatch] = submitted(svc, 1)
        claimed: list[object] = []

        def claim() -> None:
            try:
                claimed.append(svc.claim(dispatch.invocation_id, "w", timedelta(seconds=60),
                                         module_sha256="f" * 64))  # fmt: skip
            except Exception as exc:  # the assertion below names it
                claimed.append(exc)

        with psycopg.connect(pg_server, autocommit=True) as admin:
            with admin.transaction():
                # Reads go on; the claim's write blocks inside its transaction on the lock.
                admin.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(events))
                writer = threading.Thread(target=claim)
                writer.start()
                first = waiting_on_a_lock(admin, name, set())
                admin.execute("SELECT pg_terminate_backend(%s)", (first,))
                waiting_on_a_lock(admin, name, {first})  # the write tried again
            writer.join(timeout=30)
        history = [e.name for e in svc.invocation_history(dispatch.invocation_id)]
    finally:
        svc.close()
    assert len(claimed) == 1, claimed
    assert isinstance(claimed[0], Dispatch), claimed
    assert history == ["Started", "Claimed"]


@pytest.mark.postgres
def test_commands_between_terminations_succeed_or_say_store_unavailable(
    pg_server: str, pg_url: str
) -> None:
    name = f"sequent-chaos-{schema_of(pg_url)}"
    svc = CurationService.open(with_param(pg_url, "application_name", name))
    outcomes: dict[str, int] = {}
    try:
        dispatches = submitted(svc, 1)
        lease = timedelta(seconds=60)
        steps: list[tuple[str, Callable[[Dispatch], object]]] = [
            ("feed", lambda d: svc.reserve_runs(datetime.now(UTC), lease, 10)),
            ("claim", lambda d: svc.claim(d.invocation_id, "w", lease, module_sha256="f" * 64)),
            ("get", lambda d: svc.get(d.job_id)),
            ("complete", lambda d: svc.complete(d, "SessionSpawned", {"session_id": "s-1"})),
        ]
        terminated = 0
        for dispatch in dispatches:
            for step, call in steps:
                terminated += terminate_backends(pg_server, name)
                for _ in range(20):
                    try:
                        call(dispatch)
                    except StoreUnavailable:
                        outcomes[step] = outcomes.get(step, 0) + 1
                        continue
                    break
        left = svc.open_runs()
        states = {svc.get(d.job_id).state for d in dispatches}
        verdicts = [
            [v["verdict"] for v in svc.invocation(d.invocation_id).verdicts] for d in dispatches
        ]
    finally:
        svc.close()
    assert terminated > 0
    assert left == []
    assert states == {JobState.RUNNING}
    # An acknowledgement lost after the commit is re-decided as a recorded duplicate.
    assert all(v[0] == "Applied" and set(v[1:]) <= {"Discarded"} for v in verdicts), verdicts
    print(f"terminated {terminated} backends; retried: {outcomes}")


def test_runs_claimed_just_before_the_store_dropped_are_claimed_again_not_left_to_their_lease() -> (
    None
):
    svc = CurationService.open("memory://")
    try:
        [dispatch] = submitted(svc, 1)
        dispatcher = Dispatcher(
            svc,
            FixedRunner(RunOutcome(ok={"session_id": "s-1"})),
            lease=timedelta(minutes=10),  # far beyond the hang guard: only a reclaim finishes
            store_retry_interval=0.001,
        )
        svc.jobs = failing(1, svc.jobs)  # type: ignore[method-assign]
        run_until(dispatcher, lambda: dispatcher.stats.runs == 1)
        claims = [e.name for e in svc.invocation_history(dispatch.invocation_id)].count("Claimed")
        state = svc.get(dispatch.job_id).state
    finally:
        svc.close()
    assert dispatcher.stats.store_retries == 1
    assert claims == 2  # the claim whose job read failed, then this worker's own again
    assert state == JobState.RUNNING
