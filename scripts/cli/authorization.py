"""``sequent decisions`` and ``sequent policies``: who may do what (DESIGN.md §3).

Listing decisions reads the ``decisions`` read model (caught up first, so it is as fresh as
the store); approving, rejecting, adding and revoking are commands on the policy book, each
recorded as an event for the audit.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from domain import CurationService
from domain.authorization import DecisionStatus
from domain.views import PolicyView
from projections.schema import DecisionRow
from scripts.cli.args import Args, Handler, Subcommands, add_command
from scripts.cli.output import OneLineParser, emit, short, table
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
    return svc.policies.active_policies()


def run_policy_add(svc: CurationService, args: Args) -> dict[str, Any]:
    text = args.file.read() if args.file else args.text
    return {"policy_id": svc.policies.add_policy(text, reason=args.reason)}


def run_policy_revoke(svc: CurationService, args: Args) -> dict[str, Any]:
    svc.policies.revoke_policy(args.policy, by=args.by, reason=args.reason)
    return {"policy_id": args.policy, "status": "revoked"}


def render_policies(out: Console, policies: list[PolicyView]) -> None:
    policy_table = Table(title=f"{len(policies)} active policies", title_justify="left")
    for column in ("policy", "added", "reason"):
        policy_table.add_column(column)
    policy_table.add_column("text", overflow="fold")
    for p in policies:
        policy_table.add_row(
            str(p.id), p.added_on.isoformat(timespec="seconds"), p.reason, Text(p.text)
        )
    out.print(policy_table)


def render_fields(out: Console, payload: Mapping[str, Any]) -> None:
    out.print(" ".join(f"{k}={v}" for k, v in payload.items()))


HANDLERS: Mapping[str, Handler] = {
    "decisions": run_decisions,
    "decisions approve": store_command(run_approve, render_fields),
    "decisions reject": store_command(run_reject, render_fields),
    "policies": store_command(run_policies, render_policies),
    "policies add": store_command(run_policy_add, render_fields),
    "policies revoke": store_command(run_policy_revoke, render_fields),
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
        parser.add_argument("--by", default="operator", help="who decides (for the audit)")
    reject.add_argument("--reason", default="")

    policies = add_command(sub, common, "policies", help="list / add / revoke policies")
    verbs = policies.add_subparsers(dest="policy_command", metavar="VERB")
    add = add_command(
        verbs, common, "add", command="policies add", help="add a Cedar policy (schema-checked)"
    )
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="the policy text")
    source.add_argument("--file", type=argparse.FileType("r"), help="a file with the policy")
    add.add_argument("--reason", default="")
    revoke = add_command(
        verbs, common, "revoke", command="policies revoke", help="revoke an active policy"
    )
    revoke.add_argument("policy", metavar="ID", help="policy id (UUID)")
    revoke.add_argument("--by", default="operator")
    revoke.add_argument("--reason", default="")
