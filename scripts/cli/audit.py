"""``sequent audit JOB [--at VERSION] [--json] [--export FILE]``: one job's timeline read from
the event store (projections/timeline.py), its invocations labelled A, B, C…, every completion's
verdict and reason, the Cedar decisions that touched it, and its state as of any version.

``--json`` prints ``Timeline.to_json()`` (plus ``"at"`` with ``--at``); ``--export FILE``
writes the whole history as JSON lines and reports how many. Errors keep the CLI's contract:
one line on stderr, non-zero exit (unknown job 1, malformed id 2, version out of range 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from projections.timeline import Timeline
from projections.timeline_records import Completion, JobStateAt
from scripts.cli.args import Args, Handler, Subcommands, add_command, version_number
from scripts.cli.output import (
    EVENT_STYLES,
    OneLineParser,
    emit,
    fields_table,
    history_table,
    short,
)
from scripts.cli.root import service


def run_audit(args: Args) -> int:
    # Printed before the store closes: ``to_json(at=V)`` reads the job as of V from the store.
    with service(args) as svc:
        timeline = Timeline.load(svc, args.job)
        if args.export is not None:
            lines = timeline.export_jsonl(args.export)
            payload: dict[str, Any] = {
                "job": str(timeline.job_id),
                "export": str(args.export),
                "lines": lines,
                **{k: timeline.summary()[k] for k in EXPORT_COUNTS},
            }
            return emit(args.json, payload, lambda out, p: out.print(render_export(p)))
        at = timeline.state_at(args.at) if args.at is not None else timeline.current
        return emit(
            args.json,
            timeline.to_json(at=args.at),
            lambda out, _: out.print(render_timeline(timeline, at)),
        )


EXPORT_COUNTS = ("events", "invocation_events", "decision_events")
# Human output shows a run of more than this many job events of one name (progress entries)
# as its first, a "... N more" row, and its last; --json and --export always have every event.
COLLAPSE_RUNS = 10


def render_export(payload: Mapping[str, Any]) -> Text:
    return Text(
        f"exported {payload['lines']} events of job {payload['job']} to {payload['export']} "
        f"(job {payload['events']}, invocations {payload['invocation_events']}, "
        f"decisions {payload['decision_events']})"
    )


# -- human output -----------------------------------------------------------------------------


def render_timeline(timeline: Timeline, at: JobStateAt) -> Group:
    current = timeline.current
    header = Text(
        f"job {timeline.job_id}: {current.state}, version {current.version}, "
        f"attempt {current.attempt}, session {current.session_id or '-'}",
        style="bold",
    )
    return Group(
        header,
        history_table(
            timeline.entries(collapse=COLLAPSE_RUNS),
            f"timeline of job {short(timeline.job_id)}",
            timeline.labels,
        ),
        invocations_table(timeline),
        completion_summary(timeline),
        decisions_table(timeline),
        state_table(at, latest=timeline.version),
    )


def invocations_table(timeline: Timeline) -> Table:
    table = Table(title=f"{len(timeline.invocations)} invocations", title_justify="left")
    for column in ("run", "id", "attempt", "dispatched at", "module sha256", "claims"):
        table.add_column(column, no_wrap=True)
    table.add_column("completions", overflow="fold")
    table.add_column("compensated", overflow="fold")
    for i in timeline.invocations:
        claims = ", ".join(c.worker for c in i.claims) or "-"
        completions = Text("\n").join(completion_text(c) for c in i.completions) or Text("-")
        table.add_row(
            Text(i.label if i.recognised else f"{i.label} (unrecognised)"),
            Text(short(i.id)),
            Text(str(i.attempt) if i.attempt is not None else "-"),
            Text(f"v{i.expected_version}"),
            Text(i.module_sha256[:12] or "-"),
            Text(claims),
            completions,
            Text(", ".join(c.session_id for c in i.compensations) or "-"),
        )
    return table


def completion_text(c: Completion) -> Text:
    text = Text(f"{c.action or '?'} -> ")
    if c.verdict is None:
        return text.append("no verdict recorded", style="bold red")
    text.append(c.verdict, style=EVENT_STYLES.get(c.verdict, ""))
    if c.applied:
        return text.append(f" (job v{c.job_version})")
    return text.append(f" {c.reason} (job {c.job_state_seen} at v{c.job_version_seen})")


def completion_summary(timeline: Timeline) -> Text:
    s = timeline.summary()
    reasons = ", ".join(f"{k} {v}" for k, v in s["discard_reasons"].items())
    return Text(
        f"completions: {s['completions']} (applied {s['applied']}, discarded {s['discarded']}"
        + (f": {reasons}" if reasons else "")
        + f"); compensated sessions: {s['compensations']}; decisions: {s['decisions']}"
    )


def decisions_table(timeline: Timeline) -> Table:
    labels = {i.id: i.label for i in timeline.invocations}
    by_text = {str(k): v for k, v in labels.items()}
    table = Table(title=f"{len(timeline.decisions)} Cedar decisions", title_justify="left")
    for column in ("decision", "id", "status", "run", "resource", "by", "policy"):
        table.add_column(column, no_wrap=True)
    table.add_column("reason", overflow="fold")
    for n, d in enumerate(timeline.decisions, 1):
        table.add_row(
            Text(str(n)),
            Text(short(d.id)),
            Text(d.status),
            Text(by_text.get(d.invocation_id, short(d.invocation_id or None))),
            Text(d.resource),
            Text(d.decided_by or "-"),
            Text(short(d.policy_id)),
            Text(d.rejection_reason or d.reason),
        )
    return table


def state_table(at: JobStateAt, latest: int) -> Table:
    when = "current" if at.version == latest else f"of {latest}"
    return fields_table(f"state as of version {at.version} ({when})", at.to_json())


# -- parser -----------------------------------------------------------------------------------


def add_parsers(sub: Subcommands, common: OneLineParser) -> None:
    audit = add_command(
        sub,
        common,
        "audit",
        help="a job's timeline: events, invocations, verdicts, decisions; state at any version",
        description="Reads the event store directly (not the read models). Invocations are "
        "labelled A, B, C... in the order the job started them.",
    )
    audit.add_argument("job", metavar="JOB", help="job id (UUID)")
    mode = audit.add_mutually_exclusive_group()
    mode.add_argument(
        "--at",
        type=version_number,
        default=None,
        metavar="VERSION",
        help="show the job's state as of this version (default: the current one)",
    )
    mode.add_argument(
        "--export",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the whole history (job, invocations, decisions) as JSON lines",
    )


HANDLERS: Mapping[str, Handler] = {"audit": run_audit}
