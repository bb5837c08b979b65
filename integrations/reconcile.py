"""Reconciliation: invariant 4 after any crash. Live sessions == sessions held by jobs.

Compensation stops the session of a discarded ``SessionSpawned`` as soon as the verdict is in;
but a worker can die between a session's ``POST`` and its completion, or between the verdict and
the compensating ``DELETE``, and an answer can be lost after the service acted on it. Those
sessions are found here: the session service's live sessions (``GET /sessions``) are compared
with what the store says, and every session that is an orphan by ``domain.orphan.judge`` is
stopped (``DELETE``) and recorded, on the invocation that created it when its
``Idempotency-Key`` names one, else on an ``OrphanSession`` of its own.

Reads happen in the order the rule needs: the sessions first, then each session's creator, then
the sessions jobs hold, so nothing a creator applied can be missed. A session already gone
(another reconciler or a compensation stopped it first) is neither stopped nor recorded here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from domain import (
    CurationService,
    InvalidDispatch,
    InvocationNotFound,
    InvocationView,
    MalformedId,
    as_uuid,
)
from domain.orphan import DEFAULT_GRACE, Finding, judge
from integrations.session_client import SessionServiceError

log = logging.getLogger(__name__)


class SessionDirectory(Protocol):
    """What reconciliation asks of a session service (``SessionClient`` is one)."""

    def list(self, service_url: str = "") -> list[dict[str, Any]]: ...

    def delete(self, session_id: str, service_url: str = "") -> bool: ...


@dataclass(frozen=True)
class ReconcileReport:
    checked: int = 0  # live sessions looked at
    orphans: int = 0  # of those, held by no job and never to be
    stopped: int = 0  # orphans this call stopped and recorded
    unreachable: tuple[str, ...] = ()  # services whose sessions could not be listed

    def __add__(self, other: ReconcileReport) -> ReconcileReport:
        return ReconcileReport(
            self.checked + other.checked,
            self.orphans + other.orphans,
            self.stopped + other.stopped,
            self.unreachable + other.unreachable,
        )


@dataclass(frozen=True)
class LiveSession:
    """One item of ``GET /sessions``."""

    session_id: str
    created: float | None  # unix seconds, as the service says
    idempotency_key: str | None  # the key it was created with, where the service records it

    @classmethod
    def of(cls, item: Mapping[str, Any]) -> LiveSession | None:
        session_id, created, key = (
            item.get(k) for k in ("session_id", "created", "idempotency_key")
        )
        if not isinstance(session_id, str) or not session_id:
            return None  # nothing to stop it by
        return cls(
            session_id,
            float(created) if isinstance(created, int | float) else None,
            key if isinstance(key, str) and key else None,
        )

    def age(self, now: datetime) -> timedelta:
        # Undated sessions count as new: stopping one is irreversible, so never on a guess.
        if self.created is None:
            return timedelta(0)
        return timedelta(seconds=max(now.timestamp() - self.created, 0.0))


class Reconciler:
    """Stops and records the sessions no job holds (see the module docstring)."""

    def __init__(
        self,
        service: CurationService,
        client: SessionDirectory,
        *,
        grace: timedelta = DEFAULT_GRACE,
    ) -> None:
        self.service = service
        self.client = client
        self.grace = grace

    def services(self) -> list[str]:
        return self.service.session_services()

    def reconcile(self, service_url: str, now: datetime | None = None) -> ReconcileReport:
        """One pass over the live sessions of ``service_url``. Raises SessionServiceError if
        they cannot be listed; a session that cannot be stopped is left for the next pass."""
        service_url = service_url.rstrip("/")
        moment = now or datetime.now(UTC)
        live = [s for s in map(LiveSession.of, self.client.list(service_url)) if s is not None]
        creators = {s.session_id: self._creator(s.idempotency_key) for s in live}
        # After the creators (see judge()); asked of the store's work table for these
        # sessions only, so a pass costs what the service holds, not what the log does.
        held = self.service.held_sessions([s.session_id for s in live])
        orphans = stopped = 0
        for session in live:
            creator = creators[session.session_id]
            finding = judge(session.session_id, session.age(moment), creator, held, self.grace)
            if finding is not Finding.ORPHAN:
                continue
            orphans += 1
            if self._stop(service_url, session.session_id):
                self.service.record_orphan(
                    session.session_id,
                    service_url,
                    invocation_id=creator.id if creator is not None else None,
                    idempotency_key=session.idempotency_key,
                )
                stopped += 1
        return ReconcileReport(len(live), orphans, stopped)

    def reconcile_all(self, now: datetime | None = None) -> ReconcileReport:
        """``reconcile`` every session service a job names; one that cannot be reached is
        reported as unreachable and the others are still reconciled."""
        report = ReconcileReport()
        for url in self.services():
            try:
                report += self.reconcile(url, now)
            except SessionServiceError as exc:
                log.warning("reconcile: cannot list the sessions of %s: %s", url, exc.message)
                report += ReconcileReport(unreachable=(url,))
        return report

    def _creator(self, key: str | None) -> InvocationView | None:
        """The invocation an idempotency key names, if the store knows one by that id."""
        if key is None:
            return None
        try:
            return self.service.invocation(as_uuid(key, "invocation"))
        except (MalformedId, InvocationNotFound, InvalidDispatch):  # not a UUID, no such
            return None  # invocation, or a job's id; a store that fails raises, never guesses

    def _stop(self, service_url: str, session_id: str) -> bool:
        try:
            return self.client.delete(session_id, service_url)
        except SessionServiceError as exc:
            log.warning("reconcile: cannot stop %s at %s: %s", session_id, service_url, exc.message)
            return False
