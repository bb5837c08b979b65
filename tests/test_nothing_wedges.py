"""Whatever the validator accepts, nothing downstream chokes on (DESIGN.md §1 invariant 5).

Hypothesis generates JSON the validator lets through — any unicode but NUL and lone surrogates
(astral characters, controls, BOMs, noncharacters), floats from 5e-324 to 1e308 and -0.0,
integers at both 64-bit ends, nesting down to the last allowed level, keys that look like the
event store's tags — and drives it through every command and completion that stores user data,
on SQLite and PostgreSQL. Then every read model catches up and reads, ``verify`` finds no drift
and each read model rebuilds to the checksum it had live. Anything this finds is refused at the
edge (``domain/values.py``), never special-cased downstream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain import Applied, CurationService, Discarded, DiscardReason, JobState
from domain.transitions import MAX_SESSION_ID_CHARS
from domain.values import MAX_DEPTH, MAX_INT, MIN_INT, json_problems
from projections import Projections
from tests.support.values import nested

CHARACTERS = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
TRICKY_TEXT = [
    "",
    "\U0001f600\U00010348\U0010ffff",  # astral, up to the last code point
    "\x01\x08\x1b\x7f\x9f",  # controls other than NUL
    "\ufeff\ufffe\uffff",  # BOM and noncharacters
    "\u202e\u200d",  # bidi override, zero-width joiner
    "'; DROP TABLE job_status; --",
    '\\"\\u0000\\',  # an escaped NUL, as text: harmless characters
    "\r\n\t",
]
TEXT = st.text(CHARACTERS, max_size=30) | st.sampled_from(TRICKY_TEXT)
# Tag-like keys; an object with exactly _type_ and _data_ is the one shape refused.
KEYS = TEXT | st.sampled_from(["_type_", "_data_", "_TYPE_", "_type", "type"])
INTEGERS = st.integers(MIN_INT, MAX_INT) | st.sampled_from([MIN_INT, MAX_INT, 2**53 + 1, -1])
FLOATS = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [-0.0, 1e308, -1e308, 5e-324, 2.2250738585072014e-308, 0.1]
)
SCALARS = st.none() | st.booleans() | INTEGERS | FLOATS | TEXT


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    tag_like = st.one_of(
        st.fixed_dictionaries({"_type_": st.sampled_from(["uuid_hex", "decimal_str", "x"])}),
        st.fixed_dictionaries({"_data_": children}),
        st.fixed_dictionaries({"_type_": st.just("uuid_hex"), "_data_": TEXT, "more": children}),
    )
    return st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4) | tag_like


JSON = st.recursive(SCALARS, _containers, max_leaves=12)
# A value nested to within two levels of the limit: the params object and the action's own
# param (spec, settings, entry, output) are the two levels around it.
DEEP = st.builds(nested, st.integers(MAX_DEPTH - 4, MAX_DEPTH - 2), SCALARS)
OBJECTS = st.dictionaries(KEYS, JSON | DEEP, max_size=5)
SESSION_IDS = st.text(CHARACTERS, min_size=1, max_size=MAX_SESSION_ID_CHARS)
NAMES = st.text(CHARACTERS, min_size=1, max_size=200).filter(str.strip)


@pytest.fixture
def stored(shared_store_url: str) -> Iterator[tuple[CurationService, Projections]]:
    service = CurationService.open(shared_store_url)
    yield service, Projections(service)
    service.close()


def accepted(**params: Any) -> bool:
    """True when the validator accepts the params (generated values almost always are)."""
    return not json_problems(params)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
@given(
    spec=OBJECTS.filter(lambda v: accepted(spec=v)),
    settings_=OBJECTS.filter(lambda v: accepted(settings=v)),
    entry=(OBJECTS | TEXT).filter(lambda v: accepted(entry=v)),
    output=OBJECTS.filter(lambda v: accepted(output=v)),
    defects=st.lists(JSON, max_size=4).filter(lambda v: accepted(defects=v)),
    session_id=SESSION_IDS,
    late_session_id=SESSION_IDS,
    message=TEXT,
    by=NAMES,
    context=OBJECTS.filter(lambda v: accepted(context=v)),
)
def test_whatever_the_validator_accepts_every_reader_holds(
    stored: tuple[CurationService, Projections],
    spec: dict[str, Any],
    settings_: dict[str, Any],
    entry: Any,
    output: dict[str, Any],
    defects: list[Any],
    session_id: str,
    late_session_id: str,
    message: str,
    by: str,
    context: dict[str, Any],
) -> None:
    svc, projections = stored
    job_id = svc.create_job(spec)
    svc.configure(job_id, settings_)
    first = svc.submit(job_id)
    assert isinstance(svc.complete(first, "SessionSpawned", {"session_id": session_id}), Applied)
    svc.execute(job_id, "RecordProgress", {"entry": entry})
    svc.execute(job_id, "Complete", {"output": output})
    second = svc.execute(job_id, "RepairRequired", {"defects": defects})
    assert second is not None
    late = svc.complete(first, "SessionSpawned", {"session_id": late_session_id})
    assert isinstance(late, Discarded)
    assert late.reason == DiscardReason.DUPLICATE
    fail = {"reason": "module_error", "message": message}
    assert isinstance(svc.complete(second, "Fail", fail), Applied)
    svc.retry(job_id)
    svc.fail(job_id, "operator", message=message)

    book = svc.policies
    decision = book.request_decision(
        integration="build_session_message",
        endpoint="http://127.0.0.1:9/sessions",
        job_id=str(job_id),
        context=context,
        reason=message,
    )
    book.reject(decision, by=by, reason=message)

    # What was accepted comes back exactly (json.dumps tells -0.0 from 0.0).
    job = svc.get(job_id)
    assert job.state == JobState.FAILED
    stored_values = (job.spec, job.settings, job.session_id)
    assert json.dumps(stored_values) == json.dumps((spec, settings_, session_id))
    svc.history(job_id)

    projections.catch_up()
    [row] = [r for r in projections.jobs() if r.job_id == str(job_id)]
    assert (row.state, row.session_id) == ("Failed", session_id)
    assert session_id in {s.session_id for s in projections.sessions()}
    discarded = [r for r in projections.discarded() if r.job_id == str(job_id)]
    assert [r.reason for r in discarded] == ["duplicate"]
    [decided] = [d for d in projections.decisions() if d.decision_id == str(decision)]
    assert (decided.status, decided.decided_by) == ("rejected", by)

    report = projections.verify()
    assert report.ok, report.details
    for name in projections.names:
        rebuilt = projections.rebuild(name, progress=False)
        assert rebuilt.equal, (name, rebuilt)
        assert rebuilt.live_error is None, rebuilt.live_error
