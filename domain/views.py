"""Read-only values the services hand out: a job's and an invocation's current state, the
recorded history of any aggregate, and the policies and authorization decisions of the policy
book.

Everything here is plain data (UUIDs and datetimes aside) so the CLI can print it as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from domain.authorization import Decision, DecisionStatus, Policy
from domain.invocation import Invocation
from domain.job import CurationJob

_EVENT_HEADER = frozenset({"originator_id", "originator_version", "timestamp", "originator_topic"})


@dataclass(frozen=True)
class JobView:
    id: UUID
    state: str
    version: int
    attempt: int
    session_id: str | None
    current_invocation: UUID | None
    spec: dict[str, Any]
    settings: dict[str, Any]
    failure: dict[str, Any] | None
    progress: list[dict[str, Any] | str]
    output: dict[str, Any] | None
    created_on: datetime
    modified_on: datetime

    @classmethod
    def of(cls, job: CurationJob) -> JobView:
        return cls(
            id=job.id,
            state=str(job.state),
            version=job.version,
            attempt=job.attempt,
            session_id=job.session_id,
            current_invocation=job.current_invocation,
            spec=job.spec,
            settings=job.settings,
            failure=job.failure,
            progress=list(job.progress),
            output=job.output,
            created_on=job.created_on,
            modified_on=job.modified_on,
        )


@dataclass(frozen=True)
class InvocationView:
    id: UUID
    job_id: UUID
    attempt: int
    expected_version: int
    integration: str
    module_sha256: str  # the module of the latest claim (before any claim, what Started named)
    started: bool
    completions: int
    verdicts: list[dict[str, Any]]
    lease_holder: str | None
    lease_until: datetime | None
    compensated: list[str]
    orphans_stopped: list[str]  # sessions of this run that reconciliation stopped

    @property
    def finished(self) -> bool:
        """As ``Invocation.finished``: a completion has arrived and its verdict is recorded."""
        return self.completions > 0

    @classmethod
    def of(cls, invocation: Invocation) -> InvocationView:
        return cls(
            id=invocation.id,
            job_id=invocation.job_id,
            attempt=invocation.attempt,
            expected_version=invocation.expected_version,
            integration=invocation.integration,
            module_sha256=invocation.module_sha256,
            started=invocation.started,
            completions=invocation.completions,
            verdicts=list(invocation.verdicts),
            lease_holder=invocation.lease_holder,
            lease_until=invocation.lease_until,
            compensated=list(invocation.compensated),
            orphans_stopped=list(invocation.orphans_stopped),
        )


@dataclass(frozen=True)
class HistoryEntry:
    """One recorded event. ``aggregate`` is "job" or "invocation"; versions count per aggregate."""

    aggregate: str
    aggregate_id: UUID
    name: str
    version: int
    timestamp: datetime
    data: dict[str, Any]

    @classmethod
    def of(cls, aggregate: str, event: Any) -> HistoryEntry:
        data = {k: v for k, v in vars(event).items() if k not in _EVENT_HEADER}
        return cls(
            aggregate=aggregate,
            aggregate_id=event.originator_id,
            name=type(event).__name__,
            version=event.originator_version,
            timestamp=event.timestamp,
            data=data,
        )


@dataclass(frozen=True)
class PolicyView:
    """A policy and who changed it when. ``added_by`` is None for a policy added before that
    was recorded; ``revoked_at`` is the time of its ``PolicyRevoked``."""

    id: UUID
    text: str
    version: int
    reason: str
    decision_id: UUID | None
    added_by: str | None
    added_at: datetime
    active: bool = True
    revoked_by: str | None = None
    revoked_at: datetime | None = None

    @classmethod
    def of(cls, policy: Policy) -> PolicyView:
        return cls(
            id=policy.id,
            text=policy.text,
            version=policy.version,
            reason=policy.reason,
            decision_id=policy.decision_id,
            added_by=policy.added_by,
            added_at=policy.created_on,
            active=policy.active,
            revoked_by=policy.revoked_by,
            # PolicyRevoked is a policy's last event, so its time is the policy's last change.
            revoked_at=None if policy.active else policy.modified_on,
        )


@dataclass(frozen=True)
class PolicySnapshot:
    """The active policies as of ``version`` (see ``PolicyBook.policy_version``)."""

    version: int
    policies: tuple[PolicyView, ...]


@dataclass(frozen=True)
class DecisionView:
    id: UUID
    status: DecisionStatus
    principal: str
    action: str
    resource: str
    job_id: str
    invocation_id: str
    module_sha256: str
    context: dict[str, Any]
    reason: str
    requested_on: datetime
    version: int
    decided_by: str | None = None
    policy_id: UUID | None = None
    rejection_reason: str = ""
    denial: str = ""  # not_permitted | forbidden ("" if requested before it was recorded)
    forbidden_by: tuple[str, ...] = ()

    @classmethod
    def of(cls, decision: Decision) -> DecisionView:
        return cls(
            id=decision.id,
            status=decision.status,
            principal=decision.principal,
            action=decision.action,
            resource=decision.resource,
            job_id=decision.job_id,
            invocation_id=decision.invocation_id,
            module_sha256=decision.module_sha256,
            context=dict(decision.context),
            reason=decision.reason,
            requested_on=decision.created_on,
            version=decision.version,
            decided_by=decision.decided_by,
            policy_id=decision.policy_id,
            rejection_reason=decision.rejection_reason,
            denial=decision.denial,
            forbidden_by=tuple(decision.forbidden_by),
        )
