"""``Projections``: the read models of one CurationService, kept, queried, rebuilt, verified.

Built from the composition root (``Projections(service)``; bootstrap's ``System.projections``).
Composition, not inheritance: it reads the service's notification log through the one reader
(``domain.log.log_reader`` over ``service.recorder`` and ``service.mapper``), and keeps its
tables in the service's own datastore (``backends.open_read_models``). Following the log is
this module's own work; rebuild (``rebuild.py``) and verify (``verify.py``) are modules of their
own that it delegates to.

Following the log: ``catch_up()`` reads every projection's notifications after its position in
batches, up to the head as of the call, and applies each batch to each projection exactly once
(``recorders.ReadModels.apply``). ``run_forever(stop)`` keeps doing that: on PostgreSQL (and
memory) through the library's subscription (``recorder.subscribe``: LISTEN/NOTIFY, then a
``select_notifications`` pull), on SQLite — whose recorder raises NotImplementedError for
``subscribe`` in eventsourcing 9.5 — by calling ``catch_up()`` every ``poll_seconds``.

Gaps: notification ids can have gaps (PostgreSQL sequence values of rolled-back inserts) but
never fill in later, because the library's recorder inserts under an EXCLUSIVE table lock so
ids are committed in order (see ``PostgresApplicationRecorder._lock_table``; SQLite has one
writer). So a reader never waits for a gap, and a projection may take the head it read before a
select as its position once it has applied everything up to it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from eventsourcing.persistence import ApplicationRecorder, Notification, Subscription

from domain.log import Page, log_reader
from domain.service import CurationService
from domain.store_errors import first_line
from domain.transitions import JobState
from projections.backends import open_read_models
from projections.catalog import PROJECTION_NAMES, PROJECTIONS, projection_named, selected, topics_of
from projections.decisions import DECISION_STATUSES
from projections.errors import DATA_ERRORS, ProjectionFailed, UnknownFilter, read_model_call
from projections.progress import ProgressCallback, progress_bar
from projections.projection import Projection
from projections.rebuild import REBUILD_BATCH, RebuildReport, rebuild_projection
from projections.recorders import PositionMoved
from projections.schema import (
    DECISIONS,
    DISPATCH_AUDIT,
    JOB_STATUS,
    SESSIONS,
    AuditRow,
    DecisionRow,
    JobStatusRow,
    SessionRow,
    SkippedRow,
    to_row,
)
from projections.verify import VerifyReport, verify_read_models

CATCH_UP_BATCH = 1000
POLL_SECONDS = 0.2


@dataclass(frozen=True)
class ProjectionStatus:
    projection: str
    position: int
    head: int
    lag: int  # head - position: notification ids still to apply; negative is drift
    rows: int
    drift: str | None = None  # why the position cannot be right (sequent verify says more)
    skipped: int = 0  # events of its topics it could not fold and recorded instead


class Projections:
    """The four read models (job_status, dispatch_audit, sessions, decisions) of a service."""

    def __init__(
        self,
        service: CurationService,
        *,
        batch_size: int = CATCH_UP_BATCH,
        rebuild_batch_size: int = REBUILD_BATCH,
        owns_service: bool = False,
    ) -> None:
        self.service = service
        self.batch_size = batch_size
        self.rebuild_batch_size = rebuild_batch_size
        self._owns_service = owns_service
        self._topic_sets = {p.name: frozenset(p.topics) for p in PROJECTIONS}
        self._processing = threading.RLock()  # one batch at a time per instance
        self.log = log_reader(service.recorder, service.mapper)
        with self._store_call():
            self.store = open_read_models(service, PROJECTIONS)

    def close(self) -> None:
        if self._owns_service:
            self.service.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- names ------------------------------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        return PROJECTION_NAMES

    def projection(self, name: str) -> Projection:
        """UnknownProjection for a name that is not one of ``names``."""
        return projection_named(name)

    # -- following the log -------------------------------------------------------------------

    def head(self) -> int:
        with self._store_call():
            return self.log.head()

    def positions(self) -> dict[str, int]:
        with self._store_call():
            return self.store.positions(PROJECTIONS)

    def catch_up(self, names: Iterable[str] | None = None) -> int:
        """Applies every notification up to the current head to the named projections
        (default: all) exactly once. Returns how many notifications were read."""
        projections = selected(names)
        with self._store_call(), self._processing:
            return self._catch_up(projections)

    def _catch_up(self, projections: Sequence[Projection]) -> int:
        read = 0
        topics = topics_of(projections)
        while True:  # more than once only if another runner moved a position backwards
            head = self.log.head()
            positions = self.store.positions(projections)
            start = min(positions.values())
            complete = True
            for batch, upto in self.log.batches(start, head, topics, self.batch_size):
                read += len(batch)
                if not self._process(projections, positions, batch, start, upto):
                    complete = False
                    break
                start = upto
            if complete:
                return read

    def _process(
        self,
        projections: Sequence[Projection],
        positions: dict[str, int],
        batch: Page,
        start: int,
        upto: int,
    ) -> bool:
        """Applies ``batch`` (every notification of the projections' topics in (start, upto])
        to each projection still behind ``upto``. False if a projection's position went back
        before ``start``, so the batch cannot cover it: the caller reads again."""
        for projection in projections:
            after = positions[projection.name]
            if after < start:
                return False  # the batch does not reach back that far
            while after < upto:
                relevant = batch.after(after, self._topic_sets[projection.name])
                try:
                    self.store.apply(projection, relevant, after=after, upto=upto)
                    after = upto
                except PositionMoved as moved:  # another runner got there first
                    if moved.current < start:
                        positions[projection.name] = moved.current
                        return False
                    after = moved.current
                except DATA_ERRORS as exc:
                    raise ProjectionFailed(projection.name, after, first_line(exc)) from exc
            positions[projection.name] = after
        return True

    def run_forever(self, stop: threading.Event, *, poll_seconds: float = POLL_SECONDS) -> None:
        """Keeps every projection at the head until ``stop`` is set: through the recorder's
        subscription where it has one, else by polling every ``poll_seconds``."""
        after = min(self.positions().values())
        try:
            subscription = self.service.recorder.subscribe(gt=after, topics=topics_of(PROJECTIONS))
        except NotImplementedError:  # SQLiteApplicationRecorder (eventsourcing 9.5)
            while not stop.is_set():
                self.catch_up()
                stop.wait(poll_seconds)
            return
        with self._store_call():
            self._follow(subscription, after, stop, poll_seconds)

    def _follow(
        self,
        subscription: Subscription[ApplicationRecorder],
        covered: int,
        stop: threading.Event,
        poll_seconds: float,
    ) -> None:
        """Batches what the subscription yields (every notification of the projections'
        topics after ``covered``, in order) and applies each batch exactly once."""
        inbox: queue.Queue[Notification] = queue.Queue(maxsize=self.batch_size * 4)
        failures: list[BaseException] = []

        def pump() -> None:
            try:
                for notification in subscription:
                    while not stop.is_set():
                        try:
                            inbox.put(notification, timeout=poll_seconds)
                            break
                        except queue.Full:
                            continue
            except BaseException as exc:  # handed to the main loop
                failures.append(exc)

        with subscription:
            thread = threading.Thread(target=pump, name="projection-subscription", daemon=True)
            thread.start()
            try:
                while not stop.is_set():
                    if failures:
                        raise failures[0]
                    try:
                        batch = [inbox.get(timeout=poll_seconds)]
                    except queue.Empty:
                        # Idle: also move positions over events no projection reads (Claimed,
                        # policies), so lag reads zero when everything is applied.
                        self.catch_up()
                        continue
                    while len(batch) < self.batch_size:
                        try:
                            batch.append(inbox.get_nowait())
                        except queue.Empty:
                            break
                    with self._processing:
                        positions = self.store.positions(PROJECTIONS)
                        decoded = Page.of(batch, self.service.mapper)
                        complete = self._process(
                            PROJECTIONS, positions, decoded, covered, batch[-1].id
                        )
                    covered = batch[-1].id
                    if not complete:
                        self.catch_up()
            finally:
                subscription.stop()
        thread.join(timeout=5)

    # -- queries ----------------------------------------------------------------------------

    def jobs(self, state: str | None = None) -> list[JobStatusRow]:
        where = None
        if state is not None:
            states = [s.value for s in JobState]
            if state not in states:
                raise UnknownFilter("job state", state, states)
            where = {"state": state}
        with self._store_call():
            return [
                to_row(JOB_STATUS, r) for r in self.store.select(JOB_STATUS, where, ("updated_at",))
            ]

    def audit(self, job_id: str | None = None, verdict: str | None = None) -> list[AuditRow]:
        """Every recorded completion (one row each), oldest first."""
        where: dict[str, Any] = {}
        if job_id is not None:
            where["job_id"] = str(job_id)
        if verdict is not None:
            if verdict not in ("applied", "discarded"):
                raise UnknownFilter("verdict", verdict, ("applied", "discarded"))
            where["verdict"] = verdict
        with self._store_call():
            return [to_row(DISPATCH_AUDIT, r) for r in self.store.select(DISPATCH_AUDIT, where)]

    def discarded(self, job_id: str | None = None) -> list[AuditRow]:
        return self.audit(job_id, verdict="discarded")

    def decisions(
        self,
        status: str | None = None,
        job_id: str | None = None,
        decision_id: str | None = None,
    ) -> list[DecisionRow]:
        """Every Cedar decision (oldest request first), or those with ``status``, of the job
        that asked for it (``job_id``), or the one ``decision_id``."""
        where: dict[str, Any] = {}
        if decision_id is not None:
            where["decision_id"] = str(decision_id)
        if status is not None:
            if status not in DECISION_STATUSES:
                raise UnknownFilter("decision status", status, DECISION_STATUSES)
            where["status"] = status
        if job_id is not None:
            where["job_id"] = str(job_id)
        with self._store_call():
            return [
                to_row(DECISIONS, r) for r in self.store.select(DECISIONS, where, ("position",))
            ]

    def sessions(self, *, orphans: bool = False) -> list[SessionRow]:
        with self._store_call():
            rows = [to_row(SESSIONS, r) for r in self.store.select(SESSIONS, None, ("position",))]
        return [r for r in rows if r.orphan] if orphans else rows

    def skipped(self, name: str) -> list[SkippedRow]:
        """The events projection ``name`` could not fold and recorded instead, oldest first."""
        table = self.projection(name).skipped
        with self._store_call():
            return [to_row(table, r) for r in self.store.select(table)]

    def lag(self) -> dict[str, int]:
        return {s.projection: s.lag for s in self.status()}

    def status(self) -> list[ProjectionStatus]:
        with self._store_call():
            head = self.log.head()
            positions = self.store.positions(PROJECTIONS)
            return [
                ProjectionStatus(
                    projection=p.name,
                    position=positions[p.name],
                    head=head,
                    lag=head - positions[p.name],
                    rows=self.store.count(p.table),
                    drift=_position_drift(positions[p.name], head),
                    skipped=self.store.count(p.skipped),
                )
                for p in PROJECTIONS
            ]

    def checksum(self, name: str) -> str:
        """sha256 over the projection's rows as canonical JSON lines in key order."""
        projection = self.projection(name)
        with self._store_call():
            return self.store.checksum(projection).sha256

    # -- rebuild and verify (rebuild.py, verify.py) -----------------------------------------

    def rebuild(self, name: str, progress: ProgressCallback | bool | None = None) -> RebuildReport:
        """Brings the live projection to the head, then replays it from the first notification
        into shadow tables while the live ones keep serving, and swaps them in (see
        ``projections.rebuild``): events written during the rebuild are in the result.

        ``progress``: a callback (position, head); None shows a rich bar when stderr is a
        terminal; False shows nothing."""
        projection = self.projection(name)
        if callable(progress):
            return self._rebuild(projection, progress)
        if progress is False:
            return self._rebuild(projection, None)
        with progress_bar(f"rebuild {name}") as bar:
            return self._rebuild(projection, bar)

    def _rebuild(self, projection: Projection, progress: ProgressCallback | None) -> RebuildReport:
        with self._store_call():
            with suppress(ProjectionFailed):  # a broken live projection is what rebuild is for
                self.catch_up([projection.name])  # so the live checksum is of an up-to-date one
            return rebuild_projection(
                self.store,
                self.log,
                projection,
                batch_size=self.rebuild_batch_size,
                progress=progress,
            )

    def verify(self, *, catch_up: bool = True) -> VerifyReport:
        """Replays every aggregate from the event store and compares the read models with it:
        ``{checked, drifted, missing, extra}`` and the details (see ``projections.verify``),
        with the history's invalid transitions and undecodable events and every snapshot that
        is not the fold of its events counted as drift. Tracking positions are checked before
        ``catch_up`` applies anything newer."""

        def catch_up_one(projection: Projection) -> None:
            self.catch_up([projection.name])

        with self._store_call():
            return verify_read_models(
                self.store, self.log, self.service, catch_up=catch_up_one if catch_up else None
            )

    # -- internals --------------------------------------------------------------------------

    def _store_call(self) -> AbstractContextManager[None]:
        return read_model_call(self.service.url)


def _position_drift(position: int, head: int) -> str | None:
    # Notification ids are never taken back, so a position past the head was set by hand (or
    # belongs to another store): the projection would skip that many events once they exist.
    if position <= head:
        return None
    return f"position {position} is past the head {head}: rebuild the projection"
