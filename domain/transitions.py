"""The CurationJob state machine as data (DESIGN.md §2).

One table, ``TRANSITIONS``, maps each action to its parameters, allowed source states and target
state. The aggregate, the guard, the service and every error message read it; nothing else decides
which action is valid where.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any

from domain.errors import InvalidParams, UnknownAction
from domain.values import json_problems

# A session id is a read model's key (``sessions``), and PostgreSQL refuses an index entry over
# 2704 bytes: past that, the read model could never hold the row again. 256 characters are at
# most 1 KiB of UTF-8.
MAX_SESSION_ID_CHARS = 256


class JobState(StrEnum):
    QUEUED = "Queued"
    READY = "Ready"
    RUNNING = "Running"
    FINALIZING = "Finalizing"
    COMPLETED = "Completed"
    FAILED = "Failed"


class FailReason(StrEnum):
    AUTHORIZATION_DENIED = "authorization_denied"
    MODULE_ERROR = "module_error"
    TIMEOUT = "timeout"
    SERVICE_ERROR = "service_error"
    OPERATOR = "operator"


@dataclass(frozen=True)
class Param:
    """One parameter of an action: its JSON type, and whether it may be left out."""

    name: str
    json_type: str  # "object", "array", "string", "object|string"
    required: bool = True
    choices: tuple[str, ...] = ()
    max_chars: int | None = None  # for strings

    def problem(self, value: Any) -> str | None:
        if not _is_json_type(value, self.json_type):
            return f"{self.name!r} must be {self.json_type}, got {type(value).__name__}"
        if self.choices and value not in self.choices:
            return f"{self.name!r} must be one of {', '.join(self.choices)}, got {value!r:.60}"
        if self.json_type == "string" and self.required and not value:
            return f"{self.name!r} must not be empty"
        if self.max_chars is not None and len(value) > self.max_chars:
            return f"{self.name!r} must be at most {self.max_chars} characters, got {len(value)}"
        return None


_JSON_TYPES: Mapping[str, type | tuple[type, ...]] = {
    "object": dict,
    "array": list,
    "string": str,
}


def _is_json_type(value: Any, json_type: str) -> bool:
    return any(isinstance(value, _JSON_TYPES[t]) for t in json_type.split("|"))


@dataclass(frozen=True)
class Transition:
    """One row of the table. ``sources`` empty means the action creates the job."""

    action: str
    event: str
    params: tuple[Param, ...]
    sources: frozenset[JobState]
    target: JobState
    starts_invocation: bool = False
    completion_only: bool = False  # may reach the job only through the guarded complete()
    notes: str = field(default="", compare=False)

    def allows(self, state: JobState) -> bool:
        return state in self.sources

    def validate(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """Returns the given params checked, or raises InvalidParams naming every problem.
        Values become event data, so they must also pass ``domain.values.json_problems``:
        plain JSON that every store and read model can hold, small and shallow enough."""
        if params is None:
            params = {}
        if not isinstance(params, Mapping):
            raise InvalidParams(
                self.action, [f"params must be an object, got {type(params).__name__}"]
            )
        known = {p.name for p in self.params}
        problems = [f"unexpected param {name!r:.60}" for name in params if name not in known]
        values: dict[str, Any] = {}
        for p in self.params:
            if p.name not in params:
                if p.required:
                    problems.append(f"missing param {p.name!r}")
                continue
            problem = p.problem(params[p.name])
            if problem:
                problems.append(problem)
            values[p.name] = params[p.name]
        if not problems:
            problems.extend(json_problems(values))
        if problems:
            raise InvalidParams(self.action, problems)
        return values


_SESSION_ID = Param("session_id", "string", max_chars=MAX_SESSION_ID_CHARS)
_ACTIVE = frozenset({JobState.QUEUED, JobState.READY, JobState.RUNNING, JobState.FINALIZING})

# fmt: off
TRANSITIONS: Mapping[str, Transition] = {t.action: t for t in (
    # action            event                params
    #     from-states                         to-state             flags
    Transition("Create", "Created", (Param("spec", "object"),),
        frozenset(), JobState.QUEUED, notes="what to curate, target endpoint"),
    Transition("Configure", "Configured", (Param("settings", "object"),),
        frozenset({JobState.QUEUED}), JobState.QUEUED),
    Transition("Submit", "Submitted", (),
        frozenset({JobState.QUEUED}), JobState.READY, starts_invocation=True),
    Transition("SessionSpawned", "SessionSpawned", (_SESSION_ID,),
        frozenset({JobState.READY}), JobState.RUNNING, completion_only=True),
    Transition("RecordProgress", "ProgressRecorded", (Param("entry", "object|string"),),
        frozenset({JobState.RUNNING}), JobState.RUNNING),
    Transition("Complete", "CompletionRequested", (Param("output", "object"),),
        frozenset({JobState.RUNNING}), JobState.FINALIZING),
    Transition("FinalizeCompletion", "Completed", (),
        frozenset({JobState.FINALIZING}), JobState.COMPLETED, notes="Completed is final"),
    Transition("RepairRequired", "RepairRequired", (Param("defects", "array"),),
        frozenset({JobState.FINALIZING}), JobState.READY, starts_invocation=True),
    Transition("Fail", "Failed", (Param("reason", "string", choices=tuple(FailReason)),
                                  Param("message", "string", required=False),
                                  Param("decision_id", "string", required=False)),
        _ACTIVE, JobState.FAILED),
    Transition("Retry", "Retried", (),
        frozenset({JobState.FAILED}), JobState.QUEUED, notes="attempt += 1"),
)}
# fmt: on

# Actions an integration's declaration may map its outcome to (DESIGN.md §3: ok -> on_success,
# error -> on_failure). Anything else offered to complete() is refused before it is recorded.
COMPLETION_ACTIONS: frozenset[str] = frozenset({"SessionSpawned", "Fail"})

# How long a job may sit in a state before the dispatcher fails it with reason "timeout".
STATE_TIMEOUTS: Mapping[JobState, timedelta] = {
    JobState.QUEUED: timedelta(minutes=15),
    JobState.READY: timedelta(minutes=15),
    JobState.RUNNING: timedelta(hours=2),
    JobState.FINALIZING: timedelta(minutes=15),
}


def transition(action: object) -> Transition:
    if not isinstance(action, str) or action not in TRANSITIONS:
        raise UnknownAction(action, TRANSITIONS)
    return TRANSITIONS[action]
