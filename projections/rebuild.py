"""Rebuild: one projection replayed from the first notification into shadow tables while the
live ones keep serving, then swapped in (``ReadModels.swap``: one transaction holding both
tracking locks, at the head), so events written during the rebuild are in the result and the
live and rebuilt checksums are taken at the same position."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from time import perf_counter

from domain.log import LogReader, Page
from domain.store_errors import STORE_ERRORS
from projections.gc_pause import gc_paused
from projections.progress import ProgressCallback
from projections.projection import Projection
from projections.recorders import Fetch, KeepLock, ReadModels, Swapped

REBUILD_BATCH = 50_000


@dataclass(frozen=True)
class RebuildReport:
    projection: str
    events: int  # notifications replayed into the new tables
    seconds: float  # the replay and the swap (not the live projection's catch-up before them)
    checksum_live: str
    checksum_rebuilt: str
    position: int  # the head both checksums were taken at
    rows: int
    events_per_second: float
    live_error: str | None = None  # the old tables could not be brought to the head

    @property
    def equal(self) -> bool:
        return self.checksum_live == self.checksum_rebuilt


def rebuild_projection(
    store: ReadModels,
    log: LogReader,
    projection: Projection,
    *,
    batch_size: int = REBUILD_BATCH,
    progress: ProgressCallback | None = None,
) -> RebuildReport:
    """Replays ``projection`` into shadow tables and swaps them in; ``progress`` is called
    with (position, head) as the replay advances. RebuildInProgress, changing nothing, while
    another rebuild of it runs (``ReadModels.rebuild_lock``)."""
    started = perf_counter()
    with store.rebuild_lock(projection) as keep:
        swapped, events = _replay_and_swap(store, log, projection, batch_size, progress, keep)
    if progress:
        progress(swapped.position, swapped.position)
    seconds = perf_counter() - started
    events += swapped.events
    return RebuildReport(
        projection=projection.name,
        events=events,
        seconds=round(seconds, 3),
        checksum_live=swapped.checksum_live,
        checksum_rebuilt=swapped.checksum_rebuilt,
        position=swapped.position,
        rows=swapped.rows,
        events_per_second=round(events / seconds, 1) if seconds > 0 else 0.0,
        live_error=swapped.live_error,
    )


def _replay_and_swap(
    store: ReadModels,
    log: LogReader,
    projection: Projection,
    batch_size: int,
    progress: ProgressCallback | None,
    keep: KeepLock,
) -> tuple[Swapped, int]:
    store.create_shadow(projection)
    try:
        with gc_paused():
            events, after, head = 0, 0, log.head()
            if progress:
                progress(0, head)
            for batch, upto in log.batches(0, head, projection.topics, batch_size, projection.kept):
                store.apply(projection, batch, after=after, upto=upto, shadow=True)
                events += batch.rows_read
                after = upto
                keep()
                if progress:
                    progress(after, head)
            swapped = store.swap(projection, log.head, _fetch(log, projection, batch_size))
    except BaseException:
        with suppress(*STORE_ERRORS):  # the next rebuild drops it first anyway
            store.drop_shadow(projection)
        raise
    return swapped, events


def _fetch(log: LogReader, projection: Projection, batch_size: int) -> Fetch:
    def fetch(after: int, upto: int) -> Iterator[Page]:
        for batch, _ in log.batches(after, upto, projection.topics, batch_size, projection.kept):
            yield batch

    return fetch
