"""``Projections``: the read models of one CurationService, kept, queried, rebuilt, verified.

Composition, not inheritance: it reads the service's notification log (``service.recorder``),
decodes with the service's mapper (``service.mapper``), and keeps its tables in the service's
own datastore (``service.factory.datastore``) — for ``memory://`` in a private in-memory SQLite
database instead, gone with the process like the events.

Following the log: ``catch_up()`` reads every view's notifications after its position in
batches, up to the head as of the call, and applies each batch to each view exactly once
(``store.ReadModels.apply``). ``run_forever(stop)`` keeps doing that: on PostgreSQL (and
memory) through the library's subscription (``recorder.subscribe``: LISTEN/NOTIFY, then a
``select_notifications`` pull), on SQLite — whose recorder raises NotImplementedError for
``subscribe`` in eventsourcing 9.5 — by polling ``select_notifications``.

Gaps: notification ids can have gaps (PostgreSQL sequence values of rolled-back inserts) but
never fill in later, because the library's recorder inserts under an EXCLUSIVE table lock so
ids are committed in order (see ``PostgresApplicationRecorder._lock_table``; SQLite has one
writer). So a reader never waits for a gap, and a view may take the head it read before a
select as its position once it has applied everything up to it.
"""

from __future__ import annotations

import gc
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from time import perf_counter
from types import TracebackType
from typing import Any, Self

from eventsourcing.persistence import (
    ApplicationRecorder,
    DataError,
    IntegrityError,
    InternalError,
    MapperDeserialisationError,
    Notification,
    ProgrammingError,
    Subscription,
)
from eventsourcing.popo import POPOFactory
from eventsourcing.postgres import PostgresFactory
from eventsourcing.sqlite import SQLiteFactory

from domain.errors import StoreUnavailable
from domain.log import Notice, log_reader, notices
from domain.service import CurationService
from domain.store_errors import STORE_ERRORS
from domain.store_url import first_line
from domain.transitions import JobState
from projections.errors import (
    ProjectionFailed,
    ReadModelError,
    UnknownFilter,
    UnknownProjection,
    UnsupportedStore,
)
from projections.progress import ProgressCallback, progress_bar
from projections.recorders import (
    Fetch,
    PositionMoved,
    PostgresReadModels,
    ReadModels,
    SQLiteReadModels,
    memory_datastore,
)
from projections.schema import (
    DECISIONS,
    DISPATCH_AUDIT,
    JOB_STATUS,
    SESSIONS,
    AuditRow,
    DecisionRow,
    JobStatusRow,
    SessionRow,
    to_row,
)
from projections.verify import VerifyReport, verify
from projections.views import VIEW_NAMES, VIEWS, View

CATCH_UP_BATCH = 1000
REBUILD_BATCH = 5000
POLL_SECONDS = 0.2
DECISION_STATUSES = ("pending", "approved", "rejected")

# What a batch can fail with that is about the data, not the connection.
_BATCH_ERRORS = (
    IntegrityError,
    DataError,
    ProgrammingError,
    InternalError,
    MapperDeserialisationError,
)


@dataclass(frozen=True)
class ProjectionStatus:
    projection: str
    position: int
    head: int
    lag: int  # notification ids between the view's position and the head
    rows: int


@dataclass(frozen=True)
class RebuildReport:
    projection: str
    events: int  # notifications replayed into the new tables
    seconds: float  # the replay and the swap (not the live view's catch-up before them)
    checksum_live: str
    checksum_rebuilt: str
    position: int  # the head both checksums were taken at
    rows: int
    events_per_second: float
    live_error: str | None = None  # the old tables could not be brought to the head

    @property
    def equal(self) -> bool:
        return self.checksum_live == self.checksum_rebuilt


def open_store(service: CurationService, views: Sequence[View] = VIEWS) -> ReadModels:
    """The read models' store in the service's own database."""
    factory = service.factory
    store: ReadModels
    if isinstance(factory, SQLiteFactory):
        store = SQLiteReadModels(factory.datastore, app_name=service.name, views=views)
    elif isinstance(factory, PostgresFactory):
        store = PostgresReadModels(factory.datastore, app_name=service.name, views=views)
    elif isinstance(factory, POPOFactory):
        store = SQLiteReadModels(memory_datastore(), app_name=service.name, views=views)
    else:
        raise UnsupportedStore(type(factory).__name__)
    _create_tables(store)
    store.init_positions(views)
    return store


