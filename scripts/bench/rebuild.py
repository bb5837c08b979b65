"""Rebuilding the job_status read model from the first notification (DESIGN.md §7), in events
per second against two raw scans of the same log on the same backend: a bare driver cursor
reading what the rebuild reads (the target's baseline), and the library's own batched reader.
Plus the peak RSS of the rebuild, and of ``sequent verify``, each in a fresh interpreter.

The log is real domain events, written quickly (``fill_log``): jobs built by the aggregates'
own commands and put straight into the event store, their progress interleaved as concurrent
runs would leave it.
"""

from __future__ import annotations

import gc
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from eventsourcing.application import LocalNotificationLog
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder
from eventsourcing.system import NotificationLogReader
from psycopg import sql

from domain import CurationService
from domain.job import CurationJob
from domain.log import POSTGRES_COLUMNS, SQLITE_COLUMNS
from domain.outcomes import Applied
from domain.service import completion_values
from domain.store_url import postgres_conninfo
from integrations.modules.build import PROJECT_ROOT
from projections.job_status import JobStatusProjection
from projections.rebuild import REBUILD_BATCH
from projections.runner import Projections
from scripts.bench.harness import (
    LARGE_EVENTS,
    REBUILD,
    Bench,
    Measurement,
    Step,
    Target,
    Timings,
    load_average,
)
from scripts.bench.stores import (
    ScratchStore,
    open_store,
    put_events,
    scratch_stores,
    submitted_job,
)

EVENTS_PER_JOB = 100  # Created, Submitted, SessionSpawned and progress; 3 invocation events
RUNNING_AT_ONCE = 500  # jobs whose progress interleaves in the log
PUT_EVENTS = 5000  # events per transaction while filling the log
SCAN_PAGE = 5000  # rows per page of both raw scans
REBUILD_RATE_TARGET = 100_000.0  # events/s on SQLite (DESIGN.md §7)
RSS_TARGET_MB = 200.0  # peak RSS rebuilding LARGE_EVENTS events
RATIO_TARGET = 0.8  # of the bare cursor's rows/s (DESIGN.md §7)


@dataclass(frozen=True)
class FilledLog:
    jobs: int
    job_events: int
    invocation_events: int
    seconds: float

    @property
    def events(self) -> int:
        return self.job_events + self.invocation_events


