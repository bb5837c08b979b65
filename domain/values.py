"""The one validator of user JSON (DESIGN.md §1 invariant 5, §8).

Everything sequent is handed to store — a command's params, a completion's params, a guest
module's output, policy texts, a decision's fields, an operator's name or message — passes
``json_problems`` before it becomes event data. What passes, every store and every read model
can hold and every reader can decode; what does not is refused at the edge with
``InvalidParams``, never special-cased downstream.

The rules, and why each exists:

- **Plain JSON only**: objects (``dict`` with ``str`` keys), arrays (``list``), strings,
  integers, floats, ``true``/``false``, ``null``. A tuple, set, UUID, Decimal or datetime is
  refused: the event store would either fail to encode it or give back something else.
- **Integers fit in 64 bits** (``-2**63 .. 2**63-1``): what a read model's integer column, a
  guest's ``i64`` and every JSON parser with a limit on digits can hold.
- **Floats are finite**: NaN and Infinity are not JSON.
- **No NUL and no lone surrogate** in any string or key: PostgreSQL's ``text`` cannot hold
  U+0000, so a read model that met one would stop for good; a surrogate (U+D800..U+DFFF) has no
  UTF-8 encoding, so the store could not even write the event.
- **Nesting at most** ``MAX_DEPTH`` **arrays/objects deep**, counting the checked value
  itself, and checked without recursion (so a value nested 100,000 deep is refused, not a
  ``RecursionError``): every reader folds events with recursive decoders.
- **At most** ``MAX_PARAMS_BYTES`` **encoded** (UTF-8 JSON, as the store writes it). The walk
  keeps a lower bound of the size and stops as soon as it is over, so an oversized value costs
  about the limit's worth of work, not its own size.
- **No object whose keys are exactly** ``_type_`` **and** ``_data_``. ``eventsourcing``'s
  ``JSONTranscoder`` writes a value of a non-JSON type (UUID, Decimal, datetime) as such an
  object and, reading events back, turns *every* such object into the type it names: a user
  object of that shape would come back as a UUID or Decimal, or — for a name it does not know —
  make the event undecodable for every reader (history, audit, read models, verify, rebuild,
  each worker's deadline sweep). It is refused rather than escaped in an envelope: the stored
  data stays the caller's plain JSON, the shape has no use a caller could need, and a refusal
  says what happened. Objects with only one of the keys, or with more keys, are never decoded
  as a type (the transcoder looks only at two-key objects) and are allowed.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

from domain.errors import InvalidParams

MAX_PARAMS_BYTES: Final = 1024 * 1024  # a payload larger than this, encoded, is refused
MAX_DEPTH: Final = 64  # arrays/objects nested deeper than this are refused
WHAT_ARGUMENT: Final = "JSON argument"  # what InvalidParams names for parse_json_argument
MIN_INT: Final = -(2**63)
MAX_INT: Final = 2**63 - 1

# What no stored string may contain: NUL, and any surrogate code point (a Python str holds one
# only when it is lone: a well-formed astral character is one code point).
_OVER_LIMIT: Final = f"more than the limit of {MAX_PARAMS_BYTES} bytes"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# The keys of eventsourcing's JSONTranscoder encoding of a non-JSON value.
_TRANSCODER_KEYS: Final = frozenset({"_type_", "_data_"})
_SIMPLE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")

# A path to a value, as linked pairs (parent, key): built for every value walked, rendered only
# for the one a problem is reported at.
_Path = tuple[Any, str | int]


def json_problems(value: object, name: str = "params") -> list[str]:
    """The first problem of ``value`` under the rules above, as a one-item list naming where it
    is (``spec.items[3]``); empty when ``value`` may be stored. Messages never contain the
    offending characters themselves, only their escapes."""
    problem = _walk(value, name)
    if problem:
        return [problem]
    size = len(_ENCODER.encode(value).encode("utf-8"))
    if size > MAX_PARAMS_BYTES:
        return [f"{name} is {size} bytes, {_OVER_LIMIT}"]
    return []


def check_json(what: str, name: str, value: object) -> None:
    """Raises ``InvalidParams(what, ...)`` unless ``value`` may be stored (see the rules)."""
    problems = json_problems(value, name)
    if problems:
        raise InvalidParams(what, problems)


def parse_json_argument(text: str, name: str = "argument") -> Any:
    """A JSON command-line argument (``--spec``, ``--params``, …) parsed and checked by the same
    rules. The text's size is checked before it is parsed, and a parse that recurses too deep
    (100,000 nested brackets) is refused, not a ``RecursionError``. Raises InvalidParams."""
    if len(text) > MAX_PARAMS_BYTES:  # characters: never more than the UTF-8 bytes
        raise InvalidParams(WHAT_ARGUMENT, [f"{name} is {len(text)} characters, {_OVER_LIMIT}"])
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        why = f"{name}: nested deeper than {MAX_DEPTH} levels"
        raise InvalidParams(WHAT_ARGUMENT, [why]) from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, an integer of too many digits
        raise InvalidParams(WHAT_ARGUMENT, [f"{name} is not JSON: {_first_line(exc)}"]) from None
    check_json(WHAT_ARGUMENT, name, value)
    return value


def escape_unstorable(text: str) -> str:
    """``text`` with NUL and lone surrogates spelled as ``\\uXXXX``: for the host's own
    messages that quote what a guest or a library said (a trap message, say), which must be
    recorded rather than refused."""
    return _UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


# -- the walk ----------------------------------------------------------------------------------

_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _walk(value: object, name: str) -> str | None:
    """The first rule ``value`` breaks, depth first, without recursion; None if it breaks none
    except perhaps the exact size, which the caller measures once nesting is known to be
    bounded."""
    budget = MAX_PARAMS_BYTES  # minus a lower bound of the encoded size seen so far
    stack: list[tuple[object, _Path, int]] = [(value, (None, name), 0)]
    while stack:
        item, path, depth = stack.pop()
        problem, size = _visit(item, path, depth, stack)
        if problem:
            return problem
        budget -= size
        if budget < 0:
            return f"{name} is {_OVER_LIMIT}"
    return None


def _visit(
    item: object, path: _Path, depth: int, stack: list[tuple[object, _Path, int]]
) -> tuple[str | None, int]:
    """The rule ``item`` itself breaks (None if none) and a lower bound of its own encoded
    size; its children go onto ``stack``."""
    if isinstance(item, str):
        bad = _UNSTORABLE.search(item)
        return (f"{_where(path)}: {_unstorable(item)}" if bad else None), len(item) + 2
    if isinstance(item, dict | list):
        return _container(item, path, depth + 1, stack), len(item) + 2
    return _scalar_problem(item, path), 1


def _scalar_problem(item: object, path: _Path) -> str | None:
    if item is None or isinstance(item, bool):
        return None
    if isinstance(item, int):
        return None if MIN_INT <= item <= MAX_INT else f"{_where(path)}: integer outside 64 bits"
    if isinstance(item, float):
        return None if math.isfinite(item) else f"{_where(path)}: {item} is not plain JSON"
    return f"{_where(path)}: {type(item).__name__} is not plain JSON"


def _container(
    item: dict[Any, Any] | list[Any],
    path: _Path,
    depth: int,
    stack: list[tuple[object, _Path, int]],
) -> str | None:
    if depth > MAX_DEPTH:
        return f"{_where(path)}: nested deeper than {MAX_DEPTH} levels"
    if isinstance(item, list):
        stack.extend((child, (path, i), depth) for i, child in enumerate(item))
        return None
    if len(item) == 2 and _TRANSCODER_KEYS.issubset(item):
        return (
            f"{_where(path)}: an object with exactly the keys '_type_' and '_data_' is the "
            "event store's own encoding of a non-JSON value, so it is refused"
        )
    for key, child in item.items():
        if not isinstance(key, str):
            return f"{_where(path)}: key {_shown(key)} is not a string"
        if _UNSTORABLE.search(key):
            return f"{_where(path)}: key {_shown(key)} {_unstorable(key)}"
        stack.append((child, (path, key), depth))
    return None


def _unstorable(text: str) -> str:
    match = _UNSTORABLE.search(text)
    assert match is not None
    char = match.group()
    if char == "\x00":
        return "contains NUL (\\u0000), which no store can hold as text"
    return f"contains a lone surrogate (\\u{ord(char):04x}), which has no UTF-8 encoding"


def _where(path: _Path) -> str:
    """``spec.items[3]['odd key']`` from a linked path; long paths keep their two ends."""
    keys: list[str | int] = []
    node: Any = path
    while node is not None:
        node, key = node
        keys.append(key)
    name, *rest = reversed(keys)
    parts = [_segment(key) for key in rest]
    if len(parts) > 8:
        parts = [*parts[:4], "…", *parts[-3:]]
    return str(name) + "".join(parts)


def _segment(key: str | int) -> str:
    if isinstance(key, int):
        return f"[{key}]"
    return f".{key}" if _SIMPLE_KEY.fullmatch(key) else f"[{_shown(key)}]"


def _shown(key: object) -> str:
    text = repr(key)  # escapes NUL, surrogates and other controls
    return text if len(text) <= 40 else text[:37] + "…"


def _reject_constant(constant: str) -> object:
    raise ValueError(f"{constant} is not JSON")


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
