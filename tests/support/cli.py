"""What one in-process ``sequent`` command did, as the ``sequent`` fixture returns it."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Ran:
    """What one in-process ``sequent`` command did."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, self.err
        assert self.err == ""
        return json.loads(self.out)

    def error_line(self) -> str:
        assert self.code != 0
        assert self.out == ""
        lines = self.err.strip().splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith("sequent: error: ")
        return lines[0]


Cli = Callable[..., Ran]
