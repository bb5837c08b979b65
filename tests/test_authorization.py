"""Authorization: Cedar policies and decisions as aggregates, and the authorizer's cache.

Every test that touches the store runs on memory, SQLite and PostgreSQL (``svc`` / ``store_url``).
"""

from __future__ import annotations

import json
import threading
from typing import Any
from uuid import UUID, uuid4

import pytest

import integrations.authorizer as authorizer_module
from domain import CurationService, InvalidParams, MalformedId, cedar
from domain.authorization import Decision, DecisionStatus, Denial, Policy
from domain.cedar import default_policies as default_policy_text
from domain.cedar import endpoint_of, permit_text, scoped_permit
from domain.errors import (
    DecisionAlreadyDecided,
    DecisionForbidden,
    DecisionNotFound,
    InvalidPolicy,
    PolicyAlreadyRevoked,
    PolicyNotFound,
)
from domain.policy_book import PolicyBook
from integrations.authorizer import AuthzOutcome, CedarAuthorizer
from projections import Projections
from projections.errors import UnknownFilter
from projections.schema import DecisionRow
from tests.support.fakes import event_count

SERVICE = "http://127.0.0.1:8123"
SESSIONS = "http://127.0.0.1:8123/sessions"
SHA = "a" * 64
INTEGRATION = "build_session_message"


@pytest.fixture
def book(svc: CurationService) -> PolicyBook:
    return PolicyBook(svc)


@pytest.fixture
def authz(book: PolicyBook) -> CedarAuthorizer:
    return CedarAuthorizer(book)


def decisions(svc: CurationService, status: str | None = None) -> list[DecisionRow]:
    """The decisions as ``sequent decisions`` lists them: from the read model."""
    with Projections(svc) as read_models:
        read_models.catch_up()
        return read_models.decisions(status)


def check(
    authz: CedarAuthorizer,
    url: str = f"{SESSIONS}/abc",
    method: str = "POST",
    integration: str = INTEGRATION,
    sha: str = SHA,
    job_id: str = "job-1",
    invocation_id: str = "inv-1",
) -> AuthzOutcome:
    return authz.check(integration, sha, method, url, job_id, invocation_id)


def names(book: PolicyBook, decision_id: UUID | str) -> list[str]:
    return [e.name for e in book.decision_history(decision_id)]


# -- default deny and decisions ----------------------------------------------------------------


def test_default_deny_records_one_pending_decision(
    svc: CurationService, book: PolicyBook, authz: CedarAuthorizer
) -> None:
    before = event_count(svc)
    outcome = check(authz, job_id="job-7", invocation_id="inv-9")

    assert not outcome.allowed
    assert outcome.denial is Denial.NOT_PERMITTED
    assert outcome.resource == f'HttpEndpoint::"{SESSIONS}"'
    assert outcome.decision_id is not None
    assert event_count(svc) == before + 1
    assert names(book, outcome.decision_id) == ["Requested"]

    [row] = decisions(svc, "pending")
    assert row.decision_id == outcome.decision_id
    pending = book.decision(row.decision_id)
    assert pending.status is DecisionStatus.PENDING
    assert (row.principal, pending.principal) == (f'Integration::"{INTEGRATION}"',) * 2
    assert (row.action, pending.action) == ('Action::"http_call"',) * 2
    assert (row.resource, pending.resource) == (outcome.resource,) * 2
    assert (row.job_id, row.invocation_id) == ("job-7", "inv-9")
    assert (pending.job_id, pending.invocation_id, pending.module_sha256) == ("job-7", "inv-9", SHA)
    assert pending.context == {"method": "POST", "job_id": "job-7"}
    assert decisions(svc, "approved") == []


