"""The ``sequent`` command line: a thin shell over CurationService (DESIGN.md §5).

Why it looks like this: every command is one row of ``HANDLERS`` (subcommand -> handler), and
every store command is the same three moves, so they share one wrapper: open the store named by
``--db``, run one service call, close the store, then print the result as rich text or, with
``--json``, as plain JSON on stdout. Errors keep one contract (scripts/output.py): exactly one
line on stderr and a documented exit code, never a traceback, so scripts and people can both
rely on it. ``--db`` and ``--json`` work before or after the subcommand.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from typing import Any
from uuid import UUID

from rich.console import Console
from rich.table import Table
from rich.text import Text

from domain import (
    Applied,
    CurationService,
    Dispatch,
    FailReason,
    HistoryEntry,
    JobView,
    Verdict,
    as_uuid,
)
from domain.authorization import DecisionStatus
from domain.store_url import DB_URL_ENV, DEFAULT_DB_URL, default_url
from domain.views import DecisionView, PolicyView
from scripts import (
    audit_commands,
    bench_commands,
    incident,
    projection_commands,
    runtime_commands,
)
from scripts.output import (
    EXIT_OK,
    EXIT_STATUS_HELP,
    OneLineParser,
    compact,
    console,
    history_table,
    print_json,
    reporting_errors,
    to_jsonable,
)

Args = argparse.Namespace
Handler = Callable[[Args], int]
Run = Callable[[CurationService, Args], Any]
Render = Callable[[Console, Any], None]


# -- argument types ---------------------------------------------------------------------------


def json_value(text: str) -> Any:
    """argparse type for JSON arguments: a parse error becomes a one-line usage error."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"invalid JSON ({exc})") from None


# -- store commands: run (service call -> payload) and render (payload -> rich) ----------------


def job_status(svc: CurationService, job_id: UUID | str) -> dict[str, Any]:
    view = svc.get(job_id)
    return {
        "job_id": view.id,
        "state": view.state,
        "version": view.version,
        "attempt": view.attempt,
    }


def run_create(svc: CurationService, args: Args) -> dict[str, Any]:
    return {"job_id": svc.create_job(args.spec)}


def run_configure(svc: CurationService, args: Args) -> dict[str, Any]:
    svc.configure(args.job, args.settings)
    return job_status(svc, args.job)


def run_submit(svc: CurationService, args: Args) -> Dispatch:
    return svc.submit(args.job)


def run_fail(svc: CurationService, args: Args) -> dict[str, Any]:
    svc.fail(args.job, reason=args.reason, message=args.message, decision_id=args.decision_id)
    return job_status(svc, args.job)


def run_retry(svc: CurationService, args: Args) -> dict[str, Any]:
    svc.retry(args.job)
    return job_status(svc, args.job)


def run_execute(svc: CurationService, args: Args) -> dict[str, Any]:
    dispatch = svc.execute(args.job, args.action, args.params)
    return {"action": args.action, **job_status(svc, args.job), "dispatch": dispatch}


def verdict_payload(verdict: Verdict) -> dict[str, Any]:
    return {"verdict": type(verdict).__name__, **to_jsonable(verdict)}


def run_complete(svc: CurationService, args: Args) -> dict[str, Any]:
    dispatch = Dispatch(
        job_id=as_uuid(args.job),
        invocation_id=as_uuid(args.invocation, "invocation"),
        expected_version=args.expected_version,
        attempt=args.attempt,
    )
    return verdict_payload(svc.complete(dispatch, args.action, args.params))


def run_show(svc: CurationService, args: Args) -> JobView:
    return svc.get(args.job)


def run_history(svc: CurationService, args: Args) -> list[HistoryEntry]:
    return svc.history(args.job, invocations=args.invocations)


def render_job_id(out: Console, payload: Mapping[str, Any]) -> None:
    out.print(str(payload["job_id"]))


def render_status(out: Console, payload: Mapping[str, Any]) -> None:
    out.print(
        f"job {payload['job_id']}: {payload['state']}, version {payload['version']}, "
        f"attempt {payload['attempt']}"
    )
    if payload.get("dispatch") is not None:
        render_dispatch(out, payload["dispatch"])


def render_dispatch(out: Console, d: Dispatch) -> None:
    out.print(
        f"job {d.job_id}: dispatched invocation {d.invocation_id} "
        f"(attempt {d.attempt}, expected version {d.expected_version})"
    )


