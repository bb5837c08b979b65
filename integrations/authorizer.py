"""The Cedar gate in front of every ``http_call`` (DESIGN.md §3 "Authorization").

A request is principal ``Integration::"<name>"`` (its module sha256 as the attribute
``module_sha256``), action ``Action::"http_call"``, resource
``HttpEndpoint::"scheme://host:port/first-path-segment"`` and context ``{method, job_id}``.
Default deny: only a ``permit`` lets a call through, and a ``forbid`` overrides any permit. A
denial of a well-formed request is recorded as a pending ``Decision``
(``PolicyBook.record_denial``: the one already pending for the same principal, action and
resource, else a new one, saying whether a forbid caused it and which) whose id the caller
fails the job with; approving it adds a permit for exactly that request, and is refused while
a forbid would still deny it.

**Cache.** The active policies are compiled into one Cedar ``PolicySet`` and kept with the
``policy_version()`` they are as of; a check re-compiles only when that version changes (a
policy event landed, in any process). Principals' entities (name + sha256) are parsed once
each. So a warm check costs one cheap store query (see ``domain/policy_book.py``) plus one
Cedar evaluation against pre-parsed handles. The Cedar vocabulary itself (schema, uids,
endpoints, request and permit text, parsing) lives in ``domain/cedar.py``; this module keeps
the cache and the decision.

The request itself is not re-validated against the schema on each call (that doubles Cedar's
cost): this module builds it from validated parts, the principal's entities are validated
against the schema when first parsed, and every policy was validated when it was added and
again when it is compiled.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from domain.authorization import Denial
from domain.cedar import (
    HTTP_CALL,
    PRINCIPAL_TYPE,
    RESOURCE_TYPE,
    authorize,
    endpoint_of,
    entity_uid,
    http_call_request,
    parse_policy_set,
    policy_statics,
    principal_entities,
    request_problem,
)
from domain.errors import MalformedURL
from domain.policy_book import PolicyBook
from domain.views import PolicySnapshot

if TYPE_CHECKING:  # only its types: domain/cedar.py is what calls cedarpy
    import cedarpy

MAX_CACHED_PRINCIPALS = 256


@dataclass(frozen=True)
class AuthzOutcome:
    allowed: bool
    resource: str  # the Cedar uid asked about, e.g. HttpEndpoint::"http://h:80/sessions"
    endpoint: str  # the same without the type: "http://h:80/sessions" ("" if malformed)
    decision_id: str | None  # the pending Decision a denial recorded
    reason: str
    denial: Denial | None = None
    policies: tuple[str, ...] = ()  # the policies that determined it (permits or forbids)
    errors: tuple[str, ...] = ()  # Cedar's evaluation errors, if any
    policy_version: int = 0


@dataclass(frozen=True)
class _Compiled:
    version: int
    policy_set: cedarpy.PolicySet
    problem: str | None  # set: the stored policies cannot be used, every check is denied


class CedarAuthorizer:
    """Authorizes ``http_call``s against the active policies of a PolicyBook."""

    def __init__(self, book: PolicyBook, *, record_denials: bool = True) -> None:
        self.book = book
        self.record_denials = record_denials
        self.compilations = 0  # how many times the policy set was (re)built: see tests
        self._lock = threading.Lock()
        self._compiled: _Compiled | None = None
        self._principals: dict[tuple[str, str], cedarpy.Entities] = {}

    def check(
        self,
        integration: str,
        module_sha256: str,
        method: str,
        url: str,
        job_id: str,
        invocation_id: str,
    ) -> AuthzOutcome:
        """Decides one ``http_call``. Never raises for a bad request: a malformed URL, method or
        integration name is a denial (``Denial.MALFORMED_REQUEST``, no Decision recorded).
        A well-formed request that no policy permits, or that a forbid matches, records a
        pending Decision and returns its id. Raises StoreUnavailable if the store cannot be
        read or the Decision cannot be written (never an allow by accident)."""
        try:
            endpoint = endpoint_of(url)
        except MalformedURL as exc:
            return AuthzOutcome(False, "", "", None, str(exc), Denial.MALFORMED_REQUEST)
        resource = entity_uid(RESOURCE_TYPE, endpoint)
        job_id, invocation_id = str(job_id), str(invocation_id)
        problem = request_problem(integration, module_sha256, method)
        if problem:
            return AuthzOutcome(False, resource, endpoint, None, problem, Denial.MALFORMED_REQUEST)
        method = method.upper()
        compiled = self._current()
        if compiled.problem is not None:
            return AuthzOutcome(
                False,
                resource,
                endpoint,
                None,
                compiled.problem,
                Denial.POLICY_ERROR,
                policy_version=compiled.version,
            )
        context = {"method": method, "job_id": job_id}
        allowed, determining, errors = authorize(
            http_call_request(integration, endpoint, context),
            compiled.policy_set,
            self._principal(integration, module_sha256),
        )
        if allowed:
            why = f"permitted by policy {', '.join(determining)}"
            return AuthzOutcome(
                True,
                resource,
                endpoint,
                None,
                why,
                None,
                determining,
                tuple(errors),
                compiled.version,
            )
        principal = entity_uid(PRINCIPAL_TYPE, integration)
        if determining:
            denial = Denial.FORBIDDEN
            why = f"{principal} {method} {resource} is forbidden by policy {', '.join(determining)}"
        else:
            denial = Denial.NOT_PERMITTED
            why = f"no policy permits {principal} to {HTTP_CALL} {resource} ({method})"
        if errors:
            why += f"; cedar errors: {'; '.join(errors)}"
        decision_id = None
        if self.record_denials:
            decision = self.book.record_denial(
                integration=integration,
                endpoint=endpoint,
                job_id=job_id,
                invocation_id=invocation_id,
                module_sha256=module_sha256,
                context=context,
                reason=why,
                forbidden_by=determining,
            )
            decision_id = str(decision)
        return AuthzOutcome(
            False,
            resource,
            endpoint,
            decision_id,
            why,
            denial,
            determining,
            tuple(errors),
            compiled.version,
        )

    def refresh(self) -> None:
        """Recompiles now, whatever the version says."""
        with self._lock:
            self._compiled = self._compile(self.book.policy_snapshot())

    # -- internals ----------------------------------------------------------------------------

    def _current(self) -> _Compiled:
        version = self.book.policy_version()
        compiled = self._compiled
        if compiled is not None and compiled.version == version:
            return compiled
        with self._lock:
            compiled = self._compiled
            if compiled is None or compiled.version != version:
                compiled = self._compile(self.book.policy_snapshot())
                self._compiled = compiled
            return compiled

    def _compile(self, snapshot: PolicySnapshot) -> _Compiled:
        """One PolicySet of every active policy (``policy_statics``). Fails closed: if any
        stored policy no longer validates (schema changed), the set is unusable, since
        skipping a ``forbid`` would widen access."""
        self.compilations += 1
        statics, problems = policy_statics(
            ((str(p.id), p.text) for p in snapshot.policies), self.book.schema
        )
        if problems:
            problem = "the active policies cannot be used (" + " | ".join(problems) + ")"
            return _Compiled(snapshot.version, parse_policy_set({}), problem)
        return _Compiled(snapshot.version, parse_policy_set(statics), None)

    def _principal(self, integration: str, module_sha256: str) -> cedarpy.Entities:
        key = (integration, module_sha256)
        entities = self._principals.get(key)
        if entities is None:
            entities = principal_entities(integration, module_sha256, self.book.schema)
            if len(self._principals) >= MAX_CACHED_PRINCIPALS:
                self._principals.clear()
            self._principals[key] = entities
        return entities
