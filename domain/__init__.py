"""The pure core of sequent: the CurationJob and Invocation aggregates, the transition table,
the guard, and CurationService (the command API over the ``eventsourcing`` event store).

May import: the standard library, ``eventsourcing``, the PostgreSQL driver it stores through, and
``cedarpy`` (policies are validated against the Cedar schema before they are recorded).
Never imports ``integrations``, ``projections`` or ``scripts``.
"""

from domain.errors import (
    ActionNotAllowedHere,
    ConcurrencyError,
    InvalidDispatch,
    InvalidParams,
    InvalidTransition,
    InvocationFinished,
    InvocationNotFound,
    JobNotFound,
    LeaseHeld,
    MalformedId,
    SequentError,
    StoreUnavailable,
    StoreURLError,
    UnknownAction,
)
from domain.ids import as_uuid
from domain.outcomes import Applied, Discarded, DiscardReason, Dispatch, Verdict
from domain.service import CurationService
from domain.transitions import TRANSITIONS, FailReason, JobState
from domain.views import HistoryEntry, InvocationView, JobView

__all__ = [
    "TRANSITIONS",
    "ActionNotAllowedHere",
    "Applied",
    "ConcurrencyError",
    "CurationService",
    "DiscardReason",
    "Discarded",
    "Dispatch",
    "FailReason",
    "HistoryEntry",
    "InvalidDispatch",
    "InvalidParams",
    "InvalidTransition",
    "InvocationFinished",
    "InvocationNotFound",
    "InvocationView",
    "JobNotFound",
    "JobState",
    "JobView",
    "LeaseHeld",
    "MalformedId",
    "SequentError",
    "StoreURLError",
    "StoreUnavailable",
    "UnknownAction",
    "Verdict",
    "as_uuid",
]
