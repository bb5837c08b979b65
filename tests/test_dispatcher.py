"""The dispatcher with every real part: the Zig guest in wasmtime, Cedar, the loopback session
service, and the store (memory, SQLite, PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from bootstrap import Settings, System, build_system
from domain import CurationService, Discarded, JobState
from domain.cedar import default_policies
from integrations.dispatcher import Dispatcher, RunOutcome
from integrations.limits import SandboxLimits
from integrations.session_service import SessionService
from tests.support.fakes import FixedRunner

MODULES = Path(__file__).parent / "modules"


@pytest.fixture
def system(store_url: str) -> Iterator[System]:
    built = build_system(Settings.from_env(store_url=store_url))
    yield built
    built.close()


def permit(system: System, service: SessionService) -> None:
    system.service.policies.add_policy(default_policies(service.url), reason="test")


def submit(svc: CurationService, service: SessionService) -> Any:
    job_id = svc.create_job({"target": "t", "session_service": service.url})
    return svc.submit(job_id)


def events(svc: CurationService, invocation_id: Any) -> list[str]:
    return [e.name for e in svc.invocation_history(invocation_id)]


def test_a_permitted_run_spawns_a_session_and_applies(
    system: System, sessions: SessionService
) -> None:
    permit(system, sessions)
    dispatch = submit(system.service, sessions)
    dispatcher = system.dispatcher()
    anyio.run(dispatcher.run_once)

    job = system.service.get(dispatch.job_id)
    assert job.state == JobState.RUNNING
    assert list(sessions.sessions) == [job.session_id]
    assert job.session_id is not None
    message = sessions.sessions[job.session_id].message
    assert (message["job_id"], message["invocation_id"]) == (
        str(dispatch.job_id),
        str(dispatch.invocation_id),
    )
    assert events(system.service, dispatch.invocation_id) == [
        "Started", "Claimed", "Finished", "Applied",
    ]  # fmt: skip
    started = system.service.invocation(dispatch.invocation_id)
    assert started.module_sha256 == system.module.sha256


def test_the_invocation_names_the_module_the_worker_ran_not_one_the_submitter_knew(
    shared_store_url: str, sessions: SessionService
) -> None:
    # Submitted as `sequent job submit` does: through a service that knows no module.
    submitter = CurationService.open(shared_store_url)
    try:
        dispatch = submit(submitter, sessions)
        assert submitter.invocation(dispatch.invocation_id).module_sha256 == ""
        with build_system(Settings.from_env(store_url=shared_store_url)) as system:
            permit(system, sessions)
            anyio.run(system.dispatcher().run_once)
            ran = system.module.sha256
        assert submitter.invocation(dispatch.invocation_id).module_sha256 == ran
        history = {e.name: e.data for e in submitter.invocation_history(dispatch.invocation_id)}
        assert history["Claimed"]["module_sha256"] == ran
        assert history["Started"]["module_sha256"] == ""
        assert submitter.get(dispatch.job_id).state == JobState.RUNNING
    finally:
        submitter.close()


def test_a_denied_run_fails_its_job_with_the_decision(
    system: System, sessions: SessionService
) -> None:
    dispatch = submit(system.service, sessions)  # no policy: default deny
    anyio.run(system.dispatcher().run_once)

    job = system.service.get(dispatch.job_id)
    assert job.state == JobState.FAILED
    assert job.failure is not None
    system.projections.catch_up()
    [pending] = system.projections.decisions("pending")
    assert job.failure["reason"] == "authorization_denied"
    assert job.failure["decision_id"] == pending.decision_id
    assert pending.job_id == str(dispatch.job_id)
    assert sessions.sessions == {}, "a denied call never leaves the host"
    assert sessions.requests == []


def test_a_late_run_is_discarded_and_its_session_compensated(store_url: str) -> None:
    # The first request is answered slowly: its run outlives the Ready timeout.
    with SessionService(latency=lambda i: 1.5 if i == 0 else 0.0, seed=2) as sessions:
        system = build_system(Settings.from_env(store_url=store_url))
        try:
            permit(system, sessions)
            svc = system.service
            first = submit(svc, sessions)
            dispatcher = system.dispatcher(timeouts={JobState.READY: timedelta(seconds=0.5)})
            retried: list[Any] = []

            async def operator() -> None:
                while svc.get(first.job_id).state != JobState.FAILED:
                    await anyio.sleep(0.02)
                svc.retry(first.job_id)
                retried.append(svc.submit(first.job_id))

            async def race() -> None:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(dispatcher.run, lambda: bool(retried) and not dispatcher.pending)
                    tg.start_soon(operator)

            anyio.run(race)
            job = svc.get(first.job_id)
            assert job.state == JobState.RUNNING
            assert job.failure is None
            assert job.current_invocation == retried[0].invocation_id
            assert list(sessions.sessions) == [job.session_id], "no orphan session"
            late = svc.invocation(first.invocation_id)
            assert late.verdicts[0]["verdict"] == "Discarded"
            assert len(late.compensated) == 1
            assert late.compensated[0] in sessions.deleted
            assert "Compensated" in events(svc, first.invocation_id)
            assert dispatcher.stats.timeouts == 1
        finally:
            system.close()


def test_an_expired_lease_is_taken_over_and_the_late_worker_is_a_duplicate(
    system: System, sessions: SessionService
) -> None:
    permit(system, sessions)
    svc = system.service
    dispatch = submit(svc, sessions)
    # Worker A took the lease a while ago and "crashed": its lease has run out.
    long_ago = datetime.now(UTC) - timedelta(minutes=10)
    svc.claim(
        dispatch.invocation_id,
        "worker-a",
        timedelta(seconds=30),
        long_ago,
        module_sha256=system.module.sha256,
    )
    takeover = system.dispatcher(worker_id="worker-b")
    anyio.run(takeover.run_once)
    assert svc.get(dispatch.job_id).state == JobState.RUNNING
    # Worker A comes back and delivers what it had computed.
    late = svc.complete(dispatch, "SessionSpawned", {"session_id": "s-from-a"})
    assert isinstance(late, Discarded)
    assert late.reason == "duplicate"
    assert events(svc, dispatch.invocation_id) == [
        "Started", "Claimed", "Claimed", "Finished", "Applied", "Finished", "Discarded",
    ]  # fmt: skip


def test_a_live_lease_keeps_other_workers_off(system: System, sessions: SessionService) -> None:
    permit(system, sessions)
    dispatch = submit(system.service, sessions)
    system.service.claim(
        dispatch.invocation_id,
        "worker-a",
        timedelta(minutes=5),
        module_sha256=system.module.sha256,
    )
    other = system.dispatcher(worker_id="worker-b")
    anyio.run(other.run_once)
    assert other.stats.leased_elsewhere == 0, "not even offered: the work table has the lease"
    assert other.stats.runs == 0
    assert system.service.get(dispatch.job_id).state == JobState.READY
    assert sessions.requests == []


@pytest.mark.parametrize(
    ("service_options", "reason"),
    [({"failure_rate": 1.0}, "service_error"), ({}, "service_error")],
    ids=["answers-500", "down"],
)
def test_session_service_failures_fail_the_job_cleanly(
    system: System, service_options: dict[str, Any], reason: str
) -> None:
    with SessionService(seed=3, **service_options) as sessions:
        permit(system, sessions)
        dispatch = submit(system.service, sessions)
        if not service_options:
            sessions.down()
        anyio.run(system.dispatcher().run_once)
    job = system.service.get(dispatch.job_id)
    assert job.state == JobState.FAILED
    assert job.failure is not None
    assert job.failure["reason"] == reason


# Every misbehaving fixture, and what the job's failure message starts with.
BAD_MODULES = {
    "alloc_fails.wat": "memory_limit",
    "alloc_out_of_bounds.wat": "abi_error",
    "big_initial_memory.wat": "memory_limit",
    "divide_by_zero.wat": "trap",
    "grow_memory.wat": "memory_limit",
    "http_bad_pointer.wat": "bad_output",  # said ok, with params SessionSpawned does not take
    "http_loop.wat": "bad_output",
    "http_malformed_request.wat": "bad_output",
    "http_then_error.wat": "denied",  # the host's record of the denial wins over the guest's
    "loop_forever.wat": "fuel_exhausted",
    "neither_ok_nor_error.wat": "bad_output",
    "no_alloc_export.wat": "link_error",
    "no_run_export.wat": "link_error",
    "non_json_output.wat": "bad_output",
    "non_utf8_output.wat": "bad_output",
    "out_of_bounds_output.wat": "bad_output",
    "oversized_output.wat": "bad_output",
    "run_wrong_signature.wat": "link_error",
    "unknown_import.wat": "link_error",
    "unreachable.wat": "trap",
}


def test_every_bad_fixture_is_listed() -> None:
    good = {"echo.wat", "fresh_memory.wat"}
    assert set(BAD_MODULES) == {p.name for p in MODULES.glob("*.wat")} - good


@pytest.mark.parametrize(("module", "kind"), sorted(BAD_MODULES.items()))
def test_misbehaving_modules_fail_the_job_and_the_worker_stays_up(
    store_url: str, sessions: SessionService, module: str, kind: str
) -> None:
    limits = SandboxLimits(fuel=10**7, wall_clock_seconds=5)
    settings = Settings.from_env(store_url=store_url, module=MODULES / module, limits=limits)
    system = build_system(settings)
    try:
        permit(system, sessions)
        dispatch = submit(system.service, sessions)
        dispatcher = system.dispatcher()
        anyio.run(dispatcher.run_once)
        job = system.service.get(dispatch.job_id)
        assert job.state == JobState.FAILED
        assert job.failure is not None
        expected = "authorization_denied" if kind == "denied" else "module_error"
        assert job.failure["reason"] == expected
        assert job.failure["message"].startswith(kind)
        assert dispatcher.stats.errors == 0
        # The same dispatcher carries on with the next job.
        system.service.retry(dispatch.job_id)
        again = system.service.submit(dispatch.job_id)
        anyio.run(dispatcher.run_once)
        assert system.service.invocation(again.invocation_id).completions == 1
    finally:
        system.close()


def test_ok_output_with_the_wrong_params_is_a_module_error(
    system: System, sessions: SessionService, tmp_path: Path
) -> None:
    """A module can never name an action, nor smuggle params its action does not take."""
    permit(system, sessions)
    dispatch = submit(system.service, sessions)

    says_ok_with_junk = FixedRunner(
        RunOutcome(ok={"session_id": "s", "action": "FinalizeCompletion"})
    )
    dispatcher = Dispatcher(system.service, says_ok_with_junk)
    anyio.run(dispatcher.run_once)
    job = system.service.get(dispatch.job_id)
    assert job.state == JobState.FAILED
    assert job.failure is not None
    assert job.failure["reason"] == "module_error"
    assert "unexpected param 'action'" in job.failure["message"]


def test_two_dispatchers_share_one_store(shared_store_url: str, sessions: SessionService) -> None:
    systems = [build_system(Settings.from_env(store_url=shared_store_url)) for _ in range(2)]
    try:
        permit(systems[0], sessions)
        dispatches = [submit(systems[0].service, sessions) for _ in range(12)]
        workers = [s.dispatcher(worker_id=f"w{n}") for n, s in enumerate(systems)]

        async def both() -> None:
            async with anyio.create_task_group() as tg:
                for worker in workers:
                    tg.start_soon(worker.run_once)

        anyio.run(both)
        svc = systems[0].service
        for dispatch in dispatches:
            verdicts = svc.invocation(dispatch.invocation_id).verdicts
            assert [v["verdict"] for v in verdicts] == ["Applied"]
            assert svc.get(dispatch.job_id).state == JobState.RUNNING
        assert sum(w.stats.runs for w in workers) == len(dispatches)
        assert len(sessions.sessions) == len(dispatches)
    finally:
        for system in systems:
            system.close()


def test_applied_verdicts_are_counted(system: System, sessions: SessionService) -> None:
    permit(system, sessions)
    for _ in range(3):
        submit(system.service, sessions)
    dispatcher = system.dispatcher()
    anyio.run(dispatcher.run_once)
    assert (dispatcher.stats.runs, dispatcher.stats.applied) == (3, 3)
