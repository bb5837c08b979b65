"""`sequent decisions` and `sequent policies`: list, approve, reject, add, revoke, in the audit."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from domain import CurationService
from integrations.authorizer import CedarAuthorizer
from scripts import cli
from tests.support.fakes import event_count

URL = "http://127.0.0.1:8123/sessions"


def sequent(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, url_for: Callable[[str], str]) -> str:
    return url_for(request.param)


def deny_once(db: str) -> Any:
    svc = CurationService.open(db)
    try:
        job_id = svc.create_job({"target": "t"})
        outcome = CedarAuthorizer(svc.policies).check(
            "build_session_message", "sha", "POST", URL, str(job_id), "inv-1"
        )
        assert not outcome.allowed
        return outcome.decision_id
    finally:
        svc.close()


def test_a_denial_is_listed_approved_and_then_allowed(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    decision_id = deny_once(db)
    code, out, _ = sequent(capsys, "decisions", "--status", "pending", "--db", db, "--json")
    assert code == 0
    [pending] = json.loads(out)
    assert (pending["id"], pending["status"]) == (str(decision_id), "pending")
    assert pending["resource"].endswith('"http://127.0.0.1:8123/sessions"')

    code, out, err = sequent(
        capsys, "decisions", "approve", str(decision_id), "--by", "alice", "--db", db, "--json"
    )
    assert (code, err) == (0, "")
    policy_id = json.loads(out)["policy_id"]

    svc = CurationService.open(db)
    try:
        assert svc.policies.decision(decision_id).status == "approved"
        assert [str(p.id) for p in svc.policies.active_policies()] == [policy_id]
        again = CedarAuthorizer(svc.policies).check(
            "build_session_message", "sha", "POST", URL, "job", "inv-2"
        )
        assert again.allowed
        assert svc.policies.decision(decision_id).decided_by == "alice"
    finally:
        svc.close()
    code, out, _ = sequent(capsys, "policies", "--db", db, "--json")
    assert [p["id"] for p in json.loads(out)] == [policy_id]


def test_reject_add_and_revoke(db: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    decision_id = deny_once(db)
    code, _, _ = sequent(capsys, "decisions", "reject", str(decision_id), "--db", db, "--json")
    assert code == 0
    code, out, _ = sequent(capsys, "decisions", "--status", "rejected", "--db", db, "--json")
    assert [d["id"] for d in json.loads(out)] == [str(decision_id)]

    policy = tmp_path / "permit.cedar"
    policy.write_text(f'permit(principal, action, resource == HttpEndpoint::"{URL}");')
    code, out, _ = sequent(capsys, "policies", "add", "--file", str(policy), "--db", db, "--json")
    policy_id = json.loads(out)["policy_id"]
    code, _, _ = sequent(capsys, "policies", "revoke", policy_id, "--db", db, "--json")
    assert code == 0
    code, out, _ = sequent(capsys, "policies", "--db", db, "--json")
    assert json.loads(out) == []


@pytest.mark.parametrize(
    ("argv", "exit_code", "fragment"),
    [
        (["decisions", "approve", "not-a-uuid"], 2, "malformed decision id"),
        (["decisions", "approve", "00000000-0000-0000-0000-000000000001"], 1, "not found"),
        (["policies", "add", "--text", "permit(nonsense"], 1, "invalid Cedar policy"),
        (["policies", "add", "--text", 'permit(principal, action == Action::"fly", resource);'],
         1, "invalid Cedar policy"),
        (["decisions", "--status", "maybe"], 2, "invalid choice"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_writes_nothing(
    db: str, capsys: pytest.CaptureFixture[str], argv: list[str], exit_code: int, fragment: str
) -> None:
    svc = CurationService.open(db)
    before = event_count(svc)
    svc.close()
    code, out, err = sequent(capsys, *argv, "--db", db)
    assert code == exit_code
    assert out == ""
    assert len(err.splitlines()) == 1
    assert fragment in err
    assert "Traceback" not in err
    svc = CurationService.open(db)
    assert event_count(svc) == before
    svc.close()


# -- a policy file's content is never printed ----------------------------------------------------

SECRET = "sk_live_FAKE_SECRET_123"


@pytest.mark.parametrize(
    ("policy", "cedar_says"),
    [
        (f"permit(principal, action, resource) when {{ {SECRET} }};", "invalid variable: …"),
        (f'permit(principal == {SECRET}::"x", action, resource);', "unrecognized entity type"),
        (f'permit(principal, action, resource) when {{ ip("{SECRET}") }};', "IP address"),
        (f"permit(principal, action, resource) when {{ context.{SECRET} }};", "in context"),
        (f"// {SECRET}\npermit(principal, action, resource) when {{ 1 }};", "expected Bool"),
    ],
)
def test_a_policy_file_holding_a_secret_is_refused_without_quoting_it(
    db: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, policy: str, cedar_says: str
) -> None:
    path = tmp_path / "policy.cedar"
    path.write_text(policy)
    code, out, err = sequent(capsys, "policies", "add", "--file", str(path), "--db", db)
    assert (code, out) == (1, "")
    [line] = err.splitlines()
    assert line.startswith("sequent: error: invalid Cedar policy: Cedar refused it: ")
    assert cedar_says in line
    for fragment in ("sk_live", "FAKE", "SECRET", "123"):
        assert fragment not in line


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p: p.mkdir(), "Is a directory"),
        (lambda p: p.write_bytes(b"permit(\xff\xfe" + SECRET.encode()), "is not UTF-8 text"),
        (lambda p: None, "No such file or directory"),
        (lambda p: p.symlink_to("/dev/zero"), "is not a regular file"),
    ],
)
def test_a_policy_file_that_is_no_text_file_is_bad_input(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    make: Callable[[Path], object],
    fragment: str,
) -> None:
    path = tmp_path / "policy.cedar"
    make(path)
    db = f"sqlite:///{tmp_path / 'p.db'}"
    code, out, err = sequent(capsys, "policies", "add", "--file", str(path), "--db", db)
    assert (code, out) == (2, "")
    [line] = err.splitlines()
    assert fragment in line
    assert SECRET not in line


# -- a decision a forbid caused --------------------------------------------------------------------


def test_approving_a_decision_a_forbid_caused_is_one_line_and_writes_nothing(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    forbid = f'forbid(principal, action, resource == HttpEndpoint::"{URL}");'
    code, out, _ = sequent(capsys, "policies", "add", "--text", forbid, "--db", db, "--json")
    forbid_id = json.loads(out)["policy_id"]
    decision_id = deny_once(db)
    svc = CurationService.open(db)
    before = event_count(svc)
    assert svc.policies.decision(decision_id).forbidden_by == (forbid_id,)
    svc.close()

    code, out, err = sequent(capsys, "decisions", "approve", str(decision_id), "--db", db)

    assert (code, out) == (1, "")
    [line] = err.splitlines()
    assert line.startswith(f"sequent: error: cannot approve decision {decision_id}: ")
    assert f"policy {forbid_id} forbids" in line
    svc = CurationService.open(db)
    assert event_count(svc) == before
    assert svc.policies.decision(decision_id).status == "pending"
    svc.close()


# -- who changed the policies, and when -----------------------------------------------------------


def test_policies_json_says_who_added_and_revoked_each_and_when(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    permit = f'permit(principal, action, resource == HttpEndpoint::"{URL}");'
    _, out, _ = sequent(
        capsys, "policies", "add", "--text", permit, "--by", "dave", "--db", db, "--json"
    )
    kept = json.loads(out)["policy_id"]
    _, out, _ = sequent(capsys, "policies", "add", "--text", permit, "--db", db, "--json")
    revoked = json.loads(out)["policy_id"]
    code, _, _ = sequent(capsys, "policies", "revoke", revoked, "--by", "carol", "--db", db)
    assert code == 0

    code, out, _ = sequent(capsys, "policies", "--db", db, "--json")
    [active] = json.loads(out)
    assert (active["id"], active["added_by"], active["revoked_by"]) == (kept, "dave", None)
    assert active["revoked_at"] is None
    code, out, _ = sequent(capsys, "policies", "--all", "--db", db, "--json")
    both = {p["id"]: p for p in json.loads(out)}
    assert list(both) == [kept, revoked]
    gone = both[revoked]
    assert (gone["added_by"], gone["revoked_by"], gone["active"]) == ("operator", "carol", False)
    assert gone["added_at"] < gone["revoked_at"]

    code, out, _ = sequent(capsys, "policies", "history", revoked, "--db", db, "--json")
    history = json.loads(out)
    assert [(e["name"], e["data"]["by"]) for e in history] == [
        ("PolicyAdded", "operator"),
        ("PolicyRevoked", "carol"),
    ]
    assert history[1]["timestamp"] == gone["revoked_at"]
