"""How every command meets the store: a lost connection becomes StoreUnavailable, and a version
conflict is re-decided on fresh state a bounded number of times, never turned into a failure.

Shared by CurationService and PolicyBook, which both load, decide and save.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import psycopg
import psycopg_pool
from eventsourcing.persistence import IntegrityError, PersistenceError

from domain.errors import ConcurrencyError, StoreUnavailable
from domain.store_url import first_line

T = TypeVar("T")

MAX_CONFLICT_RETRIES = 8

# What the store drivers raise when the database cannot be reached or dies mid-call.
STORE_ERRORS: tuple[type[Exception], ...] = (
    PersistenceError,
    psycopg.Error,
    psycopg_pool.PoolTimeout,
    OSError,
)


@contextmanager
def store_call(url: str) -> Iterator[None]:
    """A version conflict passes through for the caller to retry; any other store failure is
    StoreUnavailable naming the (redacted) store URL."""
    try:
        yield
    except IntegrityError:
        raise
    except STORE_ERRORS as exc:
        raise StoreUnavailable(url, first_line(exc)) from None


def retrying(url: str, what: str, once: Callable[[], T], attempts: int = MAX_CONFLICT_RETRIES) -> T:
    """Runs ``once`` (load, decide, save) until it saves without a conflict."""
    for _ in range(attempts):
        try:
            with store_call(url):
                return once()
        except IntegrityError:
            continue  # someone else wrote first: reload and decide again
    raise ConcurrencyError(what, attempts)
