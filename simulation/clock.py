"""The simulation's virtual clock, and the one place it reaches into the event store's library.

Deadlines (state timeouts, leases, the reconciliation grace) are compared with the times events
were recorded at. ``eventsourcing`` stamps every event with ``datetime.now()``; a simulated hour
must pass in no time and the same seed must decide the same way on any day, so while a seed
runs, ``stamping_events`` makes the library stamp events with this clock's time instead. Every
command that takes a ``now`` is given the same clock's time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from eventsourcing.domain import CanCreateTimestamp

# Any fixed moment will do; a round one reads well in a trace.
START = datetime(2030, 1, 1, tzinfo=UTC)


class VirtualClock:
    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def advance(self, by: timedelta) -> datetime:
        self.now += by
        return self.now

    def seconds(self) -> float:
        """Unix seconds, as the session service dates its sessions."""
        return self.now.timestamp()

    def elapsed(self) -> timedelta:
        return self.now - START

    @contextmanager
    def stamping_events(self) -> Iterator[None]:
        original = CanCreateTimestamp.__dict__["create_timestamp"]
        setattr(CanCreateTimestamp, "create_timestamp", staticmethod(lambda: self.now))  # noqa: B010
        try:
            yield
        finally:
            setattr(CanCreateTimestamp, "create_timestamp", original)  # noqa: B010
