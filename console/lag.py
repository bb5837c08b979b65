"""How far behind each read model is, in notifications and in seconds.

Events: the notification ids between a read model's position and the head (``Projections.
status``). Seconds: how long the oldest notification it has not applied has waited — zero when
it is at the head — which is what an operator asks ("is the page I am looking at a minute
old?") and what a count of events cannot say on a quiet store or a busy one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from projections import Projections
from projections.errors import read_model_call

# Notifications read to find the first one after a position (ids can have gaps).
SCAN_WINDOW = 100


@dataclass(frozen=True)
class Lag:
    projection: str
    position: int
    head: int
    events: int  # negative: the position is past the head (drift)
    seconds: float
    rows: int
    skipped: int  # events of its topics it could not fold and recorded instead
    drift: str | None  # why its position cannot be right


def lags(projections: Projections, now: datetime | None = None) -> list[Lag]:
    """Each read model's position, the head, and its lag in events and seconds."""
    now = now or datetime.now(UTC)
    waiting: dict[int, float] = {}  # position -> seconds its next notification has waited
    out: list[Lag] = []
    for s in projections.status():
        seconds = 0.0
        if s.lag > 0:
            if s.position not in waiting:
                waiting[s.position] = _oldest_unapplied_age(projections, s.position, s.head, now)
            seconds = waiting[s.position]
        out.append(
            Lag(s.projection, s.position, s.head, s.lag, seconds, s.rows, s.skipped, s.drift)
        )
    return out


def _oldest_unapplied_age(
    projections: Projections, position: int, head: int, now: datetime
) -> float:
    with read_model_call(projections.service.url):
        for notice in projections.log.notices((), after=position, upto=head, limit=SCAN_WINDOW):
            recorded: datetime = notice.event.timestamp
            return max((now - recorded).total_seconds(), 0.0)
    return 0.0
