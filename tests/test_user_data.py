"""User data never wedges a reader: at every door sequent is handed data through, what no store or
read model could hold, what nests too deep, and objects shaped like the event store's own
encoding of a non-JSON value are refused with a one-line InvalidParams that writes nothing, and
afterwards every job, every history and every read model still reads (DESIGN.md §1 invariant 5,
§8). Run on memory, SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import anyio
import pytest

from domain import CurationService, InvalidParams, JobState
from domain.errors import InvalidPolicy
from domain.values import MAX_DEPTH
from integrations.dispatcher import Dispatcher, RunOutcome
from integrations.runtime import Runtime
from projections import Projections
from tests.support.fakes import FixedRunner, event_count
from tests.support.values import nested

# What broke readers before it was refused, by the shape it takes.
TRANSCODER_SHAPED: dict[str, Any] = {
    "an unknown type": {"_type_": "x", "_data_": 0},  # "not deserializable", for every reader
    "uuid_hex": {"_type_": "uuid_hex", "_data_": uuid4().hex},  # came back as a UUID
    "decimal_str": {"_type_": "decimal_str", "_data_": "1.5"},  # came back as a Decimal
    "nested inside": {"list": [1, {"_type_": "x", "_data_": 0}]},
}
UNSTORABLE_TEXT = {
    "NUL": "s\x00x",  # PostgreSQL text cannot hold it: wedged every read model
    "lone surrogate": "\ud800",  # no UTF-8 encoding: a UnicodeEncodeError traceback
    "spelled-out pair": "\ud83d\ude00",
}
TOO_DEEP = {
    f"{MAX_DEPTH + 1} levels": nested(MAX_DEPTH + 1),
    "600 levels": nested(600),  # accepted, then get/history/audit hit RecursionError
    "100,000 levels": nested(100_000),  # create_job itself hit RecursionError
}
BAD_OBJECTS = {
    **TRANSCODER_SHAPED,
    **{f"{name} in a value": {"v": text} for name, text in UNSTORABLE_TEXT.items()},
    **{f"{name} in a key": {text: 1} for name, text in UNSTORABLE_TEXT.items()},
    **TOO_DEEP,
    "NaN": {"x": float("nan")},
    "Infinity": {"x": float("inf")},
}


@contextmanager
def refused(svc: CurationService, what: str) -> Iterator[pytest.ExceptionInfo[InvalidParams]]:
    """The block raises a one-line InvalidParams, storable itself, and writes nothing."""
    before = event_count(svc)
    with pytest.raises(InvalidParams) as caught:
        yield caught
    assert event_count(svc) == before, f"{what}: a refusal must write nothing"
    message = str(caught.value)
    assert "\n" not in message
    assert "\x00" not in message
    message.encode("utf-8")  # no lone surrogate either


def everything_reads(svc: CurationService) -> None:
    """Every job and its history decodes; every read model catches up, reads, verifies, and
    rebuilds to the same checksum."""
    projections = Projections(svc)
    projections.catch_up()
    for row in projections.jobs():
        svc.get(row.job_id)
        svc.history(row.job_id)
    projections.discarded()
    projections.sessions()
    projections.decisions()
    report = projections.verify()
    assert report.ok, report.details
    for name in projections.names:
        rebuilt = projections.rebuild(name, progress=False)
        assert rebuilt.equal, name


def running(svc: CurationService) -> UUID:
    job_id = svc.create_job({"target": "t"})
    dispatch = svc.submit(job_id)
    svc.complete(dispatch, "SessionSpawned", {"session_id": f"s-{uuid4()}"})
    return job_id


def finalizing(svc: CurationService) -> UUID:
    job_id = running(svc)
    svc.execute(job_id, "Complete", {"output": {"n": 1}})
    return job_id


def test_a_spec_no_reader_could_decode_is_refused(svc: CurationService) -> None:
    for name, bad in BAD_OBJECTS.items():
        with refused(svc, name):
            svc.create_job({"target": "t", "x": bad})
        with refused(svc, name):
            svc.create_job(bad)
    everything_reads(svc)


def test_settings_no_reader_could_decode_are_refused(svc: CurationService) -> None:
    job_id = svc.create_job({"target": "t"})
    for name, bad in BAD_OBJECTS.items():
        with refused(svc, name):
            svc.configure(job_id, bad)
        with refused(svc, name):
            svc.configure(job_id, {"x": bad})
    assert svc.get(job_id).settings == {}
    everything_reads(svc)


def test_a_known_type_name_no_longer_changes_a_values_type(svc: CurationService) -> None:
    job_id = svc.create_job({"target": "t"})
    with refused(svc, "uuid") as error:
        svc.configure(job_id, TRANSCODER_SHAPED["uuid_hex"])
    assert "exactly the keys '_type_' and '_data_'" in str(error.value)
    allowed = {"_type_": "uuid_hex", "_data_": uuid4().hex, "note": "three keys"}
    svc.configure(job_id, allowed)
    assert svc.get(job_id).settings == allowed
    everything_reads(svc)


def test_progress_output_and_defects_no_reader_could_decode_are_refused(
    svc: CurationService,
) -> None:
    job_id = running(svc)
    later = finalizing(svc)
    for name, bad in BAD_OBJECTS.items():
        with refused(svc, name):
            svc.execute(job_id, "RecordProgress", {"entry": bad})
        with refused(svc, name):
            svc.execute(job_id, "Complete", {"output": bad})
        with refused(svc, name):
            svc.execute(later, "RepairRequired", {"defects": [bad]})
    for name, text in UNSTORABLE_TEXT.items():
        with refused(svc, name):
            svc.execute(job_id, "RecordProgress", {"entry": text})
    assert (svc.get(job_id).state, svc.get(later).state) == (JobState.RUNNING, "Finalizing")
    everything_reads(svc)


def test_an_operators_fail_message_no_store_could_hold_is_refused(svc: CurationService) -> None:
    job_id = svc.create_job({"target": "t"})
    for name, text in UNSTORABLE_TEXT.items():
        with refused(svc, name):
            svc.fail(job_id, "operator", message=text)
    for name, bad in BAD_OBJECTS.items():
        params = {"reason": "operator", "message": bad}
        with refused(svc, name):
            svc.execute(job_id, "Fail", params)
    assert svc.get(job_id).state == JobState.QUEUED
    everything_reads(svc)


def test_a_completions_params_no_reader_could_decode_are_refused_and_settle_nothing(
    svc: CurationService,
) -> None:
    job_id = svc.create_job({"target": "t"})
    dispatch = svc.submit(job_id)
    for name, text in UNSTORABLE_TEXT.items():
        with refused(svc, name):
            svc.complete(dispatch, "SessionSpawned", {"session_id": text})
        fail = {"reason": "module_error", "message": text}
        with refused(svc, name):
            svc.complete(dispatch, "Fail", fail)
    for name, bad in BAD_OBJECTS.items():
        params = {"session_id": bad}
        with refused(svc, name):
            svc.complete(dispatch, "SessionSpawned", params)
        with refused(svc, name):
            svc.complete_batch([(dispatch, "SessionSpawned", params)])
    assert svc.invocation(dispatch.invocation_id).completions == 0
    # "s\0x" was Applied and then stopped every PostgreSQL read model for good.
    svc.complete(dispatch, "SessionSpawned", {"session_id": "s-genuine"})
    assert svc.get(job_id).state == JobState.RUNNING
    everything_reads(svc)


def test_a_session_id_a_read_model_cannot_index_is_refused(svc: CurationService) -> None:
    dispatch = svc.submit(svc.create_job({"target": "t"}))
    with refused(svc, "long") as error:
        svc.complete(dispatch, "SessionSpawned", {"session_id": "s" * 3000})
    assert "'session_id' must be at most 256 characters, got 3000" in str(error.value)
    svc.complete(dispatch, "SessionSpawned", {"session_id": "\U0001f600" * 256})
    everything_reads(svc)


@pytest.mark.parametrize(
    "ok",
    [
        {"session_id": "s\x00x"},
        {"session_id": "\ud800"},
        {"session_id": {"_type_": "x", "_data_": 0}},
        {"session_id": "s", "extra": nested(600)},
    ],
    ids=["NUL", "lone surrogate", "transcoder-shaped", "too deep"],
)
def test_a_guests_ok_output_no_reader_could_decode_fails_its_job_through_the_dispatcher(
    svc: CurationService, ok: dict[str, Any]
) -> None:
    job_id = svc.create_job({"target": "t"})
    dispatch = svc.submit(job_id)
    dispatcher = Dispatcher(svc, FixedRunner(RunOutcome(ok=ok)), lease=timedelta(seconds=30))
    anyio.run(dispatcher.run_once)
    job = svc.get(job_id)
    assert job.state == JobState.FAILED
    assert job.failure is not None
    assert job.failure["reason"] == "module_error"
    assert job.failure["message"].startswith("bad_output: SessionSpawned: ")
    assert [e.name for e in svc.invocation_history(dispatch.invocation_id)][-2:] == [
        "Finished",
        "Applied",
    ]
    assert dispatcher.stats.errors == 0
    everything_reads(svc)


def guest_answering(output: bytes) -> str:
    """A WAT module whose ``run`` returns exactly ``output``."""
    data = "".join(f"\\{byte:02x}" for byte in output)
    return f"""(module
  (memory (export "memory") 1)
  (data (i32.const 16) "{data}")
  (func (export "alloc") (param i32) (result i32) (i32.const 4096))
  (func (export "run") (param i32 i32) (result i64)
    (i64.const {(16 << 32) | len(output)})))"""


@pytest.mark.parametrize(
    ("output", "fragment"),
    [
        (rb'{"ok": {"session_id": "s\u0000x"}}', r"output.ok.session_id: contains NUL (\u0000)"),
        (rb'{"ok": {"session_id": "\ud800"}}', r"contains a lone surrogate (\ud800)"),
        (rb'{"ok": {"session_id": {"_type_": "x", "_data_": 0}}}', "exactly the keys '_type_'"),
        (b'{"ok": {"a": ' + b"[" * 600 + b"]" * 600 + b"}}", "nested deeper than 64 levels"),
        (rb'{"error": {"kind": "k", "message": "\u0000"}}', "output.error.message: contains NUL"),
        (b'{"ok": {"n": ' + b"9" * 30 + b"}}", "integer outside 64 bits"),
    ],
    ids=["NUL", "lone surrogate", "transcoder-shaped", "too deep", "NUL in an error", "big int"],
)
def test_a_guest_output_no_reader_could_decode_is_bad_output(output: bytes, fragment: str) -> None:
    result = Runtime().run(guest_answering(output), {"job": {}}, None)
    assert (result.outcome, result.error_kind) == ("failed", "bad_output")
    assert fragment in result.message
    assert result.output is None
    good = Runtime().run(guest_answering(b'{"ok": {"session_id": "s-1"}}'), {"job": {}}, None)
    assert (good.outcome, good.output) == ("ok", {"session_id": "s-1"})


def test_policy_texts_and_decisions_no_store_could_hold_are_refused(svc: CurationService) -> None:
    book = svc.policies
    permit = 'permit(principal, action, resource == HttpEndpoint::"http://h:80/x");'
    for name, text in UNSTORABLE_TEXT.items():
        with refused(svc, name):
            book.add_policy(permit + f"// {text}")
        with refused(svc, name):
            book.add_policy(permit, reason=text)
    policy_id = book.add_policy(permit, reason="test")
    decision = book.request_decision(integration="i", endpoint="http://h:80/y", reason="denied")
    for name, text in UNSTORABLE_TEXT.items():
        with refused(svc, name):
            book.revoke_policy(policy_id, by=text)
        with refused(svc, name):
            book.revoke_policy(policy_id, by="op", reason=text)
        with refused(svc, name):
            book.approve(decision, by=text)
        with refused(svc, name):
            book.reject(decision, by="op", reason=text)
        with refused(svc, name):
            book.request_decision(integration="i", endpoint="http://h:80/y", reason=text)
        with refused(svc, name):
            book.request_decision(integration="i", endpoint="http://h:80/y", job_id=text)
        with refused(svc, name):
            book.request_decision(integration="i", endpoint="http://h:80/y", context={"m": text})
    with pytest.raises(InvalidPolicy):  # text Cedar refuses is still Cedar's to explain
        book.add_policy("permit(")
    book.approve(decision, by="op")
    everything_reads(svc)


def test_a_worker_name_or_compensated_session_no_store_could_hold_is_refused(
    svc: CurationService,
) -> None:
    dispatch = svc.submit(svc.create_job({"target": "t"}))
    lease = timedelta(seconds=30)
    invocation = dispatch.invocation_id
    for name, text in UNSTORABLE_TEXT.items():
        with refused(svc, name):
            svc.claim(invocation, text, lease, module_sha256="f")
        with refused(svc, name):
            svc.compensate(invocation, text)
    svc.claim(dispatch.invocation_id, "worker-1", lease, module_sha256="f" * 64)
    everything_reads(svc)


def test_values_are_stored_exactly_as_given(svc: CurationService) -> None:
    """What is accepted comes back unchanged: nothing is wrapped, escaped or retyped."""
    spec = {
        "target": "t",
        "_type_": "x",
        "astral": "\U0001f600",
        "controls": "\x01\x7f",
        "z": -0.0,
        "big": 2**63 - 1,
        "deep": nested(MAX_DEPTH - 2),  # params and spec are the two levels above it
    }
    job_id = svc.create_job(spec)
    assert json.dumps(svc.get(job_id).spec) == json.dumps(spec)
    everything_reads(svc)
