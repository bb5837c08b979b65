"""Typed errors of the command API: each names what was wrong, and raising one writes nothing."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from uuid import UUID


class SequentError(Exception):
    """Base of every error sequent raises on purpose; the CLI prints these as one line."""


class InvalidTransition(SequentError):
    """The 409 of sequent: the action is not valid from the job's current state."""

    def __init__(self, job_id: UUID, state: str, action: str, allowed: Iterable[str]) -> None:
        self.job_id = job_id
        self.state = str(state)
        self.action = action
        self.allowed = tuple(sorted(str(a) for a in allowed))
        allowed_text = ", ".join(self.allowed) or "none: the state is final"
        super().__init__(
            f"job {job_id}: action {action!r} is not valid from state '{self.state}' "
            f"(allowed from: {allowed_text})"
        )


class JobNotFound(SequentError):
    def __init__(self, job_id: UUID) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id} not found")


class InvocationNotFound(SequentError):
    def __init__(self, invocation_id: UUID) -> None:
        self.invocation_id = invocation_id
        super().__init__(f"invocation {invocation_id} not found")


class LeaseHeld(SequentError):
    """Another worker holds an unexpired lease on the invocation."""

    def __init__(self, invocation_id: UUID, holder: str, until: datetime) -> None:
        self.invocation_id = invocation_id
        self.holder = holder
        self.until = until
        super().__init__(
            f"invocation {invocation_id} is leased to {holder!r} until {until.isoformat()}"
        )


class InvocationFinished(SequentError):
    """The invocation already has its completion; there is nothing left to run."""

    def __init__(self, invocation_id: UUID) -> None:
        self.invocation_id = invocation_id
        super().__init__(f"invocation {invocation_id} has already finished")


class MalformedId(SequentError):
    def __init__(self, kind: str, value: object) -> None:
        self.kind = kind
        self.value = value
        super().__init__(f"malformed {kind} id {value!r}: expected a UUID")


class UnknownAction(SequentError):
    def __init__(self, action: object, known: Iterable[str]) -> None:
        self.action = action
        self.known = tuple(known)
        super().__init__(f"unknown action {action!r} (known: {', '.join(self.known)})")


class ActionNotAllowedHere(SequentError):
    """A known action offered through the wrong door, e.g. SessionSpawned outside complete()."""

    def __init__(self, action: str, why: str) -> None:
        self.action = action
        super().__init__(f"action {action!r} {why}")


class InvalidParams(SequentError):
    def __init__(self, action: str, problems: Iterable[str]) -> None:
        self.action = action
        self.problems = tuple(problems)
        super().__init__(f"{action}: " + "; ".join(self.problems))


class InvalidDispatch(SequentError):
    """A dispatch that contradicts the recorded invocation it names (forged or corrupted)."""

    def __init__(self, invocation_id: UUID, why: str) -> None:
        self.invocation_id = invocation_id
        super().__init__(f"dispatch for invocation {invocation_id} is invalid: {why}")


class ConcurrencyError(SequentError):
    """Version conflicts kept recurring past the retry bound; nothing was written by this call."""

    def __init__(self, what: str, attempts: int) -> None:
        self.attempts = attempts
        super().__init__(f"{what}: still conflicting after {attempts} attempts; nothing written")


class StoreURLError(SequentError):
    def __init__(self, url: str, why: str) -> None:
        self.url = url
        super().__init__(f"bad store URL {url!r}: {why}")


class StoreUnavailable(SequentError):
    """The store could not be reached or failed mid-call; this call wrote nothing."""

    condition = "is unavailable"

    def __init__(self, url: str, why: str) -> None:
        self.url = url
        self.why = why
        super().__init__(f"store {url!r} {self.condition}: {why}")


class StoreBusy(StoreUnavailable):
    """Another client held a lock this call needed past the store's lock timeout (or a
    statement ran past the statement timeout). Retryable: the call wrote nothing, and the same
    command may succeed once the other client lets go."""

    condition = "is busy (another client holds a lock; nothing was written, retry later)"


class MalformedURL(SequentError):
    def __init__(self, url: object, why: str) -> None:
        self.url = url
        self.why = why
        shown = url if not isinstance(url, str) or len(url) <= 200 else url[:200] + "…"
        super().__init__(f"malformed URL {shown!r}: {why}")


class InvalidPolicy(SequentError):
    """Cedar refused the policy text (parse or schema validation); nothing was written. The
    message never quotes the text (it may come from a file that holds secrets): ``errors`` are
    Cedar's, with every word of the text in them redacted (``domain.cedar.without_text``)."""

    def __init__(self, why: str, errors: tuple[str, ...] = ()) -> None:
        self.why = why
        self.errors = errors
        detail = "; ".join(errors)
        super().__init__(f"invalid Cedar policy: {why}" + (f": {detail}" if detail else ""))


class PolicyNotFound(SequentError):
    def __init__(self, policy_id: UUID) -> None:
        self.policy_id = policy_id
        super().__init__(f"policy {policy_id} not found")


class PolicyAlreadyRevoked(SequentError):
    def __init__(self, policy_id: UUID, by: str, reason: str) -> None:
        self.policy_id = policy_id
        self.by = by
        super().__init__(
            f"policy {policy_id} was already revoked by {by!r} ({reason or 'no reason'})"
        )


class DecisionNotFound(SequentError):
    def __init__(self, decision_id: UUID) -> None:
        self.decision_id = decision_id
        super().__init__(f"decision {decision_id} not found")


class DecisionAlreadyDecided(SequentError):
    """Approving or rejecting a decision that is no longer pending; nothing was written."""

    def __init__(self, decision_id: UUID, status: str, by: str, attempted: str) -> None:
        self.decision_id = decision_id
        self.status = status
        self.by = by
        super().__init__(
            f"cannot {attempted} decision {decision_id}: it was already {status} by {by!r}"
        )


class DecisionForbidden(SequentError):
    """Approving would add a permit that a ``forbid`` overrides: the request would still be
    denied, so the approval is refused and nothing is written."""

    def __init__(self, decision_id: UUID, resource: str, policy_ids: Iterable[str]) -> None:
        self.decision_id = decision_id
        self.policy_ids = tuple(policy_ids)
        super().__init__(
            f"cannot approve decision {decision_id}: policy {', '.join(self.policy_ids)} "
            f"forbids its call to {resource} and a permit cannot override a forbid "
            "(revoke that policy first, or reject the decision)"
        )