def _create_tables(store: ReadModels) -> None:
    # Two processes creating the same tables at once can collide on PostgreSQL's catalog;
    # CREATE ... IF NOT EXISTS makes a second attempt a no-op.
    for attempt in range(3):
        try:
            store.create_table()
            return
        except (IntegrityError, ProgrammingError):
            if attempt == 2:
                raise


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
        self._views = {v.name: v for v in VIEWS}
        self._topic_sets = {v.name: frozenset(v.topics) for v in VIEWS}
        self._processing = threading.RLock()  # one batch at a time per instance
        self.log = log_reader(service.recorder, service.mapper)
        with self._store_call():
            self.store = open_store(service)

    @classmethod
    def open(cls, url: str | None = None, **options: Any) -> Projections:
        """Opens the store at ``url`` (as CurationService.open does) and its read models."""
        service = CurationService.open(url)
        try:
            return cls(service, owns_service=True, **options)
        except BaseException:
            service.close()
            raise

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
        return VIEW_NAMES

    def view(self, name: str) -> View:
        try:
            return self._views[name]
        except (KeyError, TypeError):
            raise UnknownProjection(name, VIEW_NAMES) from None

    def _selected(self, names: Iterable[str] | None) -> list[View]:
        return list(VIEWS) if names is None else [self.view(n) for n in names]

    # -- following the log -------------------------------------------------------------------

    def head(self) -> int:
        with self._store_call():
            return self.log.head()

    def positions(self) -> dict[str, int]:
        with self._store_call():
            return self.store.positions(VIEWS)

    def catch_up(self, names: Iterable[str] | None = None) -> int:
        """Applies every notification up to the current head to the named views (default: all)
        exactly once. Returns how many notifications were read."""
        views = self._selected(names)
        with self._store_call(), self._processing:
            return self._catch_up(views)

    def _catch_up(self, views: Sequence[View]) -> int:
        read = 0
        while True:  # more than once only if another runner moved a position backwards
            head = self.log.head()
            positions = self.store.positions(views)
            start = min(positions.values())
            complete = True
            for batch, upto in self.log.batches(start, head, _union(views), self.batch_size):
                read += len(batch)
                if not self._process(views, positions, batch, start, upto):
                    complete = False
                    break
                start = upto
            if complete:
                return read

    def _process(
        self,
        views: Sequence[View],
        positions: dict[str, int],
        batch: Sequence[Notice],
        start: int,
        upto: int,
    ) -> bool:
        """Applies ``batch`` (every notification of the views' topics in (start, upto]) to
        each view still behind ``upto``. False if a view's position went back before
        ``start``, so the batch cannot cover it: the caller reads again."""
        for view in views:
            after = positions[view.name]
            if after < start:
                return False  # the batch does not reach back that far
            while after < upto:
                topics = self._topic_sets[view.name]
                relevant = [n for n in batch if n.id > after and n.topic in topics]
                try:
                    self.store.apply(view, relevant, after=after, upto=upto)
                    after = upto
                except PositionMoved as moved:  # another runner got there first
                    if moved.current < start:
                        positions[view.name] = moved.current
                        return False
                    after = moved.current
                except _BATCH_ERRORS as exc:
                    raise ProjectionFailed(view.name, after, first_line(exc)) from exc
            positions[view.name] = after
        return True

    def run_forever(self, stop: threading.Event, *, poll_seconds: float = POLL_SECONDS) -> None:
        """Keeps every view at the head until ``stop`` is set: through the recorder's
        subscription where it has one, else by polling every ``poll_seconds``."""
        after = min(self.positions().values())
        try:
            subscription = self.service.recorder.subscribe(gt=after, topics=_union(VIEWS))
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
        """Batches what the subscription yields (every notification of the views' topics
        after ``covered``, in order) and applies each batch exactly once."""
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
                        # Idle: also move positions over events no view reads (Claimed,
                        # policies), so lag reads zero when everything is applied.
                        self.catch_up()
                        continue
                    while len(batch) < self.batch_size:
                        try:
                            batch.append(inbox.get_nowait())
                        except queue.Empty:
                            break
                    with self._processing:
                        positions = self.store.positions(VIEWS)
                        decoded = notices(batch, self.service.mapper)
                        complete = self._process(VIEWS, positions, decoded, covered, batch[-1].id)
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

    def decisions(self, status: str | None = None) -> list[DecisionRow]:
        where = None
        if status is not None:
            if status not in DECISION_STATUSES:
                raise UnknownFilter("decision status", status, DECISION_STATUSES)
            where = {"status": status}
        with self._store_call():
            return [
                to_row(DECISIONS, r) for r in self.store.select(DECISIONS, where, ("position",))
            ]

    def sessions(self, *, orphans: bool = False) -> list[SessionRow]:
        with self._store_call():
            rows = [to_row(SESSIONS, r) for r in self.store.select(SESSIONS, None, ("position",))]
        return [r for r in rows if r.orphan] if orphans else rows

    def lag(self) -> dict[str, int]:
        return {s.projection: s.lag for s in self.status()}

    def status(self) -> list[ProjectionStatus]:
        with self._store_call():
            head = self.log.head()
            positions = self.store.positions(VIEWS)
            return [
                ProjectionStatus(
                    projection=v.name,
                    position=positions[v.name],
                    head=head,
                    lag=max(head - positions[v.name], 0),
                    rows=self.store.count(v.table),
                )
                for v in VIEWS
            ]

    def checksum(self, name: str) -> str:
        """sha256 over the view's rows as canonical JSON lines in key order."""
        view = self.view(name)
        with self._store_call():
            return self.store.checksum(view).sha256

    # -- rebuild ----------------------------------------------------------------------------

    def rebuild(self, name: str, progress: ProgressCallback | bool | None = None) -> RebuildReport:
        """Replays the view from the first notification into shadow tables while the live
        ones keep serving, then swaps them in, in one transaction, at the head (see
        ``store.ReadModels.swap``): events written during the rebuild are in the result.

        ``progress``: a callback (position, head); None shows a rich bar when stderr is a
        terminal; False shows nothing."""
        view = self.view(name)
        if callable(progress):
            return self._rebuild(view, progress)
        if progress is False:
            return self._rebuild(view, None)
        with progress_bar(f"rebuild {name}") as bar:
            return self._rebuild(view, bar)

    def _rebuild(self, view: View, progress: ProgressCallback | None) -> RebuildReport:
        with self._store_call():
            with suppress(ProjectionFailed):  # a broken live view is what rebuild is for
                self.catch_up([view.name])  # so the live checksum is of an up-to-date view
            started = perf_counter()
            self.store.create_shadow(view)
            try:
                with gc_paused():
                    events, after, head = 0, 0, self.log.head()
                    if progress:
                        progress(0, head)
                    batches = self.log.batches(0, head, view.topics, self.rebuild_batch_size)
                    for batch, upto in batches:
                        self.store.apply(view, batch, after=after, upto=upto, shadow=True)
                        events += len(batch)
                        after = upto
                        if progress:
                            progress(after, head)
                    swapped = self.store.swap(view, self.log.head, self._fetch(view))
            except BaseException:
                self._drop_shadow_quietly(view)
                raise
            if progress:
                progress(swapped.position, swapped.position)
        seconds = perf_counter() - started
        events += swapped.events
        return RebuildReport(
            projection=view.name,
            events=events,
            seconds=round(seconds, 3),
            checksum_live=swapped.checksum_live,
            checksum_rebuilt=swapped.checksum_rebuilt,
            position=swapped.position,
            rows=swapped.rows,
            events_per_second=round(events / seconds, 1) if seconds > 0 else 0.0,
            live_error=swapped.live_error,
        )

    def _drop_shadow_quietly(self, view: View) -> None:
        with suppress(*STORE_ERRORS):  # the next rebuild drops it first anyway
            self.store.drop_shadow(view)

    def _fetch(self, view: View) -> Fetch:
        def fetch(after: int, upto: int) -> Iterator[list[Notice]]:
            for batch, _ in self.log.batches(after, upto, view.topics, self.rebuild_batch_size):
                yield batch

        return fetch

    # -- verify -----------------------------------------------------------------------------

    def verify(self, *, catch_up: bool = True) -> VerifyReport:
        """Replays every aggregate from the event store and compares the read models with it:
        ``{checked, drifted, missing, extra}`` and the details (see ``projections.verify``).
        Tracking positions are checked before ``catch_up`` applies anything newer."""
        return verify(self, catch_up=catch_up)

    # -- internals --------------------------------------------------------------------------

    @contextmanager
    def _store_call(self) -> Iterator[None]:
        """A lost or refused connection becomes StoreUnavailable, as in the service."""
        try:
            yield
        except _BATCH_ERRORS as exc:
            raise ReadModelError(f"read models: {first_line(exc)}") from exc
        except STORE_ERRORS as exc:
            raise StoreUnavailable(getattr(self.service, "url", "?"), first_line(exc)) from None


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a replay runs. A replay allocates millions of
    short-lived objects (rows, notices) that reference counting frees at once; the collector's
    generational passes over them cost a quarter of a rebuild's time and find nothing."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _union(views: Sequence[View]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(t for v in views for t in v.topics))
