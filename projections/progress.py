"""A rich progress bar on stderr, shown only when stderr is a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

ProgressCallback = Callable[[int, int], None]
"""Called with (position, head) as a replay advances through the notification log."""


@contextmanager
def progress_bar(label: str, *, force: bool = False) -> Iterator[ProgressCallback | None]:
    """Yields a callback driving a progress bar, or None when stderr is not a terminal."""
    if not (force or sys.stderr.isatty()):
        yield None
        return
    console = Console(file=sys.stderr)
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(label, total=None)

        def update(position: int, head: int) -> None:
            bar.update(task, completed=position, total=max(head, 1))

        yield update
