"""How every command meets the store: a lost connection becomes StoreUnavailable, a lock held by
another client past the lock timeout becomes StoreBusy, and a version conflict is re-decided on
fresh state a bounded number of times, never turned into a failure.

Between conflicting attempts a writer waits a random time under a capped, doubling bound
(exponential backoff with full jitter): writers that collided once would otherwise reload at
the same moment and collide again, in lock-step, until the bound ran out.

Shared by CurationService and PolicyBook, which both load, decide and save.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import psycopg
import psycopg_pool
from eventsourcing.persistence import IntegrityError, OperationalError, PersistenceError
from eventsourcing.postgres import PostgresDatastore
from psycopg.rows import DictRow

from domain.errors import ConcurrencyError, StoreBusy, StoreUnavailable

T = TypeVar("T")

# Measured with 4 threads writing one job 70 times each (tests/test_concurrency.py): 8
# attempts without a wait ran out in 11 to 41 of the 280 commands on PostgreSQL; 25 with the
# backoff below, in 3 of 14,000 (50 runs; none of 2,800 on SQLite). Writers that keep
# hammering one aggregate cannot be promised success by optimistic concurrency (the one that
# just won reloads first), only made unlikely to fail.
MAX_CONFLICT_RETRIES = 25


@dataclass(frozen=True)
class Backoff:
    """The wait before attempt ``n + 1`` after ``n`` conflicts: uniform in
    ``[0, min(cap, base * 2**(n - 1))]``. ``sleep`` and ``jitter`` are injectable for tests."""

    base: float = 0.002  # seconds: about one load-decide-save on a local store
    cap: float = 0.02
    sleep: Callable[[float], None] = time.sleep
    jitter: Callable[[], float] = random.random

    def limit(self, conflicts: int) -> float:
        return min(self.cap, self.base * 2.0 ** (conflicts - 1))

    def wait(self, conflicts: int) -> None:
        self.sleep(self.jitter() * self.limit(conflicts))

    def worst_case(self, attempts: int) -> float:
        """The longest ``retrying`` can wait in all over ``attempts`` attempts."""
        return sum(self.limit(n) for n in range(1, attempts))


# 25 attempts wait at most 2 + 4 + 8 + 16 + 20 * 20 ms = 0.43 s in all (half that on average).
BACKOFF = Backoff()

# What the store drivers raise when the database cannot be reached or dies mid-call. The SQLite
# driver raises its own errors unwrapped while it opens a file (e.g. "file is not a database").
STORE_ERRORS: tuple[type[Exception], ...] = (
    PersistenceError,
    psycopg.Error,
    psycopg_pool.PoolTimeout,
    sqlite3.Error,
    OSError,
)

# A wait for another client that ran out: PostgreSQL's lock_timeout and statement_timeout, and
# SQLite's busy timeout (SQLITE_BUSY, SQLITE_LOCKED; extended codes keep these in the low byte).
POSTGRES_WAITS: tuple[type[Exception], ...] = (
    psycopg.errors.LockNotAvailable,
    psycopg.errors.QueryCanceled,
)
SQLITE_WAITS = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def waited_too_long(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is a lock or statement wait that timed out."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, POSTGRES_WAITS):
            return True
        # Only errors SQLite itself reported carry a code (not, say, "closed database").
        code = getattr(seen, "sqlite_errorcode", 0) if isinstance(seen, sqlite3.Error) else 0
        if code & 0xFF in SQLITE_WAITS:
            return True
        seen = seen.__cause__
    return False


def store_failure(url: str, exc: BaseException) -> StoreUnavailable:
    """The typed error for a store failure: StoreBusy when it waited for another client."""
    error = StoreBusy if waited_too_long(exc) else StoreUnavailable
    return error(url, first_line(exc))


@contextmanager
def store_call(url: str) -> Iterator[None]:
    """A version conflict passes through for the caller to retry; any other store failure is
    StoreUnavailable (StoreBusy for a lock wait that timed out) naming the (redacted) URL."""
    try:
        yield
    except IntegrityError:
        raise
    except STORE_ERRORS as exc:
        raise store_failure(url, exc) from None


def retrying(
    url: str,
    what: str,
    once: Callable[[], T],
    attempts: int = MAX_CONFLICT_RETRIES,
    backoff: Backoff = BACKOFF,
) -> T:
    """Runs ``once`` (load, decide, save) until it saves without a conflict, waiting
    ``backoff`` between attempts; ConcurrencyError after ``attempts`` conflicts."""
    for conflicts in range(attempts):
        if conflicts:
            backoff.wait(conflicts)
        try:
            with store_call(url):
                return once()
        except IntegrityError:
            continue  # someone else wrote first: reload and decide again
    raise ConcurrencyError(what, attempts)


class WaitTimedOut(PersistenceError):
    """A lock or statement timeout on PostgreSQL, kept apart from OperationalError."""


class BoundedWaitDatastore(PostgresDatastore):
    """The library's PostgreSQL datastore, except that a lock or statement timeout leaves it as
    WaitTimedOut rather than OperationalError. The library's recorders retry OperationalError
    ten times, which is right for a dropped connection but turns one lock timeout into ten in a
    row: a lock held by another client would stall every command for ten lock timeouts."""

    @contextmanager
    def get_connection(self) -> Iterator[psycopg.Connection[DictRow]]:
        try:
            with super().get_connection() as conn:
                yield conn
        except OperationalError as exc:
            if not waited_too_long(exc):
                raise
            raise WaitTimedOut(first_line(exc)) from exc


def bound_waits(datastore: PostgresDatastore, options: str) -> None:
    """Makes every session ``datastore`` opens start with libpq ``options`` (the lock, statement
    and idle-transaction timeouts: the library sets only the last itself), and a timed-out wait
    fail at once. The library builds its pool with fixed connection arguments and no hook for
    session settings, but the pool reads them afresh for each connection: added before the
    first one, ``options`` reaches every session."""
    kwargs = datastore.pool.kwargs
    assert isinstance(kwargs, dict)  # the library passes its connection arguments as a dict
    kwargs["options"] = options
    # The factory built the datastore; only its class's error translation changes.
    datastore.__class__ = BoundedWaitDatastore
