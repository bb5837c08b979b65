"""The throwaway stores the measurements work in, opened through the composition root, and
the submitted jobs several of them fill those stores with.

A store is a new SQLite file under the run's scratch directory, a temporary PostgreSQL schema
dropped afterwards, or ``memory://``: a benchmark never writes into the store you work with.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from bootstrap import Settings, open_service
from domain import CurationService
from domain.invocation import Invocation
from domain.job import CurationJob
from domain.store_url import parse_store_url, postgres_conninfo
from domain.transitions import TRANSITIONS
from domain.work import changes_of
from scripts.bench.harness import Bench


@dataclass(frozen=True)
class ScratchStore:
    """A throwaway store: its URL and the env its configuration derives (SQLite file path,
    PostgreSQL connection and schema), for reading its tables without the library."""

    backend: str
    url: str
    env: dict[str, str]


def put_events(svc: CurationService, events: Sequence[Any]) -> None:
    """Events the bench built itself, into ``svc``'s store in one transaction, with the work
    table's changes, as ``CurationService`` saves them (``verify`` checks the two agree)."""
    svc.events.put(events, work=changes_of(events))


def open_store(url: str) -> CurationService:
    return open_service(Settings.from_env(store_url=url))


@contextmanager
def scratch_store(
    backend: str, workdir: Path, pg_url: str | None, label: str
) -> Iterator[ScratchStore]:
    """A store of the ``backend`` kind (memory, sqlite, postgresql), gone afterwards."""
    if backend in ("memory", "sqlite"):
        if backend == "memory":
            url = "memory://"
        else:
            folder = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=workdir))
            url = f"sqlite:///{folder / f'{label}.db'}"
        yield ScratchStore(backend, url, parse_store_url(url).env)
        return
    assert pg_url is not None
    url, schema = with_temporary_schema(pg_url)
    config = parse_store_url(url)
    config.prepare()
    try:
        yield ScratchStore(backend, url, config.env)
    finally:
        drop_schema(config.env, schema)


def scratch_stores(bench: Bench, name: str, backends: Sequence[str]) -> Iterator[ScratchStore]:
    """One scratch store per backend in turn, each gone before the next is made."""
    for backend in backends:
        bench.step(f"{name} [{backend}]")
        with scratch_store(backend, bench.workdir, bench.config.pg_url, backend) as store:
            yield store


def with_temporary_schema(url: str) -> tuple[str, str]:
    schema = f"sequent_bench_{uuid.uuid4().hex[:12]}"
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "schema"] + [("schema", schema)]
    return urlunsplit(parts._replace(query=urlencode(query))), schema


def drop_schema(env: dict[str, str], schema: str) -> None:
    with psycopg.connect(postgres_conninfo(env), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def submitted_job(
    svc: CurationService, index: int, spec: Mapping[str, Any] | None = None
) -> tuple[CurationJob, Invocation]:
    """A job as create_job + submit leave it (Created, Submitted) and its invocation
    (Started), built by the aggregates' own commands and not yet saved, so a measurement can
    save many in one transaction. ``spec`` adds to the job's target (e.g. its session
    service, for a worker to run it)."""
    full_spec = {"target": f"https://bench.example/{index}", **(spec or {})}
    job = CurationJob(**TRANSITIONS["Create"].validate({"spec": full_spec}))
    job.perform("Submit", TRANSITIONS["Submit"].validate(None))
    return job, svc._start_invocation(job)