def test_permit_allows_exactly_its_endpoint_prefix(
    svc: CurationService, book: PolicyBook, authz: CedarAuthorizer
) -> None:
    policy_id = book.add_policy(permit_text(INTEGRATION, SESSIONS), reason="test")

    for url in (SESSIONS, f"{SESSIONS}/", f"{SESSIONS}/abc", f"{SESSIONS}/abc/def?x=1#f"):
        outcome = check(authz, url)
        assert outcome.allowed, url
        assert outcome.policies == (str(policy_id),)
        assert outcome.decision_id is None
    assert check(authz, f"{SESSIONS}/abc", method="delete").allowed  # any method, same prefix

    for url in (
        "http://127.0.0.1:8124/sessions",  # another port
        "http://127.0.0.2:8123/sessions",  # another host
        "http://localhost:8123/sessions",  # same machine, other name
        "https://127.0.0.1:8123/sessions",  # another scheme
        "http://127.0.0.1:8123/sessionsX",  # a longer first segment is another endpoint
        "http://127.0.0.1:8123/admin/sessions",
        "http://127.0.0.1:8123/",
    ):
        outcome = check(authz, url)
        assert not outcome.allowed, url
        assert outcome.denial is Denial.NOT_PERMITTED
    assert not check(authz, integration="another_integration").allowed
    assert len(decisions(svc, "pending")) == 8


def test_endpoint_has_explicit_default_ports_and_first_segment_only() -> None:
    assert endpoint_of("http://127.0.0.1:8123/sessions/abc") == SESSIONS
    assert endpoint_of("http://Example.COM/a/b?c") == "http://example.com:80/a"
    assert endpoint_of("https://example.com") == "https://example.com:443/"
    assert endpoint_of("HTTPS://example.com:443/x/") == "https://example.com:443/x"
    assert endpoint_of("http://[::1]:9000/s/1") == "http://[::1]:9000/s"
    assert endpoint_of("http://user:pw@example.com/s") == "http://example.com:80/s"


def test_a_permit_for_an_implicit_port_covers_the_explicit_one(
    book: PolicyBook, authz: CedarAuthorizer
) -> None:
    book.add_policy(permit_text(INTEGRATION, endpoint_of("http://example.com/api")))
    assert check(authz, "http://example.com:80/api/v1").allowed
    assert not check(authz, "http://example.com:8080/api/v1").allowed


def test_default_policies_permit_the_session_service_only(
    book: PolicyBook, authz: CedarAuthorizer
) -> None:
    text = default_policy_text(SERVICE)
    assert text == (
        f'permit(principal == Integration::"{INTEGRATION}", action == Action::"http_call", '
        f'resource == HttpEndpoint::"{SESSIONS}");'
    )
    first = book.ensure_policy(text, reason="seed")
    assert book.ensure_policy(text, reason="seed again") == first  # idempotent seeding
    assert len(book.active_policies()) == 1
    assert check(authz, f"{SERVICE}/sessions", "POST").allowed
    assert check(authz, f"{SERVICE}/sessions/s-1", "DELETE").allowed
    assert not check(authz, f"{SERVICE}/admin", "GET").allowed


# -- approve / reject ----------------------------------------------------------------------------


def test_approve_adds_the_scoped_policy_in_one_save(
    svc: CurationService, book: PolicyBook, authz: CedarAuthorizer, monkeypatch: Any
) -> None:
    denied = check(authz)
    assert denied.decision_id is not None
    saves: list[tuple[str, ...]] = []
    real_save = svc.save

    def spy(*objs: Any, **kwargs: Any) -> Any:
        saves.append(tuple(type(o).__name__ for o in objs))
        return real_save(*objs, **kwargs)

    monkeypatch.setattr(svc, "save", spy)
    before = event_count(svc)
    policy_id = book.approve(denied.decision_id, by="alice")

    assert saves == [("Decision", "Policy")]
    assert event_count(svc) == before + 2
    trail = book.decision_history(denied.decision_id)
    assert [e.name for e in trail] == ["Requested", "Approved"]
    assert trail[1].data == {"by": "alice", "policy_id": policy_id}
    [added] = book.policy_history(policy_id)
    assert added.name == "PolicyAdded"
    assert added.data["decision_id"] == UUID(denied.decision_id)
    assert added.data["text"] == scoped_permit(
        f'Integration::"{INTEGRATION}"', 'Action::"http_call"', denied.resource
    )
    view = book.decision(denied.decision_id)
    assert (view.status, view.decided_by, view.policy_id) == ("approved", "alice", policy_id)

    allowed = check(authz)
    assert allowed.allowed
    assert allowed.policies == (str(policy_id),)
    # Scoped: the approval opened that endpoint for that integration, nothing more.
    assert not check(authz, "http://127.0.0.1:8123/admin").allowed
    assert not check(authz, integration="other").allowed


