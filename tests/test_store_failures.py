"""Databases that drop connections or vanish: a typed error or a transparent retry, never a
half write."""

from __future__ import annotations

from contextlib import ExitStack

import psycopg
import pytest

from domain import CurationService, StoreUnavailable
from domain.store_url import parse_store_url


def backend_pids(svc: CurationService, count: int) -> set[int]:
    datastore = svc.recorder.datastore  # type: ignore[attr-defined]
    with ExitStack() as stack:
        conns = [stack.enter_context(datastore.get_connection()) for _ in range(count)]
        return {conn.info.backend_pid for conn in conns}


def test_dropped_connections_mid_use(pg_url: str, pg_server: str) -> None:
    pool_size = int(parse_store_url(pg_url).env["POSTGRES_POOL_SIZE"])
    svc = CurationService.open(pg_url)
    try:
        job_id = svc.create_job({"target": "t"})
        pids = backend_pids(svc, pool_size)
        with psycopg.connect(pg_server, autocommit=True) as admin:
            for pid in pids:
                killed = admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
                assert killed == (True,)

        # The event store retries a lost connection on a fresh one (eventsourcing's recorders do
        # this themselves); what must hold is that each call writes exactly once.
        for n in range(pool_size + 1):
            svc.configure(job_id, {"round": n})
        configured = [e.data["settings"] for e in svc.history(job_id) if e.name == "Configured"]
        assert configured == [{"round": n} for n in range(pool_size + 1)]
        assert backend_pids(svc, pool_size).isdisjoint(pids)
    finally:
        svc.close()


def test_a_database_that_goes_away_gives_store_unavailable(pg_url: str, pg_server: str) -> None:
    svc = CurationService.open(pg_url)
    try:
        job_id = svc.create_job({"target": "t"})
        schema = parse_store_url(pg_url).env["POSTGRES_SCHEMA"]
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        with pytest.raises(StoreUnavailable) as caught:
            svc.configure(job_id, {"depth": 1})
        assert "\n" not in str(caught.value)
    finally:
        svc.close()
