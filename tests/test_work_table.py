"""The work table (domain/work.py) and the group commits built on it: start_jobs, claim_batch,
reservations, and the dispatcher's GroupCommit."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

from bootstrap import Settings, open_service
from domain import (
    Applied,
    CurationService,
    Discarded,
    Dispatch,
    InvalidParams,
    JobState,
    Verdict,
)
from domain.cedar import default_policies
from domain.log import DECISION_REQUESTED, INDEXED_TOPICS, POLICY_TOPICS, LogReader, log_reader
from domain.store_recorders import (
    BUILT,
    RUNS,
    SERVICES,
    SESSIONS,
    TIMERS,
    PostgresStoreRecorder,
)
from integrations.group_commit import GroupCommit
from tests.support.fakes import event_count

LEASE = timedelta(seconds=30)
SHA = "5" * 64


def shape(svc: CurationService, job_id: UUID) -> list[tuple[str, str, list[str]]]:
    return [(e.aggregate, e.name, sorted(e.data)) for e in svc.history(job_id)]


def test_start_jobs_records_what_the_three_commands_record(svc: CurationService) -> None:
    one = svc.create_job({"target": "t"})
    svc.configure(one, {"priority": "high"})
    svc.submit(one)
    before = event_count(svc)
    started = svc.start_jobs([{"target": "a"}, {"target": "b"}], {"priority": "high"})
    assert event_count(svc) == before + 2 * 4  # Created, Configured, Submitted, Started each
    assert [shape(svc, d.job_id) for d in started] == [shape(svc, one)] * 2
    assert [svc.get(d.job_id).settings for d in started] == [{"priority": "high"}] * 2
    assert svc.open_runs()[-2:] == [d.invocation_id for d in started]


def test_start_jobs_refuses_them_all_for_one_bad_spec(svc: CurationService) -> None:
    before = event_count(svc)
    with pytest.raises(InvalidParams):
        svc.start_jobs([{"target": "a"}, "not an object"])  # type: ignore[list-item]
    assert event_count(svc) == before
    assert svc.open_runs() == []


def test_claim_batch_claims_each_once_and_says_which_it_could_not(svc: CurationService) -> None:
    free, held, done = svc.start_jobs([{"n": n} for n in range(3)])
    now = datetime.now(UTC)
    svc.claim(held.invocation_id, "elsewhere", LEASE, now, module_sha256=SHA)
    svc.complete(done, "SessionSpawned", {"session_id": "s"})
    ids = [free.invocation_id, held.invocation_id, done.invocation_id, uuid4()]
    assert svc.claim_batch(ids, "w", LEASE, now, module_sha256=SHA) == [free, None, None, None]
    claims = [e.name for e in svc.invocation_history(free.invocation_id)].count("Claimed")
    assert claims == 1
    assert svc.invocation(held.invocation_id).lease_holder == "elsewhere"


def test_a_claimed_run_is_offered_again_only_when_its_lease_runs_out(
    svc: CurationService,
) -> None:
    [dispatch] = svc.start_jobs([{"n": 1}])
    now = datetime.now(UTC)
    [(offered, job)] = svc.reserve_runs(now, timedelta(seconds=1), 10)
    assert (offered, job) == (dispatch.invocation_id, dispatch.job_id)
    svc.claim_batch([offered], "w", LEASE, now, module_sha256=SHA)
    assert svc.reserve_runs(now + LEASE / 2, timedelta(seconds=1), 10) == []
    assert svc.reserve_runs(now + LEASE, timedelta(seconds=1), 10) == [(offered, job)]


def test_workers_asking_at_once_are_offered_different_runs(shared_store_url: str) -> None:
    stores = [open_service(Settings(store_url=shared_store_url)) for _ in range(4)]
    try:
        started = stores[0].start_jobs([{"n": n} for n in range(20)])
        now = datetime.now(UTC)
        offered: list[list[tuple[UUID, UUID]]] = [[] for _ in stores]
        gate = threading.Barrier(len(stores))

        def ask(index: int) -> None:
            gate.wait()
            offered[index] = stores[index].reserve_runs(now, LEASE, 5)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(stores))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for store in stores:
            store.close()
    runs = [run for each in offered for run, _ in each]
    assert sorted(runs) == sorted(d.invocation_id for d in started), "each run offered once"


# -- kept in step with the log ---------------------------------------------------------------


def table(svc: CurationService, name: str) -> str:
    """A work-table table's name as the store's SQL names it."""
    if isinstance(svc.recorder, PostgresStoreRecorder):
        return f'"{svc.recorder.datastore.schema}".{name}'
    return name


def run_sql(svc: CurationService, *statements: tuple[str, tuple[Any, ...]]) -> None:
    """Changes the store behind the service's back, in one transaction."""
    with svc.recorder.datastore.transaction(commit=True) as cursor:  # type: ignore[attr-defined]
        for statement, params in statements:
            cursor.execute(statement, params)