def fill_log(svc: CurationService, events: int) -> FilledLog:
    """``events`` (at least 6) real domain events in ``svc``'s store, quickly: jobs of about
    EVENTS_PER_JOB events each (Created, Submitted, SessionSpawned, then ProgressRecorded; their
    invocations Started, Finished, Applied), built by the aggregates' own commands as
    CurationService would (``complete`` = ``_decide``'s steps) and put straight into the
    service's event store PUT_EVENTS at a time, RUNNING_AT_ONCE jobs' progress interleaved
    round-robin in the log as concurrent runs would leave it. No snapshots are taken (a rebuild
    reads only the log)."""
    started = time.perf_counter()
    jobs = max(1, events // EVENTS_PER_JOB)
    progress = max(0, events - 6 * jobs)
    pending: list[Any] = []
    job_events = invocation_events = 0

    def put(force: bool = False) -> None:
        nonlocal pending
        if pending and (force or len(pending) >= PUT_EVENTS):
            put_events(svc, pending)
            pending = []

    for first in range(0, jobs, RUNNING_AT_ONCE):
        group = range(first, min(first + RUNNING_AT_ONCE, jobs))
        running: list[tuple[CurationJob, int]] = []
        for index in group:
            job, invocation = submitted_job(svc, index)
            spawned = completion_values("SessionSpawned", {"session_id": f"s-{index}"})
            job.perform("SessionSpawned", spawned, invocation_id=invocation.id)
            invocation.record("SessionSpawned", spawned, Applied(invocation.id, job.version))
            own, theirs = job.collect_events(), invocation.collect_events()
            pending += [*own, *theirs]
            job_events += len(own)
            invocation_events += len(theirs)
            quota = progress // jobs + (1 if index < progress % jobs else 0)
            running.append((job, quota))
        for step in range(max((q for _, q in running), default=0)):
            for job, quota in running:
                if step < quota:
                    job.record_progress({"step": step, "note": f"fetched page {step}"})
                    pending += job.collect_events()
                    job_events += 1
            put()
        put()
    put(force=True)
    return FilledLog(jobs, job_events, invocation_events, time.perf_counter() - started)


def library_scan(svc: CurationService) -> int:
    """Every notification, through the library's own batched reader (``NotificationLogReader``
    over the recorder's ``select_notifications``) in pages of SCAN_PAGE: the baseline of what
    reading the log costs with nothing of ours in the way."""
    log = LocalNotificationLog(svc.recorder, section_size=SCAN_PAGE)
    reader = NotificationLogReader(log, section_size=SCAN_PAGE)
    return sum(len(page) for page in reader.select(start=1))


def events_table(svc: CurationService) -> str:
    recorder = svc.recorder
    if isinstance(recorder, SQLiteApplicationRecorder | PostgresApplicationRecorder):
        return recorder.events_table_name
    raise TypeError(f"no notification table to scan in a {type(recorder).__name__}")


def bare_cursor_scan(store: ScratchStore, table: str) -> int:
    """What a rebuild of job_status reads, through a bare driver cursor and nothing else: the
    log reader's own SELECT (the same columns, the same topic filter; on PostgreSQL the same
    binary transfer) over the whole notification table in one query, sqlite3 on the file or a
    psycopg server-side cursor, fetched in pages of SCAN_PAGE rows and not decoded."""
    if store.backend == "sqlite":
        return _sqlite_scan(store.env["SQLITE_DBNAME"], table)
    return _postgres_scan(store.env, table)


def _sqlite_scan(path: str, table: str) -> int:
    rows = 0
    topics = JobStatusProjection.topics
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        cursor = conn.execute(
            f'SELECT {SQLITE_COLUMNS} FROM "{table}" '
            f"WHERE topic IN ({','.join('?' * len(topics))}) ORDER BY rowid",
            topics,
        )
        while page := cursor.fetchmany(SCAN_PAGE):
            rows += len(page)
    finally:
        conn.close()
    return rows


def _postgres_scan(env: dict[str, str], table: str) -> int:
    rows = 0
    query = sql.SQL(
        f"SELECT {POSTGRES_COLUMNS} FROM {{}}.{{}} WHERE topic = ANY(%s) ORDER BY notification_id"
    ).format(sql.Identifier(env["POSTGRES_SCHEMA"]), sql.Identifier(table))
    with (
        psycopg.connect(postgres_conninfo(env)) as conn,
        conn.cursor(name="sequent_bench_scan", binary=True) as cursor,
    ):
        cursor.itersize = SCAN_PAGE
        cursor.execute(query, (list(JobStatusProjection.topics),))
        while page := cursor.fetchmany(SCAN_PAGE):
            rows += len(page)
    return rows


# Run as ``python -c _RSS_CHILD URL rebuild|verify``: the store opened as ``sequent rebuild``
# and ``sequent verify`` open it (through bootstrap) and nothing the benchmark loads besides, so
# the peak RSS is a rebuild's (of job_status) or a verify's.
_RSS_CHILD = """
import json, resource, sys, time
from bootstrap import Settings, open_service
from projections import Projections

def status_kb(key):
    with open("/proc/self/status") as lines:
        for line in lines:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None

command = sys.argv[2]
service = open_service(Settings.from_env(store_url=sys.argv[1]))
try:
    projections = Projections(service)
    before = status_kb("VmRSS")
    started = time.perf_counter()
    if command == "rebuild":
        report = projections.rebuild("job_status", progress=False)
        outcome = {"events": report.events, "equal": report.equal}
    else:
        report = projections.verify()
        outcome = {"checked": report.checked, "ok": report.ok}
    seconds = time.perf_counter() - started
finally:
    service.close()
print(json.dumps({
    **outcome,
    "seconds": seconds,
    f"rss_before_{command}_kb": before,
    "vmhwm_kb": status_kb("VmHWM"),
    "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
}))
"""


def in_child(url: str, command: str) -> dict[str, Any]:
    """Runs ``command`` (rebuild, verify) in a fresh interpreter: what it printed, its RSS
    figures (VmHWM, ru_maxrss, RSS before) in MB."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), *sys.path[1:]])}
    done = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, url, command],
        capture_output=True, text=True, cwd=PROJECT_ROOT, env=env, timeout=1800, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"the {command} subprocess failed ({done.returncode}): {last}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    mb = {k.removesuffix("_kb") + "_mb": v / 1024 for k, v in figures.items() if k.endswith("_kb")}
    return {**{k: v for k, v in figures.items() if not k.endswith("_kb")}, **mb}


def rebuild_in_child(url: str) -> dict[str, Any]:
    """Rebuilds job_status in a fresh interpreter and returns its peak RSS (VmHWM and
    ru_maxrss, in MB) with the rebuild's events and seconds."""
    figures = in_child(url, "rebuild")
    events, seconds = figures.pop("events"), figures["seconds"]
    return {
        "events": events,
        "events_per_s": events / seconds if seconds else 0.0,
        "checksums_equal": figures.pop("equal"),
        **figures,
    }


def measure(bench: Bench) -> list[Measurement]:
    events = bench.config.rebuild_event_count
    rounds = bench.config.sizes.rebuild_rounds if events <= 200_000 else 1
    return [
        measure_rebuild(store, events, rounds, bench.step)
        for store in scratch_stores(bench, REBUILD, bench.config.backends)
    ]


def measure_rebuild(store: ScratchStore, events: int, rounds: int, step: Step) -> Measurement:
    load = load_average()
    svc = open_store(store.url)
    table = events_table(svc)
    rebuilt, library, bare = Timings(), Timings(), Timings()  # one sample per pass
    batches = Timings()
    counts: dict[str, int] = {"rebuild": 0, "library": 0, "bare": 0}
    equal: list[bool] = []
    try:
        step(f"{REBUILD} [{store.backend}]: writing {events:,} events")
        filled = fill_log(svc, events)
        projections = Projections(svc)
        step(f"{REBUILD} [{store.backend}]: catching the live views up")
        projections.catch_up()  # the live view at the head: rebuild's own catch-up is a no-op
        library_scan(svc)  # warm-up: the log in the page cache for both scans
        bare_cursor_scan(store, table)
        last = [0]

        def progress(position: int, head: int) -> None:
            now = time.perf_counter_ns()
            if position:  # each call after the first closes one batch (the last: the swap)
                batches.add(now - last[0])
            last[0] = now

        def rebuild() -> None:
            started = time.perf_counter_ns()
            report = projections.rebuild("job_status", progress=progress)
            rebuilt.add(time.perf_counter_ns() - started)
            counts["rebuild"] += report.events
            equal.append(report.equal)

        def scan_library() -> None:
            started = time.perf_counter_ns()
            counts["library"] += library_scan(svc)
            library.add(time.perf_counter_ns() - started)

        def scan_bare() -> None:
            started = time.perf_counter_ns()
            counts["bare"] += bare_cursor_scan(store, table)
            bare.add(time.perf_counter_ns() - started)

        passes: list[Callable[[], None]] = [rebuild, scan_library, scan_bare]
        for r in range(rounds):  # interleaved, in a rotating order
            step(f"{REBUILD} [{store.backend}]: round {r + 1} of {rounds}")
            for run in passes[r % 3 :] + passes[: r % 3]:
                gc.collect()
                run()
        projections.close()
    finally:
        svc.close()
    step(f"{REBUILD} [{store.backend}]: peak RSS of a rebuild and of verify, in subprocesses")
    child, verifying = rebuild_in_child(store.url), in_child(store.url, "verify")
    value = counts["rebuild"] / rebuilt.seconds
    library_rate = counts["library"] / library.seconds
    bare_rate = counts["bare"] / bare.seconds
    rate_target = REBUILD_RATE_TARGET if store.backend == "sqlite" else None
    peak = float(child["vmhwm_mb"])
    return Measurement(
        name=REBUILD,
        backend=store.backend,
        unit="events/s",
        value=value,
        baseline=bare_rate,
        n=counts["rebuild"],
        p50=batches.percentile_us(0.5),
        p99=batches.percentile_us(0.99),
        target=Target(RATIO_TARGET, "ratio", ">="),
        notes=(
            f"value: events/s of Projections.rebuild('job_status') (shadow tables, replay, swap "
            f"with both checksums; the live view already at the head) over a log of "
            f"{filled.events:,} real domain events ({filled.jobs:,} jobs of about "
            f"{EVENTS_PER_JOB}, {min(RUNNING_AT_ONCE, filled.jobs)} running at once, progress "
            "interleaved), counting the "
            "job events it replays; baseline: rows/s of a bare driver cursor (sqlite3 / psycopg "
            "server-side) running the rebuild's own SELECT of the job events (the same columns, "
            "topic filter and transfer format) over the whole notification table in one query, "
            f"fetched in pages of {SCAN_PAGE}, nothing decoded (ratio = value / baseline). The "
            "second baseline, every notification through the library's NotificationLogReader "
            "(recorder.select_notifications): details.ratio_vs_library_scan. Interleaved in "
            "rotating rounds. "
            "p50/p99: per rebuild batch (the last sample is the swap). details.peak_rss: the "
            "same rebuild in a fresh interpreter that opens the store through bootstrap, as "
            "`sequent rebuild` does "
            "(details.verify_peak_rss: the same for `sequent verify`) "
            f"(target <= {RSS_TARGET_MB:g} MB at {LARGE_EVENTS:,} events; "
            f"--events {LARGE_EVENTS} for that size). Targets: ratio >= {RATIO_TARGET} (meets), "
            f"and on SQLite >= {REBUILD_RATE_TARGET:,.0f} events/s (details.events_per_s_meets)."
        ),
        details={
            "loadavg_1m": load,
            "events_in_log": filled.events,
            "job_events": filled.job_events,
            "invocation_events": filled.invocation_events,
            "jobs": filled.jobs,
            "fill_seconds": round(filled.seconds, 3),
            "rounds": rounds,
            "rebuild_seconds_per_round": rebuilt.seconds / rebuilt.n,
            "checksums_equal": all(equal),
            "library_scan": {
                "rows_per_s": library_rate,
                "seconds_per_scan": library.seconds / library.n,
            },
            "bare_cursor_scan": {
                "rows_per_s": bare_rate,
                "seconds_per_scan": bare.seconds / bare.n,
            },
            "ratio_vs_library_scan": value / library_rate,
            "ratio_vs_bare_cursor_scan": value / bare_rate,
            "log_notifications_per_s": filled.events * rebuilt.n / rebuilt.seconds,
            "events_per_s_target": rate_target,
            "events_per_s_meets": None if rate_target is None else value >= rate_target,
            "batch": {"size": REBUILD_BATCH, **batches.summary()},
            "peak_rss": child,  # vmhwm_mb is the figure; ru_maxrss may count the fork
            "rss_target_mb": RSS_TARGET_MB,
            "rss_target_at_events": LARGE_EVENTS,
            "rss_target_applies": filled.events >= LARGE_EVENTS,
            "rss_meets": peak <= RSS_TARGET_MB,
            "verify_peak_rss": verifying,  # the same for `sequent verify` of the whole store
            "verify_rss_meets": verifying["vmhwm_mb"] <= RSS_TARGET_MB,
        },
    )
