"""The argparse side of every command: the one way a subcommand is declared (``add_command``),
and the argument types, each written once; a value that does not parse is a one-line usage
error (exit 2) naming what was expected, never a traceback."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from domain.errors import InvalidParams
from domain.values import parse_json_argument
from scripts.cli.output import OneLineParser

Args = argparse.Namespace
Handler = Callable[[Args], int]
Subcommands = Any  # argparse's _SubParsersAction, which argparse does not export


def add_command(
    sub: Subcommands, common: OneLineParser, name: str, *, command: str | None = None,
    **options: Any,
) -> OneLineParser:  # fmt: skip
    """Declares subcommand ``name``, with ``--db`` and ``--json`` (``common``), run by the
    handler its group lists as ``command`` (default: ``name``); ``options`` (help,
    description...) go to argparse."""
    parser: OneLineParser = sub.add_parser(name, parents=[common], **options)
    parser.set_defaults(command=command or name)
    return parser


def json_value(text: str) -> Any:
    """A JSON argument (``--spec``, ``--params``, ``--input``...), parsed by the domain's rules
    so that what the store could not hold (and 100,000 nested brackets) is refused here."""
    try:
        return parse_json_argument(text, "the argument")
    except InvalidParams as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(text: str) -> int:
    """A whole number of at least 1 (counts, sizes)."""
    value = _whole_number(text, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def port_number(text: str) -> int:
    """A TCP port to listen on: 0 to 65535 (0: any free one)."""
    port = _whole_number(text, "a port number")
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {port}")
    return port


def _whole_number(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def positive_float(text: str) -> float:
    """A finite number above 0 (seconds, scale factors)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text!r}")
    return value


def version_number(text: str) -> int:
    """A job version: any whole number; its range is checked against the job."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a version number, got {text!r}") from None
