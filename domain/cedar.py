"""Cedar, in one place: the authorization model of DESIGN.md §3 and every piece of text or
handle sequent builds from it.

- the schema (``CEDAR_SCHEMA``) and the names it declares: principal ``Integration`` (with its
  module sha256 as the attribute ``module_sha256``), action ``Action::"http_call"``, resource
  ``HttpEndpoint``;
- entity ids and uids (``cedar_string``, ``entity_uid``), and the one canonical resource id of a
  URL (``endpoint_of``: ``scheme://host:port/first-path-segment``);
- the permits sequent writes (``scoped_permit``, ``permit_text``, ``default_policies``);
- checking policy text before it is recorded (``check_policy_text``, whose errors never quote
  the text), and turning recorded text into the handles an authorization check runs on
  (``policy_statics``, ``parse_policy_set``, ``principal_entities``, ``authorize``).

This is the only module that calls ``cedarpy``: the policy book validates with it, the
authorizer (``integrations/authorizer.py``) decides with it, and both speak the same schema.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from functools import cache, lru_cache
from typing import Any
from urllib.parse import unquote, urlsplit

import cedarpy
from cedarpy import _internal as _cedar_native  # what cedarpy's own is_authorized calls

from domain.errors import InvalidPolicy, MalformedURL
from domain.invocation import DEFAULT_INTEGRATION
from domain.values import check_json

# -- the model --------------------------------------------------------------------------------

# The authorization model (DESIGN.md §3), in Cedar's human-readable schema format.
CEDAR_SCHEMA = """\
// sequent: which integration may call which HTTP endpoint.
entity Integration = { module_sha256: String };
entity HttpEndpoint;
action http_call appliesTo {
  principal: [Integration],
  resource: [HttpEndpoint],
  context: { method: String, job_id: String },
};
"""

PRINCIPAL_TYPE = "Integration"
RESOURCE_TYPE = "HttpEndpoint"
ACTION_TYPE = "Action"
HTTP_CALL = "http_call"


@cache
def parse_schema(text: str = CEDAR_SCHEMA) -> cedarpy.Schema:
    """The parsed schema handle (parsed once per distinct text). ValueError if invalid."""
    schema: cedarpy.Schema = cedarpy.Schema.from_str(text)
    return schema


# -- ids --------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# What no id in a request may hold: one parser's separator is another's literal.
_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f\\]")
_METHOD = re.compile(r"[A-Za-z]{1,16}")


def cedar_string(value: str) -> str:
    """A Cedar string literal for ``value``. Control characters have no safe spelling in every
    Cedar parser, so they are refused (ValueError) rather than escaped."""
    if _CONTROL.search(value):
        raise ValueError(f"control characters are not allowed in a Cedar id: {value!r}")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def entity_uid(entity_type: str, entity_id: str) -> str:
    """``Integration::"build_session_message"`` from its type and id."""
    return f"{entity_type}::{cedar_string(entity_id)}"


def entity_id(uid: str) -> str:
    """The id of a uid ``entity_uid`` wrote: ``build_session_message`` from
    ``Integration::"build_session_message"``. Its quoted part escapes only ``\\`` and ``"``,
    so it reads back as a JSON string."""
    id_text: str = json.loads(uid.split("::", 1)[1])
    return id_text


# -- endpoints --------------------------------------------------------------------------------

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL_CHARS = 8192


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


# -- requests ---------------------------------------------------------------------------------


def request_problem(integration: object, module_sha256: object, method: object) -> str:
    """Why an ``http_call`` request cannot be put to Cedar at all ("" if it can)."""
    if not isinstance(integration, str) or not integration or _UNSAFE.search(integration):
        return f"malformed integration name {integration!r}"
    if not isinstance(module_sha256, str):
        return f"malformed module sha256 {module_sha256!r}"
    if not isinstance(method, str) or not _METHOD.fullmatch(method):
        return f"malformed HTTP method {method!r}"
    return ""


def http_call_request(integration: str, endpoint: str, context: dict[str, str]) -> dict[str, Any]:
    """The Cedar request for ``integration`` calling ``endpoint`` (see ``endpoint_of``)."""
    return {
        "principal": {"type": PRINCIPAL_TYPE, "id": integration},
        "action": {"type": ACTION_TYPE, "id": HTTP_CALL},
        "resource": {"type": RESOURCE_TYPE, "id": endpoint},
        "context": context,
    }


def principal_entities(
    integration: str, module_sha256: str, schema: cedarpy.Schema
) -> cedarpy.Entities:
    """The principal's entity (its module sha256 as an attribute), validated against
    ``schema`` as it is parsed."""
    entities = [
        {
            "uid": {"type": PRINCIPAL_TYPE, "id": integration},
            "attrs": {"module_sha256": module_sha256},
            "parents": [],
        }
    ]
    parsed: cedarpy.Entities = cedarpy.Entities.from_json_str(json.dumps(entities), schema)
    return parsed


def uid_request(
    principal_uid: str, action_uid: str, resource_uid: str, context: dict[str, Any]
) -> dict[str, Any]:
    """A request from the uids a Decision recorded (``Integration::"…"`` and so on)."""
    return {
        "principal": principal_uid,
        "action": action_uid,
        "resource": resource_uid,
        "context": context,
    }


_CONTEXT_ENCODER = json.JSONEncoder(separators=(",", ":"))


def authorize(
    request: dict[str, Any], policies: cedarpy.PolicySet, entities: cedarpy.Entities
) -> tuple[bool, tuple[str, ...], list[str]]:
    """(allowed, ids of the stored policies that determined it, Cedar's evaluation errors).
    A denial that names policies was caused by a ``forbid``; one that names none, by no
    ``permit`` matching. Ids are those ``policy_statics`` keyed the policies by.

    The extension is called as ``cedarpy.is_authorized`` calls it, less that wrapper's layers
    (its batch-of-one function, the request copied, the answer turned into result objects and
    an enum): about 3 of the 25 us a check takes inside a sandbox run."""
    native = {**request, "context": _CONTEXT_ENCODER.encode(request["context"])}
    [answer] = _cedar_native.is_authorized_batch([native], policies, entities._inner, None, False)
    decided = json.loads(answer)
    diagnostics = decided.get("diagnostics", {})
    determining = dict.fromkeys(r.split("#", 1)[0] for r in diagnostics.get("reason", ()))
    return decided["decision"] == "Allow", tuple(determining), list(diagnostics.get("errors", ()))


# -- permits ----------------------------------------------------------------------------------


def scoped_permit(principal_uid: str, action_uid: str, resource_uid: str) -> str:
    """The policy an approval adds: exactly this principal, action and resource, nothing wider."""
    return (
        f"permit(principal == {principal_uid}, action == {action_uid}, resource == {resource_uid});"
    )


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


# -- policy text ------------------------------------------------------------------------------

MAX_POLICY_CHARS = 64 * 1024


# Cedar names the policy an error is in by its position: "for policy `policy0`, …".
_CEDAR_POSITION = re.compile(r"for policy `policy(\d+)`, ")
_WORD = re.compile(r"\w+")
# Cedar's keywords and the schema's names: an error that says them quotes nothing of a text.
CEDAR_WORDS = frozenset(
    {
        *("permit", "forbid", "when", "unless", "principal", "action", "resource", "context"),
        *("in", "has", "like", "is", "if", "then", "else", "true", "false"),
        *(PRINCIPAL_TYPE, RESOURCE_TYPE, ACTION_TYPE, HTTP_CALL),
        *("module_sha256", "method", "job_id"),
    }
)


def validation_errors(text: str, schema: cedarpy.Schema) -> list[str]:
    """Cedar's parse and schema-validation errors for ``text`` with nothing of the text in
    them (``without_text``), each as ``statement N: …`` where Cedar says which statement;
    empty when the text is valid."""
    result = cedarpy.validate_policies(text, schema)
    if result.validation_passed:
        return []
    errors = [
        _CEDAR_POSITION.sub(
            lambda m: f"statement {int(m[1]) + 1}: ", without_text(e.error, text), count=1
        )
        for e in result.errors
    ]
    return errors or ["cedar refused the policy text"]


def without_text(error: str, text: str) -> str:
    """Cedar's ``error`` about ``text`` with nothing of the text in it: each word that also
    occurs in the text, Cedar's and the schema's own words aside, becomes "…". Cedar quotes
    the token it stumbled on (``invalid variable: <it>``, ``unexpected token `<it>` ``), and
    the text may be a file that holds a secret by mistake."""
    words = set(_WORD.findall(text)) - CEDAR_WORDS
    return _WORD.sub(lambda m: "…" if m[0] in words else m[0], error)


def check_policy_text(text: object, schema: cedarpy.Schema) -> str:
    """Returns ``text`` if it is one or more static Cedar policies valid against ``schema``;
    raises InvalidPolicy with Cedar's errors (``validation_errors``) otherwise, and
    InvalidParams (as for any text sequent stores) if it holds characters no store can hold."""
    if not isinstance(text, str):
        raise InvalidPolicy(f"expected the policy as text, got {type(text).__name__}")
    if len(text) > MAX_POLICY_CHARS:
        raise InvalidPolicy(f"{len(text)} characters is over the limit of {MAX_POLICY_CHARS}")
    check_json("policy", "text", text)  # NUL or a lone surrogate: no store could hold it
    errors = validation_errors(text, schema)
    if errors:
        raise InvalidPolicy("Cedar refused it", tuple(errors))
    parsed = cedarpy.PolicySet.from_str(text)
    if parsed.templates():
        raise InvalidPolicy("templates (?principal / ?resource slots) are not supported")
    if len(parsed) == 0:
        raise InvalidPolicy("it contains no policy statement")
    return text


def static_policies(text: str) -> dict[str, Any]:
    """The policy text as Cedar's JSON (EST) static policies, keyed by positional id."""
    est: dict[str, Any] = json.loads(cedarpy.policies_to_json_str(text))
    if est.get("templates") or est.get("templateLinks"):
        raise ValueError("templates are not supported")
    statics: dict[str, Any] = est.get("staticPolicies", {})
    return statics


def policy_statics(
    policies: Iterable[tuple[str, str]], schema: cedarpy.Schema
) -> tuple[dict[str, Any], list[str]]:
    """The static policies (EST) of every ``(id, text)``, each Cedar policy keyed
    ``<id>#<positional id>`` so a diagnostic names the stored policy it came from; and, for
    each text that no longer validates against ``schema`` (left out), why."""
    statics: dict[str, Any] = {}
    problems: list[str] = []
    for policy_id, text in policies:
        errors = validation_errors(text, schema)
        try:
            if not errors:
                for key, body in static_policies(text).items():
                    statics[f"{policy_id}#{key}"] = body
        except ValueError as exc:
            errors = [str(exc)]
        if errors:
            problems.append(f"policy {policy_id}: {'; '.join(errors)}")
    return statics, problems


def parse_policy_set(policies: dict[str, Any]) -> cedarpy.PolicySet:
    """One policy set of the given static policies (EST), under the ids they are keyed by."""
    document = {"staticPolicies": policies, "templates": {}, "templateLinks": []}
    policy_set: cedarpy.PolicySet = cedarpy.PolicySet.from_json_str(json.dumps(document))
    return policy_set
