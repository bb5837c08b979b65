"""The CLI commands over the read models: ``jobs``, ``discarded``, ``sessions``, ``status``,
``rebuild``, ``verify`` and ``project`` (the runner).

Queries catch the read models up first (one pass to the head), so what they print is as fresh
as the store; ``status`` does not, so it can show how far behind the views are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.text import Text

from domain import JobState, as_uuid
from projections.catalog import PROJECTION_NAMES
from projections.rebuild import RebuildReport
from projections.recorders import hash_rows
from projections.verify import VerifyReport
from scripts.cli.args import Args, Handler, Subcommands, add_command, positive_float, positive_int
from scripts.cli.output import EXIT_FAILED, EXIT_OK, OneLineParser, emit, short, table
from scripts.cli.root import read_models
from scripts.cli.signals import stop_on_signals

# -- queries ------------------------------------------------------------------------------------


def run_jobs(args: Args) -> int:
    with read_models(args) as p:
        p.catch_up()
        rows = p.jobs(args.state)

    def render(out: Console, rows: Any) -> None:
        out.print(
            table(
                f"{len(rows)} jobs" + (f" in state {args.state}" if args.state else ""),
                ("job", "state", "attempt", "version", "session", "invocation", "updated"),
                [
                    (
                        r.job_id,
                        r.state,
                        r.attempt,
                        r.version,
                        r.session_id,
                        short(r.current_invocation),
                        r.updated_at,
                    )
                    for r in rows
                ],
            )
        )

    return emit(args.json, rows, render)


def run_discarded(args: Args) -> int:
    job = None if args.job is None else str(as_uuid(args.job))
    with read_models(args) as p:
        p.catch_up()
        rows = p.discarded(job)

    def render(out: Console, rows: Any) -> None:
        out.print(
            table(
                f"{len(rows)} discarded completions",
                ("job", "invocation", "attempt", "action", "reason", "saw", "recorded"),
                [
                    (
                        short(r.job_id),
                        short(r.invocation_id),
                        r.attempt,
                        r.action,
                        r.reason,
                        f"{r.job_state_seen} v{r.job_version_seen}",
                        r.recorded_at,
                    )
                    for r in rows
                ],
            )
        )

    return emit(args.json, rows, render)


def run_sessions(args: Args) -> int:
    with read_models(args) as p:
        p.catch_up()
        rows = p.sessions(orphans=args.orphans)

    def render(out: Console, rows: Any) -> None:
        out.print(
            table(
                f"{len(rows)} {'orphan ' if args.orphans else ''}sessions",
                ("session", "job", "invocation", "verdict", "compensated", "alive", "orphan"),
                [
                    (
                        r.session_id,
                        short(r.job_id),
                        short(r.invocation_id),
                        r.verdict,
                        r.compensated,
                        r.alive,
                        r.orphan,
                    )
                    for r in rows
                ],
            )
        )

    payload = [{**asdict(r), "orphan": r.orphan} for r in rows]
    return emit(args.json, payload, lambda out, _: render(out, rows))


def flag(drift: str | None) -> str | None:
    return None if drift is None else "DRIFT"


def run_status(args: Args) -> int:
    with read_models(args) as p:
        statuses = p.status()

    def render(out: Console, rows: Any) -> None:
        out.print(
            table(
                "read models",
                ("projection", "position", "head", "lag", "rows", "skipped", "drift"),
                [
                    (s.projection, s.position, s.head, s.lag, s.rows, s.skipped, flag(s.drift))
                    for s in rows
                ],
            )
        )
        for s in rows:
            if s.drift:
                out.print(Text(f"{s.projection}: {s.drift}"))

    return emit(args.json, statuses, render)


# -- rebuild, verify, project -------------------------------------------------------------------


def rebuild_payload(report: RebuildReport) -> dict[str, Any]:
    return {**asdict(report), "equal": report.equal}


def run_rebuild(args: Args) -> int:
    names = [args.projection] if args.projection else list(PROJECTION_NAMES)
    with read_models(args) as p:
        reports = [p.rebuild(name) for name in names]
    payload: dict[str, Any]
    if args.projection:
        payload = rebuild_payload(reports[0])
    else:
        # All of them: the same keys, over the whole, plus each one.
        _, live = hash_rows((r.projection, r.checksum_live) for r in reports)
        _, rebuilt = hash_rows((r.projection, r.checksum_rebuilt) for r in reports)
        payload = {
            "projection": "all",
            "events": sum(r.events for r in reports),
            "seconds": round(sum(r.seconds for r in reports), 3),
            "checksum_live": live,
            "checksum_rebuilt": rebuilt,
            "equal": all(r.equal for r in reports),
            "projections": [rebuild_payload(r) for r in reports],
        }

    def render(out: Console, _: Any) -> None:
        out.print(
            table(
                "rebuild",
                ("projection", "events", "seconds", "events/s", "rows", "checksum", "equal"),
                [
                    (
                        r.projection,
                        r.events,
                        r.seconds,
                        r.events_per_second,
                        r.rows,
                        r.checksum_rebuilt[:16],
                        "yes" if r.equal else "NO (rebuilt is truth)",
                    )
                    for r in reports
                ],
            )
        )
        for r in reports:
            if r.live_error:
                out.print(f"{r.projection}: the old tables could not catch up: {r.live_error}")

    emit(args.json, payload, render)
    # The rebuilt tables are in place either way; a live checksum that differed means the
    # read model had drifted from the log, which a script running rebuild must hear about.
    return EXIT_OK if all(r.equal for r in reports) else EXIT_FAILED


VERIFY_COLUMNS = ("projection", "position", "head", "checked", "drifted", "missing", "extra",
                  "skipped")  # fmt: skip


def run_verify(args: Args) -> int:
    with read_models(args) as p:
        report = p.verify(catch_up=not args.no_catch_up)

    def render(out: Console, r: VerifyReport) -> None:
        out.print(
            table(
                "verify: read models against the replayed aggregates",
                VERIFY_COLUMNS,
                [tuple(getattr(c, column) for column in VERIFY_COLUMNS) for c in r.projections],
            )
        )
        for d in r.details:
            fields = ", ".join(
                f"{col}: {v['actual']!r} should be {v['expected']!r}" for col, v in d.fields.items()
            )
            what = "; ".join(part for part in (d.message, fields) if part)
            out.print(Text(f"{d.projection} {d.kind} {d.key}: {what}".rstrip(": ")))
        out.print(f"{r.snapshots} snapshots checked against their events")
        out.print("ok" if r.ok else "DRIFT: see above (a read model: rebuild it)")

    emit(args.json, report, render)
    return EXIT_OK if report.ok else EXIT_FAILED  # DESIGN.md §5: drift fails the check


def run_project(args: Args) -> int:
    with read_models(args, batch_size=args.batch_size) as p:
        if args.once:
            events = p.catch_up()
        else:
            stop = stop_on_signals()
            p.run_forever(stop, poll_seconds=args.poll)
            events = None
        statuses = p.status()
    payload = {"events": events, "projections": statuses}

    def render(out: Console, _: Any) -> None:
        out.print(
            " ".join(f"{s.projection}={s.position}/{s.head}" for s in statuses)
            + ("" if events is None else f" ({events} notifications read)")
        )

    return emit(args.json, payload, render)


# -- parsers ------------------------------------------------------------------------------------


def add_parsers(sub: Subcommands, common: OneLineParser) -> None:
    jobs = add_command(
        sub, common, "jobs", help="jobs from the job_status read model (caught up first)"
    )
    jobs.add_argument("--state", choices=[s.value for s in JobState], default=None)

    discarded = add_command(
        sub, common, "discarded", help="discarded completions from the dispatch_audit model"
    )
    discarded.add_argument("--job", metavar="JOB", default=None, help="only this job's")

    sessions = add_command(
        sub, common, "sessions", help="sessions reported by completions, and orphans"
    )
    sessions.add_argument(
        "--orphans", action="store_true", help="only discarded sessions nobody stopped"
    )

    add_command(sub, common, "status", help="each read model's position, the head, and the lag")

    rebuild = add_command(
        sub,
        common,
        "rebuild",
        help="rebuild read models from the first notification (default: all)",
        description="Replays into shadow tables while the live ones keep serving, then swaps "
        "them in at the head in one transaction; compares checksums of old and new.",
    )
    rebuild.add_argument(
        "--projection",
        choices=PROJECTION_NAMES,
        default=None,
        metavar="NAME",
        help=f"one of {', '.join(PROJECTION_NAMES)}",
    )

    verify = add_command(
        sub,
        common,
        "verify",
        help="replay parity of the read models with the event history",
        description="Folds the log one aggregate at a time and compares every read model "
        "column by column; also checks the log itself (transitions, undecodable events), the "
        "job snapshots and the workers' work table. Exit 1 on any drift.",
    )
    verify.add_argument(
        "--no-catch-up",
        action="store_true",
        help="compare the read models where they stand, without applying newer events first",
    )

    project = add_command(
        sub, common, "project", help="run the projection runner (until SIGTERM/SIGINT)"
    )
    project.add_argument("--once", action="store_true", help="catch up to the head, then exit")
    project.add_argument("--batch-size", type=positive_int, default=1000, metavar="N")
    project.add_argument(
        "--poll",
        type=positive_float,
        default=0.2,
        metavar="SECONDS",
        help="how often SQLite is polled; PostgreSQL is followed live",
    )


HANDLERS: Mapping[str, Handler] = {
    "jobs": run_jobs,
    "discarded": run_discarded,
    "sessions": run_sessions,
    "status": run_status,
    "rebuild": run_rebuild,
    "verify": run_verify,
    "project": run_project,
}