def history_of_every_kind(svc: CurationService) -> None:
    now = datetime.now(UTC)
    a, b, c, d, e = svc.start_jobs([{"n": n} for n in range(5)])
    svc.create_job({"queued": True, "session_service": "http://svc.example/"})
    svc.claim_batch([a.invocation_id, b.invocation_id], "w", LEASE, now, module_sha256=SHA)
    svc.complete_batch(
        [
            (a, "SessionSpawned", {"session_id": "s-a"}),
            (c, "Fail", {"reason": "service_error", "message": "500"}),
        ]
    )
    svc.fail(d.job_id)
    svc.retry(d.job_id)
    svc.submit(d.job_id)
    svc.complete(e, "SessionSpawned", {"session_id": "s-e"})
    svc.complete(e, "SessionSpawned", {"session_id": "s-e"})  # a duplicate: finished already


def test_the_table_kept_with_the_events_is_a_fold_of_the_log(svc: CurationService) -> None:
    history_of_every_kind(svc)
    kept = svc.work.work_rows()
    # Open: b (claimed), d's first run (its job failed under it) and its second. Timed: every
    # job but c (failed), and the one never submitted (Queued).
    assert (len(kept.runs), len(kept.timers)) == (3, 5)
    assert svc.work_drift() == []


def refilled_on_open(url: str, tamper: Callable[[CurationService], None]) -> None:
    """The work table of a history of every kind, tampered with as an older version of the
    table would have left it, is what it was once the store is opened again."""
    svc = open_service(Settings(store_url=url))
    try:
        history_of_every_kind(svc)
        kept = svc.work.work_rows()
        # a's and e's: the jobs a SessionSpawned was applied to; the one service a spec names
        assert (len(kept.sessions), kept.services) == (2, frozenset({"http://svc.example"}))
        tamper(svc)
    finally:
        svc.close()
    reopened = open_service(Settings(store_url=url))
    try:
        assert reopened.work.work_rows() == kept
    finally:
        reopened.close()


def test_a_store_from_before_the_table_gets_it_filled_from_its_log(shared_store_url: str) -> None:
    def no_table(svc: CurationService) -> None:
        tables = (RUNS, TIMERS, SESSIONS, SERVICES, BUILT)
        run_sql(svc, *((f"DROP TABLE {table(svc, t)}", ()) for t in tables))

    refilled_on_open(shared_store_url, no_table)


def test_a_store_built_before_a_table_was_added_gets_it_filled(shared_store_url: str) -> None:
    def version_1(svc: CurationService) -> None:
        run_sql(
            svc,
            (f"DELETE FROM {table(svc, SESSIONS)}", ()),
            (f"DELETE FROM {table(svc, BUILT)}", ()),
            (f"INSERT INTO {table(svc, BUILT)} (built) VALUES (1)", ()),
        )

    refilled_on_open(shared_store_url, version_1)


def test_drift_names_a_row_the_log_does_not_explain(shared_store_url: str) -> None:
    svc = open_service(Settings(store_url=shared_store_url))
    try:
        [kept, lost] = svc.start_jobs([{"n": 1}, {"n": 2}])
        postgres = isinstance(svc.recorder, PostgresStoreRecorder)
        key, mark = (lost.invocation_id, "%s") if postgres else (str(lost.invocation_id), "?")
        run_sql(svc, (f"DELETE FROM {table(svc, RUNS)} WHERE invocation_id = {mark}", (key,)))
        [line] = svc.work_drift()
    finally:
        svc.close()
    assert line.startswith(f"run {lost.invocation_id}: work table None, log (")
    assert str(kept.invocation_id) not in line


