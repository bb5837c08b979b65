"""What the terminal sees, for every command: the error contract (one line on stderr, a
documented exit code, never a traceback), JSON on stdout, and the rich helpers the human
output is built from.

Every command prints through ``emit`` (``--json`` or rich) and fails through
``reporting_errors``, so a script can rely on the same shapes whichever command it runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NoReturn, TextIO
from uuid import UUID

from rich.console import Console
from rich.table import Table
from rich.text import Text

from domain import (
    ActionNotAllowedHere,
    HistoryEntry,
    InvalidDispatch,
    InvalidParams,
    MalformedId,
    SequentError,
    StoreURLError,
    UnknownAction,
)
from integrations.module_files import ModuleRejected
from projections.timeline_records import plain

EXIT_OK = 0
EXIT_FAILED = 1  # the command was refused or could not run: see EXIT_STATUS_HELP
EXIT_USAGE = 2  # the command line itself was wrong
EXIT_INTERRUPTED = 130

EXIT_STATUS_HELP = """\
exit status:
  0  done
  1  refused or failed: unknown job, invalid transition (the 409 of sequent), unreachable
     store, conflicts past the retry bound, a demo fact that did not hold, drift found by
     verify or rebuild (their report is still printed)
  2  bad input: usage errors, malformed JSON, ids or store URLs, unknown actions, invalid
     params, an action offered through the wrong command
every error is exactly one line on stderr, "sequent: error: ...", and writes nothing"""

# Domain errors that mean "what you typed is wrong" rather than "the store said no".
BAD_INPUT: tuple[type[SequentError], ...] = (
    MalformedId,
    UnknownAction,
    InvalidParams,
    ActionNotAllowedHere,
    StoreURLError,
    InvalidDispatch,
    ModuleRejected,  # the module file a user named
)

# The table's aggregate-name styles: what a reader of a timeline should see first.
EVENT_STYLES: Mapping[str, str] = {"Applied": "green", "Discarded": "yellow", "Failed": "red"}

Render = Callable[[Console, Any], None]


# -- the error contract ------------------------------------------------------------------------


class UsageError(Exception):
    """A command line that argparse refused."""


class OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus a message and exits; this raises instead, so the caller can
    keep the one-line error contract. Subparsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def one_line(text: str) -> str:
    return " ".join(text.split())


def report(exc: BaseException, stream: TextIO | None = None) -> int:
    """Prints ``exc`` as the single error line on stderr and returns its exit code."""
    if isinstance(exc, KeyboardInterrupt):
        message, code = "interrupted", EXIT_INTERRUPTED
    else:
        bad_input = isinstance(exc, (UsageError, *BAD_INPUT))
        message, code = str(exc), EXIT_USAGE if bad_input else EXIT_FAILED
    print(f"sequent: error: {one_line(message)}", file=stream or sys.stderr)
    return code


def reporting_errors(body: Callable[[], int]) -> int:
    """Runs a command's ``body`` under the error contract: a known error becomes one stderr
    line and its exit code; ``--help`` returns argparse's exit code instead of exiting."""
    try:
        return body()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    except (UsageError, SequentError, KeyboardInterrupt) as exc:
        return report(exc)


# -- JSON --------------------------------------------------------------------------------------


def _encode(value: Any) -> Any:
    """``json.dumps``' hook for what it cannot encode itself. The values are the audit's
    (``plain``: UUIDs and datetimes as strings, enums as their values), so ``sequent audit
    --json`` and every other command agree; the CLI adds only dataclasses (the domain's views,
    verdicts and reports), as the object of their fields."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return plain(value)


def json_text(value: Any, *, indent: int | None = None) -> str:
    """``value`` as JSON, compact unless indented; anything neither JSON, ``plain`` nor a
    dataclass raises TypeError."""
    separators = None if indent else (",", ":")
    return json.dumps(value, default=_encode, indent=indent, separators=separators)


def to_jsonable(value: Any) -> Any:
    """``value`` as the plain JSON values ``--json`` prints (dicts, lists, strings, numbers)."""
    return json.loads(json_text(value))


def print_json(value: Any, stream: TextIO | None = None) -> None:
    print(json_text(value, indent=2), file=stream or sys.stdout)


def emit(as_json: bool, payload: Any, render: Render) -> int:
    """Prints a command's result: ``payload`` as JSON, else ``render``'s rich output."""
    if as_json:
        print_json(payload)
    else:
        render(console(), payload)
    return EXIT_OK


# -- rich --------------------------------------------------------------------------------------


def console() -> Console:
    """Rich output on stdout. Piped output gets 120 columns rather than rich's 80, unless
    $COLUMNS says otherwise, so a saved timeline stays readable."""
    wide = sys.stdout.isatty() or "COLUMNS" in os.environ
    return Console(file=sys.stdout, highlight=False, soft_wrap=True, width=None if wide else 120)


def short(value: UUID | str | None) -> str:
    return "-" if value is None else str(value)[:8]


def brief(data: Mapping[str, Any]) -> str:
    """Event data for people: key=value, UUIDs shortened, empty values left out. (``--json``
    keeps everything.)"""
    return " ".join(
        f"{key}={_brief_value(value)}" for key, value in data.items() if value not in (None, "")
    )


def _brief_value(value: Any) -> str:
    if isinstance(value, UUID):
        return short(value)
    if isinstance(value, str) and " " not in value:
        return value
    return json_text(value)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    """A titled table of text cells ("-" for None); cells are Text, never rich markup."""
    out = Table(title=title, title_justify="left")
    for column in columns:
        out.add_column(column)
    for row in rows:
        out.add_row(*(Text("-" if v is None else str(v)) for v in row))
    return out


def fields_table(title: str, fields: Mapping[str, Any]) -> Table:
    """One row per field: its name and its value ("-" for None, compact JSON unless text)."""
    out = Table(title=title, title_justify="left", show_header=False)
    out.add_column("field", style="bold", no_wrap=True)
    out.add_column("value", overflow="fold")
    for name, value in fields.items():
        text = "-" if value is None else value if isinstance(value, str) else json_text(value)
        out.add_row(name, Text(text))
    return out


def history_table(
    entries: Iterable[HistoryEntry], title: str, labels: Mapping[UUID, str] | None = None
) -> Table:
    """One row per event. ``labels`` names aggregates (e.g. "invocation A") instead of their
    kind; cells are Text so event data is never read as rich markup."""
    out = Table(title=title, title_justify="left")
    for column in ("aggregate", "id", "event", "v", "time"):
        out.add_column(column, no_wrap=True)
    out.add_column("data", overflow="fold")
    for e in entries:
        label = (labels or {}).get(e.aggregate_id, e.aggregate)
        out.add_row(
            Text(label),
            Text(short(e.aggregate_id)),
            Text(e.name, style=EVENT_STYLES.get(e.name, "")),
            Text(str(e.version)),
            Text(e.timestamp.strftime("%H:%M:%S.%f")[:-3]),
            Text(brief(e.data)),
        )
    return out
