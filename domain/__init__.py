"""The core of sequent (DESIGN.md §2): the CurationJob aggregate and its transition table
(``transitions.py``, the state machine as data), the Invocation aggregate, the guard
(``guard.py``, a pure decision on whether a completion may touch its job), CurationService
(``service.py``, the command API over the ``eventsourcing`` event store; ``snapshots.py``, a
job's snapshot checked against its events before use; ``batch_reads.py``, the library's
recorders with reads of many aggregates in one query, for ``complete_batch``), the policy
book with its Policy and Decision aggregates, Cedar's one home (``cedar.py``: schema, entity uids,
endpoints, permits, policy-text checks), the log's topics and its one reader (``log.py``), the
typed errors (``errors.py``), the one validator of user JSON (``values.py``) and the read-only
views (``views.py``).

May import no other package of sequent: only the standard library, eventsourcing, the
PostgreSQL driver it stores through (psycopg, psycopg_pool) and cedarpy (in ``cedar.py`` only).
``tests/test_layers.py`` checks this.
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
