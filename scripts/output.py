"""What the terminal sees, shared by the CLI and the incident demo: plain-JSON encoding, the
history table, and the error contract (one line on stderr, a documented exit code, never a
traceback).

It lives apart from ``cli.py`` so the demo prints and fails exactly like the CLI without the two
modules importing each other.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime
from enum import Enum
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

EXIT_OK = 0
EXIT_FAILED = 1  # the command was refused or could not run: see EXIT_STATUS_HELP
EXIT_USAGE = 2  # the command line itself was wrong
EXIT_INTERRUPTED = 130

EXIT_STATUS_HELP = """\
exit status:
  0  done
  1  refused or failed: unknown job, invalid transition (the 409 of sequent), unreachable
     store, conflicts past the retry bound, a demo fact that did not hold
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
)

# The table's aggregate-name styles: what a reader of a timeline should see first.
EVENT_STYLES: Mapping[str, str] = {"Applied": "green", "Discarded": "yellow", "Failed": "red"}


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


def to_jsonable(value: Any) -> Any:
    """Plain JSON values from what the domain hands out: dataclasses become objects, UUIDs and
    datetimes strings, enums their values. Anything else is a bug and raises TypeError."""
    if isinstance(value, Enum):
        value = value.value
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, UUID | datetime | date):
        return str(value) if isinstance(value, UUID) else value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def print_json(value: Any, stream: TextIO | None = None) -> None:
    print(json.dumps(to_jsonable(value), indent=2), file=stream or sys.stdout)


def compact(value: Any) -> str:
    return json.dumps(to_jsonable(value), separators=(",", ":"))


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
    return compact(value)


def console() -> Console:
    """Rich output on stdout. Piped output gets 120 columns rather than rich's 80, unless
    $COLUMNS says otherwise, so a saved timeline stays readable."""
    wide = sys.stdout.isatty() or "COLUMNS" in os.environ
    return Console(file=sys.stdout, highlight=False, soft_wrap=True, width=None if wide else 120)


def history_table(
    entries: Iterable[HistoryEntry], title: str, labels: Mapping[UUID, str] | None = None
) -> Table:
    """One row per event. ``labels`` names aggregates (e.g. "invocation A") instead of their
    kind; cells are Text so event data is never read as rich markup."""
    table = Table(title=title, title_justify="left")
    for column in ("aggregate", "id", "event", "v", "time"):
        table.add_column(column, no_wrap=True)
    table.add_column("data", overflow="fold")
    for e in entries:
        label = (labels or {}).get(e.aggregate_id, e.aggregate)
        table.add_row(
            Text(label),
            Text(short(e.aggregate_id)),
            Text(e.name, style=EVENT_STYLES.get(e.name, "")),
            Text(str(e.version)),
            Text(e.timestamp.strftime("%H:%M:%S.%f")[:-3]),
            Text(brief(e.data)),
        )
    return table


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1, or a one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value
