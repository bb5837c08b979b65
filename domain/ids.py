"""Ids as the command API accepts them: a UUID, or its text; anything else is MalformedId."""

from __future__ import annotations

from uuid import UUID

from domain.errors import MalformedId


def as_uuid(value: object, kind: str = "job") -> UUID:
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        raise MalformedId(kind, value) from None
