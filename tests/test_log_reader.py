"""The one reader of the log (``domain.log``) on every store: the timestamp it reads off the
stored JSON is the decoded event's, its aggregate-ordered read holds every notice once, and
its reads of one aggregate are what the library's ``select_events`` returns."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import groupby

import pytest

from domain import CurationService
from domain.log import JOB_RETRIED, log_reader
from tests.support.oracle import Workload, random_workload
from tests.support.store_sql import insert_event


@pytest.fixture
def svc(store_url: str) -> Iterator[CurationService]:
    service = CurationService.open(store_url)
    Workload(service).incident(jobs=3, seed=7)
    random_workload(service, 30, seed=7)
    yield service
    service.close()


def test_a_timestamp_read_off_the_stored_json_is_the_decoded_events(svc: CurationService) -> None:
    log = log_reader(svc.recorder, svc.mapper)
    read_off = [n.timestamp for n in log.notices(())]  # each before anything is decoded
    decoded = [n.event.timestamp.isoformat() for n in log.notices(())]
    assert read_off == decoded
    assert len(set(decoded)) > 1


def test_a_timestamp_the_transcoder_did_not_write_is_still_the_decoded_events(
    shared_store_url: str,
) -> None:
    """Written by hand: "Z" for UTC and no microseconds, which isoformat() writes otherwise."""
    svc = CurationService.open(shared_store_url)
    try:
        job_id = svc.create_job({"target": "t"})
        stamp = b'{"timestamp":{"_type_":"datetime_iso","_data_":"2025-01-01T00:00:00Z"}'
        insert_event(svc, job_id, 2, JOB_RETRIED, stamp + b',"attempt":2}')
        log = log_reader(svc.recorder, svc.mapper)
        (read_off,) = [n.timestamp for n in log.notices(()) if n.version == 2]
        (decoded,) = [n.event.timestamp.isoformat() for n in log.notices(()) if n.version == 2]
        assert read_off == decoded == "2025-01-01T00:00:00+00:00"
    finally:
        svc.close()


def test_the_aggregate_ordered_read_holds_every_notice_once_each_aggregates_together(
    svc: CurationService,
) -> None:
    log = log_reader(svc.recorder, svc.mapper)
    head = log.head()
    by_aggregate = list(log.by_aggregate(head, limit=7))  # many pages, aggregates split by them
    assert sorted(n.id for n in by_aggregate) == [n.id for n in log.notices((), upto=head)]
    keys = [key for key, _ in groupby(by_aggregate, key=lambda n: n.key)]
    assert len(keys) == len(set(keys))  # each aggregate's notices are together
    for _, group in groupby(by_aggregate, key=lambda n: n.key):
        versions = [n.version for n in group]
        assert versions == list(range(1, len(versions) + 1))


def test_an_aggregates_rows_and_states_are_the_librarys_stored_events(
    svc: CurationService,
) -> None:
    log = log_reader(svc.recorder, svc.mapper)
    job_id = svc.create_job({"target": "t"})
    svc.submit(job_id)
    stored = svc.recorder.select_events(job_id)
    assert log.aggregate(job_id) == [(s.originator_version, s.topic, s.state) for s in stored]
    assert log.aggregate(job_id, lte=1, states=False) == [(1, stored[0].topic, None)]
    assert log.states_of(job_id, [2]) == {2: stored[1].state}