def test_approving_a_request_whose_permit_exists_names_that_policy(
    svc: CurationService, book: PolicyBook, authz: CedarAuthorizer
) -> None:
    first = check(authz).decision_id
    assert first is not None
    policy_id = book.approve(first, by="alice")
    # A decision recorded by a writer that had not yet seen the approval.
    late = book.request_decision(integration=INTEGRATION, endpoint=SESSIONS, job_id="job-2")
    assert book.approve(late, by="bob") == policy_id
    assert [p.id for p in book.active_policies()] == [policy_id]
    assert names(book, late) == ["Requested", "Approved"]


# -- one pending decision per request -----------------------------------------------------------


def test_denials_of_one_request_join_its_pending_decision(
    svc: CurationService, book: PolicyBook, authz: CedarAuthorizer
) -> None:
    first = check(authz, job_id="job-0", invocation_id="inv-0")
    before = event_count(svc)
    again = [check(authz, job_id=f"job-{n}", invocation_id=f"inv-{n}") for n in range(1, 12)]

    assert {o.decision_id for o in again} == {first.decision_id}
    assert event_count(svc) == before, "a denial that joins a decision writes nothing"
    [row] = decisions(svc, "pending")
    assert (row.decision_id, row.job_id) == (first.decision_id, "job-0")  # the first denied
    other = check(authz, f"{SERVICE}/admin")  # another resource is another request
    assert other.decision_id != first.decision_id
    assert len(decisions(svc, "pending")) == 2


def test_once_a_decision_is_settled_the_next_denial_asks_again(
    book: PolicyBook, authz: CedarAuthorizer
) -> None:
    rejected = check(authz).decision_id
    assert rejected is not None
    book.reject(rejected, by="bob")
    asked_again = check(authz).decision_id
    assert asked_again not in (None, rejected)
    policy_id = book.approve(str(asked_again), by="alice")
    book.revoke_policy(policy_id, by="carol")
    third = check(authz).decision_id
    assert third not in (None, rejected, asked_again)
    assert book.decision(str(third)).status is DecisionStatus.PENDING


