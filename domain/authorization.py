"""Who may do what, as aggregates: a ``Policy`` per Cedar policy text and a ``Decision`` per
authorization request that was denied, so every change of access is in the audit trail.

As in the other aggregates, ``@event`` bodies are the only place state changes; a command that
is not valid raises a typed error before any event is triggered, so nothing is written.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.cedar import scoped_permit
from domain.errors import DecisionAlreadyDecided, PolicyAlreadyRevoked


class DecisionStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


class Denial(StrEnum):
    """Why an authorization check said no. A Decision records the first two."""

    NOT_PERMITTED = "not_permitted"  # default deny: no permit matched
    FORBIDDEN = "forbidden"  # a forbid matched (it overrides any permit)
    MALFORMED_REQUEST = "malformed_request"  # bad URL / method / principal: nothing to decide
    POLICY_ERROR = "policy_error"  # the stored policy set cannot be used: fail closed


class Policy(Aggregate):
    """One Cedar policy text, stored verbatim. Active until revoked; never edited in place.
    ``by`` is who added it (None on policies added before that was recorded); the
    ``PolicyRevoked`` event's timestamp is when it was revoked."""

    @event("PolicyAdded")
    def __init__(
        self,
        text: str,
        reason: str = "",
        decision_id: UUID | None = None,
        by: str | None = None,
    ) -> None:
        self.text = text
        self.reason = reason
        self.decision_id = decision_id  # the Decision whose approval added it, if any
        self.added_by = by
        self.revoked_by: str | None = None
        self.revoked_reason = ""

    @property
    def active(self) -> bool:
        return self.revoked_by is None

    def revoke(self, by: str, reason: str = "") -> None:
        if self.revoked_by is not None:
            raise PolicyAlreadyRevoked(self.id, self.revoked_by, self.revoked_reason)
        self._revoked(by=by, reason=reason)

    @event("PolicyRevoked")
    def _revoked(self, by: str, reason: str) -> None:
        self.revoked_by = by
        self.revoked_reason = reason


class Decision(Aggregate):
    """One authorization request that was denied, waiting for a person to approve or reject it.

    ``principal``, ``action`` and ``resource`` are Cedar entity uids exactly as the authorizer
    asked (e.g. ``Integration::"build_session_message"``); ``context`` is the request's Cedar
    context; ``reason`` says why it was denied, ``denial`` the kind of no (``not_permitted``
    or ``forbidden``; "" on decisions requested before it was recorded) and ``forbidden_by``
    the ids of the forbid policies that caused it. ``job_id`` and ``invocation_id`` are the
    first run denied: later denials of the same request join the pending decision (see
    ``PolicyBook.record_denial``) and name it in their jobs' failures.
    """

    @event("Requested")
    def __init__(
        self,
        principal: str,
        action: str,
        resource: str,
        job_id: str,
        invocation_id: str,
        module_sha256: str,
        context: dict[str, Any],
        reason: str = "",
        denial: str = "",
        forbidden_by: list[str] | None = None,
        id: UUID | None = None,
    ) -> None:
        self.principal = principal
        self.action = action
        self.resource = resource
        self.job_id = job_id
        self.invocation_id = invocation_id
        self.module_sha256 = module_sha256
        self.context = context
        self.reason = reason
        self.denial = denial
        self.forbidden_by = list(forbidden_by or ())
        self.status = DecisionStatus.PENDING
        self.decided_by: str | None = None
        self.policy_id: UUID | None = None
        self.rejection_reason = ""

    @property
    def permit(self) -> str:
        """The policy approving this decision adds: exactly this request, nothing wider."""
        return scoped_permit(self.principal, self.action, self.resource)

    def approve(self, by: str, policy_id: UUID) -> None:
        self.require_pending("approve")
        self._approved(by=by, policy_id=policy_id)

    def reject(self, by: str, reason: str = "") -> None:
        self.require_pending("reject")
        self._rejected(by=by, reason=reason)

    def require_pending(self, attempted: str) -> None:
        if self.status != DecisionStatus.PENDING:
            raise DecisionAlreadyDecided(self.id, self.status, self.decided_by or "", attempted)

    @event("Approved")
    def _approved(self, by: str, policy_id: UUID) -> None:
        self.status = DecisionStatus.APPROVED
        self.decided_by = by
        self.policy_id = policy_id

    @event("Rejected")
    def _rejected(self, by: str, reason: str) -> None:
        self.status = DecisionStatus.REJECTED
        self.decided_by = by
        self.rejection_reason = reason
