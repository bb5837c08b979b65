"""Plain fakes that stand in for one part while every other part stays real: a runner without a
sandbox, a service that lets a test interleave another writer, and the count of stored events
(the measure of "nothing was written")."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from bootstrap import Settings, open_service
from domain import CurationService, Dispatch
from domain.job import CurationJob
from domain.service import StoredBatch
from integrations.dispatcher import RunOutcome
from projections import Projections


def event_count(service: CurationService) -> int:
    """All events in the store: the measure of "nothing was written"."""
    return service.recorder.max_notification_id() or 0


@dataclass(frozen=True)
class FixedRunner:
    """A dispatcher's runner without a sandbox: every run comes to ``outcome``."""

    outcome: RunOutcome
    module_sha256: str = "f" * 64

    def __call__(self, dispatch: Dispatch, job_input: dict[str, Any]) -> RunOutcome:
        return self.outcome


class InterleavingService(CurationService):
    """A CurationService whose next job load (one job, or a batch's) runs ``interleave`` once,
    in this thread."""

    interleave: Callable[[], object] | None = None

    def _job(self, job_id: UUID) -> CurationJob:
        job = super()._job(job_id)
        self._interleaved()
        return job

    def _batch(self, job_ids: Sequence[UUID], invocation_ids: Sequence[UUID]) -> StoredBatch:
        batch = super()._batch(job_ids, invocation_ids)
        self._interleaved()
        return batch

    def _interleaved(self) -> None:
        hook, self.interleave = self.interleave, None
        if hook is not None:
            hook()


def open_interleaving(url: str) -> InterleavingService:
    service = InterleavingService.open(url)
    assert isinstance(service, InterleavingService)
    return service


def open_projections(url: str, **options: Any) -> Projections:
    """The read models of the store at ``url``, opened through the composition root; closing
    them closes the store."""
    service = open_service(Settings(store_url=url))
    try:
        return Projections(service, owns_service=True, **options)
    except BaseException:
        service.close()
        raise
