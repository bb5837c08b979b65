"""Group commit of completions: runs that finish together are decided in order and saved in one
transaction (``CurationService.complete_batch``), instead of one transaction each.

A run's thread hands its completion to ``GroupCommit.complete`` and blocks until its own verdict
is known. The first to arrive leads: it waits (at most ``max_wait``, and only while more runs are
still executing, as ``expected`` says) for up to ``max_batch`` completions, commits them, hands
the lead to the first of those that arrived meanwhile, and returns. So one run alone is never
held up, and under load each commit carries what arrived during the one before.

Each completion keeps its exact verdict: ``complete_batch`` decides them in arrival order, each on
the state the ones before it left, as if they had come one by one, and re-decides the batch on a
version conflict. What it refuses as a whole (bad input anywhere in the batch) is completed one
by one, so each completion gets its own verdict or its own error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from domain import Dispatch, StoreUnavailable, Verdict

Completion = tuple[Dispatch, str, Mapping[str, Any] | None]


class BatchCompleter(Protocol):
    def complete(
        self, dispatch: Dispatch, action: str, params: Mapping[str, Any] | None = None
    ) -> Verdict: ...

    def complete_batch(self, completions: Sequence[Completion]) -> list[Verdict]: ...


@dataclass(eq=False)
class _Waiting:
    completion: Completion
    done: threading.Event = field(default_factory=threading.Event)
    leads: bool = False
    verdict: Verdict | None = None
    error: BaseException | None = None


@dataclass
class GroupStats:
    commits: int = 0
    completions: int = 0
    largest: int = 0


class GroupCommit:
    def __init__(
        self,
        service: BatchCompleter,
        *,
        max_batch: int = 64,
        max_wait: float = 0.002,
        expected: Callable[[], int] = lambda: 0,
    ) -> None:
        self.service = service
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.expected = expected  # how many completions may still come (runs executing)
        self.stats = GroupStats()
        self._arrived = threading.Condition()
        self._queue: list[_Waiting] = []
        self._leader = False

    def complete(
        self, dispatch: Dispatch, action: str, params: Mapping[str, Any] | None = None
    ) -> Verdict:
        waiting = _Waiting((dispatch, action, params))
        with self._arrived:
            self._queue.append(waiting)
            waiting.leads = not self._leader
            self._leader = True
            self._arrived.notify_all()
        while True:
            if waiting.leads:
                waiting.leads = False
                self._lead()
            waiting.done.wait()
            if not waiting.leads:
                break
            waiting.done.clear()
        if waiting.error is not None:
            raise waiting.error
        assert waiting.verdict is not None
        return waiting.verdict

    def _lead(self) -> None:
        batch = self._gather()
        self._commit(batch)
        with self._arrived:
            if self._queue:
                successor = self._queue[0]
                successor.leads = True
                successor.done.set()  # wakes it to lead; its own verdict comes later
            else:
                self._leader = False

    def _gather(self) -> list[_Waiting]:
        deadline = time.monotonic() + self.max_wait
        with self._arrived:
            while len(self._queue) < min(self.max_batch, self.expected()):
                left = deadline - time.monotonic()
                if left <= 0 or not self._arrived.wait(left):
                    break
            batch, self._queue[:] = self._queue[: self.max_batch], self._queue[self.max_batch :]
        return batch

    def _commit(self, batch: list[_Waiting]) -> None:
        try:
            verdicts = self.service.complete_batch([w.completion for w in batch])
        except StoreUnavailable as exc:
            # Nothing was decided: every run in the batch is left for a retry alike.
            self._finish(batch, [exc] * len(batch))
            return
        except Exception as exc:
            # Refused as a whole: one by one, so each gets its own verdict or its own error.
            self._finish(batch, [exc] if len(batch) == 1 else [self._one(w) for w in batch])
            return
        self.stats.commits += 1
        self.stats.completions += len(batch)
        self.stats.largest = max(self.stats.largest, len(batch))
        self._finish(batch, verdicts)

    def _one(self, waiting: _Waiting) -> Verdict | BaseException:
        try:
            return self.service.complete(*waiting.completion)
        except Exception as exc:
            return exc

    @staticmethod
    def _finish(batch: list[_Waiting], results: Sequence[Verdict | BaseException]) -> None:
        for waiting, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                waiting.error = result
            else:
                waiting.verdict = result
            waiting.done.set()
