"""The four read models as folds of a *batch* of notifications into table writes.

A view never reads an aggregate. It sees the notifications of its topics, in order, and turns
one batch into a few ``executemany`` writes (``Upsert`` / ``Insert``) that the store runs in the
same transaction as the view's tracking position. Where the fold needs state from an earlier
batch (which job an invocation belongs to, the action of a ``Finished`` whose verdict comes in
the next batch) it keeps that state in a table of its own and asks for it through ``Lookup``
inside that transaction.

Decoding is lazy: ``Notice.event`` runs the application's mapper only for the events whose
payload a view reads, so the common case (progress entries on a running job) costs a topic
lookup, not a JSON decode.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from domain.log import (
    APPLIED,
    COMPENSATED,
    DECISION_APPROVED,
    DECISION_REJECTED,
    DECISION_REQUESTED,
    DISCARDED,
    FINISHED,
    INVOCATION_CREATED,
    JOB_CREATED,
    JOB_RETRIED,
    JOB_SESSION_SPAWNED,
    JOB_STARTS_INVOCATION,
    STARTED,
    STATE_AFTER,
    UNRECOGNISED,
    VERDICTS,
    Notice,
)
from projections.schema import (
    AUDIT_INVOCATIONS,
    DECISIONS,
    DISPATCH_AUDIT,
    JOB_STATUS,
    SESSION_INVOCATIONS,
    SESSIONS,
    Table,
)

# The text a job_status row stores for the state each job event leaves the job in.
JOB_EVENT_STATES: Mapping[str, str] = {topic: str(state) for topic, state in STATE_AFTER.items()}
# The job events whose payload job_status reads (all others: topic and version suffice).
JOB_CARRIES = frozenset({JOB_CREATED, JOB_RETRIED, JOB_SESSION_SPAWNED, *JOB_STARTS_INVOCATION})

SESSION_SPAWNED_ACTION = "SessionSpawned"


# -- what a view asks the store to do ---------------------------------------------------------


@dataclass(frozen=True)
class Upsert:
    """Insert rows, or replace an existing row's columns (but those in ``table.keep`` where the
    new value is NULL)."""

    table: Table
    rows: list[tuple[Any, ...]]


@dataclass(frozen=True)
class Insert:
    """Insert rows; a row whose key exists already is an error (a completion seen twice)."""

    table: Table
    rows: list[tuple[Any, ...]]


Write = Upsert | Insert
Lookup = Callable[[Table, Collection[str]], dict[str, tuple[Any, ...]]]
"""Rows of a table by key, read in the transaction the batch is written in."""


class View(ABC):
    """A read model: its name, the topics it reads, its tables (the one the API reads first)."""

    name: str
    topics: tuple[str, ...]
    tables: tuple[Table, ...]

    @property
    def table(self) -> Table:
        return self.tables[0]

    @abstractmethod
    def writes(self, batch: Sequence[Notice], lookup: Lookup) -> list[Write]:
        """The writes that fold ``batch`` (this view's topics only, in order) into the view."""


# -- job_status ---------------------------------------------------------------------------------

_J = {name: JOB_STATUS.index_of(name) for name in JOB_STATUS.column_names}
assert tuple(_J) == (
    "job_id",
    "state",
    "attempt",
    "session_id",
    "version",
    "current_invocation",
    "updated_at",
    "position",
)  # the order JobStatusView.writes builds rows in


class JobStatusView(View):
    name = "job_status"
    topics = tuple(JOB_EVENT_STATES)
    tables = (JOB_STATUS,)

    def writes(self, batch: Sequence[Notice], lookup: Lookup) -> list[Write]:
        # Every job event sets state, version, position and time outright, so a job's row
        # follows its last event in the batch; attempt, session and current invocation are
        # set only by the events that carry them (in order), and left NULL otherwise, so the
        # upsert keeps the stored values (``keep``). Two passes, the first as cheap as a
        # dict store per event: most events (progress) need nothing else.
        last: dict[str, Notice] = {}
        for n in batch:
            last[n.key] = n
        rows: dict[str, list[Any]] = {}
        for key, n in last.items():
            rows[key] = [key, JOB_EVENT_STATES[n.topic], None, None, n.version, None,
                         n.timestamp, n.id]  # fmt: skip
        for n in batch:
            topic = n.topic
            if topic not in JOB_CARRIES:
                continue
            row = rows[n.key]
            if topic == JOB_CREATED:
                row[_J["attempt"]] = 1
            elif topic == JOB_RETRIED:
                row[_J["attempt"]] = n.event.attempt
            elif topic == JOB_SESSION_SPAWNED:
                row[_J["session_id"]] = n.event.session_id
            else:  # starts an invocation
                row[_J["current_invocation"]] = str(n.event.invocation_id)
        return [Upsert(JOB_STATUS, [tuple(r) for r in rows.values()])] if rows else []


class _Touched:
    """The rows of one table a batch changes, each loaded from its stored version (if any)
    the first time the batch touches it."""

    def __init__(self, stored: dict[str, tuple[Any, ...]]) -> None:
        self.stored = stored
        self.rows: dict[str, list[Any]] = {}

    def get(self, key: str, new: Callable[[], list[Any]]) -> list[Any]:
        row = self.rows.get(key)
        if row is None:
            stored = self.stored.get(key)
            row = self.rows[key] = list(stored) if stored is not None else new()
        return row

    def put(self, key: str, row: list[Any]) -> None:
        self.rows[key] = row

    def tuples(self) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.rows.values()]


