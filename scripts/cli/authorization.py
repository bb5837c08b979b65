"""``sequent decisions`` and ``sequent policies``: who may do what (DESIGN.md §3).

Listing decisions reads the ``decisions`` read model (caught up first, so it is as fresh as
the store); approving, rejecting, adding and revoking are commands on the policy book, each
recorded as an event for the audit, with who did it (``--by``, default ``operator``).

A policy file is read here, as bytes of a regular file under the size limit, so that neither
a device nor a binary file can hang or crash the command; no error quotes the file's content.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from domain import CurationService, HistoryEntry
from domain.authorization import DecisionStatus
from domain.cedar import MAX_POLICY_CHARS
from domain.errors import InvalidPolicy
from domain.policy_book import OPERATOR
from domain.views import PolicyView
from projections.schema import DecisionRow
from scripts.cli.args import Args, Handler, Subcommands, add_command
from scripts.cli.output import OneLineParser, UsageError, emit, history_table, short, table
from scripts.cli.root import read_models, store_command

DECISIONS = "decisions"

# The read model's columns under the names `sequent decisions --json` has always printed.
RENAMED = {"decision_id": "id", "requested_at": "requested_on"}


def run_decisions(args: Args) -> int:
    with read_models(args) as p:
        p.catch_up([DECISIONS])
        rows = sorted(p.decisions(args.status), key=lambda r: r.requested_at or "")  # oldest
    payload = [decision_json(r) for r in rows]

    def render(out: Console, _: Any) -> None:
        columns = ("decision", "status", "resource", "job", "decided by", "policy")
        cells = [
            (r.decision_id, r.status, r.resource, short(r.job_id), r.decided_by, r.policy_id)
            for r in rows
        ]
        out.print(table(f"{len(rows)} authorization decisions", columns, cells))

    return emit(args.json, payload, render)


def decision_json(row: DecisionRow) -> dict[str, Any]:
    return {RENAMED.get(k, k): v for k, v in vars(row).items() if k != "position"}


def run_approve(svc: CurationService, args: Args) -> dict[str, Any]:
    policy_id = svc.policies.approve(args.decision, by=args.by)
    return {"decision_id": args.decision, "status": "approved", "policy_id": policy_id}


def run_reject(svc: CurationService, args: Args) -> dict[str, Any]:
    svc.policies.reject(args.decision, by=args.by, reason=args.reason)
    return {"decision_id": args.decision, "status": "rejected"}


def run_policies(svc: CurationService, args: Args) -> list[PolicyView]:
    return svc.policies.all_policies() if args.all else svc.policies.active_policies()


def run_policy_add(svc: CurationService, args: Args) -> dict[str, Any]:
    text = read_policy_file(args.file) if args.file is not None else args.text
    return {"policy_id": svc.policies.add_policy(text, reason=args.reason, by=args.by)}


def read_policy_file(path: str) -> str:
    """The text of the policy file at ``path``. UsageError (naming the file, never its
    content) unless it is a readable regular file of UTF-8 text; InvalidPolicy if too long."""
    limit = 4 * MAX_POLICY_CHARS  # bytes: UTF-8 takes at most 4 a character
    try:
        # Non-blocking, so that opening a FIFO does not wait for a writer.
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise UsageError(f"--file {path!r} is not a regular file")
            raw = file.read(limit + 1)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise UsageError(f"cannot read --file {path!r}: {why}") from None
    if len(raw) > limit:
        raise InvalidPolicy(f"--file {path!r} is over the limit of {MAX_POLICY_CHARS} characters")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"--file {path!r} is not UTF-8 text (byte {exc.start})") from None


def run_policy_revoke(svc: CurationService, args: Args) -> dict[str, Any]:
    svc.policies.revoke_policy(args.policy, by=args.by, reason=args.reason)
    return {"policy_id": args.policy, "status": "revoked"}


def run_policy_history(svc: CurationService, args: Args) -> list[HistoryEntry]:
    return svc.policies.policy_history(args.policy)


def render_policies(out: Console, policies: list[PolicyView]) -> None:
    policy_table = Table(title=f"{len(policies)} policies", title_justify="left")
    for column in ("policy", "added", "by", "revoked", "by", "reason"):
        policy_table.add_column(column)
    policy_table.add_column("text", overflow="fold")
    for p in policies:
        revoked_at = p.revoked_at.isoformat(timespec="seconds") if p.revoked_at else ""
        policy_table.add_row(
            str(p.id),
            p.added_at.isoformat(timespec="seconds"),
            Text(p.added_by or "-"),
            revoked_at,
            Text(p.revoked_by or ""),
            Text(p.reason),
            Text(p.text),
        )
    out.print(policy_table)


def render_history(out: Console, entries: list[HistoryEntry]) -> None:
    out.print(history_table(entries, f"history of policy {entries[0].aggregate_id}"))


def render_fields(out: Console, payload: Mapping[str, Any]) -> None:
    out.print(" ".join(f"{k}={v}" for k, v in payload.items()))


HANDLERS: Mapping[str, Handler] = {
    "decisions": run_decisions,
    "decisions approve": store_command(run_approve, render_fields),
    "decisions reject": store_command(run_reject, render_fields),
    "policies": store_command(run_policies, render_policies),
    "policies add": store_command(run_policy_add, render_fields),
    "policies revoke": store_command(run_policy_revoke, render_fields),
    "policies history": store_command(run_policy_history, render_history),
}


def add_parsers(sub: Subcommands, common: OneLineParser) -> None:
    decisions = add_command(
        sub, common, "decisions", help="list / approve / reject authorization decisions"
    )
    decisions.add_argument("--status", choices=[s.value for s in DecisionStatus], default=None)
    verbs = decisions.add_subparsers(dest="decision_command", metavar="VERB")
    approve = add_command(
        verbs, common, "approve", command="decisions approve", help="approve: adds a scoped permit"
    )
    reject = add_command(
        verbs, common, "reject", command="decisions reject", help="reject a pending decision"
    )
    for parser in (approve, reject):
        parser.add_argument("decision", metavar="ID", help="decision id (UUID)")
    reject.add_argument("--reason", default="")

    policies = add_command(sub, common, "policies", help="list / add / revoke policies")
    policies.add_argument("--all", action="store_true", help="revoked policies too")
    verbs = policies.add_subparsers(dest="policy_command", metavar="VERB")
    add = add_command(
        verbs, common, "add", command="policies add", help="add a Cedar policy (schema-checked)"
    )
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="the policy text")
    source.add_argument("--file", metavar="FILE", help="a file with the policy")
    add.add_argument("--reason", default="")
    revoke = add_command(
        verbs, common, "revoke", command="policies revoke", help="revoke an active policy"
    )
    history = add_command(
        verbs, common, "history", command="policies history", help="a policy's events"
    )
    for parser in (revoke, history):
        parser.add_argument("policy", metavar="ID", help="policy id (UUID)")
    revoke.add_argument("--reason", default="")
    for parser in (approve, reject, add, revoke):
        parser.add_argument("--by", default=OPERATOR, help="who does it (for the audit)")
