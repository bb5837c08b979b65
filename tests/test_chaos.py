"""Crash and database chaos with real processes (issue 9): `sequent worker` processes on one
store are SIGKILLed and restarted and (PostgreSQL) have their backends terminated mid-run, and
afterwards nothing is lost, duplicated, wrongly failed or orphaned, and the read models verify.

A small run is part of every `scripts/test`; `SEQUENT_CHAOS=full` runs the issue's counts
(1,000 jobs, 50 kills, 25 terminations). `SEQUENT_CHAOS_PG_RESTART` adds PostgreSQL restarts
(two in a full run, one in a small one): `1` restarts the local cluster `main`, so only on a
server nobody else is using; any other value is the command that restarts the server
`SEQUENT_TEST_PG` names (say, a private cluster's `pg_ctl -D DIR -m fast restart`). The
schedule comes from `SEQUENT_CHAOS_SEED` (random if unset); a failure names the seed that
replays it.
"""

from __future__ import annotations

import json
import os
import random
import signal
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from bootstrap import Settings
from bootstrap.reconciler import open_reconciler
from domain import CurationService, Dispatch
from integrations.session_service import SessionService
from projections import Projections
from tests.support.chaos import (
    ChaosConfig,
    ChaosRun,
    check_store,
    prepare,
    restart_command,
    run_chaos,
    summary,
    with_param,
)

pytestmark = pytest.mark.chaos

FULL = os.environ.get("SEQUENT_CHAOS", "").lower() == "full"
SERVER_RESTART = os.environ.get("SEQUENT_CHAOS_PG_RESTART", "")


@pytest.fixture
def seed() -> int:
    given = os.environ.get("SEQUENT_CHAOS_SEED")
    return int(given) if given else random.randrange(1 << 32)


@pytest.fixture
def slow_sessions(seed: int) -> Iterator[SessionService]:
    """The session service with 0-50 ms of latency and one answer in twenty half a second late."""
    with SessionService(
        latency=(0.0, 0.05), slow_fraction=0.05, slow_latency=0.5, seed=seed
    ) as service:
        yield service


def assert_nothing_broke(
    run: ChaosRun, url: str, dispatches: list[Dispatch], sessions: SessionService
) -> None:
    config = run.config
    # What the workers' periodic passes left, a last pass finds: with fenced calls, nothing.
    with open_reconciler(Settings.from_env(store_url=url)) as reconciler:
        reconciled = reconciler.reconcile_all()
    svc = CurationService.open(url)
    try:
        found = check_store(svc, dispatches, sessions)
        verify = Projections(svc).verify()
    finally:
        svc.close()
    report = {**summary(run, found, verify), "last_reconcile": asdict(reconciled)}
    print(f"chaos: {json.dumps(report)}")  # shown with a failure, and with -s for the report
    replay = config.replay()
    assert found.violations == [], f"{found.violations}; {replay}"
    assert found.counts["wrongly_failed"] == 0, replay
    assert (reconciled.orphans, reconciled.unreachable) == (0, ()), replay
    assert verify.ok, f"{verify.details[:5]}; {replay}"
    # Every worker standing at the end survived every fault it saw and stopped cleanly; one
    # restarted so late that SIGTERM found it still importing Python dies of the signal (it
    # has not opened the store yet: the worker handles SIGTERM from then on).
    codes = [code for _, code, _ in run.worker_exits]
    assert len(codes) == config.workers, replay
    assert set(codes) <= {0, -signal.SIGTERM}, f"{run.worker_exits}; {replay}"
    assert run.worker_logs["tracebacks"] == 0, replay  # every fault met was an expected one
    assert run.kills == config.kills, replay  # each kill hit a live worker
    if config.terminations:
        assert run.backends_terminated > 0, replay  # the terminations hit this run's sessions


@pytest.mark.postgres
def test_postgres_workers_lose_nothing_through_kills_and_terminated_backends(
    pg_server: str, pg_url: str, slow_sessions: SessionService, seed: int, tmp_path: Path
) -> None:
    config = ChaosConfig(
        jobs=1000 if FULL else 60,
        workers=3,
        kills=50 if FULL else 5,
        terminations=25 if FULL else 3,
        server_restarts=(2 if FULL else 1) if SERVER_RESTART else 0,
        seed=seed,
    )
    schema = parse_qs(urlsplit(pg_url).query)["schema"][0]
    application_name = f"sequent-chaos-{schema}"  # this test's sessions, and no one else's
    dispatches = prepare(pg_url, slow_sessions, config.jobs)
    run = run_chaos(
        config,
        with_param(pg_url, "application_name", application_name),
        slow_sessions,
        tmp_path,
        server=pg_server,
        application_name=application_name,
        restart=restart_command(SERVER_RESTART) if SERVER_RESTART else (),
    )
    assert_nothing_broke(run, pg_url, dispatches, slow_sessions)


def test_sqlite_workers_lose_nothing_through_kills(
    url_for: object, slow_sessions: SessionService, seed: int, tmp_path: Path
) -> None:
    url = url_for("sqlite")  # type: ignore[operator]
    config = ChaosConfig(jobs=400 if FULL else 40, workers=2, kills=25 if FULL else 3, seed=seed)
    dispatches = prepare(url, slow_sessions, config.jobs)
    run = run_chaos(config, url, slow_sessions, tmp_path)
    assert_nothing_broke(run, url, dispatches, slow_sessions)
