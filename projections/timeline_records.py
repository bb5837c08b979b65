"""The records a job's timeline is made of, and their plain JSON form (DESIGN.md §5,
``sequent audit --json``): the job's state at one version, each invocation with its claims,
completions and compensations, each Cedar decision about the job.

Each record is built from the events of its aggregate as ``HistoryEntry`` values; the JSON
shape is documented in ``projections.timeline``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import Enum
from typing import Any
from uuid import UUID

from domain import HistoryEntry
from projections.schema import DecisionRow

VERDICTS = ("Applied", "Discarded")


@dataclass(frozen=True)
class JobStateAt:
    """The job as of one version: what ``--at`` shows."""

    job_id: UUID
    version: int
    state: str
    attempt: int
    session_id: str | None
    current_invocation: UUID | None
    failure: dict[str, Any] | None
    at: datetime  # when that version was recorded

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "state": self.state,
            "attempt": self.attempt,
            "session_id": self.session_id,
            "current_invocation": plain(self.current_invocation),
            "failure": plain(self.failure),
            "at": plain(self.at),
        }


@dataclass(frozen=True)
class Claim:
    worker: str
    lease_until: datetime
    at: datetime
    version: int


@dataclass(frozen=True)
class Completion:
    """One completion that reached the invocation (``Finished``) and the guard's verdict on it.

    ``verdict`` is "Applied" or "Discarded" (None only if the store lacks it: an integrity
    problem ``check_invariants`` reports). ``job_version`` is the version the job moved to when
    applied; ``job_version_seen`` / ``job_state_seen`` what the guard saw when it discarded."""

    action: str | None
    params: dict[str, Any]
    finished_at: datetime | None
    verdict: str | None = None
    reason: str | None = None
    job_version: int | None = None
    job_version_seen: int | None = None
    job_state_seen: str | None = None
    decided_at: datetime | None = None

    @property
    def applied(self) -> bool:
        return self.verdict == "Applied"

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "params": plain(self.params),
            "finished_at": plain(self.finished_at),
            "verdict": self.verdict,
            "reason": self.reason,
            "job_version": self.job_version,
            "job_version_seen": self.job_version_seen,
            "job_state_seen": self.job_state_seen,
            "decided_at": plain(self.decided_at),
        }


@dataclass(frozen=True)
class Compensation:
    session_id: str
    at: datetime
    version: int


@dataclass(frozen=True)
class InvocationRecord:
    """One run the job started (or, ``recognised=False``, a completion named an id nobody
    started and the guard recorded it as ``Unrecognised``)."""

    id: UUID
    label: str
    recognised: bool
    attempt: int | None
    expected_version: int
    integration: str
    module_sha256: str
    started_at: datetime
    claims: tuple[Claim, ...]
    completions: tuple[Completion, ...]
    compensations: tuple[Compensation, ...]
    events: tuple[HistoryEntry, ...] = field(repr=False)

    @classmethod
    def of(cls, label: str, events: Sequence[HistoryEntry]) -> InvocationRecord:
        first = events[0]
        claims: list[Claim] = []
        completions: list[Completion] = []
        compensations: list[Compensation] = []
        open_completion: Completion | None = None
        # The module that ran: a worker records the sha256 of the module it loaded on each
        # Claimed (older Claimed events lack it); the Started event's is what the submitting
        # service was configured with.
        module_sha256 = str(first.data.get("module_sha256", ""))
        for e in events[1:]:
            if e.name == "Claimed":
                claims.append(
                    Claim(e.data["worker"], e.data["lease_until"], e.timestamp, e.version)
                )
                module_sha256 = str(e.data.get("module_sha256", "")) or module_sha256
            elif e.name == "Compensated":
                compensations.append(Compensation(e.data["session_id"], e.timestamp, e.version))
            elif e.name == "Finished":
                if open_completion is not None:
                    completions.append(open_completion)  # a Finished without its verdict
                open_completion = Completion(e.data["action"], e.data["params"], e.timestamp)
            elif e.name in VERDICTS:
                base = open_completion or Completion(None, {}, None)
                open_completion = None
                completions.append(
                    Completion(
                        base.action,
                        base.params,
                        base.finished_at,
                        verdict=e.name,
                        reason=_text_or_none(e.data.get("reason")),
                        job_version=e.data.get("job_version"),
                        job_version_seen=e.data.get("job_version_seen"),
                        job_state_seen=_text_or_none(e.data.get("job_state_seen")),
                        decided_at=e.timestamp,
                    )
                )
        if open_completion is not None:
            completions.append(open_completion)
        return cls(
            id=first.aggregate_id,
            label=label,
            recognised=first.name == "Started",
            attempt=first.data.get("attempt"),
            expected_version=first.data["expected_version"],
            integration=str(first.data.get("integration", "")),
            module_sha256=module_sha256,
            started_at=first.timestamp,
            claims=tuple(claims),
            completions=tuple(completions),
            compensations=tuple(compensations),
            events=tuple(events),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "label": self.label,
            "recognised": self.recognised,
            "attempt": self.attempt,
            "expected_version": self.expected_version,
            "integration": self.integration,
            "module_sha256": self.module_sha256,
            "started_at": plain(self.started_at),
            "claims": [
                {"worker": c.worker, "lease_until": plain(c.lease_until), "at": plain(c.at)}
                for c in self.claims
            ],
            "completions": [c.to_json() for c in self.completions],
            "compensations": [
                {"session_id": c.session_id, "at": plain(c.at)} for c in self.compensations
            ],
            "events": [event_json(e) for e in self.events],
        }


@dataclass(frozen=True)
class DecisionRecord:
    """A Cedar authorization decision whose ``job_id`` is this job."""

    id: UUID
    job_id: str
    status: str  # pending / approved / rejected
    principal: str
    action: str
    resource: str
    invocation_id: str
    module_sha256: str
    reason: str
    requested_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    policy_id: UUID | None
    rejection_reason: str
    events: tuple[HistoryEntry, ...] = field(repr=False)

    @classmethod
    def of(cls, row: DecisionRow, events: Sequence[HistoryEntry]) -> DecisionRecord:
        """The decision as the ``decisions`` read model folded it (``row``: what was asked,
        its status, who decided, the policy an approval added), with what only its events
        (``events``, up to the row's version) hold: the request's module sha256 and reason,
        when it was decided, why it was rejected."""
        requested, last = events[0], events[-1]
        return cls(
            id=requested.aggregate_id,
            job_id=str(row.job_id),
            status=row.status,
            principal=str(row.principal),
            action=str(row.action),
            resource=str(row.resource),
            invocation_id=row.invocation_id or "",
            module_sha256=str(requested.data.get("module_sha256", "")),
            reason=str(requested.data.get("reason", "")),
            requested_at=requested.timestamp,
            decided_by=row.decided_by,
            decided_at=None if row.status == "pending" else last.timestamp,
            policy_id=None if row.policy_id is None else UUID(row.policy_id),
            rejection_reason=str(last.data.get("reason", "")) if row.status == "rejected" else "",
            events=tuple(events),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "job_id": self.job_id,
            "status": self.status,
            "principal": self.principal,
            "action": self.action,
            "resource": self.resource,
            "invocation_id": self.invocation_id,
            "module_sha256": self.module_sha256,
            "reason": self.reason,
            "requested_at": plain(self.requested_at),
            "decided_by": self.decided_by,
            "decided_at": plain(self.decided_at),
            "policy_id": plain(self.policy_id),
            "rejection_reason": self.rejection_reason,
            "events": [event_json(e) for e in self.events],
        }


# -- JSON -------------------------------------------------------------------------------------


_SCALARS = frozenset({str, int, float, bool, type(None)})


def plain(value: Any) -> Any:
    """Plain JSON values: UUIDs and datetimes as strings, enums as their values."""
    kind = type(value)
    if kind in _SCALARS:  # the common case first, by exact type (a StrEnum is not a str here)
        return value
    if kind is dict or isinstance(value, Mapping):
        return {k if type(k) is str else str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Enum):
        value = value.value
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, UUID | datetime | date):
        return str(value) if isinstance(value, UUID) else value.isoformat()
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def event_json(e: HistoryEntry) -> dict[str, Any]:
    return {
        "version": e.version,
        "name": e.name,
        "timestamp": e.timestamp.isoformat(),
        "data": plain(e.data),
    }


def _text_or_none(value: object) -> str | None:
    return None if value is None else str(value)
