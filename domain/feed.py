"""Following the notification log for invocations that were started and have not finished.

This is how a dispatcher finds its work in the store itself (DESIGN.md §3), so any number of
worker processes sharing one database see the same queue without a broker.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.utils import get_topic

from domain.invocation import Invocation

# Declared by @event on the aggregate, so named here by topic rather than attribute.
_STARTED = get_topic(Invocation) + ".Started"
_FINISHED = get_topic(Invocation) + ".Finished"


class PendingInvocations:
    """An incremental fold of Started/Finished notifications into the set still open."""

    def __init__(self, app: Application[Any], batch_size: int = 1000) -> None:
        self._app = app
        self._batch_size = batch_size
        self.position = 0
        self._open: dict[UUID, None] = {}  # insertion-ordered: oldest first

    def refresh(self) -> list[UUID]:
        """Reads what was recorded since the last call; returns the open invocations."""
        while True:
            notifications = self._app.recorder.select_notifications(
                start=self.position,
                limit=self._batch_size,
                topics=(_STARTED, _FINISHED),
                inclusive_of_start=False,
            )
            for n in notifications:
                invocation_id = UUID(str(n.originator_id))
                if n.topic == _STARTED:
                    self._open[invocation_id] = None
                else:
                    self._open.pop(invocation_id, None)
            if notifications:
                self.position = notifications[-1].id
            if len(notifications) < self._batch_size:
                return list(self._open)
