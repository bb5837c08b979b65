"""What a projection is here: a read model as a fold of a *batch* of notifications into table
writes, and the writes it may ask for.

As in ``eventsourcing.projection.Projection``, a projection has a ``name`` and the ``topics`` it
reads, and its position is kept by a tracking recorder (``projections.recorders``) in the same
transaction as its rows. Unlike the library's, which processes one event at a time, ours turns
a whole batch into a few ``executemany`` writes (``Upsert`` / ``Insert``): a rebuild replays
millions of events. Where the fold needs state from an earlier batch (which job an invocation
belongs to, the action of a ``Finished`` whose verdict comes in the next batch) the projection
keeps it in a table of its own and reads it through ``Lookup`` inside that transaction.

A projection never reads an aggregate. Reading is lazy: a batch is a ``Page`` of the driver's
rows that makes ``Notice`` objects only of the rows asked for, and ``Notice.event`` runs the
mapper only for the events whose payload a projection reads, so the common case (progress
entries on a running job) costs a row, not an object and a JSON decode.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from domain.log import Page
from projections.schema import Table, skipped_table


@dataclass(frozen=True)
class Upsert:
    """Insert rows, or replace an existing row's columns (but those in ``table.keep`` where the
    new value is NULL). One row per key: PostgreSQL writes them in one statement."""

    table: Table
    rows: list[tuple[Any, ...]]


@dataclass(frozen=True)
class Insert:
    """Insert rows; a row whose key exists already is an error (a completion seen twice)."""

    table: Table
    rows: list[tuple[Any, ...]]


Write = Upsert | Insert
Lookup = Callable[[Table, Collection[str]], dict[str, tuple[Any, ...]]]
"""Rows of a table by key, read in the transaction the batch is written in."""


class Projection(ABC):
    """A read model: its name, the topics it reads, its tables (the one the API reads first)."""

    name: str
    topics: tuple[str, ...]
    tables: tuple[Table, ...]

    @property
    def table(self) -> Table:
        return self.tables[0]

    @property
    def skipped(self) -> Table:
        """The events of its topics it could not fold (``schema.skipped_table``)."""
        return skipped_table(self.name)

    @property
    def stored_tables(self) -> tuple[Table, ...]:
        """Every table kept for it, created, rebuilt and swapped together."""
        return (*self.tables, self.skipped)

    def kept(self, page: Page) -> Page:
        """What of a page of its notices the fold reads (all of it, unless a projection says
        otherwise): a rebuild drops the rest as it reads, and folds what is left."""
        return page

    @abstractmethod
    def writes(self, batch: Page, lookup: Lookup) -> list[Write]:
        """The writes that fold ``batch`` (this projection's topics only, in order) into it."""


class Touched:
    """The rows of one table a batch changes, each loaded from its stored version (if any)
    the first time the batch touches it."""

    def __init__(self, stored: dict[str, tuple[Any, ...]]) -> None:
        self.stored = stored
        self.rows: dict[str, list[Any]] = {}

    def get(self, key: str, new: Callable[[], list[Any]]) -> list[Any]:
        row = self.rows.get(key)
        if row is None:
            stored = self.stored.get(key)
            row = self.rows[key] = list(stored) if stored is not None else new()
        return row

    def put(self, key: str, row: list[Any]) -> None:
        self.rows[key] = row

    def tuples(self) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.rows.values()]


def column_indexes(table: Table) -> dict[str, int]:
    """Column name -> position in the table's rows, for folds that build rows as lists."""
    return {name: table.index_of(name) for name in table.column_names}