# -- dispatch_audit -------------------------------------------------------------------------------

_A = {name: AUDIT_INVOCATIONS.index_of(name) for name in AUDIT_INVOCATIONS.column_names}


class DispatchAuditView(View):
    """One row per completion: the pair ``Finished`` + (``Applied`` | ``Discarded``)."""

    name = "dispatch_audit"
    topics = (STARTED, UNRECOGNISED, FINISHED, APPLIED, DISCARDED)
    tables = (DISPATCH_AUDIT, AUDIT_INVOCATIONS)

    def writes(self, batch: Sequence[Notice], lookup: Lookup) -> list[Write]:
        created = {n.key for n in batch if n.topic in INVOCATION_CREATED}
        invocations = _Touched(lookup(AUDIT_INVOCATIONS, {n.key for n in batch} - created))
        audit: list[tuple[Any, ...]] = []
        for n in batch:
            self._fold(n, invocations, audit)
        writes: list[Write] = []
        if invocations.rows:
            writes.append(Upsert(AUDIT_INVOCATIONS, invocations.tuples()))
        if audit:
            writes.append(Insert(DISPATCH_AUDIT, audit))
        return writes

    @staticmethod
    def _fold(n: Notice, invocations: _Touched, audit: list[tuple[Any, ...]]) -> None:
        topic = n.topic
        if topic == STARTED:
            e = n.event
            invocations.put(n.key, [n.key, str(e.job_id), e.attempt, None, n.id])
        elif topic == UNRECOGNISED:  # its Invocation has attempt 0
            invocations.put(n.key, [n.key, str(n.event.job_id), 0, None, n.id])
        else:
            row = invocations.get(n.key, lambda: [n.key, None, None, None, n.id])
            if topic == FINISHED:
                row[_A["action"]] = n.event.action
            else:  # a verdict
                audit.append(_audit_row(n, row))
                row[_A["action"]] = None  # each Finished pairs with exactly one verdict
            row[_A["position"]] = n.id


def _audit_row(n: Notice, invocation: list[Any]) -> tuple[Any, ...]:
    e = n.event
    applied = n.topic == APPLIED
    return (
        n.id,
        n.key,
        invocation[_A["job_id"]],
        invocation[_A["attempt"]],
        invocation[_A["action"]],
        "applied" if applied else "discarded",
        None if applied else str(e.reason),
        e.job_version if applied else None,
        None if applied else e.job_version_seen,
        None if applied else str(e.job_state_seen),
        n.timestamp,
    )


# -- sessions -----------------------------------------------------------------------------------

_SI = {name: SESSION_INVOCATIONS.index_of(name) for name in SESSION_INVOCATIONS.column_names}
_S = {name: SESSIONS.index_of(name) for name in SESSIONS.column_names}


