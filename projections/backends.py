"""Which read-model recorder a service's store gets, with every projection's tables made."""

from __future__ import annotations

from collections.abc import Sequence

from eventsourcing.persistence import IntegrityError, ProgrammingError
from eventsourcing.popo import POPOFactory
from eventsourcing.postgres import PostgresFactory
from eventsourcing.sqlite import SQLiteFactory

from domain.service import CurationService
from projections.errors import UnsupportedStore
from projections.postgres_recorder import PostgresReadModels
from projections.projection import Projection
from projections.recorders import ReadModels
from projections.sqlite_recorder import SQLiteReadModels, memory_datastore


def open_read_models(service: CurationService, projections: Sequence[Projection]) -> ReadModels:
    """The read models' recorder in the service's own database (for ``memory://``, a private
    in-memory SQLite database), with every projection's tables and tracking row made."""
    factory = service.factory
    store: ReadModels
    if isinstance(factory, SQLiteFactory):
        store = SQLiteReadModels(factory.datastore, app_name=service.name, projections=projections)
    elif isinstance(factory, PostgresFactory):
        store = PostgresReadModels(
            factory.datastore, app_name=service.name, projections=projections
        )
    elif isinstance(factory, POPOFactory):
        store = SQLiteReadModels(memory_datastore(), app_name=service.name, projections=projections)
    else:
        raise UnsupportedStore(type(factory).__name__)
    _create_tables(store)
    store.init_positions(projections)
    return store


def _create_tables(store: ReadModels) -> None:
    # On PostgreSQL the DDL itself runs under the store's DDL lock (PostgresReadModels), but
    # the library decides whether to record its tracking table's migration row before taking
    # it: a second opener that looked before the first committed records it again, and a
    # second attempt, which looks again, is a no-op.
    for attempt in range(3):
        try:
            store.create_table()
            return
        except (IntegrityError, ProgrammingError):
            if attempt == 2:
                raise
