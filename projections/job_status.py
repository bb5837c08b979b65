"""``job_status``: one row per job — its state, attempt, session, version and current
invocation — as of the job's last event."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from domain.log import (
    JOB_CREATED,
    JOB_RETRIED,
    JOB_SESSION_SPAWNED,
    JOB_STARTS_INVOCATION,
    STATE_AFTER,
    Page,
)
from projections.projection import Lookup, Projection, Upsert, Write, column_indexes
from projections.schema import JOB_STATUS

# The text a job_status row stores for the state each job event leaves the job in.
JOB_EVENT_STATES: Mapping[str, str] = {topic: str(state) for topic, state in STATE_AFTER.items()}
# The job events whose payload job_status reads (all others: topic and version suffice).
JOB_CARRIES = frozenset({JOB_CREATED, JOB_RETRIED, JOB_SESSION_SPAWNED, *JOB_STARTS_INVOCATION})

_J = column_indexes(JOB_STATUS)
assert tuple(_J) == (
    "job_id",
    "state",
    "attempt",
    "session_id",
    "version",
    "current_invocation",
    "updated_at",
    "position",
)  # the order JobStatusProjection.writes builds rows in


class JobStatusProjection(Projection):
    name = "job_status"
    topics = tuple(JOB_EVENT_STATES)
    tables = (JOB_STATUS,)

    def kept(self, page: Page) -> Page:
        return page.lasts_and(JOB_CARRIES)  # what writes reads

    def writes(self, batch: Page, lookup: Lookup) -> list[Write]:
        # Every job event sets state, version, position and time outright, so a job's row
        # follows its last event in the batch; attempt, session and current invocation are
        # set only by the events that carry them (in order), and left NULL otherwise, so the
        # upsert keeps the stored values (``keep``). Most events (progress) need nothing else,
        # so the batch makes notices of only these two kinds.
        rows: dict[str, list[Any]] = {}
        for n in batch.last_of_each():
            rows[n.key] = [n.key, JOB_EVENT_STATES[n.topic], None, None, n.version, None,
                           n.timestamp, n.id]  # fmt: skip
        for n in batch.having(JOB_CARRIES):
            topic = n.topic
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