def test_racing_denials_in_several_services_create_one_decision(shared_store_url: str) -> None:
    """Threads in separate services (as separate workers would be) all find no decision pending
    and create one at once: they create the same one, and the losers join it."""
    services = [CurationService.open(shared_store_url) for _ in range(6)]
    try:
        authorizers = [CedarAuthorizer(PolicyBook(s)) for s in services]
        for a in authorizers:
            a.book.policy_snapshot()  # each fold is caught up before the race starts
        barrier = threading.Barrier(len(authorizers))

        def deny(n: int) -> str | None:
            barrier.wait()
            return check(authorizers[n], job_id=f"job-{n}").decision_id

        threads_out: list[str | None] = [None] * len(authorizers)

        def run(n: int) -> None:
            threads_out[n] = deny(n)

        threads = [threading.Thread(target=run, args=(n,)) for n in range(len(authorizers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        [decision_id] = set(threads_out)
        assert decision_id is not None
        assert len(decisions(services[0])) == 1
        assert names(authorizers[0].book, decision_id) == ["Requested"]
    finally:
        for s in services:
            s.close()


def test_approving_one_of_several_pending_for_a_request_approves_them_all(
    svc: CurationService, book: PolicyBook, authz: CedarAuthorizer, monkeypatch: Any
) -> None:
    first = check(authz).decision_id
    assert first is not None
    # Several pending for one request: recorded directly, or by a version before the joining.
    second = book.request_decision(integration=INTEGRATION, endpoint=SESSIONS, job_id="job-2")
    saves: list[tuple[str, ...]] = []
    real_save = svc.save

    def spy(*objs: Any, **kwargs: Any) -> Any:
        saves.append(tuple(type(o).__name__ for o in objs))
        return real_save(*objs, **kwargs)

    monkeypatch.setattr(svc, "save", spy)
    policy_id = book.approve(second, by="alice")

    assert saves == [("Decision", "Decision", "Policy")], "all in one save"
    for decision_id in (first, second):
        view = book.decision(decision_id)
        assert (view.status, view.decided_by, view.policy_id) == ("approved", "alice", policy_id)
    assert decisions(svc, "pending") == []
    with pytest.raises(DecisionAlreadyDecided, match="already approved by 'alice'"):
        book.approve(first, by="bob")
    # A rejection settles only the decision rejected: no permit made the others moot.
    book.revoke_policy(policy_id, by="carol")
    third = check(authz).decision_id
    fourth = book.request_decision(integration=INTEGRATION, endpoint=SESSIONS)
    assert third is not None
    book.reject(third, by="bob")
    assert [d.decision_id for d in decisions(svc, "pending")] == [str(fourth)]


# -- a forbid cannot be approved away ----------------------------------------------------------


FORBID_DELETE = (
    f'forbid(principal, action == Action::"http_call", resource == HttpEndpoint::"{SESSIONS}")'
    ' when { context.method == "DELETE" };'
)


def test_a_denial_records_whether_a_forbid_caused_it_and_which(
    book: PolicyBook, authz: CedarAuthorizer
) -> None:
    forbid_id = book.add_policy(FORBID_DELETE)
    not_permitted = book.decision(str(check(authz, method="POST").decision_id))
    assert (not_permitted.denial, not_permitted.forbidden_by) == ("not_permitted", ())
    # Another request (the method is context, not the request's key): the same resource.
    book.reject(not_permitted.id, by="bob")
    forbidden = book.decision(str(check(authz, method="DELETE").decision_id))
    assert (forbidden.denial, forbidden.forbidden_by) == ("forbidden", (str(forbid_id),))
    assert [e.data["forbidden_by"] for e in book.decision_history(forbidden.id)] == [
        [str(forbid_id)]
    ]


def test_approving_a_decision_a_forbid_caused_is_refused_and_writes_nothing(
    svc: CurationService, book: PolicyBook, authz: CedarAuthorizer
) -> None:
    forbid_id = book.add_policy(FORBID_DELETE)
    decision_id = check(authz, method="DELETE").decision_id
    assert decision_id is not None
    before = event_count(svc)

    with pytest.raises(DecisionForbidden) as refused:
        book.approve(decision_id, by="alice")

    assert refused.value.policy_ids == (str(forbid_id),)
    assert str(forbid_id) in str(refused.value)
    assert "\n" not in str(refused.value)
    assert event_count(svc) == before
    assert book.decision(decision_id).status is DecisionStatus.PENDING
    assert [p.id for p in book.active_policies()] == [forbid_id]
    # With the forbid revoked, the approval is what it says: the next call goes through.
    book.revoke_policy(forbid_id, by="carol")
    book.approve(decision_id, by="alice")
    assert check(authz, method="DELETE").allowed


def test_approving_is_refused_when_a_forbid_was_added_after_the_denial(
    book: PolicyBook, authz: CedarAuthorizer
) -> None:
    decision_id = check(authz, method="DELETE").decision_id
    assert decision_id is not None
    assert book.decision(decision_id).denial == "not_permitted"
    forbid_id = book.add_policy(FORBID_DELETE)
    with pytest.raises(DecisionForbidden, match=str(forbid_id)):
        book.approve(decision_id, by="alice")
    # A forbid that does not match the recorded request does not stand in the way.
    post = check(authz, "http://127.0.0.1:8123/other", method="POST").decision_id
    assert post is not None
    book.approve(post, by="alice")
    assert check(authz, "http://127.0.0.1:8123/other", method="POST").allowed


# -- who changed the policies, and when -------------------------------------------------------


def test_policy_changes_record_who_and_when(
    svc: CurationService, book: PolicyBook, authz: CedarAuthorizer
) -> None:
    added = book.add_policy(permit_text(INTEGRATION, SESSIONS), reason="r", by="dave")
    defaulted = book.add_policy(permit_text(INTEGRATION, f"{SERVICE}/x"))
    approved = book.approve(str(check(authz, f"{SERVICE}/y").decision_id), by="erin")
    book.revoke_policy(added, by="carol", reason="incident 42")

    views = {p.id: p for p in book.all_policies()}
    assert [p.id for p in book.active_policies()] == [defaulted, approved]
    assert list(views) == [added, defaulted, approved]
    assert [views[p].added_by for p in (added, defaulted, approved)] == ["dave", "operator", "erin"]
    revoked = views[added]
    added_event, revoked_event = book.policy_history(added)
    assert added_event.data["by"] == "dave"
    assert (revoked_event.name, revoked_event.data["by"]) == ("PolicyRevoked", "carol")
    assert (revoked.active, revoked.revoked_by) == (False, "carol")
    assert (revoked.added_at, revoked.revoked_at) == (
        added_event.timestamp,
        revoked_event.timestamp,
    )
    assert book.policy(added) == revoked, "the fold and the aggregate agree"
    assert views[defaulted].revoked_at is None
    with pytest.raises(InvalidParams, match="by must be"):
        book.add_policy(permit_text(INTEGRATION, SESSIONS), by="")


def _stored_without(svc: CurationService, aggregate: Any, *fields: str) -> None:
    """Saves ``aggregate``'s events as an older version wrote them: without ``fields``."""
    stored = [svc.mapper.to_stored_event(e) for e in aggregate.collect_events()]
    for n, event in enumerate(stored):
        state = json.loads(event.state)
        assert set(fields) <= set(state)
        for name in fields:
            del state[name]
        stored[n] = type(event)(
            originator_id=event.originator_id,
            originator_version=event.originator_version,
            topic=event.topic,
            state=json.dumps(state).encode(),
        )
    svc.recorder.insert_events(stored)


def test_policies_and_decisions_recorded_before_the_new_fields_still_load(
    svc: CurationService, book: PolicyBook, authz: CedarAuthorizer
) -> None:
    old_policy = Policy(text=permit_text(INTEGRATION, SESSIONS), reason="old")
    _stored_without(svc, old_policy, "by")
    old_decision = Decision(
        'Integration::"old"', 'Action::"http_call"', f'HttpEndpoint::"{SESSIONS}"',
        job_id="j", invocation_id="i", module_sha256=SHA, context={}, reason="old",
    )  # fmt: skip
    _stored_without(svc, old_decision, "denial", "forbidden_by")

    [listed] = book.active_policies()
    assert (listed.id, listed.added_by) == (old_policy.id, None)
    assert book.policy(old_policy.id) == listed
    view = book.decision(old_decision.id)
    assert (view.status, view.denial, view.forbidden_by) == ("pending", "", ())
    assert check(authz).allowed
    book.revoke_policy(old_policy.id, by="carol")
    assert book.policy(old_policy.id).revoked_by == "carol"
    book.approve(old_decision.id, by="alice")


def test_approving_twice_raises_and_writes_nothing(
    svc: CurationService, book: PolicyBook, authz: CedarAuthorizer
) -> None:
    decision_id = check(authz).decision_id
    assert decision_id is not None
    book.approve(decision_id, by="alice")
    before = event_count(svc)

    with pytest.raises(DecisionAlreadyDecided, match="already approved by 'alice'"):
        book.approve(decision_id, by="mallory")
    with pytest.raises(DecisionAlreadyDecided):
        book.reject(decision_id, by="mallory", reason="too late")

    assert event_count(svc) == before
    assert names(book, decision_id) == ["Requested", "Approved"]
    assert len(book.active_policies()) == 1


def test_reject_keeps_the_endpoint_denied(
    svc: CurationService, book: PolicyBook, authz: CedarAuthorizer
) -> None:
    decision_id = check(authz).decision_id
    assert decision_id is not None
    book.reject(decision_id, by="bob", reason="not this endpoint")

    view = book.decision(decision_id)
    assert (view.status, view.decided_by, view.rejection_reason) == (
        "rejected",
        "bob",
        "not this endpoint",
    )
    assert names(book, decision_id) == ["Requested", "Rejected"]
    assert book.active_policies() == []
    before = event_count(svc)
    with pytest.raises(DecisionAlreadyDecided, match="already rejected"):
        book.approve(decision_id, by="alice")
    assert event_count(svc) == before

    again = check(authz)
    assert not again.allowed
    assert again.decision_id != decision_id
    assert [d.decision_id for d in decisions(svc, "rejected")] == [decision_id]
    assert [d.decision_id for d in decisions(svc, "pending")] == [again.decision_id]


def test_revoke_makes_the_endpoint_denied_again(
    svc: CurationService, book: PolicyBook, authz: CedarAuthorizer
) -> None:
    policy_id = book.add_policy(permit_text(INTEGRATION, SESSIONS))
    assert check(authz).allowed

    book.revoke_policy(policy_id, by="carol", reason="incident 42")
    denied = check(authz)
    assert not denied.allowed
    assert denied.decision_id is not None
    assert book.active_policies() == []
    assert [e.name for e in book.policy_history(policy_id)] == ["PolicyAdded", "PolicyRevoked"]
    assert not book.policy(policy_id).active

    before = event_count(svc)
    with pytest.raises(PolicyAlreadyRevoked, match="carol"):
        book.revoke_policy(policy_id, by="carol", reason="twice")
    assert event_count(svc) == before


# -- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "cedar_says"),
    [
        ("permit(principal, action, resource", "parse error"),
        # Cedar's words for what is wrong, never a word of the text itself
        ('permit(principal == User::"x", action, resource);', "unrecognized entity type `…`"),
        ("permit(principal, action, resource) when { principal.owner == 1 };",
         "statement 1: attribute `…` on entity type `Integration` not found"),
        ("permit(principal, action, resource) when { context.method == 1 };", "Long and String"),
        ('forbid(principal, action == Action::"delete", resource);', "unrecognized action"),
        ("permit(principal == ?principal, action, resource);", "templates"),
        ("// only a comment", "no policy statement"),
        ("", "no policy statement"),
    ],
)  # fmt: skip
def test_an_invalid_policy_is_refused_and_nothing_is_written(
    svc: CurationService, book: PolicyBook, text: str, cedar_says: str
) -> None:
    before, version = event_count(svc), book.policy_version()
    with pytest.raises(InvalidPolicy, match="invalid Cedar policy") as refused:
        book.add_policy(text, reason="test")
    assert cedar_says in str(refused.value)
    assert event_count(svc) == before
    assert book.policy_version() == version
    assert book.active_policies() == []


def test_non_text_policy_and_bad_ids_are_typed_errors(svc: CurationService) -> None:
    book = PolicyBook(svc)
    before = event_count(svc)
    with pytest.raises(InvalidPolicy, match="expected the policy as text"):
        book.add_policy(42)  # type: ignore[arg-type]
    with pytest.raises(MalformedId):
        book.approve("not-a-uuid", by="alice")
    with pytest.raises(DecisionNotFound):
        book.approve(uuid4(), by="alice")
    with pytest.raises(PolicyNotFound):
        book.revoke_policy(uuid4(), by="alice")
    job_id = svc.create_job(spec={"what": "x"})
    before = event_count(svc)
    with pytest.raises(DecisionNotFound):
        book.decision_history(job_id)  # a job's id is not a decision's
    with pytest.raises(InvalidParams, match="by must be"):
        book.reject(uuid4(), by="")
    with pytest.raises(UnknownFilter, match="unknown decision status 'maybe'"):
        decisions(svc, "maybe")
    assert event_count(svc) == before


def test_a_stored_policy_that_no_longer_validates_fails_closed(
    svc: CurationService, book: PolicyBook, authz: CedarAuthorizer
) -> None:
    # Written around the book (as if the schema had changed since): a forbid that the
    # authorizer cannot use must not silently drop out and widen access.
    book.add_policy(permit_text(INTEGRATION, SESSIONS))
    svc.save(Policy(text='forbid(principal == Robot::"r", action, resource);'))
    before = event_count(svc)

    outcome = check(authz)
    assert not outcome.allowed
    assert outcome.denial is Denial.POLICY_ERROR
    assert "cannot be used" in outcome.reason
    assert outcome.decision_id is None
    assert event_count(svc) == before


# -- forbid, principal attributes, malformed requests ------------------------------------------


def test_forbid_overrides_permit(book: PolicyBook, authz: CedarAuthorizer) -> None:
    permit_id = book.add_policy(permit_text(INTEGRATION, SESSIONS))
    forbid_id = book.add_policy(
        f'forbid(principal, action == Action::"http_call", resource == HttpEndpoint::"{SESSIONS}")'
        ' when { context.method == "DELETE" };'
    )

    post = check(authz, method="POST")
    assert post.allowed
    assert post.policies == (str(permit_id),)
    delete = check(authz, method="DELETE")
    assert not delete.allowed
    assert delete.denial is Denial.FORBIDDEN
    assert delete.policies == (str(forbid_id),)
    assert str(forbid_id) in delete.reason
    assert delete.decision_id is not None


def test_policies_can_pin_the_module_sha256(book: PolicyBook, authz: CedarAuthorizer) -> None:
    book.add_policy(
        f'permit(principal, action, resource == HttpEndpoint::"{SESSIONS}")'
        f' when {{ principal.module_sha256 == "{SHA}" }};'
    )
    assert check(authz, sha=SHA).allowed
    assert not check(authz, sha="b" * 64).allowed


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("", "non-empty"),
        ("sessions/abc", "http:// or https://"),
        ("/sessions", "http:// or https://"),
        ("ftp://127.0.0.1/sessions", "http:// or https://"),
        ("http://", "no host"),
        ("http:///sessions", "no host"),
        ("http://127.0.0.1:99999/sessions", "out of range"),
        ("http://127.0.0.1:8123/sessions/../admin", "'..'"),
        ("http://127.0.0.1:8123/%2e%2e/admin", "'..'"),
        ("http://127.0.0.1:8123/a%2Fb", "encoded slash"),
        ("http://127.0.0.1:8123/ses sions", "whitespace"),
        ("http://127.0.0.1:8123\\@evil/sessions", "backslash"),
    ],
)
def test_a_malformed_url_is_denied_with_a_clear_reason(
    svc: CurationService, book: PolicyBook, authz: CedarAuthorizer, url: str, why: str
) -> None:
    book.add_policy("permit(principal, action, resource);")  # even a blanket permit
    before = event_count(svc)
    outcome = check(authz, url)
    assert not outcome.allowed
    assert outcome.denial is Denial.MALFORMED_REQUEST
    assert outcome.reason.startswith("malformed URL")
    assert why in outcome.reason
    assert outcome.decision_id is None
    assert event_count(svc) == before  # nothing to approve, so no Decision


