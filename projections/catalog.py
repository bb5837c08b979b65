"""The four projections, in the order every report lists them, and lookups over them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from projections.decisions import DecisionsProjection
from projections.dispatch_audit import DispatchAuditProjection
from projections.errors import UnknownProjection
from projections.job_status import JobStatusProjection
from projections.projection import Projection
from projections.sessions import SessionsProjection

PROJECTIONS: tuple[Projection, ...] = (
    JobStatusProjection(),
    DispatchAuditProjection(),
    SessionsProjection(),
    DecisionsProjection(),
)
PROJECTION_NAMES: tuple[str, ...] = tuple(p.name for p in PROJECTIONS)
_BY_NAME = {p.name: p for p in PROJECTIONS}


def projection_named(name: str) -> Projection:
    """UnknownProjection for a name that is not one of PROJECTION_NAMES."""
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise UnknownProjection(name, PROJECTION_NAMES) from None


def selected(names: Iterable[str] | None) -> list[Projection]:
    """The named projections (default: all), each checked by name."""
    return list(PROJECTIONS) if names is None else [projection_named(n) for n in names]


def topics_of(projections: Sequence[Projection]) -> tuple[str, ...]:
    """Every topic any of ``projections`` reads, once each, in first-seen order."""
    return tuple(dict.fromkeys(t for p in projections for t in p.topics))
