"""The incident's completion handling (DESIGN.md §1), for baselines only: ``sequent race
--baseline`` and ``sequent simulate --baseline`` replay it to show what the guard prevents.

It applies a completion to whatever state the job is in, ignoring which run it came from, and
turns the 409 it then gets into the job's failure. That behaviour lives only here, never in
``domain/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eventsourcing.persistence import IntegrityError

from domain import Applied, CurationService, Dispatch, InvalidTransition, Verdict
from domain.invocation import Invocation
from domain.job import CurationJob


class IncidentCompleter:
    def __init__(self, service: CurationService) -> None:
        self.service = service

    def complete(
        self, dispatch: Dispatch, action: str, params: Mapping[str, Any] | None = None
    ) -> Verdict:
        values = dict(params or {})
        for _ in range(self.service.max_conflict_retries):
            try:
                return self._apply(dispatch, action, values)
            except IntegrityError:
                continue
        raise RuntimeError("baseline completion kept conflicting")

    def _apply(self, dispatch: Dispatch, action: str, values: dict[str, Any]) -> Verdict:
        job: CurationJob = self.service.repository.get(dispatch.job_id)
        invocation: Invocation = self.service.repository.get(dispatch.invocation_id)
        try:
            if action == "SessionSpawned":
                job._require(action)  # the entity's own check, and nothing else
                job._session_spawned(session_id=values["session_id"], invocation_id=None)
            else:
                job.fail(**values)
        except InvalidTransition as conflict:  # the 409 ...
            job = self.service.repository.get(dispatch.job_id)
            if job.allows("Fail"):  # ... treated as the integration's own failure
                job.fail(reason="service_error", message=f"409 {conflict}")
        verdict = Applied(dispatch.invocation_id, job.version)
        invocation.record(action, values, verdict)
        self.service.save(job, invocation)
        return verdict
