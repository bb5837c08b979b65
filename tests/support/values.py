"""Values built for the validator's tests: nesting past any recursion limit."""

from __future__ import annotations

from typing import Any


def nested(levels: int, leaf: Any = 0) -> Any:
    """``levels`` arrays/objects, alternating, around ``leaf``; built without recursion."""
    value = leaf
    for level in range(levels):
        value = {"k": value} if level % 2 else [value]
    return value