class SessionsView(View):
    """Every session a ``SessionSpawned`` completion reported, whether the job took it, and
    whether a compensation stopped it: a discarded one still alive is an orphan."""

    name = "sessions"
    topics = (STARTED, UNRECOGNISED, FINISHED, APPLIED, DISCARDED, COMPENSATED)
    tables = (SESSIONS, SESSION_INVOCATIONS)

    def writes(self, batch: Sequence[Notice], lookup: Lookup) -> list[Write]:
        created = {n.key for n in batch if n.topic in INVOCATION_CREATED}
        invocations = _Touched(lookup(SESSION_INVOCATIONS, {n.key for n in batch} - created))
        sessions = _Touched(lookup(SESSIONS, self._mentioned(batch, invocations.stored)))
        for n in batch:
            self._fold(n, invocations, sessions)
        writes: list[Write] = []
        if invocations.rows:
            writes.append(Upsert(SESSION_INVOCATIONS, invocations.tuples()))
        if sessions.rows:
            writes.append(Upsert(SESSIONS, sessions.tuples()))
        return writes

    @staticmethod
    def _mentioned(batch: Sequence[Notice], invocations: dict[str, tuple[Any, ...]]) -> set[str]:
        """Sessions the batch may touch: reported by a Finished in it, or by one in an earlier
        batch whose verdict is in this one (kept on the invocation), or compensated in it."""
        mentioned = {r[_SI["session_id"]] for r in invocations.values()} - {None}
        for n in batch:
            if n.topic == FINISHED and n.event.action == SESSION_SPAWNED_ACTION:
                mentioned.add(str(n.event.params.get("session_id")))
            elif n.topic == COMPENSATED:
                mentioned.add(str(n.event.session_id))
        return mentioned

    @staticmethod
    def _fold(n: Notice, invocations: _Touched, sessions: _Touched) -> None:
        topic = n.topic
        if topic in INVOCATION_CREATED:
            invocations.put(n.key, [n.key, str(n.event.job_id), None, n.id])
            return
        invocation = invocations.get(n.key, lambda: [n.key, None, None, n.id])
        invocation[_SI["position"]] = n.id

        def session(session_id: str) -> list[Any]:
            return sessions.get(
                session_id,
                lambda: [session_id, invocation[_SI["job_id"]], n.key, None, n.timestamp, 0, 1,
                         n.id],
            )  # fmt: skip

        if topic == FINISHED:
            e = n.event
            spawned = e.action == SESSION_SPAWNED_ACTION
            invocation[_SI["session_id"]] = str(e.params.get("session_id")) if spawned else None
        elif topic in VERDICTS:
            session_id = invocation[_SI["session_id"]]
            invocation[_SI["session_id"]] = None  # each Finished pairs with one verdict
            if session_id is not None:
                s = session(session_id)
                if topic == APPLIED:
                    s[_S["verdict"]] = "applied"
                elif s[_S["verdict"]] is None:
                    s[_S["verdict"]] = "discarded"
                s[_S["position"]] = n.id
        elif topic == COMPENSATED:
            s = session(str(n.event.session_id))
            s[_S["compensated"]], s[_S["alive"]], s[_S["position"]] = 1, 0, n.id


# -- decisions ----------------------------------------------------------------------------------

_D = {name: DECISIONS.index_of(name) for name in DECISIONS.column_names}
_DECISION_STATUS = {
    DECISION_REQUESTED: "pending",
    DECISION_APPROVED: "approved",
    DECISION_REJECTED: "rejected",
}


class DecisionsView(View):
    name = "decisions"
    topics = (DECISION_REQUESTED, DECISION_APPROVED, DECISION_REJECTED)
    tables = (DECISIONS,)

    def writes(self, batch: Sequence[Notice], lookup: Lookup) -> list[Write]:
        rows: dict[str, list[Any]] = {}
        width = len(DECISIONS.columns)
        for n in batch:
            row = rows.get(n.key)
            if row is None:
                row = rows[n.key] = [None] * width
                row[_D["decision_id"]] = n.key
            row[_D["status"]] = _DECISION_STATUS[n.topic]
            row[_D["version"]] = n.version
            row[_D["position"]] = n.id
            e = n.event
            if n.topic == DECISION_REQUESTED:
                row[_D["principal"]] = e.principal
                row[_D["action"]] = e.action
                row[_D["resource"]] = e.resource
                row[_D["job_id"]] = e.job_id
                row[_D["invocation_id"]] = e.invocation_id
                row[_D["requested_at"]] = n.timestamp
            else:
                row[_D["decided_by"]] = e.by
                if n.topic == DECISION_APPROVED:
                    row[_D["policy_id"]] = str(e.policy_id)
        return [Upsert(DECISIONS, [tuple(r) for r in rows.values()])] if rows else []


VIEWS: tuple[View, ...] = (JobStatusView(), DispatchAuditView(), SessionsView(), DecisionsView())
VIEW_NAMES: tuple[str, ...] = tuple(v.name for v in VIEWS)
