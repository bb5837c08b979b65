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

from domain.log import FINISHED, JOB_TOPICS, STARTED, STATE_AFTER, Notice, log_reader
from domain.store_errors import store_call
from domain.transitions import STATE_TIMEOUTS, JobState


class LogFollower:
    """Folds, incrementally and in batches, the notices of ``topics``; ``position`` is how far
    the log has been read (past notices of other topics too, so they are not read again)."""

    topics: tuple[str, ...] = ()

    def __init__(self, app: Application[Any], batch_size: int = 1000) -> None:
        self._log = log_reader(app.recorder, app.mapper)
        self._url = str(getattr(app, "url", type(app).__name__))  # as PolicyBook names it
        self._batch_size = batch_size
        self.position = 0

    def read_new(self) -> None:
        """Folds every notice recorded since the last call, up to the head as of now. A store
        failure part way (a dropped connection) is StoreUnavailable, like every other read of
        the store, and leaves the fold at the last whole batch: the next call goes on from
        there."""
        with store_call(self._url):
            head = self._log.head()
            batches = self._log.batches(self.position, head, self.topics, self._batch_size)
            for batch, covered in batches:
                for notice in batch:
                    self.fold(notice)
                self.position = covered

    def fold(self, notice: Notice) -> None:
        raise NotImplementedError


class PendingInvocations(LogFollower):
    """An incremental fold of Started/Finished notifications into the set still open."""

    topics = (STARTED, FINISHED)

    def __init__(self, app: Application[Any], batch_size: int = 1000) -> None:
        super().__init__(app, batch_size)
        self._open: dict[UUID, None] = {}  # insertion-ordered: oldest first

    def refresh(self) -> list[UUID]:
        """Reads what was recorded since the last call; returns the open invocations."""
        self.read_new()
        return list(self._open)

    def fold(self, notice: Notice) -> None:
        if notice.topic == STARTED:
            self._open[notice.originator_id] = None
        else:
            self._open.pop(notice.originator_id, None)


class JobDeadlines(LogFollower):
    """Each job's state and the moment its state timeout runs out (from its last event, as
    ``CurationJob.timeout_at``); jobs in a state without a timeout are forgotten."""

    topics = JOB_TOPICS

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

    def fold(self, notice: Notice) -> None:
        state = STATE_AFTER[notice.topic]
        limit = self._timeouts.get(state)
        if limit is None:
            self._deadlines.pop(notice.originator_id, None)
            return
        # Only a job still in a state with a timeout costs decoding its event.
        self._deadlines[notice.originator_id] = (state, notice.event.timestamp + limit)
