"""What each page shows, as plain data for its template: one function per page, each reading the
read models (or, for a job, its audit timeline) and nothing else.

Query parameters arrive here as the text the browser sent; a value no row can have is
``BadQuery`` (a 400 page naming what is allowed), an id that names nothing is the domain's own
error (a 404 page).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from console.lag import Lag, lags
from console.lanes import Lanes, lanes_of
from domain import CurationService, DiscardReason, JobState, SequentError
from projections import Projections, Timeline
from projections.decisions import DECISION_STATUSES
from projections.schema import AuditRow, DecisionRow, JobStatusRow

R = TypeVar("R")  # a read-model row

PAGE_SIZE = 50
STATES = tuple(s.value for s in JobState)
REASONS = tuple(r.value for r in DiscardReason)


class BadQuery(SequentError):
    def __init__(self, name: str, value: str, allowed: str) -> None:
        super().__init__(f"?{name}={value!r:.60} is not one of: {allowed}")


def _choice(name: str, value: str | None, allowed: Sequence[str]) -> str | None:
    if value in (None, ""):
        return None
    if value not in allowed:
        raise BadQuery(name, str(value), ", ".join(allowed))
    return value


def _whole(name: str, value: str | None, default: int, low: int = 1) -> int:
    if value in (None, ""):
        return default
    try:
        number = int(str(value))
    except ValueError:
        raise BadQuery(name, str(value), f"a whole number from {low}") from None
    if number < low:
        raise BadQuery(name, str(value), f"a whole number from {low}")
    return number


def _version(value: str | None) -> int | None:
    """``?at=``: any whole number (the timeline says which it has: VersionOutOfRange)."""
    if value in (None, ""):
        return None
    try:
        return int(str(value))
    except ValueError:
        raise BadQuery("at", str(value), "a whole number (a version of the job)") from None


# -- / -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobsPage:
    counts: Mapping[str, int]  # every state, in the table's order
    total: int
    state: str | None
    jobs: Sequence[JobStatusRow]  # this page, newest first
    page: int
    pages: int
    matching: int


def jobs_page(p: Projections, state: str | None, page: str | None) -> JobsPage:
    """Jobs newest first (by their last event), ``PAGE_SIZE`` a page, optionally of one state.
    The counts need every row anyway, so the page is cut from them here (the read models'
    query API has no paging)."""
    wanted = _choice("state", state, STATES)
    number = _whole("page", page, 1)
    rows = p.jobs()
    counted = Counter(r.state for r in rows)
    matching = [r for r in rows if wanted is None or r.state == wanted]
    matching.reverse()  # the read model returns oldest first
    pages = max(1, -(-len(matching) // PAGE_SIZE))
    start = (min(number, pages) - 1) * PAGE_SIZE
    return JobsPage(
        counts={s: counted.get(s, 0) for s in STATES},
        total=len(rows),
        state=wanted,
        jobs=matching[start : start + PAGE_SIZE],
        page=min(number, pages),
        pages=pages,
        matching=len(matching),
    )


# -- /jobs/{id} ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobPage:
    audit: Mapping[str, Any]  # Timeline.to_json(at=...), what `sequent audit --json` prints
    lanes: Lanes
    at: Mapping[str, Any] | None  # the state as of ?at=V
    previous: int | None  # versions to step to
    next: int | None


def job_audit(svc: CurationService, p: Projections, job_id: str, at: str | None) -> dict[str, Any]:
    """The job's audit JSON, as ``sequent audit JOB --json [--at V]`` prints it. MalformedId,
    JobNotFound and VersionOutOfRange for what names nothing (the 404s)."""
    timeline = Timeline.load(svc, job_id, p)
    return timeline.to_json(at=_version(at))


def job_page(svc: CurationService, p: Projections, job_id: str, at: str | None) -> JobPage:
    audit = job_audit(svc, p, job_id, at)
    shown = audit.get("at")
    version = shown["version"] if shown else audit["version"]
    return JobPage(
        audit=audit,
        lanes=lanes_of(audit),
        at=shown,
        previous=version - 1 if version > 1 else None,
        next=version + 1 if version < audit["version"] else None,
    )


# -- /discarded, /decisions ---------------------------------------------------------------------


@dataclass(frozen=True)
class DiscardedPage:
    reason: str | None
    counts: Mapping[str, int]
    rows: Sequence[AuditRow]  # newest first


def discarded_page(p: Projections, reason: str | None) -> DiscardedPage:
    wanted = _choice("reason", reason, REASONS)
    counts, shown = _filtered(p.discarded(), lambda r: r.reason, wanted, REASONS)
    return DiscardedPage(wanted, counts, shown)


def _filtered(
    rows: Sequence[R], key: Callable[[R], str | None], wanted: str | None, known: Sequence[str]
) -> tuple[dict[str, int], list[R]]:
    """Counts of every known value, and the rows with the wanted one (all when None), newest
    first."""
    counted = Counter(key(r) for r in rows)
    shown = [r for r in rows if wanted is None or key(r) == wanted]
    shown.reverse()
    return {k: counted.get(k, 0) for k in known}, shown


@dataclass(frozen=True)
class DecisionsPage:
    status: str | None
    counts: Mapping[str, int]
    rows: Sequence[DecisionRow]  # newest request first


def decisions_page(p: Projections, status: str | None) -> DecisionsPage:
    wanted = _choice("status", status, DECISION_STATUSES)
    counts, shown = _filtered(p.decisions(), lambda r: r.status, wanted, DECISION_STATUSES)
    return DecisionsPage(wanted, counts, shown)


# -- /status ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusPage:
    lags: Sequence[Lag]
    following: bool  # whether this console keeps the read models at the head itself


def status_page(p: Projections, following: bool) -> StatusPage:
    return StatusPage(lags(p), following)
