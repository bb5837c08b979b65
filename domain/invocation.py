"""The Invocation aggregate: one per dispatched integration run, and the audit record of every
completion that named it.

``module_sha256`` is the module that ran: each worker records the module it is about to run on
its ``Claimed``. ``Started`` still takes one (empty for invocations started since workers
record it) so that invocations recorded before then load as they were.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.errors import InvalidDispatch, InvocationFinished, LeaseHeld
from domain.outcomes import Applied, DiscardReason, Dispatch, Verdict

DEFAULT_INTEGRATION = "build_session_message"


class Invocation(Aggregate):
    @event("Started")
    def __init__(
        self,
        id: UUID,
        job_id: UUID,
        expected_version: int,
        attempt: int = 0,
        integration: str = DEFAULT_INTEGRATION,
        module_sha256: str = "",
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.expected_version = expected_version
        self.integration = integration
        self.module_sha256 = module_sha256
        self.started = True
        self.completions = 0
        self.verdicts: list[dict[str, Any]] = []
        self.lease_holder: str | None = None
        self.lease_until: datetime | None = None
        self.compensated: list[str] = []
        self.orphans_stopped: list[str] = []

    class Unrecognised(Aggregate.Created):
        """Created instead of Started when a completion names an invocation that was never
        started, so even a forged or corrupted completion is audited, not silently dropped."""

        job_id: UUID
        expected_version: int

        def apply(self, aggregate: Any) -> None:
            aggregate.started = False
            aggregate.integration = ""

    @classmethod
    def unrecognised(cls, id: UUID, job_id: UUID, expected_version: int) -> Invocation:
        return cls._create(
            cls.Unrecognised, id=id, job_id=job_id, expected_version=expected_version
        )

    @property
    def finished(self) -> bool:
        """True once a completion has arrived. Its ``Finished`` and the verdict on it are
        recorded together (``record``, saved in one ``save``), so this is also "decided": the
        run is over, it cannot be claimed, and any later completion is a duplicate."""
        return self.completions > 0

    def check_dispatch(self, dispatch: Dispatch, job_id: UUID) -> None:
        """Raises InvalidDispatch naming the first field of ``dispatch`` that contradicts this
        invocation's record (invariant 6). Such a completion cannot be the real run's, so it is
        refused before it is recorded: recorded, it would finish the invocation and turn the
        genuine completion into a ``duplicate``. An invocation that was never started has no
        record but its job to compare with."""
        if job_id != self.job_id:
            raise InvalidDispatch(self.id, f"it belongs to job {self.job_id}, not {job_id}")
        if not self.started:
            return
        recorded = (
            ("expected_version", dispatch.expected_version, self.expected_version),
            ("attempt", dispatch.attempt, self.attempt),
        )
        for field, given, own in recorded:
            # type() rather than ==: True == 1, and a bool is no version
            if type(given) is not int or given != own:
                raise InvalidDispatch(
                    self.id, f"{field} {given!r:.40} differs from the recorded {own}"
                )

    def claim(self, worker: str, now: datetime, lease: timedelta, module_sha256: str) -> None:
        """Takes (or renews) the lease to run this invocation with the module whose sha256 is
        ``module_sha256``. Two workers racing for it both append Claimed at the same version,
        so the store lets exactly one of them win."""
        if self.finished:
            raise InvocationFinished(self.id)
        holder, until = self.lease_holder, self.lease_until
        if holder is not None and until is not None and until > now and holder != worker:
            raise LeaseHeld(self.id, holder, until)
        self._claimed(worker=worker, lease_until=now + lease, module_sha256=module_sha256)

    def compensate(self, session_id: str) -> None:
        """Records that a session left behind by a discarded completion was stopped."""
        self._compensated(session_id=session_id)

    def orphan_stopped(self, session_id: str, service_url: str) -> None:
        """Records that reconciliation stopped a session this run created and no job holds
        (``domain/orphan.py`` says when that is), e.g. one a crashed worker left behind."""
        self._orphan_stopped(session_id=session_id, service_url=service_url)

    def record(self, action: str, params: dict[str, Any], verdict: Verdict) -> None:
        """Records one arriving completion and the guard's verdict on it, as a pair of events."""
        self._finished(action=action, params=params)
        if isinstance(verdict, Applied):
            self._applied(job_version=verdict.job_version)
            return
        self._discarded(
            reason=verdict.reason,
            job_version_seen=verdict.job_version_seen,
            job_state_seen=verdict.job_state_seen,
        )

    @event("Claimed")
    def _claimed(self, worker: str, lease_until: datetime, module_sha256: str = "") -> None:
        # The default loads Claimed events recorded before claims named their module; those
        # leave the sha Started recorded in place.
        self.lease_holder = worker
        self.lease_until = lease_until
        if module_sha256:
            self.module_sha256 = module_sha256

    @event("Compensated")
    def _compensated(self, session_id: str) -> None:
        self.compensated.append(session_id)

    @event("OrphanStopped")
    def _orphan_stopped(self, session_id: str, service_url: str) -> None:
        self.orphans_stopped.append(session_id)

    @event("Finished")
    def _finished(self, action: str, params: dict[str, Any]) -> None:
        self.completions += 1

    @event("Applied")
    def _applied(self, job_version: int) -> None:
        self.verdicts.append({"verdict": "Applied", "job_version": job_version})

    @event("Discarded")
    def _discarded(self, reason: DiscardReason, job_version_seen: int, job_state_seen: str) -> None:
        self.verdicts.append({"verdict": "Discarded", "reason": str(reason)})
