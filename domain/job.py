"""The CurationJob aggregate: commands check the transition table; ``@event`` bodies change state
and are the only place that does."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.domain import Aggregate, event

from domain.errors import ActionNotAllowedHere, InvalidParams, InvalidTransition
from domain.transitions import (
    COMPLETION_ACTIONS,
    STATE_TIMEOUTS,
    TRANSITIONS,
    FailReason,
    JobState,
    Transition,
    transition,
)


def event_name(action: str) -> str:
    """The past-tense event an action records, as the table names it."""
    return TRANSITIONS[action].event


def command_name(action: str) -> str:
    """``RecordProgress`` -> ``record_progress``: the aggregate method that performs an action."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", action).lower()


class CurationJob(Aggregate):
    @event(event_name("Create"))
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.settings: dict[str, Any] = {}
        self.state = JobState.QUEUED
        self.attempt = 1
        self.session_id: str | None = None
        self.current_invocation: UUID | None = None
        self.progress: list[dict[str, Any] | str] = []
        self.output: dict[str, Any] | None = None
        self.defects: list[Any] = []
        self.failure: dict[str, Any] | None = None

    # -- the generic door used by the service ------------------------------------------------

    def perform(
        self, action: str, values: Mapping[str, Any], *, invocation_id: UUID | None = None
    ) -> None:
        """Performs an already-validated action by name. Completion actions carry the
        invocation they came from so the job's own events say which run moved it."""
        extra = {"invocation_id": invocation_id} if action in COMPLETION_ACTIONS else {}
        getattr(self, command_name(action))(**values, **extra)

    def allows(self, action: str) -> bool:
        return transition(action).allows(self.state)

    def _require(self, action: str) -> Transition:
        t = transition(action)
        if not t.allows(self.state):
            raise InvalidTransition(self.id, self.state, action, t.sources)
        return t

    def _move(self, action: str) -> None:
        self.state = transition(action).target

    def timeout_at(
        self, timeouts: Mapping[JobState, timedelta] = STATE_TIMEOUTS
    ) -> datetime | None:
        """When the dispatcher should fail this job with reason ``timeout``. Counted from the
        job's last event, so progress entries extend a Running job's deadline."""
        limit = timeouts.get(self.state)
        return None if limit is None else self.modified_on + limit

    # -- commands ---------------------------------------------------------------------------

    def configure(self, settings: dict[str, Any]) -> None:
        self._require("Configure")
        self._configured(settings=settings)

    def submit(self) -> UUID:
        self._require("Submit")
        invocation_id = uuid4()
        self._submitted(invocation_id=invocation_id, attempt=self.attempt)
        return invocation_id

    def session_spawned(self, session_id: str, invocation_id: UUID | None = None) -> None:
        self._require("SessionSpawned")
        self._require_current(invocation_id, "SessionSpawned")
        self._session_spawned(session_id=session_id, invocation_id=invocation_id)

    def record_progress(self, entry: dict[str, Any] | str) -> None:
        self._require("RecordProgress")
        self._progress_recorded(entry=entry)

    def complete(self, output: dict[str, Any]) -> None:
        self._require("Complete")
        self._completion_requested(output=output)

    def finalize_completion(self) -> None:
        self._require("FinalizeCompletion")
        self._completed()

    def repair_required(self, defects: list[Any]) -> UUID:
        self._require("RepairRequired")
        invocation_id = uuid4()
        self._repair_required(defects=defects, invocation_id=invocation_id)
        return invocation_id

    def fail(
        self,
        reason: str,
        message: str = "",
        decision_id: str | None = None,
        invocation_id: UUID | None = None,
    ) -> None:
        self._require("Fail")
        if reason == FailReason.AUTHORIZATION_DENIED and not decision_id:
            raise InvalidParams("Fail", ["reason 'authorization_denied' needs a 'decision_id'"])
        if invocation_id is not None:
            self._require_current(invocation_id, "Fail")
        self._failed(
            reason=reason, message=message, decision_id=decision_id, invocation_id=invocation_id
        )

    def retry(self) -> None:
        self._require("Retry")
        self._retried(attempt=self.attempt + 1)

    def _require_current(self, invocation_id: UUID | None, action: str) -> None:
        # Defence in depth behind the guard: a completion from any run but the current one
        # must never reach the job's state, whoever calls this method.
        if invocation_id is None or invocation_id != self.current_invocation:
            raise ActionNotAllowedHere(
                action,
                "only reaches a job through the guarded completion of its current invocation",
            )

    # -- events: the only place state changes -----------------------------------------------

    @event(event_name("Configure"))
    def _configured(self, settings: dict[str, Any]) -> None:
        self.settings = settings

    @event(event_name("Submit"))
    def _submitted(self, invocation_id: UUID, attempt: int) -> None:
        self._move("Submit")
        self.current_invocation = invocation_id

    @event(event_name("SessionSpawned"))
    def _session_spawned(self, session_id: str, invocation_id: UUID | None) -> None:
        self._move("SessionSpawned")
        self.session_id = session_id

    @event(event_name("RecordProgress"))
    def _progress_recorded(self, entry: dict[str, Any] | str) -> None:
        self.progress.append(entry)

    @event(event_name("Complete"))
    def _completion_requested(self, output: dict[str, Any]) -> None:
        self._move("Complete")
        self.output = output

    @event(event_name("FinalizeCompletion"))
    def _completed(self) -> None:
        self._move("FinalizeCompletion")

    @event(event_name("RepairRequired"))
    def _repair_required(self, defects: list[Any], invocation_id: UUID) -> None:
        self._move("RepairRequired")
        self.defects = defects
        self.current_invocation = invocation_id

    @event(event_name("Fail"))
    def _failed(
        self, reason: str, message: str, decision_id: str | None, invocation_id: UUID | None
    ) -> None:
        self._move("Fail")
        self.failure = {"reason": reason, "message": message, "decision_id": decision_id}

    @event(event_name("Retry"))
    def _retried(self, attempt: int) -> None:
        self._move("Retry")
        self.attempt = attempt
        self.failure = None
