"""Typed errors of the read models, and the one place a driver's exception becomes one of
them; the CLI prints each as one line."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from uuid import UUID

from eventsourcing.persistence import (
    DataError,
    IntegrityError,
    InternalError,
    MapperDeserialisationError,
    ProgrammingError,
)

from domain.errors import SequentError
from domain.store_errors import first_line, store_call

# What a batch or a query can fail with that is about the data or the statement, not the
# connection: the read models' tables refused it.
DATA_ERRORS: tuple[type[Exception], ...] = (
    IntegrityError,
    DataError,
    ProgrammingError,
    InternalError,
    MapperDeserialisationError,
)


class UnknownProjection(SequentError):
    def __init__(self, name: object, known: Iterable[str]) -> None:
        self.name = name
        self.known = tuple(known)
        super().__init__(f"unknown projection {name!r} (known: {', '.join(self.known)})")


class UnknownFilter(SequentError):
    """A query filter value that no row can have, e.g. a job state that is not in the table."""

    def __init__(self, what: str, value: object, known: Iterable[str]) -> None:
        self.what = what
        self.value = value
        self.known = tuple(known)
        super().__init__(f"unknown {what} {value!r} (known: {', '.join(self.known)})")


class ReadModelError(SequentError):
    """The read models' tables refused a statement (not a lost connection: that is
    StoreUnavailable)."""


class ProjectionFailed(ReadModelError):
    """A batch could not be applied to a read model; nothing of that batch was written.

    The usual cause is a read model whose tracking position was moved behind rows it already
    has (so a completion would be recorded twice): ``sequent verify`` says which, and
    ``sequent rebuild --projection NAME`` repairs it."""

    def __init__(self, projection: str, position: int, why: str) -> None:
        self.projection = projection
        self.position = position
        super().__init__(f"projection {projection} failed after notification {position}: {why}")


class RebuildInProgress(ReadModelError):
    """Another process (or thread) is rebuilding the projection: one rebuild of a projection
    runs at a time, as a second would drop the first's shadow tables. Nothing was changed."""

    def __init__(self, projection: str, holder: str) -> None:
        self.projection = projection
        super().__init__(
            f"a rebuild of {projection} is already running ({holder}); "
            "run it again once that one has finished"
        )


class UnsupportedStore(SequentError):
    def __init__(self, kind: str) -> None:
        super().__init__(f"read models need a SQLite, PostgreSQL or memory store, not {kind}")


@contextmanager
def read_model_call(url: str) -> Iterator[None]:
    """A statement the tables refused becomes ReadModelError; a lost or refused connection
    becomes StoreUnavailable naming the (redacted) store URL, as ``domain.store_errors.store_call``
    makes it for the service."""
    with store_call(url):
        try:
            yield
        except DATA_ERRORS as exc:  # before store_call, which would call them unavailable
            raise ReadModelError(f"read models: {first_line(exc)}") from exc


# -- the audit -------------------------------------------------------------------------------


class AuditError(SequentError):
    """Base of the audit's own errors."""


class VersionOutOfRange(AuditError):
    """``--at`` / ``state_at`` named a version the job does not have."""

    def __init__(self, job_id: UUID, version: object, latest: int) -> None:
        self.job_id = job_id
        self.version = version
        self.latest = latest
        super().__init__(f"job {job_id} has versions 1..{latest}; there is no version {version!r}")


class UnreadableEvent(AuditError):
    """An event of the job's history cannot be decoded (its row was written or changed by hand):
    the audit cannot show it, and says which one rather than guessing."""

    def __init__(self, aggregate: str, aggregate_id: object, version: int, why: str) -> None:
        self.aggregate_id = aggregate_id
        self.version = version
        super().__init__(f"{aggregate} {aggregate_id}: event {version} cannot be read: {why}")


class ExportFailed(AuditError):
    def __init__(self, path: Path, why: str) -> None:
        self.path = path
        super().__init__(f"cannot export to {str(path)!r}: {why}")