def test_a_malformed_method_or_integration_is_denied(
    book: PolicyBook, authz: CedarAuthorizer
) -> None:
    book.add_policy("permit(principal, action, resource);")
    for outcome in (check(authz, method="PO ST"), check(authz, integration="a\nb")):
        assert not outcome.allowed
        assert outcome.denial is Denial.MALFORMED_REQUEST
        assert outcome.decision_id is None
    assert check(authz, method="post").allowed


# -- the cache ----------------------------------------------------------------------------------


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts real Cedar policy-set parses."""
    count: list[int] = []
    real = cedar.parse_policy_set

    def counting(static_policies: dict[str, Any]) -> Any:
        count.append(len(static_policies))
        return real(static_policies)

    monkeypatch.setattr(authorizer_module, "parse_policy_set", counting)
    return count


def test_the_policy_set_is_parsed_once_and_refreshed_after_a_policy_event(
    svc: CurationService, book: PolicyBook, authz: CedarAuthorizer, parses: list[int]
) -> None:
    book.add_policy(permit_text(INTEGRATION, SESSIONS))
    for _ in range(50):
        assert check(authz).allowed
    # Non-policy events landing between checks move the store but not the policy version.
    for _ in range(3):
        svc.create_job(spec={"what": "x"})
        assert check(authz).allowed
    assert parses == [1]
    assert authz.compilations == 1

    other = "http://127.0.0.1:9000/things"
    assert not check(authz, f"{other}/1").allowed  # a denial writes a Decision, not a policy
    book.add_policy(permit_text(INTEGRATION, other))
    assert check(authz, f"{other}/1").allowed  # the very next check sees the new policy
    for _ in range(20):
        assert check(authz).allowed
    assert parses == [1, 2]
    assert authz.compilations == 2


def test_policy_version_moves_only_with_policy_events(
    svc: CurationService, book: PolicyBook, authz: CedarAuthorizer
) -> None:
    assert book.policy_version() == 0
    policy_id = book.add_policy(permit_text(INTEGRATION, SESSIONS))
    added = book.policy_version()
    assert added > 0
    svc.create_job(spec={"what": "x"})
    check(authz, "http://elsewhere/x")  # records a Decision
    assert book.policy_version() == added
    book.revoke_policy(policy_id, by="carol")
    assert book.policy_version() > added


def test_a_policy_added_through_another_service_is_seen(shared_store_url: str) -> None:
    ours, theirs = CurationService.open(shared_store_url), CurationService.open(shared_store_url)
    try:
        authz = CedarAuthorizer(PolicyBook(ours))
        assert not check(authz).allowed
        ours.create_job(spec={"what": "x"})  # our cursor moves past non-policy events
        assert not check(authz).allowed
        PolicyBook(theirs).add_policy(permit_text(INTEGRATION, SESSIONS))
        assert check(authz).allowed
        assert authz.compilations == 2
    finally:
        ours.close()
        theirs.close()


def test_max_staleness_answers_from_memory_but_sees_its_own_writes(
    shared_store_url: str,
) -> None:
    now = [100.0]
    ours, theirs = CurationService.open(shared_store_url), CurationService.open(shared_store_url)
    try:
        book = PolicyBook(ours, max_staleness=1.0, clock=lambda: now[0])
        authz = CedarAuthorizer(book)
        assert not check(authz).allowed
        PolicyBook(theirs).add_policy(permit_text(INTEGRATION, SESSIONS))
        now[0] += 0.5
        assert not check(authz).allowed  # another process's policy: not yet looked for
        now[0] += 0.6
        assert check(authz).allowed  # the window passed: the store is asked again

        other = "http://127.0.0.1:9000/things"
        book.add_policy(permit_text(INTEGRATION, other))
        assert check(authz, f"{other}/1").allowed  # our own write: seen at once
        assert authz.compilations == 3
    finally:
        ours.close()
        theirs.close()


def test_concurrent_approvals_approve_once(shared_store_url: str) -> None:
    services = [CurationService.open(shared_store_url) for _ in range(6)]
    try:
        books = [PolicyBook(s) for s in services]
        decision_id = check(CedarAuthorizer(books[0])).decision_id
        assert decision_id is not None
        results: list[object] = []
        barrier = threading.Barrier(len(books))

        def approve(book: PolicyBook, who: str) -> None:
            barrier.wait()
            try:
                results.append(book.approve(decision_id, by=who))
            except DecisionAlreadyDecided as exc:
                results.append(exc)

        threads = [
            threading.Thread(target=approve, args=(b, f"op{i}")) for i, b in enumerate(books)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        approved = [r for r in results if isinstance(r, UUID)]
        assert len(approved) == 1
        assert len(results) == len(books)
        assert names(books[0], decision_id) == ["Requested", "Approved"]
        assert [p.id for p in books[0].active_policies()] == approved
    finally:
        for s in services:
            s.close()
