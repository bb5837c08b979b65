"""Keeps the read models at the head of the log while the console runs, in a daemon thread.

The console reads only the read models (and, for a job page, the job's own events), so pages
are as fresh as the read models are. Following the log here means a console started on a
store nobody projects still shows it as it is; where ``sequent project`` already runs, the two
share the work exactly once (``Projections`` handles a position another runner moved).
Writes go to the read models' own tables only: the console never records an event.
"""

from __future__ import annotations

import logging
import threading

from domain import SequentError
from projections import Projections

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
RETRY_SECONDS = 2.0  # after the store failed: the console stays up and /status shows the lag


class Follower:
    def __init__(self, projections: Projections, *, poll_seconds: float = POLL_SECONDS) -> None:
        self.projections = projections
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="console-follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                self.projections.run_forever(self._stop, poll_seconds=self.poll_seconds)
            except SequentError as exc:  # the store's typed errors: one line
                log.warning("read models not followed for now: %s", exc)
            except Exception:  # anything else must not end the thread either: the pages stay up
                log.exception("read models not followed for now")
            self._stop.wait(RETRY_SECONDS)
