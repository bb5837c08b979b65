"""Read models: parity with an independent fold of the history after random workloads,
exactly-once application, rebuild (while writers run), verify, lag, and live following.

Every check compares the read models with ``fold_history`` (tests/support/oracle.py),
which shares no code with ``projections/``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from eventsourcing.persistence import IntegrityError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain import CurationService, log
from projections.catalog import PROJECTION_NAMES
from projections.errors import ProjectionFailed, UnknownFilter, UnknownProjection
from projections.recorders import PositionMoved
from projections.runner import Projections
from tests.support.fakes import open_projections
from tests.support.oracle import (
    OPS,
    Workload,
    assert_parity,
    completions,
    fold_history,
    random_workload,
    stored,
)


@pytest.fixture
def service(store_url: str) -> Iterator[CurationService]:
    svc = CurationService.open(store_url)
    yield svc
    svc.close()


@pytest.fixture
def shared_service(shared_store_url: str) -> Iterator[CurationService]:
    svc = CurationService.open(shared_store_url)
    yield svc
    svc.close()


# -- parity after random workloads -----------------------------------------------------------------

workloads = st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 999)), max_size=40)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=workloads, batch_size=st.integers(1, 9), catch_up_every=st.integers(1, 15))
def test_read_models_equal_the_fold_after_random_workloads(
    service: CurationService, ops: list[tuple[str, int]], batch_size: int, catch_up_every: int
) -> None:
    # Examples share the test's store (one schema per test), so each one adds to a longer
    # history; catching up every few operations in small batches splits Finished/verdict
    # pairs and Started/completion pairs across batches.
    p = Projections(service, batch_size=batch_size)
    w = Workload(service)
    for i, (op, pick) in enumerate(ops):
        w.run(op, pick)
        if i % catch_up_every == 0:
            p.catch_up()
    p.catch_up()
    assert_parity(p)
    for name in PROJECTION_NAMES:
        report = p.rebuild(name, progress=False)
        assert report.checksum_live == report.checksum_rebuilt, name
        assert report.checksum_rebuilt == p.checksum(name)
    assert_parity(p)
    assert all(lag == 0 for lag in p.lag().values())


def test_incident_read_models(service: CurationService) -> None:
    w = Workload(service)
    w.incident(jobs=6, seed=3)
    p = Projections(service)
    p.catch_up()
    assert_parity(p)
    assert {j.state for j in p.jobs()} == {"Running"}
    assert len(p.jobs("Running")) == 6
    assert p.jobs("Failed") == []
    discarded = p.discarded()
    assert len(discarded) == 6
    assert {d.reason for d in discarded} == {"superseded"}
    assert {d.attempt for d in discarded} == {1}
    assert {d.action for d in discarded} == {"SessionSpawned"}
    sessions = p.sessions()
    assert len(sessions) == 12
    orphans = p.sessions(orphans=True)
    assert all(s.verdict == "discarded" and not s.compensated for s in orphans)
    assert len(orphans) + sum(s.compensated for s in sessions) == 6


def test_queries_refuse_unknown_filters(service: CurationService) -> None:
    p = Projections(service)
    with pytest.raises(UnknownFilter, match="unknown job state 'Sleeping'"):
        p.jobs("Sleeping")
    with pytest.raises(UnknownFilter, match="decision status"):
        p.decisions("maybe")
    with pytest.raises(UnknownProjection, match="known: job_status, dispatch_audit"):
        p.rebuild("jobs")
    with pytest.raises(UnknownProjection):
        p.checksum("nope")


def test_lag_counts_what_a_view_has_not_applied(service: CurationService) -> None:
    p = Projections(service)
    random_workload(service, 30, seed=1)
    head = p.head()
    assert head > 0
    assert p.lag() == dict.fromkeys(PROJECTION_NAMES, head)
    p.catch_up(["job_status"])
    lag = p.lag()
    assert lag["job_status"] == 0
    assert lag["dispatch_audit"] == head
    p.catch_up()
    status = {s.projection: s for s in p.status()}
    assert all(s.position == head and s.head == head and s.lag == 0 for s in status.values())
    assert status["job_status"].rows == len(fold_history(service)["job_status"])


def test_gaps_in_notification_ids_are_passed_over(shared_service: CurationService) -> None:
    """A rolled-back insert takes PostgreSQL sequence values that are never used (SQLite
    reuses the rowids): the ids have a gap that never fills, and nothing waits for it."""
    w = Workload(shared_service)
    w.incident(jobs=2)
    job = shared_service.create_job({})
    taken = shared_service.recorder.select_events(job)[0]
    for _ in range(3):  # the same (aggregate, version) again: refused, rolled back
        with pytest.raises(IntegrityError):
            shared_service.recorder.insert_events([taken])
    w.incident(jobs=2)
    p = Projections(shared_service, batch_size=2)
    p.catch_up()
    ids = [n.id for n in shared_service.recorder.select_notifications(0, 10_000)]
    if shared_service.factory.__class__.__name__.startswith("Postgres"):
        assert ids[-1] > len(ids)  # there is a gap
    assert set(p.positions().values()) == {ids[-1]}
    assert set(p.lag().values()) == {0}
    assert_parity(p)
    assert p.rebuild("job_status", progress=False).position == ids[-1]
    assert p.verify().ok


# -- exactly once ----------------------------------------------------------------------------------


def test_a_batch_applied_twice_is_refused_and_leaves_one_row(service: CurationService) -> None:
    Workload(service).incident(jobs=2)
    p = Projections(service)
    view = p.projection("dispatch_audit")
    head = p.head()
    batch, covered = p.log.read(0, head, view.topics, 10_000)
    assert covered == head
    p.store.apply(view, batch, after=0, upto=head)
    before = stored(p, "dispatch_audit")
    with pytest.raises(PositionMoved) as moved:
        p.store.apply(view, batch, after=0, upto=head)  # the same notifications again
    assert moved.value.current == head
    assert stored(p, "dispatch_audit") == before
    assert len(before) == len(completions(service))
    assert p.catch_up() > 0  # the other views; dispatch_audit is at the head already
    assert_parity(p)


def test_racing_runners_apply_each_notification_once(
    shared_store_url: str, shared_service: CurationService
) -> None:
    """Three runners (own connections, as separate processes would have) catch up in tiny
    batches while a writer adds completions; a notification applied twice would be a second
    dispatch_audit row with the same position, which the table refuses loudly."""
    runners = [open_projections(shared_store_url, batch_size=3) for _ in range(3)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def run(p: Projections) -> None:
        try:
            while not stop.is_set():
                p.catch_up()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(p,)) for p in runners]
    for t in threads:
        t.start()
    try:
        Workload(shared_service).incident(jobs=12, seed=5)
        random_workload(shared_service, 60, seed=9)
    finally:
        stop.set()
        for t in threads:
            t.join()
    try:
        assert errors == []
        runners[0].catch_up()
        assert_parity(runners[0])
    finally:
        for p in runners:
            p.close()


# -- rebuild ---------------------------------------------------------------------------------------


def recorder(seen: list[tuple[int, int]]) -> Callable[[int, int], None]:
    return lambda position, head: seen.append((position, head))


def test_rebuild_reports_equal_checksums_and_replaces_the_tables(service: CurationService) -> None:
    Workload(service).incident(jobs=5)
    random_workload(service, 40, seed=2)
    p = Projections(service)
    p.catch_up()
    live = {name: p.checksum(name) for name in PROJECTION_NAMES}
    for name in PROJECTION_NAMES:
        for _ in range(2):  # twice: the swapped-in tables can be swapped out again
            seen: list[tuple[int, int]] = []
            report = p.rebuild(name, progress=recorder(seen))
            assert report.projection == name
            assert report.checksum_live == report.checksum_rebuilt == live[name]
            assert report.position == p.head()
            assert report.events > 0
            assert seen[-1] == (report.position, report.position)
    assert_parity(p)


def test_a_rebuild_keeping_part_of_each_page_folds_what_the_live_view_folded(
    service: CurationService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebuild of job_status keeps of each page it reads only the last event of each job
    and the events whose payload its fold reads; with pages far smaller than its batches the
    rebuilt rows are still the live ones, and every job event counts as replayed."""
    monkeypatch.setattr(log, "READ_PAGE", 7)
    Workload(service).incident(jobs=8, seed=5)
    random_workload(service, 60, seed=5)
    p = Projections(service)
    p.catch_up()
    live = p.checksum("job_status")
    report = p.rebuild("job_status", progress=False)
    assert report.checksum_live == report.checksum_rebuilt == live
    assert report.events == sum(1 for _ in p.log.notices(log.JOB_TOPICS))