# -- group commit ----------------------------------------------------------------------------


def complete_at_once(
    group: GroupCommit, completions: list[tuple[Dispatch, str, dict[str, Any] | None]]
) -> list[Verdict | Exception]:
    results: list[Verdict | Exception] = [InvalidParams("none", [])] * len(completions)
    gate = threading.Barrier(len(completions))

    def one(index: int) -> None:
        gate.wait()
        try:
            results[index] = group.complete(*completions[index])
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(completions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def expecting(n: int) -> Callable[[], int]:
    return lambda: n


def test_completions_that_arrive_together_commit_together(svc: CurationService) -> None:
    started = svc.start_jobs([{"n": n} for n in range(12)])
    group = GroupCommit(svc, max_wait=5.0, expected=expecting(12))
    completions = [(d, "SessionSpawned", {"session_id": f"s-{n}"}) for n, d in enumerate(started)]
    verdicts = complete_at_once(group, [*completions, completions[0]])
    assert all(isinstance(v, Applied) for v in verdicts[1:12])
    # The same completion twice: whichever the group took first applied, the other is a
    # recorded duplicate.
    twice = sorted((verdicts[0], verdicts[12]), key=lambda v: isinstance(v, Discarded))
    assert isinstance(twice[0], Applied)
    assert isinstance(twice[1], Discarded)
    assert twice[1].reason == "duplicate"
    assert group.stats.completions == 13
    assert group.stats.commits < 13, "at least two completions shared a transaction"


def test_a_bad_completion_in_a_group_fails_alone(svc: CurationService) -> None:
    started = svc.start_jobs([{"n": n} for n in range(4)])
    group = GroupCommit(svc, max_wait=5.0, expected=expecting(4))
    completions: list[tuple[Dispatch, str, dict[str, Any] | None]] = [
        (d, "SessionSpawned", {"session_id": f"s-{n}"}) for n, d in enumerate(started)
    ]
    completions[2] = (started[2], "SessionSpawned", {"no_session": True})
    results = complete_at_once(group, completions)
    assert isinstance(results[2], InvalidParams)
    assert [isinstance(r, Applied) for n, r in enumerate(results) if n != 2] == [True] * 3
    assert svc.get(started[2].job_id).state == JobState.READY


# -- the rare topics' partial index ------------------------------------------------------------


@pytest.mark.parametrize("topics", [INDEXED_TOPICS, POLICY_TOPICS, (DECISION_REQUESTED,)])
def test_reading_indexed_topics_finds_what_the_librarys_reader_finds(
    shared_store_url: str, topics: tuple[str, ...]
) -> None:
    svc = open_service(Settings(store_url=shared_store_url))
    try:
        for n in range(3):
            svc.start_jobs([{"n": n}])
            policy = svc.policies.add_policy(default_policies(f"http://127.0.0.1:{9000 + n}"))
            decision = svc.policies.request_decision(integration=f"i-{n}", endpoint=f"e-{n}")
            svc.policies.approve(decision, by="tester")
            if n == 1:
                svc.policies.revoke_policy(policy, by="tester")
        ours = log_reader(svc.recorder, svc.mapper)
        assert type(ours) is not LogReader, "the store's own reader, with the indexed path"
        library = LogReader(svc.recorder, svc.mapper)
        head = ours.head()
        indexed = [(n.id, n.topic) for n in ours.notices(topics, upto=head, limit=2)]
        expected = [(n.id, n.topic) for n in library.notices(topics, upto=head, limit=2)]
    finally:
        svc.close()
    assert indexed == expected
    assert len(expected) >= 3


def test_a_session_service_url_as_long_as_a_spec_allows_is_kept(shared_store_url: str) -> None:
    """The validator lets a spec name a URL longer than an index entry can hold: the work
    table must still take the job (it keys services by the URL's sha256)."""
    url = "http://svc.example/" + secrets.token_hex(4500)  # 9 KB that do not compress
    svc = open_service(Settings(store_url=shared_store_url))
    try:
        svc.create_job({"session_service": url})
        services, drift = svc.session_services(), svc.work_drift()
    finally:
        svc.close()
    assert services == [url]
    assert drift == []
