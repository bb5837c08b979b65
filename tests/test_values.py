"""The one validator of user JSON (domain/values.py): each rule, its message, and that it never
recurses, so no depth of input can crash it."""

from __future__ import annotations

import math
from typing import Any
from uuid import uuid4

import pytest

from domain import InvalidParams
from domain.values import (
    MAX_DEPTH,
    MAX_PARAMS_BYTES,
    escape_unstorable,
    json_problems,
    parse_json_argument,
)
from tests.support.values import nested

ACCEPTED: list[Any] = [
    {},
    {"a": [1, 2.5, -0.0, 1e308, 5e-324, True, False, None, "x"]},
    {"astral": "\U0001f600\U00010348", "controls": "\x01\x1f\x7f\t\r\n", "bidi": "\u202e"},
    {"big": 2**63 - 1, "small": -(2**63)},
    {"_type_": "uuid_hex"},  # one of the two keys: the transcoder leaves it alone
    {"_data_": 1},
    {"_type_": "x", "_data_": 0, "_extra_": 1},  # three keys: likewise
    {"_TYPE_": "x", "_data_": 0},
    nested(MAX_DEPTH),
    {"s": "y" * (MAX_PARAMS_BYTES - 100)},
]


@pytest.mark.parametrize("value", ACCEPTED, ids=range(len(ACCEPTED)))
def test_plain_json_within_the_bounds_is_accepted(value: Any) -> None:
    assert json_problems(value) == []


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ({"_type_": "x", "_data_": 0}, "params: an object with exactly the keys '_type_'"),
        ({"_type_": "uuid_hex", "_data_": uuid4().hex}, "event store's own encoding"),
        ({"_type_": "decimal_str", "_data_": "1.5"}, "event store's own encoding"),
        ({"a": [{"_data_": None, "_type_": None}]}, "params.a[0]: an object with exactly"),
        ({"a\x00b": 1}, r"params: key 'a\x00b' contains NUL (\u0000)"),
        ({"a": ["ok", "x\x00"]}, r"params.a[1]: contains NUL (\u0000)"),
        ({"a": "\ud800"}, r"params.a: contains a lone surrogate (\ud800)"),
        ({"a": "\udfff"}, r"contains a lone surrogate (\udfff)"),
        ({"\udc80": 1}, r"key '\udc80' contains a lone surrogate"),
        ({"a": "\ud83d\ude00"}, "lone surrogate"),  # a pair spelled out is still no character
        (nested(MAX_DEPTH + 1), f"nested deeper than {MAX_DEPTH} levels"),
        (nested(100_000), f"nested deeper than {MAX_DEPTH} levels"),
        ({"x": math.nan}, "params.x: nan is not plain JSON"),
        ({"x": math.inf}, "inf is not plain JSON"),
        ({"x": -math.inf}, "-inf is not plain JSON"),
        ({"x": 2**63}, "params.x: integer outside 64 bits"),
        ({"x": -(2**63) - 1}, "integer outside 64 bits"),
        ({"x": 10**5000}, "integer outside 64 bits"),
        ({"x": (1, 2)}, "params.x: tuple is not plain JSON"),
        ({"x": {1, 2}}, "set is not plain JSON"),
        ({"x": uuid4()}, "UUID is not plain JSON"),
        ({1: "x"}, "params: key 1 is not a string"),
        ({"s": "y" * MAX_PARAMS_BYTES}, f"more than the limit of {MAX_PARAMS_BYTES} bytes"),
        ({"s": "é" * (MAX_PARAMS_BYTES // 2)}, "params is 1048584 bytes, more than the limit"),
        ({"l": [0] * MAX_PARAMS_BYTES}, "params is more than the limit"),
    ],
)
def test_what_no_store_or_reader_can_hold_is_refused_with_where_it_is(
    value: Any, fragment: str
) -> None:
    problems = json_problems(value)
    assert len(problems) == 1
    assert fragment in problems[0]
    assert not _unstorable(problems[0]), "a message must itself be storable"


def _unstorable(text: str) -> bool:
    return "\x00" in text or any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def test_a_long_path_keeps_its_two_ends() -> None:
    [problem] = json_problems({"spec": nested(MAX_DEPTH + 5, "\x00")}, "params")
    assert problem.startswith("params.spec[0].k[0]…")
    assert len(problem) < 200


def test_parse_json_argument_parses_and_checks() -> None:
    assert parse_json_argument('{"target": "t", "n": [1, 2]}', "spec") == {
        "target": "t",
        "n": [1, 2],
    }


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[" * 100_000, "spec: nested deeper than 64 levels"),
        ("[" * 100_000 + "]" * 100_000, "spec: nested deeper than 64 levels"),
        ('{"a":' * 100 + "1" + "}" * 100, "nested deeper than 64 levels"),
        ("{", "spec is not JSON: Expecting property name"),
        ('{"x": NaN}', "spec is not JSON: NaN is not JSON"),
        ('{"x": -Infinity}', "-Infinity is not JSON"),
        ('{"x": "\\u0000"}', r"spec.x: contains NUL (\u0000)"),
        ('{"x": "\\ud800"}', "lone surrogate"),
        ('{"_type_": "x", "_data_": 0}', "event store's own encoding"),
        ("1" * 5000, "spec is not JSON"),
        (" " * (MAX_PARAMS_BYTES + 1), "more than the limit"),
    ],
)
def test_parse_json_argument_refuses_with_one_line(text: str, fragment: str) -> None:
    with pytest.raises(InvalidParams) as caught:
        parse_json_argument(text, "spec")
    message = str(caught.value)
    assert message.startswith("JSON argument: ")
    assert fragment in message
    assert "\n" not in message


def test_escape_unstorable_spells_out_only_what_no_store_can_hold() -> None:
    assert escape_unstorable("a\x00b\ud800c\U0001f600\x01") == "a\\u0000b\\ud800c\U0001f600\x01"
    assert json_problems(escape_unstorable("\x00\udfff")) == []