def render_verdict(out: Console, v: Mapping[str, Any]) -> None:
    if v["verdict"] == Applied.__name__:
        out.print(
            f"Applied: invocation {v['invocation_id']}; job now at version {v['job_version']}"
        )
        return
    out.print(
        f"Discarded ({v['reason']}): invocation {v['invocation_id']}; the job was untouched at "
        f"{v['job_state_seen']}, version {v['job_version_seen']}"
    )


def render_job(out: Console, view: JobView) -> None:
    table = Table(title=f"job {view.id}", title_justify="left", show_header=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for field, value in to_jsonable(view).items():
        text = value if isinstance(value, str) else compact(value)
        table.add_row(field, Text(text))
    out.print(table)


def render_history(out: Console, entries: list[HistoryEntry]) -> None:
    out.print(history_table(entries, f"history of job {entries[0].aggregate_id}"))  # Created


def store_command(run: Run, render: Render) -> Handler:
    """Opens the store, runs one service call, always closes the store, then prints."""

    def handler(args: Args) -> int:
        svc = CurationService.open(args.db or default_url())
        try:
            payload = run(svc, args)
        finally:
            svc.close()
        if args.json:
            print_json(payload)
        else:
            render(console(), payload)
        return EXIT_OK

    return handler


def run_decisions(svc: CurationService, args: Args) -> list[DecisionView]:
    return svc.policies.decisions(args.status)


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


def render_decisions(out: Console, decisions: list[DecisionView]) -> None:
    table = Table(title=f"{len(decisions)} authorization decisions", title_justify="left")
    for column in ("decision", "status", "resource", "job", "reason", "policy"):
        table.add_column(column)
    for d in decisions:
        table.add_row(
            str(d.id), str(d.status), d.resource, d.job_id[:8], Text(d.reason),
            str(d.policy_id or ""),
        )  # fmt: skip
    out.print(table)


def render_policies(out: Console, policies: list[PolicyView]) -> None:
    table = Table(title=f"{len(policies)} active policies", title_justify="left")
    for column in ("policy", "added", "reason"):
        table.add_column(column)
    table.add_column("text", overflow="fold")
    for p in policies:
        table.add_row(str(p.id), p.added_on.isoformat(timespec="seconds"), p.reason, Text(p.text))
    out.print(table)


def render_fields(out: Console, payload: Mapping[str, Any]) -> None:
    out.print(" ".join(f"{k}={to_jsonable(v)}" for k, v in payload.items()))


def run_demo(args: Args) -> int:
    return incident.run(args.db, as_json=args.json, out=console())


HANDLERS: Mapping[str, Handler] = {
    "job create": store_command(run_create, render_job_id),
    "job configure": store_command(run_configure, render_status),
    "job submit": store_command(run_submit, render_dispatch),
    "job fail": store_command(run_fail, render_status),
    "job retry": store_command(run_retry, render_status),
    "job execute": store_command(run_execute, render_status),
    "job complete": store_command(run_complete, render_verdict),
    "job show": store_command(run_show, render_job),
    "history": store_command(run_history, render_history),
    "decisions": store_command(run_decisions, render_decisions),
    "decisions approve": store_command(run_approve, render_fields),
    "decisions reject": store_command(run_reject, render_fields),
    "policies": store_command(run_policies, render_policies),
    "policies add": store_command(run_policy_add, render_fields),
    "policies revoke": store_command(run_policy_revoke, render_fields),
    "demo": run_demo,
    **runtime_commands.HANDLERS,
    **audit_commands.HANDLERS,
    **bench_commands.HANDLERS,
    **projection_commands.HANDLERS,
}


# -- the parser -------------------------------------------------------------------------------


def common_options(*, suppress: bool) -> OneLineParser:
    """``--db`` and ``--json``. The top-level copy holds the defaults; the subcommand copies
    default to SUPPRESS so they only set a value when given, never clobbering the top level."""
    parent = OneLineParser(add_help=False)
    parent.add_argument(
        "--db",
        metavar="URL",
        default=argparse.SUPPRESS if suppress else None,
        help=f"store URL: memory://, sqlite:///PATH or postgresql://user@host:port/db "
        f"(default: ${DB_URL_ENV}, else {DEFAULT_DB_URL})",
    )
    parent.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="print machine-readable JSON on stdout",
    )
    return parent


