"""The read models' tables and rows, as data both SQL dialects are rendered from.

Every value is stored as TEXT or INTEGER (ids and timestamps as text, flags as 0/1), so a row
reads back the same from SQLite and PostgreSQL and a checksum over rows is comparable between
the two. Every row carries ``position``: the notification id of the last event that changed it,
which is how ``verify`` tells a tracking position that was moved behind its rows.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cache
from typing import Any

TEXT = "text"
INT = "int"


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # TEXT or INT
    not_null: bool = False


@dataclass(frozen=True)
class Table:
    """One table of a read model. ``key`` is its primary key (one column); ``keep`` names the
    columns an upsert leaves alone when the new row has NULL there (a batch that did not see
    the event which sets them); ``indexes`` are secondary indexes, made after a bulk load."""

    name: str
    columns: tuple[Column, ...]
    key: str
    keep: frozenset[str] = frozenset()
    indexes: tuple[str, ...] = ()

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def index_of(self, column: str) -> int:
        return self.column_names.index(column)


def _t(name: str, not_null: bool = False) -> Column:
    return Column(name, TEXT, not_null)


def _i(name: str, not_null: bool = False) -> Column:
    return Column(name, INT, not_null)


JOB_STATUS = Table(
    "job_status",
    (
        _t("job_id", True),
        _t("state", True),
        _i("attempt"),
        _t("session_id"),
        _i("version", True),
        _t("current_invocation"),
        _t("updated_at", True),
        _i("position", True),
    ),
    key="job_id",
    keep=frozenset({"attempt", "session_id", "current_invocation"}),
    indexes=("state",),
)

DISPATCH_AUDIT = Table(
    "dispatch_audit",
    (
        _i("position", True),  # of the Applied/Discarded event: one row per completion
        _t("invocation_id", True),
        _t("job_id"),
        _i("attempt"),
        _t("action"),
        _t("verdict", True),  # applied | discarded
        _t("reason"),
        _i("job_version"),  # Applied: the job's version after the completion
        _i("job_version_seen"),  # Discarded: what the guard saw
        _t("job_state_seen"),
        _t("recorded_at", True),
    ),
    key="position",
    indexes=("job_id", "verdict"),
)

# What dispatch_audit remembers per invocation between batches: its job and attempt (from
# Started or Unrecognised) and the action of a Finished whose verdict has not been seen yet.
AUDIT_INVOCATIONS = Table(
    "dispatch_audit_invocations",
    (_t("invocation_id", True), _t("job_id"), _i("attempt"), _t("action"), _i("position", True)),
    key="invocation_id",
)

SESSIONS = Table(
    "sessions",
    (
        _t("session_id", True),
        _t("job_id"),
        _t("invocation_id"),
        _t("verdict"),  # applied if any completion reporting it was applied, else discarded
        _t("spawned_at"),
        _i("compensated", True),  # 0/1: a Compensated event stopped it
        _i("alive", True),  # 0/1: spawned and not compensated
        _i("position", True),
    ),
    key="session_id",
    indexes=("job_id",),
)

SESSION_INVOCATIONS = Table(
    "sessions_invocations",
    (_t("invocation_id", True), _t("job_id"), _t("session_id"), _i("position", True)),
    key="invocation_id",
)

DECISIONS = Table(
    "decisions",
    (
        _t("decision_id", True),
        _t("status", True),  # pending | approved | rejected
        _t("principal"),
        _t("action"),
        _t("resource"),
        _t("job_id"),
        _t("invocation_id"),
        _t("policy_id"),
        _t("decided_by"),
        _t("requested_at"),
        _i("version", True),
        _i("position", True),
    ),
    key="decision_id",
    keep=frozenset(
        {
            "principal",
            "action",
            "resource",
            "job_id",
            "invocation_id",
            "policy_id",
            "decided_by",
            "requested_at",
        }
    ),
    indexes=("status", "job_id"),  # job_id: the audit selects a job's decisions
)


@cache
def skipped_table(projection: str) -> Table:
    """Where ``projection`` records each event of its topics it could not fold — a payload that
    does not decode, or lacks what the fold reads — instead of stopping on it (DESIGN.md §1
    invariant 5: no event the store accepted stops a read model). One row per event, written
    in the transaction that moves the projection past it; ``status`` counts them, ``verify``
    lists them."""
    return Table(
        f"{projection}_skipped",
        (
            _i("position", True),  # the event's notification id
            _t("topic", True),
            _t("aggregate_id", True),
            _i("version", True),
            _t("error", True),  # the decoder's or the fold's error, one line
        ),
        key="position",
    )


# -- rows as the Python API hands them out ------------------------------------------------------


@dataclass(frozen=True)
class JobStatusRow:
    job_id: str
    state: str
    attempt: int | None
    session_id: str | None
    version: int
    current_invocation: str | None
    updated_at: str
    position: int


@dataclass(frozen=True)
class AuditRow:
    position: int
    invocation_id: str
    job_id: str | None
    attempt: int | None
    action: str | None
    verdict: str
    reason: str | None
    job_version: int | None
    job_version_seen: int | None
    job_state_seen: str | None
    recorded_at: str


@dataclass(frozen=True)
class SessionRow:
    session_id: str
    job_id: str | None
    invocation_id: str | None
    verdict: str | None
    spawned_at: str | None
    compensated: bool
    alive: bool
    position: int

    @property
    def orphan(self) -> bool:
        """A session a discarded completion left behind that nobody stopped (invariant 4)."""
        return self.verdict == "discarded" and self.alive


@dataclass(frozen=True)
class DecisionRow:
    decision_id: str
    status: str
    principal: str | None
    action: str | None
    resource: str | None
    job_id: str | None
    invocation_id: str | None
    policy_id: str | None
    decided_by: str | None
    requested_at: str | None
    version: int
    position: int


@dataclass(frozen=True)
class SkippedRow:
    position: int
    topic: str
    aggregate_id: str
    version: int
    error: str


ROW_TYPES: dict[str, type[Any]] = {
    JOB_STATUS.name: JobStatusRow,
    DISPATCH_AUDIT.name: AuditRow,
    SESSIONS.name: SessionRow,
    DECISIONS.name: DecisionRow,
}


def to_row(table: Table, values: tuple[Any, ...]) -> Any:
    """A stored tuple as the table's row dataclass (flags become booleans)."""
    row_type = ROW_TYPES.get(table.name, SkippedRow)
    names = [f.name for f in fields(row_type)]
    assert tuple(names) == table.column_names, (names, table.column_names)
    if row_type is SessionRow:
        values = (*values[:5], bool(values[5]), bool(values[6]), values[7])
    return row_type(*values)
