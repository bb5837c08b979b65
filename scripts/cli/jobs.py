"""``sequent job ACTION JOB`` and ``sequent history JOB``: the command API of DESIGN.md §5, one
service call per command. Each command is a run (service call -> payload) and a render
(payload -> rich); ``root.store_command`` opens and closes the store around them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

from rich.console import Console

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
from scripts.cli.args import Args, Handler, Subcommands, add_command, json_value
from scripts.cli.output import OneLineParser, fields_table, history_table, to_jsonable
from scripts.cli.root import store_command

# -- runs: service call -> payload ------------------------------------------------------------


def job_status(svc: CurationService, job_id: UUID | str) -> dict[str, Any]:
    view = svc.get(job_id)
    return {"job_id": view.id, "state": view.state, "version": view.version,
            "attempt": view.attempt}  # fmt: skip


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


def run_complete(svc: CurationService, args: Args) -> dict[str, Any]:
    dispatch = Dispatch(
        job_id=as_uuid(args.job),
        invocation_id=as_uuid(args.invocation, "invocation"),
        expected_version=args.expected_version,
        attempt=args.attempt,
    )
    return verdict_payload(svc.complete(dispatch, args.action, args.params))


def verdict_payload(verdict: Verdict) -> dict[str, Any]:
    """A verdict as JSON: its kind (``Applied`` or ``Discarded``) and its fields."""
    return {"verdict": type(verdict).__name__, **to_jsonable(verdict)}


def run_show(svc: CurationService, args: Args) -> JobView:
    return svc.get(args.job)


def run_history(svc: CurationService, args: Args) -> list[HistoryEntry]:
    return svc.history(args.job, invocations=args.invocations)


# -- renders: payload -> rich -----------------------------------------------------------------


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
    out.print(fields_table(f"job {view.id}", to_jsonable(view)))


def render_history(out: Console, entries: list[HistoryEntry]) -> None:
    out.print(history_table(entries, f"history of job {entries[0].aggregate_id}"))  # Created


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
}


# -- parsers ----------------------------------------------------------------------------------


def add_parsers(sub: Subcommands, common: OneLineParser) -> None:
    job = sub.add_parser("job", parents=[common], help="commands on one job")
    actions = job.add_subparsers(dest="job_command", metavar="ACTION", required=True)

    def command(name: str, summary: str) -> OneLineParser:
        parser = add_command(
            actions, common, name, command=f"job {name}", help=summary, description=summary
        )
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
    complete = command("complete", "deliver a completion through the guard")
    complete.add_argument("--invocation", required=True, metavar="ID", help="invocation id")
    complete.add_argument("--expected-version", type=int, required=True, metavar="N")
    complete.add_argument("--attempt", type=int, required=True, metavar="N")
    complete.add_argument("--action", required=True, help="SessionSpawned or Fail")
    complete.add_argument("--params", type=json_value, default=None, metavar="JSON")
    command("show", "print the job's current state")

    history = add_command(sub, common, "history", help="a job's events in order")
    history.add_argument("job", metavar="JOB", help="job id (UUID)")
    history.add_argument(
        "--no-invocations",
        dest="invocations",
        action="store_false",
        help="only the job's own events, not those of its invocations",
    )
