"""What the dispatcher tells whoever watches its runs: each step of a run as it happens.

The dispatcher calls a ``DispatchObserver`` and knows nothing of what it does with what it
hears; ``integrations/telemetry.py`` turns it into Prometheus metrics and OpenTelemetry spans.
The default, ``Unobserved``, keeps nothing. Observing never changes what the dispatcher does:
an observer's step wraps the dispatcher's own call and returns nothing it reads.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import Literal, Protocol
from uuid import UUID

from domain import Dispatch, Verdict

# The steps of one run, in order: take the lease, run the module, hand the outcome to the guard
# (and compensate, when the guard discarded a spawned session).
Step = Literal["claim", "sandbox", "completion"]


class RunObserver(Protocol):
    """One run, as the dispatcher goes through it."""

    def step(self, name: Step) -> AbstractContextManager[object]:
        """Wraps the dispatcher's own call for the step ``name``."""
        ...

    def claimed(self, dispatch: Dispatch, lease_until: datetime) -> None: ...

    def ran(self, error_kind: str | None) -> None:
        """The sandbox run ended: ``error_kind`` None for ok, else its classified kind."""
        ...

    def completed(self, action: str, verdict: Verdict) -> None: ...

    def compensated(self, session_id: str, *, stopped: bool) -> None:
        """A discarded completion's session was stopped (``stopped``) or could not be."""
        ...


class DispatchObserver(Protocol):
    def run(self, invocation_id: UUID) -> AbstractContextManager[RunObserver]:
        """Watches one run of ``invocation_id``, from before its claim to its completion."""
        ...


class Unobserved:
    """The default observer: hears everything, keeps nothing."""

    def run(self, invocation_id: UUID) -> AbstractContextManager[RunObserver]:
        return nullcontext(self)

    def step(self, name: Step) -> AbstractContextManager[object]:
        return nullcontext()

    def claimed(self, dispatch: Dispatch, lease_until: datetime) -> None:
        pass

    def ran(self, error_kind: str | None) -> None:
        pass

    def completed(self, action: str, verdict: Verdict) -> None:
        pass

    def compensated(self, session_id: str, *, stopped: bool) -> None:
        pass
