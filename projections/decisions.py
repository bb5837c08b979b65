"""``decisions``: one row per Cedar authorization decision — what was asked, for which job and
invocation, and whether (and by whom, under which policy) it was approved or rejected."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from domain.log import (
    DECISION_APPROVED,
    DECISION_REJECTED,
    DECISION_REQUESTED,
    DECISION_TOPICS,
    Notice,
)
from projections.projection import Lookup, Projection, Upsert, Write, column_indexes
from projections.schema import DECISIONS

# The status a decision's row holds after each of its events.
DECISION_STATUS: Mapping[str, str] = {
    DECISION_REQUESTED: "pending",
    DECISION_APPROVED: "approved",
    DECISION_REJECTED: "rejected",
}
DECISION_STATUSES = tuple(DECISION_STATUS.values())

_D = column_indexes(DECISIONS)


class DecisionsProjection(Projection):
    name = "decisions"
    topics = DECISION_TOPICS
    tables = (DECISIONS,)

    def writes(self, batch: Sequence[Notice], lookup: Lookup) -> list[Write]:
        rows: dict[str, list[Any]] = {}
        width = len(DECISIONS.columns)
        for n in batch:
            row = rows.get(n.key)
            if row is None:
                row = rows[n.key] = [None] * width
                row[_D["decision_id"]] = n.key
            row[_D["status"]] = DECISION_STATUS[n.topic]
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
