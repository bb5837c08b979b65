"""CurationService: the command API (DESIGN.md §5) as an ``eventsourcing`` Application.

Each command loads, decides, and saves in one ``Application.save``; a version conflict reloads
and decides again, a bounded number of times. A conflict is never turned into a failure.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, TypeVar
from uuid import UUID

from eventsourcing.application import (
    Application,
    ProcessingEvent,
    ProjectorFunction,
    project_aggregate,
)
from eventsourcing.persistence import InfrastructureFactory, Recording, StoredEvent
from eventsourcing.postgres import PostgresFactory
from eventsourcing.utils import Environment

from domain.batch_reads import events_of
from domain.errors import (
    ActionNotAllowedHere,
    InvalidDispatch,
    InvocationFinished,
    InvocationNotFound,
    JobNotFound,
    LeaseHeld,
)
from domain.guard import Apply, decide
from domain.ids import as_uuid
from domain.invocation import DEFAULT_INTEGRATION, Invocation
from domain.job import CurationJob
from domain.orphan import HOLDING_STATES, OrphanSession, orphan_id
from domain.outcomes import Applied, Dispatch, Verdict
from domain.policy_book import PolicyBook
from domain.snapshots import fold, job_from, latest_snapshots, load_job
from domain.store_errors import (
    BACKOFF,
    MAX_CONFLICT_RETRIES,
    Backoff,
    bound_waits,
    retrying,
    store_call,
)
from domain.store_recorders import STORE_FACTORIES
from domain.store_url import StoreConfig, default_url, parse_store_url, postgres_options
from domain.transitions import (
    COMPLETION_ACTIONS,
    STATE_TIMEOUTS,
    TRANSITIONS,
    FailReason,
    JobState,
    transition,
)
from domain.values import check_json
from domain.views import HistoryEntry, InvocationView, JobView
from domain.work import WorkTable, changes_of, fill_from_log, overdue_before, work_drift

T = TypeVar("T")

SNAPSHOT_INTERVAL = 100


def completion_values(action: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """The checked params of a completion; refuses actions an integration cannot map to."""
    if action not in COMPLETION_ACTIONS:
        transition(action)  # an unknown name gets UnknownAction rather than the line below
        raise ActionNotAllowedHere(
            action, f"is not a completion action (one of {', '.join(sorted(COMPLETION_ACTIONS))})"
        )
    return transition(action).validate(params)


def _ids_checked(dispatch: Dispatch) -> Dispatch:
    """The dispatch with UUIDs for ids (MalformedId for anything that is not one)."""
    job_id = as_uuid(dispatch.job_id)
    invocation_id = as_uuid(dispatch.invocation_id, "invocation")
    if (job_id, invocation_id) == (dispatch.job_id, dispatch.invocation_id):
        return dispatch
    return replace(dispatch, job_id=job_id, invocation_id=invocation_id)


def _dispatch_of(invocation: Invocation) -> Dispatch:
    """The dispatch a claimed invocation runs under, as its record says."""
    return Dispatch(
        invocation.job_id, invocation.id, invocation.expected_version, invocation.attempt
    )


@dataclass(frozen=True)
class StoredBatch:
    """The stored snapshots and events a batch of completions is decided on."""

    snapshots: dict[UUID, StoredEvent]
    events: dict[UUID, list[StoredEvent]]

    @classmethod
    def read(
        cls, app: Application[UUID], job_ids: Sequence[UUID], invocation_ids: Sequence[UUID]
    ) -> StoredBatch:
        snapshots = latest_snapshots(app, job_ids)
        # From a job's snapshot's version on (job_from checks the snapshot against that
        # event); every event of an invocation, and of an id named as both (a bad dispatch).
        after = {j: snapshots[j].originator_version - 1 if j in snapshots else 0 for j in job_ids}
        after.update(dict.fromkeys(invocation_ids, 0))
        return cls(snapshots, events_of(app.recorder, after))

    def job(self, app: Application[UUID], job_id: UUID) -> object | None:
        return job_from(app, job_id, self.snapshots.get(job_id), self.events.get(job_id, []))

    def invocation(self, app: Application[UUID], invocation_id: UUID) -> object | None:
        stored = self.events.get(invocation_id, [])
        return fold(None, (app.mapper.to_domain_event(s) for s in stored))


class CurationService(Application[UUID]):
    name = "Sequent"
    snapshotting_intervals: ClassVar[dict[type[Any], int]] = {CurationJob: SNAPSHOT_INTERVAL}
    max_conflict_retries = MAX_CONFLICT_RETRIES
    conflict_backoff: Backoff = BACKOFF

    def __init__(self, env: Mapping[str, str] | None = None, *, url: str = "memory://") -> None:
        super().__init__(env)
        self.url = url
        self.policies = PolicyBook(self)  # Cedar policies and authorization decisions
        with self._store_call():
            fill_from_log(self.work, self.recorder, self.mapper)

    @classmethod
    def open(cls, url: str | None = None) -> CurationService:
        """Opens the store named by ``url`` (default: ``$SEQUENT_DB`` or a SQLite file under
        ``./.sequent/``), creating its tables. Raises StoreURLError or StoreUnavailable
        (StoreBusy when another client holds a lock past the lock timeout)."""
        config: StoreConfig = parse_store_url(url or default_url())
        with config.opening(), store_call(config.url):
            return cls(config.env, url=config.url)

    def construct_factory(self, env: Environment) -> InfrastructureFactory:
        """The library's factory, with recorders that read many aggregates in one query and
        keep the work table (domain.store_recorders); a PostgreSQL one with sessions that time
        out waiting."""
        module = env.get(InfrastructureFactory.PERSISTENCE_MODULE) or "eventsourcing.popo"
        store_factory = STORE_FACTORIES.get(module)
        factory: InfrastructureFactory[Any] = (
            store_factory(env) if store_factory else super().construct_factory(env)
        )
        if isinstance(factory, PostgresFactory):  # before the recorders' first connection
            bound_waits(factory.datastore, postgres_options(env))
        return factory

    # -- commands ---------------------------------------------------------------------------

    def create_job(self, spec: Mapping[str, Any]) -> UUID:
        values = TRANSITIONS["Create"].validate({"spec": spec})
        job = CurationJob(**values)
        with self._store_call():
            self.save(job)
        return job.id

    def start_jobs(
        self, specs: Sequence[Mapping[str, Any]], settings: Mapping[str, Any] | None = None
    ) -> list[Dispatch]:
        """``create_job``, ``configure`` (when ``settings`` is given) and ``submit`` for each
        spec, saved in one transaction (group commit on the operator's side): the same events
        as the commands one by one. Bad input anywhere refuses them all and writes nothing."""
        created = [TRANSITIONS["Create"].validate({"spec": spec}) for spec in specs]
        configured = None if settings is None else {"settings": settings}
        steps = [("Configure", TRANSITIONS["Configure"].validate(configured))] if configured else []
        steps.append(("Submit", TRANSITIONS["Submit"].validate(None)))
        saved: list[CurationJob | Invocation] = []
        dispatches: list[Dispatch] = []
        for values in created:
            job = CurationJob(**values)
            for action, params in steps:
                job.perform(action, params)
            invocation = self._start_invocation(job)
            saved += [job, invocation]
            dispatches.append(
                Dispatch(job.id, invocation.id, invocation.expected_version, job.attempt)
            )
        with self._store_call():
            self.save(*saved)
        return dispatches

    def configure(self, job_id: UUID | str, settings: Mapping[str, Any]) -> None:
        self.execute(job_id, "Configure", {"settings": settings})

    def submit(self, job_id: UUID | str) -> Dispatch:
        dispatch = self.execute(job_id, "Submit")
        assert dispatch is not None  # Submit starts an invocation by its table row
        return dispatch

    def fail(
        self,
        job_id: UUID | str,
        reason: str = "operator",
        message: str = "",
        decision_id: str | None = None,
    ) -> None:
        params: dict[str, Any] = {"reason": reason, "message": message}
        if decision_id is not None:
            params["decision_id"] = decision_id
        self.execute(job_id, "Fail", params)

    def retry(self, job_id: UUID | str) -> None:
        self.execute(job_id, "Retry")

    def execute(
        self, job_id: UUID | str, action: str, params: Mapping[str, Any] | None = None
    ) -> Dispatch | None:
        """Performs any input action of the table by name. Returns the new Dispatch for actions
        that start an invocation (Submit, RepairRequired), else None."""
        row = transition(action)
        if row.completion_only:
            raise ActionNotAllowedHere(action, "only arrives through complete(dispatch, ...)")
        if not row.sources:
            raise ActionNotAllowedHere(action, "is create_job(spec), not a command on a job")
        values = row.validate(params)
        job_uuid = as_uuid(job_id)

        def once() -> Dispatch | None:
            job = self._job(job_uuid)
            job.perform(action, values)
            if not row.starts_invocation:
                self.save(job)
                return None
            invocation = self._start_invocation(job)
            self.save(job, invocation)
            return Dispatch(job.id, invocation.id, invocation.expected_version, job.attempt)

        return self._retrying(f"{action} on job {job_uuid}", once)

    def complete(
        self, dispatch: Dispatch, action: str, params: Mapping[str, Any] | None = None
    ) -> Verdict:
        """The guarded completion: records the completion on its invocation exactly once, as
        Applied (the job moved) or Discarded with a reason (the job is untouched)."""
        return self.complete_batch([(dispatch, action, params)])[0]

    def complete_batch(
        self, completions: Sequence[tuple[Dispatch, str, Mapping[str, Any] | None]]
    ) -> list[Verdict]:
        """Several completions decided in order and saved in one transaction (group commit):
        each is decided on the state the ones before it left, exactly as if they had come one
        by one. Bad input anywhere (params, ids, a dispatch that contradicts its invocation's
        record) refuses the whole batch and writes nothing; a version conflict re-decides the
        whole batch on fresh state."""
        checked = [(_ids_checked(d), a, completion_values(a, p)) for d, a, p in completions]

        job_ids = list(dict.fromkeys(d.job_id for d, _, _ in checked))
        invocation_ids = list(dict.fromkeys(d.invocation_id for d, _, _ in checked))

        def once() -> list[Verdict]:
            stored = self._batch(job_ids, invocation_ids)
            loaded: dict[UUID, CurationJob | Invocation] = {}
            verdicts = [self._decide(stored, loaded, d, a, values) for d, a, values in checked]
            # Saved together: each job moved only if its invocation says so, or neither.
            self.save(*loaded.values())
            return verdicts

        what = f"completion of {len(checked)} invocation(s)"
        if len(checked) == 1:
            what = f"completion of invocation {checked[0][0].invocation_id}"
        return self._retrying(what, once)

    def _decide(
        self,
        stored: StoredBatch,
        loaded: dict[UUID, CurationJob | Invocation],
        dispatch: Dispatch,
        action: str,
        values: dict[str, Any],
    ) -> Verdict:
        """Takes the job and invocation from ``loaded`` (as the ones before left them) or folds
        them from ``stored``, asks the guard, and applies its verdict to both in memory."""
        job_id = dispatch.job_id
        job = loaded.get(job_id)
        if not isinstance(job, CurationJob):
            job = loaded[job_id] = self._checked_job(job_id, stored.job(self, job_id))
        invocation = loaded.get(dispatch.invocation_id)
        if not isinstance(invocation, Invocation):
            invocation = self._checked_invocation(
                dispatch.invocation_id, stored.invocation(self, dispatch.invocation_id)
            )
        if invocation is not None:
            invocation.check_dispatch(dispatch, job_id)
        decision = decide(job, invocation, dispatch, action)
        if invocation is None:
            invocation = Invocation.unrecognised(
                id=dispatch.invocation_id, job_id=job_id, expected_version=dispatch.expected_version
            )
        loaded[invocation.id] = invocation
        verdict: Verdict
        if isinstance(decision, Apply):
            job.perform(action, values, invocation_id=dispatch.invocation_id)
            verdict = Applied(dispatch.invocation_id, job.version)
        else:
            verdict = decision
        invocation.record(action, values, verdict)
        return verdict

    def expire(
        self,
        job_id: UUID | str,
        now: datetime | None = None,
        timeouts: Mapping[JobState, timedelta] = STATE_TIMEOUTS,
    ) -> bool:
        """Fails the job with reason ``timeout`` if it has sat in its state past the table's
        limit; decided again on the freshly loaded job, so a job that just moved is left be."""
        job_uuid = as_uuid(job_id)
        moment = now or datetime.now(UTC)

        def once() -> bool:
            job = self._job(job_uuid)
            deadline = job.timeout_at(timeouts)
            if deadline is None or deadline > moment:
                return False
            limit = timeouts[job.state]
            job.fail(reason=FailReason.TIMEOUT, message=f"{job.state} for longer than {limit}")
            self.save(job)
            return True

        return self._retrying(f"timeout of job {job_uuid}", once)

    # -- invocations: what a dispatcher needs ------------------------------------------------

    def claim(
        self,
        invocation_id: UUID | str,
        worker: str,
        lease: timedelta,
        now: datetime | None = None,
        *,
        module_sha256: str,
    ) -> Dispatch:
        """Takes the lease on an invocation for ``worker``, which is about to run the module
        whose sha256 is ``module_sha256`` (recorded on the claim: the audit names the module
        that ran, not one the submitter guessed). LeaseHeld if another worker has it,
        InvocationFinished if it is done; else the Dispatch to run it under."""
        invocation_uuid = as_uuid(invocation_id, "invocation")
        check_json("claim", "params", {"worker": worker, "module_sha256": module_sha256})

        def once() -> Dispatch:
            invocation = self._invocation(invocation_uuid)
            invocation.claim(worker, now or datetime.now(UTC), lease, module_sha256)
            self.save(invocation)
            return _dispatch_of(invocation)

        return self._retrying(f"claim of invocation {invocation_uuid}", once)

    def compensate(self, invocation_id: UUID | str, session_id: str) -> None:
        invocation_uuid = as_uuid(invocation_id, "invocation")
        check_json("compensate", "session_id", session_id)

        def once() -> None:
            invocation = self._invocation(invocation_uuid)
            invocation.compensate(session_id)
            self.save(invocation)

        self._retrying(f"compensation of invocation {invocation_uuid}", once)

    def record_orphan(
        self,
        session_id: str,
        service_url: str,
        *,
        invocation_id: UUID | None = None,
        idempotency_key: str | None = None,
    ) -> UUID:
        """Records that reconciliation stopped ``session_id``: on the invocation that created
        it when that is known, else on an OrphanSession of its own (recorded once per session).
        Returns the id of the aggregate that holds the record."""
        if invocation_id is not None:
            creator = invocation_id

            def on_creator() -> UUID:
                invocation = self._invocation(creator)
                invocation.orphan_stopped(session_id, service_url)
                self.save(invocation)
                return invocation.id

            return self._retrying(f"orphan {session_id} of invocation {creator}", on_creator)

        record_id = orphan_id(service_url, session_id)

        def on_its_own() -> UUID:
            if next(iter(self.events.get(record_id, limit=1)), None) is None:
                self.save(OrphanSession(service_url, session_id, idempotency_key))
            return record_id

        return self._retrying(f"orphan {session_id} at {service_url}", on_its_own)

    def claim_batch(
        self,
        invocation_ids: Sequence[UUID],
        worker: str,
        lease: timedelta,
        now: datetime | None = None,
        *,
        module_sha256: str,
    ) -> list[Dispatch | None]:
        """``claim`` for many invocations, read in one query and claimed in one save (group
        commit): for each, its Dispatch, or None if another worker holds it, it is finished or
        it is no invocation. A version conflict (another worker claimed one meanwhile) decides
        the batch again on fresh state, where that one is now held elsewhere."""
        ids = [as_uuid(i, "invocation") for i in invocation_ids]
        check_json("claim", "params", {"worker": worker, "module_sha256": module_sha256})
        moment = now or datetime.now(UTC)

        def once() -> list[Dispatch | None]:
            stored = self._batch([], ids)
            claimed: list[Invocation] = []
            dispatches: list[Dispatch | None] = []
            for invocation_id in ids:
                invocation = stored.invocation(self, invocation_id)
                if not isinstance(invocation, Invocation) or not invocation.started:
                    dispatches.append(None)
                    continue
                try:
                    invocation.claim(worker, moment, lease, module_sha256)
                except (LeaseHeld, InvocationFinished):
                    dispatches.append(None)
                    continue
                claimed.append(invocation)
                dispatches.append(_dispatch_of(invocation))
            if claimed:
                self.save(*claimed)
            return dispatches

        return self._retrying(f"claim of {len(ids)} invocation(s)", once)

    def reserve_runs(
        self, worker_now: datetime, hold: timedelta, limit: int
    ) -> list[tuple[UUID, UUID]]:
        """Up to ``limit`` (invocation, job) pairs of runs waiting for a worker at
        ``worker_now`` (never started by a worker, or their lease run out), oldest first,
        reserved for ``hold`` so that other workers asking meanwhile are handed others. An
        indexed query on the work table (``domain/work.py``): its cost does not grow with
        the log. The caller still claims each (``claim_batch``)."""
        with self._store_call():
            return self.work.reserve_runs(
                worker_now.timestamp(), (worker_now + hold).timestamp(), limit
            )

    def overdue_jobs(
        self,
        now: datetime,
        timeouts: Mapping[JobState, timedelta] = STATE_TIMEOUTS,
        skip: Sequence[JobState] = (),
        limit: int = 1000,
    ) -> list[UUID]:
        """Up to ``limit`` jobs that sat in a timed state (less ``skip``) past its timeout, as
        the work table says; ``expire`` decides again on each loaded job."""
        with self._store_call():
            return self.work.overdue_jobs(overdue_before(now, timeouts, skip), limit)

    def held_sessions(self, session_ids: Collection[str]) -> set[str]:
        """Those of ``session_ids`` a job holds (``domain.orphan``: the last applied session
        of a job Running, Finalizing or Completed), as the work table says now."""
        with self._store_call():
            return self.work.held_among(session_ids, [str(s) for s in HOLDING_STATES])

    def session_services(self) -> list[str]:
        """Every session service a job's spec names (``SESSION_SERVICE_KEY``), by URL."""
        with self._store_call():
            return self.work.session_services()

    def work_drift(self) -> list[str]:
        """Where the work table differs from a fold of the log (``domain.work.work_drift``)."""
        with self._store_call():
            return work_drift(self.work, self.recorder, self.mapper)

    def open_runs(self) -> list[UUID]:
        """Every invocation started and not finished (the work table's runs)."""
        with self._store_call():
            return self.work.open_runs()

    @property
    def work(self) -> WorkTable:
        recorder = self.recorder
        assert isinstance(recorder, WorkTable), "the store's recorder keeps no work table"
        return recorder

    # -- queries ----------------------------------------------------------------------------

    def get(self, job_id: UUID | str) -> JobView:
        job_uuid = as_uuid(job_id)
        with self._store_call():
            return JobView.of(self._job(job_uuid))

    def jobs(self, job_ids: Sequence[UUID]) -> dict[UUID, JobView]:
        """``get`` for many jobs, read in two queries (their snapshots, then their events);
        JobNotFound for the first that does not exist."""
        with self._store_call():
            stored = self._batch(job_ids, [])
            return {j: JobView.of(self._checked_job(j, stored.job(self, j))) for j in job_ids}

    def invocation(self, invocation_id: UUID | str) -> InvocationView:
        invocation_uuid = as_uuid(invocation_id, "invocation")
        with self._store_call():
            return InvocationView.of(self._invocation(invocation_uuid))

    def history(self, job_id: UUID | str, *, invocations: bool = True) -> list[HistoryEntry]:
        """Every event of the job in order; with ``invocations``, merged (by time) with the
        events of every invocation the job started, so discards show up in the job's story."""
        job_uuid = as_uuid(job_id)
        events = self._events(job_uuid, CurationJob.Event, JobNotFound)
        entries = [HistoryEntry.of("job", e) for e in events]
        if not invocations:
            return entries
        started = [e.data["invocation_id"] for e in entries if "invocation_id" in e.data]
        for invocation_id in dict.fromkeys(i for i in started if i is not None):
            entries.extend(self.invocation_history(invocation_id))
        entries.sort(key=lambda e: e.timestamp)
        return entries

    def invocation_history(self, invocation_id: UUID | str) -> list[HistoryEntry]:
        invocation_uuid = as_uuid(invocation_id, "invocation")
        return [
            HistoryEntry.of("invocation", e)
            for e in self._events(invocation_uuid, Invocation.Event, InvocationNotFound)
        ]

    # -- internals --------------------------------------------------------------------------

    def _start_invocation(self, job: CurationJob) -> Invocation:
        assert job.current_invocation is not None
        return Invocation(
            id=job.current_invocation,
            job_id=job.id,
            expected_version=job.version,  # the version right after Submitted/RepairRequired
            attempt=job.attempt,
            integration=DEFAULT_INTEGRATION,
        )

    def _retrying(self, what: str, once: Callable[[], T]) -> T:
        return retrying(self.url, what, once, self.max_conflict_retries, self.conflict_backoff)

    def _store_call(self) -> AbstractContextManager[None]:
        return store_call(self.url)

    def _job(self, job_id: UUID) -> CurationJob:
        # A snapshot only once checked (domain.snapshots).
        return self._checked_job(job_id, load_job(self, job_id))

    def _batch(self, job_ids: Sequence[UUID], invocation_ids: Sequence[UUID]) -> StoredBatch:
        """What a batch of completions decides on, read in two queries: the jobs' latest
        snapshots, then the events of the jobs (from their snapshots' versions on) and of the
        invocations."""
        return StoredBatch.read(self, job_ids, invocation_ids)

    @staticmethod
    def _checked_job(job_id: UUID, job: object) -> CurationJob:
        if not isinstance(job, CurationJob):
            raise JobNotFound(job_id)
        return job

    def _record(self, processing_event: ProcessingEvent[UUID]) -> list[Recording[UUID]]:
        """The library's, with the work table's changes written in the same transaction as
        the events (``domain/work.py``)."""
        processing_event.saved_kwargs["work"] = changes_of(processing_event.events)
        return super()._record(processing_event)

    def take_snapshot(
        self,
        aggregate_id: UUID,
        version: int | None = None,
        projector_func: ProjectorFunction[Any, Any] = project_aggregate,
    ) -> None:
        """The library's, but from the checked load: its own (``repository.get``) starts from the
        previous snapshot as stored, so a corrupted one would be copied into the next, and an
        undecodable one would fail the save that already committed the events."""
        job = load_job(self, aggregate_id, version)
        # Called only for snapshotting_intervals' classes, after a save of the job.
        assert self.snapshots is not None
        assert isinstance(job, CurationJob)
        self.snapshots.put([CurationJob.Snapshot.take(job)])

    def _invocation(self, invocation_id: UUID) -> Invocation:
        invocation = self._invocation_or_none(invocation_id)
        if invocation is None:
            raise InvocationNotFound(invocation_id)
        return invocation

    def _invocation_or_none(self, invocation_id: UUID) -> Invocation | None:
        # Invocations are short and never snapshotted, so fold their events directly: one
        # query instead of the repository's two (snapshot store, then events).
        invocation = fold(None, self.events.get(invocation_id))
        return self._checked_invocation(invocation_id, invocation)

    @staticmethod
    def _checked_invocation(invocation_id: UUID, invocation: object) -> Invocation | None:
        if invocation is None:
            return None
        if not isinstance(invocation, Invocation):
            raise InvalidDispatch(invocation_id, "that id names a job, not an invocation")
        return invocation

    def _events(
        self, aggregate_id: UUID, event_base: type[Any], missing: Callable[[UUID], Exception]
    ) -> list[Any]:
        with self._store_call():
            events = list(self.events.get(aggregate_id))
        if not events or not isinstance(events[0], event_base):
            raise missing(aggregate_id)
        return events
