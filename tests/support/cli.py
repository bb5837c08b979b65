"""What one in-process ``sequent`` command did, as the ``sequent`` fixture returns it."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the checkout: a ``sequent`` process runs in it
SEQUENT = str(Path(sys.executable).parent / "sequent")  # the console script of this venv


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

    def failed_json(self) -> Any:
        """The JSON report of a command that printed it and exited 1 (verify on drift, rebuild
        when the live and rebuilt checksums differ)."""
        assert self.code == 1, self.err
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
