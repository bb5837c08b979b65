"""No cyclic garbage collection while a replay runs (rebuild, the audit's load and JSON)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """A replay allocates millions of short-lived objects (rows, notices) that reference
    counting frees at once; the collector's generational passes over them cost a quarter of a
    rebuild's time and find nothing."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
