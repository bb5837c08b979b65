"""Read-only values the service hands out: a job's current state and its recorded history.

Everything here is plain data (UUIDs and datetimes aside) so the CLI can print it as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

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
    module_sha256: str
    started: bool
    completions: int
    verdicts: list[dict[str, Any]]
    lease_holder: str | None
    lease_until: datetime | None
    compensated: list[str]

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
