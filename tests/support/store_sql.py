"""Changing a store by hand, as an operator (or a bug) would, to test what sequent makes of it."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from domain import CurationService


def store_sql(svc: CurationService, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """Runs ``sql`` on the store by hand, as an operator (or a bug) would: ``{snapshots}`` and
    ``{events}`` name the tables, ``?`` the parameters; a UUID parameter is given as the
    store keeps it."""
    snapshots: Any = svc.snapshots.recorder  # type: ignore[union-attr]
    events: Any = svc.recorder
    datastore: Any = events.datastore
    schema = getattr(datastore, "schema", None)
    names = {"snapshots": snapshots.events_table_name, "events": events.events_table_name}
    if schema is None:  # SQLite keeps a UUID as 32 hex digits
        text = sql.format(**names)
        values = tuple(p.hex if isinstance(p, UUID) else p for p in params)
        with datastore.transaction(commit=True) as c:
            c.execute(text, values)
            return [tuple(r) for r in c.fetchall()]
    text = sql.format(**{k: f'"{schema}"."{v}"' for k, v in names.items()}).replace("?", "%s")
    with datastore.transaction(commit=True) as c:
        c.execute(text, params)
        return [tuple(r.values()) for r in c.fetchall()] if c.description else []


def insert_event(
    svc: CurationService, aggregate_id: UUID, version: int, topic: str, state: bytes
) -> int:
    """Appends an event row the service never wrote; returns its notification id."""
    store_sql(
        svc,
        "INSERT INTO {events} (originator_id, originator_version, topic, state) "
        "VALUES (?, ?, ?, ?)",
        (aggregate_id, version, topic, state),
    )
    return svc.recorder.max_notification_id() or 0
