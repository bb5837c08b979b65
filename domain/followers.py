"""Following the notification log: invocations started and not finished, and jobs' deadlines.

This is how a dispatcher finds its work in the store itself (DESIGN.md §3), so any number of
worker processes sharing one database see the same queue and the same overdue jobs without a
broker.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import Notification
from eventsourcing.utils import get_topic

from domain.invocation import Invocation
from domain.job import CurationJob
from domain.transitions import STATE_TIMEOUTS, TRANSITIONS, JobState

# Declared by @event on the aggregates, so named here by topic rather than attribute.
_STARTED = get_topic(Invocation) + ".Started"
_FINISHED = get_topic(Invocation) + ".Finished"
# Every job event, and the state the job is in right after it (read off the table).
_STATE_AFTER = {get_topic(CurationJob) + "." + t.event: t.target for t in TRANSITIONS.values()}


class NotificationFollower:
    """Reads, incrementally and in batches, the notifications with ``topics``."""

    topics: tuple[str, ...] = ()

    def __init__(self, app: Application[Any], batch_size: int = 1000) -> None:
        self._app = app
        self._batch_size = batch_size
        self.position = 0

    def read_new(self) -> None:
        while True:
            notifications = self._app.recorder.select_notifications(
                start=self.position,
                limit=self._batch_size,
                topics=self.topics,
                inclusive_of_start=False,
            )
            for n in notifications:
                self.fold(n)
            if notifications:
                self.position = notifications[-1].id
            if len(notifications) < self._batch_size:
                return

    def fold(self, notification: Notification) -> None:
        raise NotImplementedError


class PendingInvocations(NotificationFollower):
    """An incremental fold of Started/Finished notifications into the set still open."""

    topics = (_STARTED, _FINISHED)

    def __init__(self, app: Application[Any], batch_size: int = 1000) -> None:
        super().__init__(app, batch_size)
        self._open: dict[UUID, None] = {}  # insertion-ordered: oldest first

    def refresh(self) -> list[UUID]:
        """Reads what was recorded since the last call; returns the open invocations."""
        self.read_new()
        return list(self._open)

    def fold(self, notification: Notification) -> None:
        invocation_id = UUID(str(notification.originator_id))
        if notification.topic == _STARTED:
            self._open[invocation_id] = None
        else:
            self._open.pop(invocation_id, None)


class JobDeadlines(NotificationFollower):
    """Each job's state and the moment its state timeout runs out (from its last event, as
    ``CurationJob.timeout_at``); jobs in a state without a timeout are forgotten."""

    topics = tuple(_STATE_AFTER)

    def __init__(
        self,
        app: Application[Any],
        timeouts: Mapping[JobState, timedelta] = STATE_TIMEOUTS,
        batch_size: int = 1000,
    ) -> None:
        super().__init__(app, batch_size)
        self._timeouts = timeouts
        self._deadlines: dict[UUID, tuple[JobState, datetime]] = {}

    def due(self, now: datetime, skip: Collection[JobState] = ()) -> list[UUID]:
        """Jobs whose deadline has passed, as far as the log says; the caller decides again
        on the loaded job (``CurationService.expire``)."""
        self.read_new()
        return [
            job_id
            for job_id, (state, deadline) in self._deadlines.items()
            if deadline <= now and state not in skip
        ]

    def fold(self, notification: Notification) -> None:
        job_id = UUID(str(notification.originator_id))
        state = _STATE_AFTER[notification.topic]
        limit = self._timeouts.get(state)
        if limit is None:
            self._deadlines.pop(job_id, None)
            return
        event: Any = self._app.mapper.to_domain_event(notification)
        self._deadlines[job_id] = (state, event.timestamp + limit)
