"""PolicyBook: the command/query API over Policy and Decision aggregates (DESIGN.md §2, §3).

It wraps any ``eventsourcing`` ``Application[UUID]`` by composition (``PolicyBook(app)``) and
uses only ``app.save``, ``app.repository``, ``app.events``, ``app.mapper`` and
``app.recorder``; it reads the log through ``domain.log``'s reader, like every other follower.

A policy is validated against the Cedar schema (``domain/cedar.py``) before it is written, so
the store never holds text the authorizer could not use.

**The cache key.** ``policy_version()`` is the notification id of the last Policy event
(``PolicyAdded`` / ``PolicyRevoked``); it changes exactly when a policy event lands, in this
process or any other sharing the store. It is kept by an incremental fold of the notification
log: a cursor remembers how far the log has been looked at, so a call costs one
``max(notification_id)`` query when nothing was written since the last call, and when other
events were written, a range read of just those new rows filtered by policy topics (one query
per ``batch_size`` notification ids on PostgreSQL, see ``domain.log``; both use the primary
key). The same fold holds the active policies, so ``active_policies()``
costs the same. The cursor is safe because notification ids become visible in order (SQLite
has one writer; eventsourcing's PostgreSQL recorder locks the table while it inserts).

That query is most of a warm authorization check (measured p50 on SQLite: ~22 µs alone, ~60 µs
in the mix of a check; ~150 µs on PostgreSQL over loopback). ``PolicyBook(app,
max_staleness=s)`` lets ``policy_version()`` answer from memory for ``s`` seconds after it last
asked the store; policy writes through the same book are still seen by the very next check.

**One pending decision per request.** The same fold keeps, for each (principal, action,
resource), its pending decisions and the last one settled, so a denial joins the decision
already pending for its request (``record_denial``) instead of adding one per job. A new
decision's id is derived from the request and the last decision settled for it, so two
writers (threads or processes) that both find none pending create the *same* aggregate: one
save wins, the other conflicts, re-reads and joins it. Decisions made otherwise
(``request_decision``, or by a version before this) may still leave several pending for one
request; approving any of them approves them all (one permit makes them all moot), while a
rejection settles only the decision rejected.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar
from uuid import UUID, uuid5

from eventsourcing.application import AggregateNotFoundError, Application

from domain.authorization import Decision, DecisionStatus, Denial, Policy
from domain.cedar import (
    ACTION_TYPE,
    CEDAR_SCHEMA,
    HTTP_CALL,
    PRINCIPAL_TYPE,
    RESOURCE_TYPE,
    authorize,
    check_policy_text,
    entity_id,
    entity_uid,
    parse_policy_set,
    parse_schema,
    policy_statics,
    principal_entities,
    uid_request,
)
from domain.errors import DecisionForbidden, DecisionNotFound, InvalidParams, PolicyNotFound
from domain.ids import as_uuid
from domain.log import (
    DECISION_REQUESTED,
    DECISION_TOPICS,
    POLICY_ADDED,
    POLICY_REVOKED,
    POLICY_TOPICS,
    Notice,
    log_reader,
)
from domain.store_errors import retrying, store_call
from domain.values import check_json
from domain.views import DecisionView, HistoryEntry, PolicySnapshot, PolicyView

T = TypeVar("T")

NOTIFICATION_BATCH = 1000
FOLDED_TOPICS = (*POLICY_TOPICS, *DECISION_TOPICS)
# Who changed the policies when nobody said: the CLI's ``--by`` default too.
OPERATOR = "operator"
# The namespace of the ids ``record_denial`` derives (any fixed UUID would do; never change it).
DECISION_IDS = UUID("5e9b1c3a-0d2f-4c65-9a7e-3f1d2b8c4a10")

# (principal, action, resource) uids: what a decision is about, and so what its permit allows.
Request = tuple[str, str, str]


def _text(command: str, name: str, value: object, *, required: bool, limit: int = 2000) -> str:
    if not isinstance(value, str) or (required and not value.strip()) or len(value) > limit:
        need = "a non-empty string" if required else "a string"
        raise InvalidParams(command, [f"{name} must be {need} of at most {limit} characters"])
    check_json(command, name, value)
    return value


def _decision_fields(
    command: str,
    ids: tuple[str, str, str],
    *,
    job_id: str,
    invocation_id: str,
    module_sha256: str,
    context: Mapping[str, Any],
    reason: str,
) -> dict[str, Any]:
    """A Decision's ``Requested`` fields for the request named by plain ids (integration,
    action, endpoint), as Cedar uids; InvalidParams if any cannot be stored."""
    integration, action, endpoint = ids
    try:
        principal = entity_uid(PRINCIPAL_TYPE, integration)
        action_uid = entity_uid(ACTION_TYPE, action)
        resource = entity_uid(RESOURCE_TYPE, endpoint)
    except (TypeError, ValueError) as exc:
        raise InvalidParams(command, [str(exc)]) from None
    fields: dict[str, Any] = {
        "principal": principal,
        "action": action_uid,
        "resource": resource,
        "job_id": str(job_id),
        "invocation_id": str(invocation_id),
        "module_sha256": module_sha256,
        "context": dict(context),
        "reason": reason,
    }
    check_json(command, "params", fields)
    return fields


def _request_of(decision: Any) -> Request:
    """What a Decision (or its Requested event) is about."""
    return (decision.principal, decision.action, decision.resource)


class PolicyBook:
    """Commands and queries on policies and authorization decisions of one application."""

    def __init__(
        self,
        app: Application[UUID],
        *,
        schema: str = CEDAR_SCHEMA,
        batch_size: int = NOTIFICATION_BATCH,
        max_staleness: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``max_staleness`` (seconds, default 0: always ask the store): let
        ``policy_version()`` answer from memory for that long after it last read the store.
        Policy writes made through this book are seen at once regardless; writes by other
        processes are seen within ``max_staleness``."""
        self._app = app
        self.schema_text = schema
        self.schema = parse_schema(schema)
        self._log = log_reader(app.recorder, app.mapper)
        self._batch_size = batch_size
        self.max_staleness = max_staleness
        self._clock = clock
        self._read_at = -math.inf  # when policy_version() last read the store
        self._lock = threading.Lock()
        self._scanned_to = 0  # every notification id <= this has been folded
        self._version = 0  # notification id of the last policy event folded
        self._policies: dict[UUID, PolicyView] = {}  # every policy, revoked ones too
        self._pending: dict[Request, list[UUID]] = {}  # oldest first
        self._pending_request: dict[UUID, Request] = {}  # what each pending decision is about
        self._last_settled: dict[Request, UUID] = {}

    # -- policy commands ----------------------------------------------------------------------

    def validate(self, text: object) -> str:
        """Raises InvalidPolicy (with Cedar's message) unless ``text`` would be accepted."""
        return check_policy_text(text, self.schema)

    def add_policy(
        self,
        text: str,
        reason: str = "",
        decision_id: UUID | str | None = None,
        *,
        by: str = OPERATOR,
    ) -> UUID:
        """Validates ``text`` against the schema, then records it as a new active policy
        added ``by`` someone."""
        text = self.validate(text)
        reason = _text("add_policy", "reason", reason, required=False)
        by = _text("add_policy", "by", by, required=True, limit=200)
        decision = None if decision_id is None else as_uuid(decision_id, "decision")
        policy = Policy(text=text, reason=reason, decision_id=decision, by=by)
        with self._store_call():
            self._app.save(policy)
        self._read_at = -math.inf
        return policy.id

    def ensure_policy(self, text: str, reason: str = "", *, by: str = OPERATOR) -> UUID:
        """Adds ``text`` unless an active policy has exactly this text; returns its id either
        way. For seeding (demos, tests) that may run more than once against one store."""
        text = self.validate(text)
        for policy in self.active_policies():
            if policy.text == text:
                return policy.id
        return self.add_policy(text, reason, by=by)

    def revoke_policy(self, policy_id: UUID | str, by: str, reason: str = "") -> None:
        """Revokes an active policy; PolicyAlreadyRevoked (nothing written) if it was."""
        pid = as_uuid(policy_id, "policy")
        by = _text("revoke_policy", "by", by, required=True, limit=200)
        reason = _text("revoke_policy", "reason", reason, required=False)

        def once() -> None:
            policy = self._get(pid, Policy, PolicyNotFound)
            policy.revoke(by=by, reason=reason)
            self._app.save(policy)

        self._retrying(f"revoke policy {pid}", once)
        self._read_at = -math.inf

    # -- policy queries -----------------------------------------------------------------------

    def policy_version(self) -> int:
        """The cache key of the active policy set: the notification id of the last policy
        event (0 before any). Costs one ``max(notification_id)`` query when the store has not
        moved since the last call (none within ``max_staleness``); see the module docstring."""
        now = self._clock() if self.max_staleness > 0 else 0.0
        if now - self._read_at < self.max_staleness:
            return self._version
        with self._store_call():
            head = self._log.head()
            if head > self._scanned_to:
                with self._lock:
                    self._catch_up(head)
        self._read_at = now
        return self._version

    def policy_snapshot(self) -> PolicySnapshot:
        """The active policies and the version they are as of, read together."""
        with self._caught_up():
            active = (p for p in self._policies.values() if p.active)
            return PolicySnapshot(self._version, tuple(active))

    def active_policies(self) -> list[PolicyView]:
        """Active policies, oldest first."""
        return list(self.policy_snapshot().policies)

    def all_policies(self) -> list[PolicyView]:
        """Every policy ever added, revoked ones too, oldest first."""
        with self._caught_up():
            return list(self._policies.values())

    def policy(self, policy_id: UUID | str) -> PolicyView:
        pid = as_uuid(policy_id, "policy")
        with self._store_call():
            policy = self._get(pid, Policy, PolicyNotFound)
        return PolicyView.of(policy)

    # -- decision commands --------------------------------------------------------------------

    def request_decision(
        self,
        *,
        integration: str,
        endpoint: str,
        action: str = HTTP_CALL,
        job_id: str = "",
        invocation_id: str = "",
        module_sha256: str = "",
        context: Mapping[str, Any] | None = None,
        reason: str = "",
    ) -> UUID:
        """Records a new pending Decision for a denied request, whatever is pending already
        (a denial in a run goes through ``record_denial``). ``integration``, ``action`` and
        ``endpoint`` are plain ids; the Decision stores them as the Cedar uids the authorizer
        asked about (``Integration::"…"``, ``Action::"…"``, ``HttpEndpoint::"…"``)."""
        fields = _decision_fields(
            "request_decision",
            (integration, action, endpoint),
            job_id=job_id,
            invocation_id=invocation_id,
            module_sha256=module_sha256,
            context=context or {},
            reason=reason,
        )
        decision = Decision(**fields)
        with self._store_call():
            self._app.save(decision)
        return decision.id

    def record_denial(
        self,
        *,
        integration: str,
        endpoint: str,
        job_id: str,
        invocation_id: str,
        module_sha256: str,
        context: Mapping[str, Any],
        reason: str,
        forbidden_by: Sequence[str] = (),
    ) -> UUID:
        """The pending Decision of a denied ``http_call``: the one already pending for the
        same principal, action and resource (the denied job fails with its id), else a new
        one saying why (``forbidden_by``: the forbid policies that matched; none: no permit
        did). Race-safe across writers: see the module docstring."""
        fields = _decision_fields(
            "record_denial",
            (integration, HTTP_CALL, endpoint),
            job_id=job_id,
            invocation_id=invocation_id,
            module_sha256=module_sha256,
            context=context,
            reason=reason,
        )
        request: Request = (fields["principal"], fields["action"], fields["resource"])

        def once() -> UUID:
            with self._caught_up():
                pending = self._pending.get(request)
                if pending:
                    return pending[0]
                after = self._last_settled.get(request)
            decision = Decision(
                **fields,
                denial=Denial.FORBIDDEN if forbidden_by else Denial.NOT_PERMITTED,
                forbidden_by=list(forbidden_by),
                id=uuid5(DECISION_IDS, json.dumps([*request, str(after or "")])),
            )
            self._app.save(decision)  # a conflict: someone created it first; join theirs
            return decision.id

        return self._retrying(f"denial of {request[2]}", once)

    def approve(self, decision_id: UUID | str, by: str) -> UUID:
        """Approves a pending decision by adding a permit for exactly its principal, action and
        resource, and with it every other decision pending for the same request. The
        Decisions' ``Approved(by, policy_id)`` and the new ``Policy`` are saved in one
        ``app.save`` (all or none). If an active policy already has exactly that text (an
        earlier approval of the same request), the approval names it instead of adding a
        duplicate. Returns the policy id. DecisionAlreadyDecided if not pending;
        DecisionForbidden, writing nothing, if an active forbid would deny the request even
        with the permit (approving it would change nothing)."""
        did = as_uuid(decision_id, "decision")
        by = _text("approve", "by", by, required=True, limit=200)

        def once() -> UUID:
            decision = self._get(did, Decision, DecisionNotFound)
            decision.require_pending("approve")
            text = self.validate(decision.permit)
            snapshot = self.policy_snapshot()
            forbids = self._forbids(decision, snapshot.policies, text)
            if forbids:
                raise DecisionForbidden(did, decision.resource, forbids)
            decisions = [decision, *self._pending_siblings(decision)]
            existing = next((p.id for p in snapshot.policies if p.text == text), None)
            added = []
            if existing is None:
                added = [Policy(text=text, reason=f"approved by {by}", decision_id=did, by=by)]
            policy_id = existing or added[0].id
            for each in decisions:
                each.approve(by=by, policy_id=policy_id)
            self._app.save(*decisions, *added)
            return policy_id

        policy_id = self._retrying(f"approve decision {did}", once)
        self._read_at = -math.inf
        return policy_id

    def reject(self, decision_id: UUID | str, by: str, reason: str = "") -> None:
        did = as_uuid(decision_id, "decision")
        by = _text("reject", "by", by, required=True, limit=200)
        reason = _text("reject", "reason", reason, required=False)

        def once() -> None:
            decision = self._get(did, Decision, DecisionNotFound)
            decision.reject(by=by, reason=reason)
            self._app.save(decision)

        self._retrying(f"reject decision {did}", once)

    # -- decision queries ---------------------------------------------------------------------

    def decision(self, decision_id: UUID | str) -> DecisionView:
        did = as_uuid(decision_id, "decision")
        with self._store_call():
            d = self._get(did, Decision, DecisionNotFound)
        return DecisionView.of(d)

    def decision_history(self, decision_id: UUID | str) -> list[HistoryEntry]:
        """Every event of one decision, in order (Requested, then Approved or Rejected)."""
        return self._history(
            as_uuid(decision_id, "decision"), "decision", Decision, DecisionNotFound
        )

    def policy_history(self, policy_id: UUID | str) -> list[HistoryEntry]:
        """Every event of one policy, in order (PolicyAdded, then perhaps PolicyRevoked)."""
        return self._history(as_uuid(policy_id, "policy"), "policy", Policy, PolicyNotFound)

    # -- internals ----------------------------------------------------------------------------

    def _forbids(
        self, decision: Decision, policies: Iterable[PolicyView], permit: str
    ) -> tuple[str, ...]:
        """The active policies that would still deny the decision's request with ``permit``
        added: the forbids a permit cannot override. A stored policy that no longer validates
        is left out here (the authorizer, failing closed, denies every call while it is
        active, and that is no forbid an approval could name)."""
        texts = [*((str(p.id), p.text) for p in policies), ("approval", permit)]
        statics, _ = policy_statics(texts, self.schema)
        principal = principal_entities(
            entity_id(decision.principal), decision.module_sha256, self.schema
        )
        request = uid_request(
            decision.principal, decision.action, decision.resource, decision.context
        )
        allowed, determining, _ = authorize(request, parse_policy_set(statics), principal)
        return () if allowed else determining

    def _pending_siblings(self, decision: Decision) -> list[Decision]:
        """The other decisions pending for the same request (as of the last catch-up)."""
        with self._lock:
            ids = self._pending.get(_request_of(decision), [])
            others = [i for i in ids if i != decision.id]
        loaded = [self._get(i, Decision, DecisionNotFound) for i in others]
        return [d for d in loaded if d.status == DecisionStatus.PENDING]

    @contextmanager
    def _caught_up(self) -> Iterator[None]:
        """Holds the fold's lock, the fold caught up to the store's head."""
        with self._lock:
            with self._store_call():
                self._catch_up(self._log.head())
            yield

    def _catch_up(self, head: int) -> None:
        """Folds policy and decision events in (scanned_to, head]; the caller holds the lock."""
        if head <= self._scanned_to:
            return
        for notice in self._log.notices(FOLDED_TOPICS, self._scanned_to, head, self._batch_size):
            if notice.topic in POLICY_TOPICS:
                self._fold_policy(notice)
                self._version = notice.id
            else:
                self._fold_decision(notice)
        self._scanned_to = head  # written last: a reader that sees it also sees _version

    def _fold_policy(self, notice: Notice) -> None:
        event = notice.event
        if notice.topic == POLICY_ADDED:
            self._policies[notice.originator_id] = PolicyView(
                id=notice.originator_id,
                text=event.text,
                version=notice.version,
                reason=event.reason,
                decision_id=event.decision_id,
                added_by=getattr(event, "by", None),  # absent from older events
                added_at=event.timestamp,
            )
        elif notice.topic == POLICY_REVOKED:
            added = self._policies[notice.originator_id]
            self._policies[notice.originator_id] = dataclasses.replace(
                added,
                version=notice.version,
                active=False,
                revoked_by=event.by,
                revoked_at=event.timestamp,
            )

    def _fold_decision(self, notice: Notice) -> None:
        decision_id = notice.originator_id
        if notice.topic == DECISION_REQUESTED:
            request = _request_of(notice.event)
            self._pending.setdefault(request, []).append(decision_id)
            self._pending_request[decision_id] = request
            return
        settled = self._pending_request.pop(decision_id, None)  # Approved or Rejected
        if settled is None:
            return  # settled twice? not by these aggregates; a fold must not stop on it
        self._pending[settled].remove(decision_id)
        if not self._pending[settled]:
            del self._pending[settled]
        self._last_settled[settled] = decision_id

    def _history(
        self,
        aggregate_id: UUID,
        label: str,
        kind: type[Policy] | type[Decision],
        missing: Callable[[UUID], Exception],
    ) -> list[HistoryEntry]:
        with self._store_call():
            events = list(self._app.events.get(aggregate_id))
        if not events or not isinstance(events[0], kind.Event):
            raise missing(aggregate_id)
        return [HistoryEntry.of(label, e) for e in events]

    def _get(self, aggregate_id: UUID, kind: type[T], missing: Callable[[UUID], Exception]) -> T:
        try:
            aggregate: object = self._app.repository.get(aggregate_id)
        except AggregateNotFoundError:
            raise missing(aggregate_id) from None
        if not isinstance(aggregate, kind):
            raise missing(aggregate_id)
        return aggregate

    def _retrying(self, what: str, once: Callable[[], T]) -> T:
        return retrying(self._url, what, once)

    def _store_call(self) -> AbstractContextManager[None]:
        return store_call(self._url)

    @property
    def _url(self) -> str:
        return str(getattr(self._app, "url", type(self._app).__name__))
