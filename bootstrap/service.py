"""The first builder: the event store alone, for the commands that need nothing else (job
commands, history, audit, read models). It imports no sandbox, so they start without wasmtime."""

from __future__ import annotations

from bootstrap.settings import Settings
from domain import CurationService


def open_service(settings: Settings | None = None) -> CurationService:
    """Opens the event store named by ``settings`` (default: from the environment)."""
    settings = settings or Settings.from_env()
    service = CurationService.open(settings.url)
    service.policies.max_staleness = settings.policy_staleness
    return service