def test_rebuild_repairs_a_corrupted_view(service: CurationService) -> None:
    Workload(service).incident(jobs=3)
    p = Projections(service)
    p.catch_up()
    p.store.execute(f'UPDATE {p.store.qualified("job_status")} SET "state" = ?', ("Completed",))
    report = p.rebuild("job_status", progress=False)
    assert report.checksum_live != report.checksum_rebuilt  # the live one was wrong
    assert_parity(p)


def test_rebuild_while_writers_run_loses_nothing(
    shared_store_url: str, shared_service: CurationService
) -> None:
    """A writer appends and another runner follows while each view is rebuilt; the swap
    brings the shadow to the head inside its transaction, so nothing written meanwhile is
    lost and the live and rebuilt checksums still agree."""
    Workload(shared_service).incident(jobs=60, seed=1)
    p = Projections(shared_service, rebuild_batch_size=25)
    p.catch_up()
    stop = threading.Event()
    errors: list[BaseException] = []
    writer_service = CurationService.open(shared_store_url)

    def write() -> None:
        w = Workload(writer_service)
        try:
            while not stop.is_set():
                w.incident(jobs=1)
                w.run("request", 1)
        except BaseException as exc:
            errors.append(exc)

    follower = open_projections(shared_store_url, batch_size=5)  # a live runner meanwhile

    def follow() -> None:
        try:
            while not stop.is_set():
                follower.catch_up()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write), threading.Thread(target=follow)]
    for t in threads:
        t.start()
    overlapped: dict[str, int] = {}
    try:
        for name in PROJECTION_NAMES:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # until writes land while this view rebuilds
                before = p.head()
                report = p.rebuild(name, progress=False)
                assert report.checksum_live == report.checksum_rebuilt, name
                if report.position > before:
                    overlapped[name] = report.position - before
                    break
    finally:
        stop.set()
        for t in threads:
            t.join()
        writer_service.close()
        follower.close()
    assert errors == []
    assert set(overlapped) == set(PROJECTION_NAMES)  # every rebuild had writers running through it
    p.catch_up()
    assert_parity(p)


