"""``dispatch_audit``: one row per completion — the pair ``Finished`` + (``Applied`` |
``Discarded``) — with the invocation's job and attempt, the verdict and why."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from domain.log import (
    APPLIED,
    DISCARDED,
    FINISHED,
    INVOCATION_CREATED,
    STARTED,
    UNRECOGNISED,
    Notice,
)
from projections.projection import (
    Insert,
    Lookup,
    Projection,
    Touched,
    Upsert,
    Write,
    column_indexes,
)
from projections.schema import AUDIT_INVOCATIONS, DISPATCH_AUDIT

_A = column_indexes(AUDIT_INVOCATIONS)


class DispatchAuditProjection(Projection):
    """One row per completion: the pair ``Finished`` + (``Applied`` | ``Discarded``)."""

    name = "dispatch_audit"
    topics = (STARTED, UNRECOGNISED, FINISHED, APPLIED, DISCARDED)
    tables = (DISPATCH_AUDIT, AUDIT_INVOCATIONS)

    def writes(self, batch: Sequence[Notice], lookup: Lookup) -> list[Write]:
        created = {n.key for n in batch if n.topic in INVOCATION_CREATED}
        invocations = Touched(lookup(AUDIT_INVOCATIONS, {n.key for n in batch} - created))
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
    def _fold(n: Notice, invocations: Touched, audit: list[tuple[Any, ...]]) -> None:
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
