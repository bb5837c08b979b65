"""The Cedar gate in front of every ``http_call`` (DESIGN.md §3 "Authorization").

A request is principal ``Integration::"<name>"`` (its module sha256 as the attribute
``module_sha256``), action ``Action::"http_call"``, resource
``HttpEndpoint::"scheme://host:port/first-path-segment"`` and context ``{method, job_id}``.
Default deny: only a ``permit`` lets a call through, and a ``forbid`` overrides any permit. A
denial of a well-formed request records a pending ``Decision`` (``PolicyBook.request_decision``)
whose id the caller fails the job with; approving it adds a permit for exactly that request.

**Cache.** The active policies are compiled into one Cedar ``PolicySet`` and kept with the
``policy_version()`` they are as of; a check re-compiles only when that version changes (a
policy event landed, in any process). Principals' entities (name + sha256) are parsed once
each. So a warm check costs one cheap store query (see ``domain/policies.py``) plus one Cedar
evaluation against pre-parsed handles.

The request itself is not re-validated against the schema on each call (that doubles Cedar's
cost): this module builds it from validated parts, the principal's entities are validated
against the schema when first parsed, and every policy was validated when it was added and
again when it is compiled.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Any
from urllib.parse import unquote, urlsplit

import cedarpy

from domain.errors import SequentError
from domain.invocation import DEFAULT_INTEGRATION
from domain.policy_book import (
    ACTION_TYPE,
    CEDAR_SCHEMA,
    HTTP_CALL,
    PRINCIPAL_TYPE,
    RESOURCE_TYPE,
    PolicyBook,
    PolicySnapshot,
    entity_uid,
    scoped_permit,
    validation_errors,
)

SCHEMA = CEDAR_SCHEMA  # the one schema: PolicyBook validates with it, this module authorizes
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_CHARS = 8192
MAX_CACHED_PRINCIPALS = 256
_METHOD = re.compile(r"[A-Za-z]{1,16}")
_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f\\]")


class MalformedURL(SequentError):
    def __init__(self, url: object, why: str) -> None:
        self.url = url
        self.why = why
        shown = url if not isinstance(url, str) or len(url) <= 200 else url[:200] + "…"
        super().__init__(f"malformed URL {shown!r}: {why}")


class Denial(StrEnum):
    NOT_PERMITTED = "not_permitted"  # default deny: no permit matched
    FORBIDDEN = "forbidden"  # a forbid matched (it overrides any permit)
    MALFORMED_REQUEST = "malformed_request"  # bad URL / method / principal: nothing to decide
    POLICY_ERROR = "policy_error"  # the stored policy set cannot be used: fail closed


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


@lru_cache(maxsize=4096)
def endpoint_of(url: object) -> str:
    """``scheme://host:port/first-segment`` of an http(s) URL, explicit port included:
    ``http://127.0.0.1:8123/sessions/abc?x=1`` -> ``http://127.0.0.1:8123/sessions``.

    Raises MalformedURL for anything that is not an absolute http(s) URL with a host, or that
    could mean different things to different parsers (whitespace, backslashes, ``.``/``..``
    segments, an encoded ``/`` in the first segment)."""
    if not isinstance(url, str) or not url:
        raise MalformedURL(url, "expected a non-empty string")
    if len(url) > MAX_URL_CHARS:
        raise MalformedURL(url, f"longer than {MAX_URL_CHARS} characters")
    if _UNSAFE.search(url):
        raise MalformedURL(url, "contains whitespace, control characters or a backslash")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise MalformedURL(url, str(exc)) from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise MalformedURL(url, "needs an http:// or https:// scheme")
    host = parts.hostname
    if not host:
        raise MalformedURL(url, "has no host")
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    segments = parts.path.split("/")[1:]
    decoded = [unquote(s) for s in segments]
    if any(s in {".", ".."} for s in decoded):
        raise MalformedURL(url, "has '.' or '..' path segments")
    first = segments[0] if segments else ""
    if decoded and ("/" in decoded[0] or "\\" in decoded[0]):
        raise MalformedURL(url, "has an encoded slash in its first path segment")
    return f"{scheme}://{host}:{port or DEFAULT_PORTS[scheme]}/{first}"


def permit_text(integration: str, endpoint: str) -> str:
    """The scoped permit for one integration calling one endpoint (what an approval adds)."""
    return scoped_permit(
        entity_uid(PRINCIPAL_TYPE, integration),
        entity_uid(ACTION_TYPE, HTTP_CALL),
        entity_uid(RESOURCE_TYPE, endpoint),
    )


def default_policies(session_service_url: str, integration: str = DEFAULT_INTEGRATION) -> str:
    """The policy demos seed: ``integration`` may call the session service's ``/sessions``
    endpoint (``POST /sessions``, ``DELETE /sessions/{id}``), and nothing else."""
    base = session_service_url.rstrip("/")
    return permit_text(integration, endpoint_of(f"{base}/sessions"))


# -- cedarpy, typed ---------------------------------------------------------------------------


def _static_policies(text: str) -> dict[str, Any]:
    """The policy text as Cedar's JSON (EST) static policies, keyed by positional id."""
    est: dict[str, Any] = json.loads(cedarpy.policies_to_json_str(text))
    if est.get("templates") or est.get("templateLinks"):
        raise ValueError("templates are not supported")
    statics: dict[str, Any] = est.get("staticPolicies", {})
    return statics