# -- verify ----------------------------------------------------------------------------------------


def test_verify_passes_on_consistent_models(service: CurationService) -> None:
    Workload(service).incident(jobs=4)
    random_workload(service, 40, seed=4)
    p = Projections(service)
    report = p.verify()  # catches up first
    assert report.ok
    assert (report.drifted, report.missing, report.extra) == (0, 0, 0)
    folded = fold_history(service)
    assert report.checked == sum(len(rows) for rows in folded.values())
    assert {c.projection: c.position for c in report.projections} == dict.fromkeys(
        PROJECTION_NAMES, p.head()
    )


def test_verify_catches_a_corrupted_row_and_a_corrupted_position(
    service: CurationService,
) -> None:
    Workload(service).incident(jobs=4)
    p = Projections(service)
    p.catch_up()
    job = p.jobs()[0].job_id
    jobs, audits = p.store.qualified("job_status"), p.store.qualified("dispatch_audit")
    p.store.execute(f'UPDATE {jobs} SET "attempt" = 7 WHERE "job_id" = ?', (job,))
    audit = p.audit()[0].position
    p.store.execute(f'DELETE FROM {audits} WHERE "position" = ?', (audit,))
    p.store.force_position(p.projection("sessions"), 3)  # behind rows it already has

    report = p.verify()

    assert not report.ok
    assert report.missing == 1
    by_kind = {(d.projection, d.kind, d.key): d for d in report.details}
    drift = by_kind[("job_status", "drifted", job)]
    assert drift.fields == {"attempt": {"expected": 2, "actual": 7}}
    assert ("dispatch_audit", "missing", str(audit)) in by_kind
    tracking = by_kind[("sessions", "tracking", "")]
    assert "tracking position 3 is behind the view's rows" in tracking.message
    assert report.drifted >= 2  # the row, the position (and rows newer than position 3)

    for name in ("job_status", "dispatch_audit", "sessions"):
        p.rebuild(name, progress=False)
    assert p.verify().ok


def test_verify_catches_a_position_moved_past_events_it_never_applied(
    service: CurationService,
) -> None:
    w = Workload(service)
    w.incident(jobs=2)
    p = Projections(service)
    p.catch_up()
    w.incident(jobs=2)  # not yet applied ...
    p.store.force_position(p.projection("dispatch_audit"), p.head())  # ... and now skipped
    p.store.force_position(p.projection("decisions"), p.head() + 10)  # beyond the log

    report = p.verify()

    missing = [d for d in report.details if d.kind == "missing"]
    assert {d.projection for d in missing} == {"dispatch_audit"}
    assert len(missing) == 4  # two incidents' worth of completions, two each
    messages = [d.message for d in report.details if d.kind == "tracking"]
    assert any("beyond the head" in m for m in messages)


def test_catching_up_a_view_whose_position_went_back_fails_loudly(
    service: CurationService,
) -> None:
    Workload(service).incident(jobs=2)
    p = Projections(service)
    p.catch_up()
    p.store.force_position(p.projection("dispatch_audit"), 0)
    with pytest.raises(ProjectionFailed, match="projection dispatch_audit failed"):
        p.catch_up(["dispatch_audit"])
    assert len(stored(p, "dispatch_audit")) == len(completions(service))  # nothing doubled


# -- live following --------------------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_run_forever_follows_the_log(service: CurationService) -> None:
    """PostgreSQL and memory follow through the library's subscription; SQLite polls."""
    p = Projections(service, batch_size=4)
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            p.run_forever(stop, poll_seconds=0.05)
        except BaseException as exc:
            errors.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        w = Workload(service)
        w.incident(jobs=3)
        wait_for(lambda: set(p.lag().values()) == {0} or bool(errors))
        w.incident(jobs=2)
        random_workload(service, 20, seed=3)
        wait_for(lambda: set(p.lag().values()) == {0} or bool(errors))
    finally:
        stop.set()
        runner.join()
    assert errors == []
    assert_parity(p)


def test_memory_store_keeps_its_read_models_in_memory() -> None:
    with open_projections("memory://") as p:
        Workload(p.service).incident(jobs=2)
        p.catch_up()
        assert_parity(p)
        assert p.rebuild("sessions", progress=False).position == p.head()