def add_job_commands(job: OneLineParser, common: OneLineParser) -> None:
    sub = job.add_subparsers(dest="job_command", metavar="ACTION", required=True)

    def command(name: str, summary: str) -> OneLineParser:
        parser = sub.add_parser(name, parents=[common], help=summary, description=summary)
        parser.set_defaults(command=f"job {name}")
        if name != "create":
            parser.add_argument("job", metavar="JOB", help="job id (UUID)")
        return parser

    command("create", "create a job (state Queued); prints its id").add_argument(
        "--spec", type=json_value, required=True, metavar="JSON", help="what to curate (object)"
    )
    command("configure", "set a Queued job's settings").add_argument(
        "--settings", type=json_value, required=True, metavar="JSON", help="settings (object)"
    )
    command("submit", "submit a Queued job; prints the Dispatch of its new invocation")
    fail = command("fail", "fail an active job")
    fail.add_argument("--reason", default="operator", choices=[r.value for r in FailReason])
    fail.add_argument("--message", default="")
    fail.add_argument("--decision-id", default=None, help="the authorization decision, if any")
    command("retry", "retry a Failed job (Failed -> Queued, attempt + 1)")
    execute = command("execute", "perform any input action of the transition table by name")
    execute.add_argument("action", metavar="ACTION", help="e.g. RecordProgress, Complete")
    execute.add_argument("--params", type=json_value, default=None, metavar="JSON")
    add_complete_arguments(command("complete", "deliver a completion through the guard"))
    command("show", "print the job's current state")


def add_complete_arguments(complete: argparse.ArgumentParser) -> None:
    complete.add_argument("--invocation", required=True, metavar="ID", help="invocation id")
    complete.add_argument("--expected-version", type=int, required=True, metavar="N")
    complete.add_argument("--attempt", type=int, required=True, metavar="N")
    complete.add_argument("--action", required=True, help="SessionSpawned or Fail")
    complete.add_argument("--params", type=json_value, default=None, metavar="JSON")


def add_authorization_commands(sub: Any, common: OneLineParser) -> None:
    decisions = sub.add_parser(
        "decisions", parents=[common], help="list / approve / reject authorization decisions"
    )
    decisions.add_argument("--status", choices=[s.value for s in DecisionStatus], default=None)
    decisions.set_defaults(command="decisions")
    verbs = decisions.add_subparsers(dest="decision_command", metavar="VERB")
    approve = verbs.add_parser("approve", parents=[common], help="approve: adds a scoped permit")
    reject = verbs.add_parser("reject", parents=[common], help="reject a pending decision")
    for verb, parser in (("approve", approve), ("reject", reject)):
        parser.add_argument("decision", metavar="ID", help="decision id (UUID)")
        parser.add_argument("--by", default="operator", help="who decides (for the audit)")
        parser.set_defaults(command=f"decisions {verb}")
    reject.add_argument("--reason", default="")

    policies = sub.add_parser("policies", parents=[common], help="list / add / revoke policies")
    policies.set_defaults(command="policies")
    verbs = policies.add_subparsers(dest="policy_command", metavar="VERB")
    add = verbs.add_parser("add", parents=[common], help="add a Cedar policy (schema-checked)")
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="the policy text")
    source.add_argument("--file", type=argparse.FileType("r"), help="a file with the policy")
    add.add_argument("--reason", default="")
    add.set_defaults(command="policies add")
    revoke = verbs.add_parser("revoke", parents=[common], help="revoke an active policy")
    revoke.add_argument("policy", metavar="ID", help="policy id (UUID)")
    revoke.add_argument("--by", default="operator")
    revoke.add_argument("--reason", default="")
    revoke.set_defaults(command="policies revoke")


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="sequent",
        description="Event-sourced curation jobs; stale completions never touch a job.",
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common_options(suppress=False)],
    )
    common = common_options(suppress=True)
    sub = parser.add_subparsers(dest="group", metavar="COMMAND", required=True)
    job = sub.add_parser("job", parents=[common], help="commands on one job")
    add_job_commands(job, common)
    history = sub.add_parser("history", parents=[common], help="a job's events in order")
    history.add_argument("job", metavar="JOB", help="job id (UUID)")
    history.add_argument(
        "--no-invocations",
        dest="invocations",
        action="store_false",
        help="only the job's own events, not those of its invocations",
    )
    history.set_defaults(command="history")
    add_authorization_commands(sub, common)
    audit_commands.add_audit_commands(sub, common)
    runtime_commands.add_runtime_commands(sub, common, json_value)
    bench_commands.add_bench_commands(sub, common)
    projection_commands.add_projection_commands(sub, common)
    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="walk one job through the incident by hand and check the guard held",
        description="Without --db, uses a fresh SQLite file .sequent/demo.db ($SEQUENT_DB is "
        "not used, so the demo never writes into your store unless you name it).",
    )
    demo.set_defaults(command="demo")
    return parser


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = build_parser().parse_args(argv)
        return HANDLERS[args.command](args)

    return reporting_errors(body)


if __name__ == "__main__":
    sys.exit(main())
