"""The third builder: the event store and a session client, which is all reconciliation needs
(``sequent reconcile``), so it runs without loading the sandbox. Workers reconcile through
``System.reconciler``, over the system's own store and client."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from bootstrap.service import open_service
from bootstrap.settings import Settings
from integrations.reconcile import Reconciler
from integrations.session_client import SessionClient


@contextmanager
def open_reconciler(settings: Settings | None = None) -> Iterator[Reconciler]:
    """A reconciler over the store ``settings`` name; closes the store and client after."""
    settings = settings or Settings.from_env()
    service = open_service(settings)
    try:
        with SessionClient(timeout=settings.http_timeout) as client:
            yield Reconciler(service, client)
    finally:
        service.close()
