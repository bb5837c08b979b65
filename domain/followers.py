"""Following the notification log incrementally: the base of the log's followers that keep
a fold in memory (e.g. the reconciler's view of which sessions runs created).

A dispatcher does not follow the log: it finds its runs and overdue jobs in the store's work
table (``domain/work.py``), whose cost does not grow with the log.
"""

from __future__ import annotations

from typing import Any

from eventsourcing.application import Application

from domain.log import Notice, log_reader
from domain.store_errors import store_call


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
