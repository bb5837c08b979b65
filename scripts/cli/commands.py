"""The ``sequent`` command line (DESIGN.md §5): the parser, the dispatch table, ``main``.

Why it looks like this: each command group is a module (``jobs``, ``authorization``,
``audit``, ``read_models``, ``runtime``, ``race``, ``invariants``, ``demo``, ``bench``,
``serve``) with the same two members, ``add_parsers(sub, common)`` and ``HANDLERS``
(``args.command`` -> handler), so adding a command touches one module and this table of
groups. Every handler starts at the composition root (root.py) and prints through output.py;
``main`` runs it under the error contract: one line on stderr and a documented exit code,
never a traceback. ``--db`` and ``--json`` work before or after the subcommand.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from bootstrap.settings import DEFAULT_STATE_DIR, HOME_ENV
from domain.store_url import DB_URL_ENV
from scripts.cli import (
    audit,
    authorization,
    bench,
    demo,
    invariants,
    jobs,
    race,
    read_models,
    runtime,
    serve,
)
from scripts.cli.args import Handler
from scripts.cli.output import EXIT_STATUS_HELP, OneLineParser, reporting_errors

GROUPS = (jobs, authorization, audit, read_models, runtime, race, invariants, demo, bench, serve)
HANDLERS: Mapping[str, Handler] = {
    command: handler for group in GROUPS for command, handler in group.HANDLERS.items()
}


def common_options(*, suppress: bool) -> OneLineParser:
    """``--db`` and ``--json``. The top-level copy holds the defaults; the subcommand copies
    default to SUPPRESS so they only set a value when given, never clobbering the top level."""
    parent = OneLineParser(add_help=False)
    parent.add_argument(
        "--db",
        metavar="URL",
        default=argparse.SUPPRESS if suppress else None,
        help="store URL: memory://, sqlite:///PATH or postgresql://user@host:port/db "
        f"(default: ${DB_URL_ENV}, else sequent.db in ${HOME_ENV}, else in {DEFAULT_STATE_DIR}/)",
    )
    parent.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="print machine-readable JSON on stdout",
    )
    return parent


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
    for group in GROUPS:
        group.add_parsers(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    def body() -> int:
        args = build_parser().parse_args(argv)
        return HANDLERS[args.command](args)

    return reporting_errors(body)
