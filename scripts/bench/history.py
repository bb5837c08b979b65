"""A long history in a store, quickly: finished jobs and their invocations, real events of the
real aggregates, encoded by the service's own mapper and written through the library's recorder
(``EventStore.put``: one ``insert_events`` transaction per PUT_EVENTS stored events, with the
work table's changes, as ``CurationService`` saves them).

Each job goes the whole way a worker takes it (create, configure, submit; its invocation
Started, Claimed, Finished, Applied; SessionSpawned, Complete, FinalizeCompletion), so the
history holds nothing left to run and no deadline still pending: what a worker or a completion
costs against it is the cost of history alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from domain import CurationService
from domain.job import CurationJob
from domain.outcomes import Applied
from domain.service import completion_values
from domain.transitions import TRANSITIONS
from scripts.bench.stores import put_events

EVENTS_PER_JOB = 10  # 6 of the job's (Created .. Completed), 4 of its invocation's
PUT_EVENTS = 5000  # stored events per insert_events transaction
HISTORY_WORKER = "bench-history"
HISTORY_MODULE = "0" * 64  # the sha256 each claim names: no module runs here
LEASE = timedelta(seconds=60)


@dataclass(frozen=True)
class Filled:
    jobs: int
    events: int
    seconds: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def finished_job_events(svc: CurationService, index: int, now: datetime) -> list[Any]:
    """The events of one job taken all the way to Completed, and of its one invocation, as the
    service and a worker would have recorded them, by the aggregates' own commands."""
    job = CurationJob(**TRANSITIONS["Create"].validate({"spec": {"target": f"t{index}"}}))
    perform(job, "Configure", {"settings": {"rank": index}})
    perform(job, "Submit")
    invocation = svc._start_invocation(job)
    invocation.claim(HISTORY_WORKER, now, LEASE, HISTORY_MODULE)
    spawned = completion_values("SessionSpawned", {"session_id": f"s-{index}"})
    job.perform("SessionSpawned", spawned, invocation_id=invocation.id)
    invocation.record("SessionSpawned", spawned, Applied(invocation.id, job.version))
    perform(job, "Complete", {"output": {"pages": index % 7}})
    perform(job, "FinalizeCompletion")
    return [*job.collect_events(), *invocation.collect_events()]


def perform(job: CurationJob, action: str, params: dict[str, Any] | None = None) -> None:
    job.perform(action, TRANSITIONS[action].validate(params))


def fill_history(svc: CurationService, events: int) -> Filled:
    """About ``events`` more events (whole jobs of EVENTS_PER_JOB, at least one) in ``svc``'s
    store, PUT_EVENTS per transaction."""
    started = time.perf_counter()
    jobs = max(1, round(events / EVENTS_PER_JOB))
    now = datetime.now(UTC)
    pending: list[Any] = []
    written = 0
    for index in range(jobs):
        pending += finished_job_events(svc, index, now)
        if len(pending) >= PUT_EVENTS or index == jobs - 1:
            put_events(svc, pending)
            written += len(pending)
            pending = []
    return Filled(jobs, written, time.perf_counter() - started)