def _parse_policy_set(static_policies: dict[str, Any]) -> cedarpy.PolicySet:
    document = {"staticPolicies": static_policies, "templates": {}, "templateLinks": []}
    policy_set: cedarpy.PolicySet = cedarpy.PolicySet.from_json_str(json.dumps(document))
    return policy_set


def _parse_entities(entities: list[dict[str, Any]], schema: cedarpy.Schema) -> cedarpy.Entities:
    return cedarpy.Entities.from_json_str(json.dumps(entities), schema)


def _authorize(
    request: dict[str, Any], policies: cedarpy.PolicySet, entities: cedarpy.Entities
) -> tuple[bool, list[str], list[str]]:
    """(allowed, determining policy ids, errors)."""
    result = cedarpy.is_authorized(request, policies, entities)
    diagnostics = result.diagnostics
    return result.allowed, list(diagnostics.reasons), list(diagnostics.errors)


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
        problem = _request_problem(integration, module_sha256, method)
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
        request = {
            "principal": {"type": PRINCIPAL_TYPE, "id": integration},
            "action": {"type": ACTION_TYPE, "id": HTTP_CALL},
            "resource": {"type": RESOURCE_TYPE, "id": endpoint},
            "context": context,
        }
        allowed, reasons, errors = _authorize(
            request, compiled.policy_set, self._principal(integration, module_sha256)
        )
        determining = tuple(dict.fromkeys(r.split("#", 1)[0] for r in reasons))
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
            decision = self.book.request_decision(
                integration=integration,
                endpoint=endpoint,
                action=HTTP_CALL,
                job_id=job_id,
                invocation_id=invocation_id,
                module_sha256=module_sha256,
                context=context,
                reason=why,
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
        """One PolicySet of every active policy, each Cedar policy named ``<policy id>#policyN``
        so a diagnostic names the stored Policy it came from. Fails closed: if any stored
        policy no longer validates (schema changed), the set is unusable, since skipping a
        ``forbid`` would widen access."""
        self.compilations += 1
        statics: dict[str, Any] = {}
        problems: list[str] = []
        for policy in snapshot.policies:
            errors = validation_errors(policy.text, self.book.schema)
            try:
                if not errors:
                    for key, body in _static_policies(policy.text).items():
                        statics[f"{policy.id}#{key}"] = body
            except ValueError as exc:
                errors = [str(exc)]
            if errors:
                problems.append(f"policy {policy.id}: {'; '.join(errors)}")
        if problems:
            problem = "the active policies cannot be used (" + " | ".join(problems) + ")"
            return _Compiled(snapshot.version, _parse_policy_set({}), problem)
        return _Compiled(snapshot.version, _parse_policy_set(statics), None)

    def _principal(self, integration: str, module_sha256: str) -> cedarpy.Entities:
        key = (integration, module_sha256)
        entities = self._principals.get(key)
        if entities is None:
            entities = _parse_entities(
                [
                    {
                        "uid": {"type": PRINCIPAL_TYPE, "id": integration},
                        "attrs": {"module_sha256": module_sha256},
                        "parents": [],
                    }
                ],
                self.book.schema,
            )
            if len(self._principals) >= MAX_CACHED_PRINCIPALS:
                self._principals.clear()
            self._principals[key] = entities
        return entities


def _request_problem(integration: object, module_sha256: object, method: object) -> str:
    if not isinstance(integration, str) or not integration or _UNSAFE.search(integration):
        return f"malformed integration name {integration!r}"
    if not isinstance(module_sha256, str):
        return f"malformed module sha256 {module_sha256!r}"
    if not isinstance(method, str) or not _METHOD.fullmatch(method):
        return f"malformed HTTP method {method!r}"
    return ""
