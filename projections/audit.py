"""The audit of one job (DESIGN.md §5, ``sequent audit``): its timeline read straight from the
event store, so it is the ground truth the read models are checked against, never a copy.

``Timeline.load(svc, job_id)`` reads, in this order and nothing more:

1. the job's events (one read of its sequence);
2. the events of each invocation the job started (one read per ``Submitted`` /
   ``RepairRequired``);
3. one pass over the notification log filtered by topic (``Decision`` events and
   ``Invocation.Unrecognised``), keeping those that name this job: the Cedar decisions that
   touched it and the completions that named an invocation nobody started. Only events whose
   raw bytes mention the job (or a decision already kept) are decoded;
4. the job as of its latest version (``repository.get(version=...)``, from a snapshot).

``Timeline.state_at(v)`` is time travel through ``svc.repository.get(job_id, version=v)``;
``Timeline.to_json()`` is complete enough for ``check_invariants`` to re-check the invariants
of DESIGN.md §1 offline, from the JSON alone; ``Timeline.export_jsonl(path)`` writes every
event (job, invocations, decisions) as one JSON line each, in time order.

The JSON (``Timeline.to_json()``; ``sequent audit JOB --json``)::

    {"job", "state", "version", "attempt", "session_id", "current_invocation", "failure",
     "created_at", "updated_at",
     "events": [{"version", "name", "timestamp", "data"}],          # the job's, in order
     "invocations": [{"id", "label" (A, B, ...), "recognised", "attempt", "expected_version",
                      "integration", "module_sha256", "started_at",
                      "claims": [{"worker", "lease_until", "at"}],
                      "completions": [{"action", "params", "finished_at", "verdict"
                                       (Applied|Discarded|null), "reason", "job_version",
                                       "job_version_seen", "job_state_seen", "decided_at"}],
                      "compensations": [{"session_id", "at"}],
                      "events": [{"version", "name", "timestamp", "data"}]}],
     "missing_invocations": [id],       # started by the job, absent from the store
     "decisions": [{"id", "job_id", "status", "principal", "action", "resource",
                    "invocation_id", "module_sha256", "reason", "requested_at",
                    "decided_by", "decided_at", "policy_id", "rejection_reason", "events"}],
     "summary": {"events", "invocation_events", "decision_events", "invocations",
                 "completions", "applied", "discarded", "discard_reasons", "compensations",
                 "decisions"},
     "at": {"version", "state", "attempt", "session_id", "current_invocation", "failure",
            "at"}}                      # only with to_json(at=VERSION) / --at

An export line (``export_jsonl``): ``{"job", "aggregate" (job|invocation|decision),
"aggregate_id", "label", "version", "name", "timestamp", "data"}``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import Enum
from pathlib import Path
from typing import Any, overload
from uuid import UUID

from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic, resolve_topic

from domain import (
    CurationService,
    DiscardReason,
    HistoryEntry,
    InvocationNotFound,
    JobNotFound,
    SequentError,
    as_uuid,
)
from domain.invocation import Invocation
from domain.job import CurationJob
from domain.log import DECISION_APPROVED, DECISION_REJECTED, DECISION_REQUESTED
from domain.store_errors import store_call
from domain.transitions import TRANSITIONS, JobState
from projections.gc_pause import gc_paused

UNRECOGNISED_TOPIC = get_topic(Invocation.Unrecognised)
SCAN_TOPICS = (DECISION_REQUESTED, DECISION_APPROVED, DECISION_REJECTED, UNRECOGNISED_TOPIC)
SCAN_BATCH = 5000
COMPLETION_EVENTS = frozenset(TRANSITIONS[a].event for a in ("SessionSpawned", "Fail"))
START_EVENTS = frozenset(TRANSITIONS[a].event for a in ("Submit", "RepairRequired"))
START_TOPICS = frozenset(f"{get_topic(CurationJob)}.{name}" for name in START_EVENTS)
VERDICTS = ("Applied", "Discarded")


# -- errors -----------------------------------------------------------------------------------


class AuditError(SequentError):
    """Base of the audit's own errors."""


class VersionOutOfRange(AuditError):
    """``--at`` / ``state_at`` named a version the job does not have."""

    def __init__(self, job_id: UUID, version: object, latest: int) -> None:
        self.job_id = job_id
        self.version = version
        self.latest = latest
        super().__init__(f"job {job_id} has versions 1..{latest}; there is no version {version!r}")


class ExportFailed(AuditError):
    def __init__(self, path: Path, why: str) -> None:
        self.path = path
        super().__init__(f"cannot export to {str(path)!r}: {why}")


# -- values -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobStateAt:
    """The job as of one version: what ``--at`` shows."""

    job_id: UUID
    version: int
    state: str
    attempt: int
    session_id: str | None
    current_invocation: UUID | None
    failure: dict[str, Any] | None
    at: datetime  # when that version was recorded

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "state": self.state,
            "attempt": self.attempt,
            "session_id": self.session_id,
            "current_invocation": plain(self.current_invocation),
            "failure": plain(self.failure),
            "at": plain(self.at),
        }


@dataclass(frozen=True)
class Claim:
    worker: str
    lease_until: datetime
    at: datetime
    version: int


@dataclass(frozen=True)
class Completion:
    """One completion that reached the invocation (``Finished``) and the guard's verdict on it.

    ``verdict`` is "Applied" or "Discarded" (None only if the store lacks it: an integrity
    problem ``check_invariants`` reports). ``job_version`` is the version the job moved to when
    applied; ``job_version_seen`` / ``job_state_seen`` what the guard saw when it discarded."""

    action: str | None
    params: dict[str, Any]
    finished_at: datetime | None
    verdict: str | None = None
    reason: str | None = None
    job_version: int | None = None
    job_version_seen: int | None = None
    job_state_seen: str | None = None
    decided_at: datetime | None = None

    @property
    def applied(self) -> bool:
        return self.verdict == "Applied"

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "params": plain(self.params),
            "finished_at": plain(self.finished_at),
            "verdict": self.verdict,
            "reason": self.reason,
            "job_version": self.job_version,
            "job_version_seen": self.job_version_seen,
            "job_state_seen": self.job_state_seen,
            "decided_at": plain(self.decided_at),
        }


@dataclass(frozen=True)
class Compensation:
    session_id: str
    at: datetime
    version: int


@dataclass(frozen=True)
class InvocationRecord:
    """One run the job started (or, ``recognised=False``, a completion named an id nobody
    started and the guard recorded it as ``Unrecognised``)."""

    id: UUID
    label: str
    recognised: bool
    attempt: int | None
    expected_version: int
    integration: str
    module_sha256: str
    started_at: datetime
    claims: tuple[Claim, ...]
    completions: tuple[Completion, ...]
    compensations: tuple[Compensation, ...]
    events: tuple[HistoryEntry, ...] = field(repr=False)

    @classmethod
    def of(cls, label: str, events: Sequence[HistoryEntry]) -> InvocationRecord:
        first = events[0]
        claims: list[Claim] = []
        completions: list[Completion] = []
        compensations: list[Compensation] = []
        open_completion: Completion | None = None
        for e in events[1:]:
            if e.name == "Claimed":
                claims.append(
                    Claim(e.data["worker"], e.data["lease_until"], e.timestamp, e.version)
                )
            elif e.name == "Compensated":
                compensations.append(Compensation(e.data["session_id"], e.timestamp, e.version))
            elif e.name == "Finished":
                if open_completion is not None:
                    completions.append(open_completion)  # a Finished without its verdict
                open_completion = Completion(e.data["action"], e.data["params"], e.timestamp)
            elif e.name in VERDICTS:
                base = open_completion or Completion(None, {}, None)
                open_completion = None
                completions.append(
                    Completion(
                        base.action,
                        base.params,
                        base.finished_at,
                        verdict=e.name,
                        reason=_text_or_none(e.data.get("reason")),
                        job_version=e.data.get("job_version"),
                        job_version_seen=e.data.get("job_version_seen"),
                        job_state_seen=_text_or_none(e.data.get("job_state_seen")),
                        decided_at=e.timestamp,
                    )
                )
        if open_completion is not None:
            completions.append(open_completion)
        return cls(
            id=first.aggregate_id,
            label=label,
            recognised=first.name == "Started",
            attempt=first.data.get("attempt"),
            expected_version=first.data["expected_version"],
            integration=str(first.data.get("integration", "")),
            module_sha256=str(first.data.get("module_sha256", "")),
            started_at=first.timestamp,
            claims=tuple(claims),
            completions=tuple(completions),
            compensations=tuple(compensations),
            events=tuple(events),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "label": self.label,
            "recognised": self.recognised,
            "attempt": self.attempt,
            "expected_version": self.expected_version,
            "integration": self.integration,
            "module_sha256": self.module_sha256,
            "started_at": plain(self.started_at),
            "claims": [
                {"worker": c.worker, "lease_until": plain(c.lease_until), "at": plain(c.at)}
                for c in self.claims
            ],
            "completions": [c.to_json() for c in self.completions],
            "compensations": [
                {"session_id": c.session_id, "at": plain(c.at)} for c in self.compensations
            ],
            "events": [event_json(e) for e in self.events],
        }


@dataclass(frozen=True)
class DecisionRecord:
    """A Cedar authorization decision whose ``job_id`` is this job."""

    id: UUID
    job_id: str
    status: str  # pending / approved / rejected
    principal: str
    action: str
    resource: str
    invocation_id: str
    module_sha256: str
    reason: str
    requested_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    policy_id: UUID | None
    rejection_reason: str
    events: tuple[HistoryEntry, ...] = field(repr=False)

    @classmethod
    def of(cls, events: Sequence[HistoryEntry]) -> DecisionRecord:
        requested = events[0].data
        status, by, at, policy, rejection = "pending", None, None, None, ""
        for e in events[1:]:
            if e.name == "Approved":
                status, by, at, policy = "approved", e.data["by"], e.timestamp, e.data["policy_id"]
            elif e.name == "Rejected":
                status, by, at = "rejected", e.data["by"], e.timestamp
                rejection = str(e.data.get("reason", ""))
        return cls(
            id=events[0].aggregate_id,
            job_id=str(requested["job_id"]),
            status=status,
            principal=requested["principal"],
            action=requested["action"],
            resource=requested["resource"],
            invocation_id=str(requested.get("invocation_id", "")),
            module_sha256=str(requested.get("module_sha256", "")),
            reason=str(requested.get("reason", "")),
            requested_at=events[0].timestamp,
            decided_by=by,
            decided_at=at,
            policy_id=policy,
            rejection_reason=rejection,
            events=tuple(events),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "job_id": self.job_id,
            "status": self.status,
            "principal": self.principal,
            "action": self.action,
            "resource": self.resource,
            "invocation_id": self.invocation_id,
            "module_sha256": self.module_sha256,
            "reason": self.reason,
            "requested_at": plain(self.requested_at),
            "decided_by": self.decided_by,
            "decided_at": plain(self.decided_at),
            "policy_id": plain(self.policy_id),
            "rejection_reason": self.rejection_reason,
            "events": [event_json(e) for e in self.events],
        }


# -- the timeline -----------------------------------------------------------------------------


class StoredHistory(Sequence[HistoryEntry]):
    """An aggregate's events as read in one query, each decoded into a HistoryEntry the first
    time it is looked at. Names and versions come from the stored rows without decoding, so a
    job of 10k progress entries costs one read, and decoding only for what is shown."""

    def __init__(self, svc: CurationService, aggregate: str, stored: Sequence[StoredEvent]) -> None:
        self._mapper = svc.mapper
        self._aggregate = aggregate
        self._stored = list(stored)
        self._decoded: list[HistoryEntry | None] = [None] * len(self._stored)

    def __len__(self) -> int:
        return len(self._stored)

    @overload
    def __getitem__(self, index: int) -> HistoryEntry: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[HistoryEntry]: ...

    def __getitem__(self, index: int | slice) -> HistoryEntry | Sequence[HistoryEntry]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        entry = self._decoded[index]
        if entry is None:
            event = self._mapper.to_domain_event(self._stored[index])
            entry = self._decoded[index] = HistoryEntry.of(self._aggregate, event)
        return entry

    def name(self, index: int) -> str:
        """The event's class name (``ProgressRecorded``...), from its topic: no decoding."""
        return str(resolve_topic(self._stored[index].topic).__name__)

    def version(self, index: int) -> int:
        return self._stored[index].originator_version


class Timeline:
    """Everything recorded about one job, read from the event store (see the module doc)."""

    def __init__(
        self,
        svc: CurationService,
        job_id: UUID,
        events: Sequence[HistoryEntry],
        invocations: Sequence[InvocationRecord],
        decisions: Sequence[DecisionRecord],
        missing_invocations: Sequence[UUID] = (),
    ) -> None:
        self.svc = svc
        self.job_id = job_id
        self.events = events  # the job's own events (a StoredHistory when loaded)
        self.invocations = tuple(invocations)
        self.decisions = tuple(decisions)
        # Invocation ids a job event names but the store has no events for (an integrity
        # problem: Submitted and Started are saved together). check_invariants reports them.
        self.missing_invocations = tuple(missing_invocations)
        if isinstance(events, StoredHistory):
            self.version = events.version(len(events) - 1)  # without decoding it
        else:
            self.version = events[-1].version
        self.current = self._read_state(self.version)

    @classmethod
    def load(cls, svc: CurationService, job_id: UUID | str) -> Timeline:
        """Raises MalformedId, JobNotFound or StoreUnavailable."""
        job_uuid = as_uuid(job_id)
        with gc_paused():
            return cls._load(svc, job_uuid)

    @classmethod
    def _load(cls, svc: CurationService, job_uuid: UUID) -> Timeline:
        with store_call(svc.url):
            stored = svc.recorder.select_events(job_uuid)
        if not stored or not _is_job_event(stored[0].topic):
            raise JobNotFound(job_uuid)
        events = StoredHistory(svc, "job", stored)
        starts = [i for i, e in enumerate(stored) if e.topic in START_TOPICS]
        started = [events[i].data["invocation_id"] for i in starts]
        invocations: list[InvocationRecord] = []
        missing: list[UUID] = []
        for invocation_id in dict.fromkeys(started):
            try:
                history = svc.invocation_history(invocation_id)
            except InvocationNotFound:
                missing.append(invocation_id)
                continue
            invocations.append(InvocationRecord.of(label_for(len(invocations)), history))
        unrecognised, decisions = _scan_log(svc, job_uuid)
        for invocation_id in unrecognised:
            history = svc.invocation_history(invocation_id)
            invocations.append(InvocationRecord.of(label_for(len(invocations)), history))
        return cls(svc, job_uuid, events, invocations, decisions, missing)

    # -- time travel --------------------------------------------------------------------------

    def state_at(self, version: int) -> JobStateAt:
        """The job as it was right after event ``version`` (1 = Created), rebuilt from the
        nearest snapshot at or before it plus the events after. VersionOutOfRange outside
        1..``self.version``."""
        if isinstance(version, bool) or not isinstance(version, int):
            raise VersionOutOfRange(self.job_id, version, self.version)
        if not 1 <= version <= self.version:
            raise VersionOutOfRange(self.job_id, version, self.version)
        if version == self.version:
            return self.current  # read once at load: decoding a big snapshot again costs ms
        return self._read_state(version)

    def _read_state(self, version: int) -> JobStateAt:
        with store_call(self.svc.url):
            job: object = self.svc.repository.get(self.job_id, version=version)
        if not isinstance(job, CurationJob) or job.version != version:
            raise JobNotFound(self.job_id)
        return JobStateAt(
            job_id=self.job_id,
            version=job.version,
            state=str(job.state),
            attempt=job.attempt,
            session_id=job.session_id,
            current_invocation=job.current_invocation,
            failure=dict(job.failure) if job.failure is not None else None,
            at=job.modified_on,
        )

    # -- views --------------------------------------------------------------------------------

    def invocation(self, invocation_id: UUID | str) -> InvocationRecord:
        wanted = as_uuid(invocation_id, "invocation")
        for record in self.invocations:
            if record.id == wanted:
                return record
        raise InvocationNotFound(wanted)

    @property
    def labels(self) -> dict[UUID, str]:
        """Readable names for the aggregates of the timeline: "invocation A", "decision 1"."""
        names = {i.id: f"invocation {i.label}" for i in self.invocations}
        names.update({d.id: f"decision {n}" for n, d in enumerate(self.decisions, 1)})
        return names

    def entries(self, collapse: int | None = None) -> list[HistoryEntry]:
        """Every event (job, invocations, decisions) in time order; ties keep that order.

        With ``collapse``, a run of more than ``collapse`` consecutive job events of one name
        (10k ``ProgressRecorded``) shows as its first event, one ``... N more <name>`` entry whose
        data gives the versions it stands for, and its last event; only those are decoded."""
        merged: list[HistoryEntry] = (
            list(self.events) if collapse is None else self._collapsed(max(collapse, 2))
        )
        for record in self.invocations:
            merged.extend(record.events)
        for decision in self.decisions:
            merged.extend(decision.events)
        merged.sort(key=lambda e: e.timestamp)
        return merged

    def _collapsed(self, limit: int) -> list[HistoryEntry]:
        events = self.events
        name: Callable[[int], str] = (
            events.name if isinstance(events, StoredHistory) else lambda i: events[i].name
        )
        rows: list[HistoryEntry] = []
        start, total = 0, len(events)
        while start < total:
            end = start + 1
            while end < total and name(end) == name(start):
                end += 1
            if end - start <= limit:
                rows.extend(events[i] for i in range(start, end))
            else:
                first, hidden, last = events[start], events[start + 1], events[end - 1]
                rows.append(first)
                rows.append(
                    HistoryEntry(
                        aggregate=first.aggregate,
                        aggregate_id=first.aggregate_id,
                        name=f"... {end - start - 2} more {first.name}",
                        version=hidden.version,
                        timestamp=hidden.timestamp,
                        data={"versions": f"{hidden.version}..{last.version - 1}"},
                    )
                )
                rows.append(last)
            start = end
        return rows

    def summary(self) -> dict[str, Any]:
        completions = [c for i in self.invocations for c in i.completions]
        reasons = Counter(c.reason for c in completions if c.verdict == "Discarded")
        return {
            "events": len(self.events),
            "invocation_events": sum(len(i.events) for i in self.invocations),
            "decision_events": sum(len(d.events) for d in self.decisions),
            "invocations": len(self.invocations),
            "completions": len(completions),
            "applied": sum(1 for c in completions if c.verdict == "Applied"),
            "discarded": sum(1 for c in completions if c.verdict == "Discarded"),
            "discard_reasons": {str(k): v for k, v in sorted(reasons.items(), key=str)},
            "compensations": sum(len(i.compensations) for i in self.invocations),
            "decisions": len(self.decisions),
        }

    def to_json(self, at: int | None = None) -> dict[str, Any]:
        """Plain JSON, shaped as the module docstring shows. With ``at``, also ``"at"``: the
        job's state as of that version (VersionOutOfRange if it has none)."""
        with gc_paused():
            return self._to_json(at)

    def _to_json(self, at: int | None) -> dict[str, Any]:
        current = self.current
        payload: dict[str, Any] = {
            "job": str(self.job_id),
            "state": current.state,
            "version": self.version,
            "attempt": current.attempt,
            "session_id": current.session_id,
            "current_invocation": plain(current.current_invocation),
            "failure": plain(current.failure),
            "created_at": plain(self.events[0].timestamp),
            "updated_at": plain(self.events[-1].timestamp),
            "events": [event_json(e) for e in self.events],
            "invocations": [i.to_json() for i in self.invocations],
            "missing_invocations": [str(i) for i in self.missing_invocations],
            "decisions": [d.to_json() for d in self.decisions],
            "summary": self.summary(),
        }
        if at is not None:
            payload["at"] = self.state_at(at).to_json()
        return payload

    def jsonl(self) -> Iterator[str]:
        """One JSON line per event, in time order (what ``export_jsonl`` writes)."""
        labels = {i.id: i.label for i in self.invocations}
        labels.update({d.id: str(n) for n, d in enumerate(self.decisions, 1)})
        for e in self.entries():
            line = {
                "job": str(self.job_id),
                "aggregate": e.aggregate,
                "aggregate_id": str(e.aggregate_id),
                "label": labels.get(e.aggregate_id),
                **event_json(e),
            }
            yield json.dumps(line, separators=(",", ":"))

    def export_jsonl(self, path: Path | str) -> int:
        """Writes the whole history as JSON lines; returns the number of lines (events)."""
        target = Path(path)
        count = 0
        try:
            with target.open("w", encoding="utf-8") as out:
                for line in self.jsonl():
                    out.write(line + "\n")
                    count += 1
        except OSError as exc:
            raise ExportFailed(target, exc.strerror or str(exc)) from None
        return count


def _is_job_event(topic: str) -> bool:
    cls = resolve_topic(topic)
    return isinstance(cls, type) and issubclass(cls, CurationJob.Event)


def label_for(index: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA, as spreadsheet columns."""
    label = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        label = chr(ord("A") + rest) + label
    return label


def _scan_log(svc: CurationService, job_id: UUID) -> tuple[list[UUID], list[DecisionRecord]]:
    """One pass over the notification log filtered by decision and Unrecognised topics.
    Raw bytes are searched for the job id before anything is decoded, when the store keeps
    events as plain JSON (no cipher, no compressor)."""
    mapper = svc.mapper
    plain_bytes = mapper.cipher is None and mapper.compressor is None
    needles = (str(job_id).encode(), job_id.hex.encode())
    decision_events: dict[UUID, list[HistoryEntry]] = {}
    unrecognised: list[UUID] = []
    start = 0
    while True:
        with store_call(svc.url):  # a dropped connection is StoreUnavailable, as elsewhere
            batch = svc.recorder.select_notifications(
                start=start, limit=SCAN_BATCH, topics=SCAN_TOPICS, inclusive_of_start=False
            )
        for n in batch:
            originator = UUID(str(n.originator_id))
            if n.topic in (DECISION_APPROVED, DECISION_REJECTED):
                if originator not in decision_events:
                    continue
            elif plain_bytes and not any(needle in n.state for needle in needles):
                continue
            event: Any = mapper.to_domain_event(n)
            if n.topic == DECISION_REQUESTED:
                if str(event.job_id) == str(job_id):
                    decision_events[originator] = [HistoryEntry.of("decision", event)]
            elif n.topic == UNRECOGNISED_TOPIC:
                if event.job_id == job_id:
                    unrecognised.append(originator)
            else:
                decision_events[originator].append(HistoryEntry.of("decision", event))
        if len(batch) < SCAN_BATCH:
            break
        start = batch[-1].id
    decisions = [DecisionRecord.of(events) for events in decision_events.values()]
    return list(dict.fromkeys(unrecognised)), decisions


# -- JSON -------------------------------------------------------------------------------------


_SCALARS = frozenset({str, int, float, bool, type(None)})


def plain(value: Any) -> Any:
    """Plain JSON values: UUIDs and datetimes as strings, enums as their values."""
    kind = type(value)
    if kind in _SCALARS:  # the common case first, by exact type (a StrEnum is not a str here)
        return value
    if kind is dict or isinstance(value, Mapping):
        return {k if type(k) is str else str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Enum):
        value = value.value
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, UUID | datetime | date):
        return str(value) if isinstance(value, UUID) else value.isoformat()
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def event_json(e: HistoryEntry) -> dict[str, Any]:
    return {
        "version": e.version,
        "name": e.name,
        "timestamp": e.timestamp.isoformat(),
        "data": plain(e.data),
    }


def _text_or_none(value: object) -> str | None:
    return None if value is None else str(value)


# -- offline invariant check ------------------------------------------------------------------

_EVENT_TARGET: Mapping[str, JobState] = {t.event: t.target for t in TRANSITIONS.values()}
_ACTION_EVENT: Mapping[str, str] = {a: t.event for a, t in TRANSITIONS.items()}
_DISCARD_REASONS = frozenset(r.value for r in DiscardReason)


@dataclass(frozen=True)
class _Folded:
    state: str
    attempt: int
    session_id: str | None
    current_invocation: str | None
    failure: dict[str, Any] | None


def fold_job_events(events: Iterable[Mapping[str, Any]]) -> list[_Folded]:
    """The job's state after each event, from the JSON events alone (index 0 = version 1).
    An independent reading of the transition table, not the aggregate's code."""
    states: list[_Folded] = []
    s = _Folded(str(JobState.QUEUED), 1, None, None, None)
    for e in events:
        name, data = e["name"], e.get("data") or {}
        target = _EVENT_TARGET.get(name)
        if target is None:
            raise ValueError(f"unknown job event {name!r} at version {e.get('version')}")
        changes: dict[str, Any] = {"state": str(target)}
        if name in START_EVENTS:
            changes["current_invocation"] = data.get("invocation_id")
        elif name == "SessionSpawned":
            changes["session_id"] = data.get("session_id")
        elif name == "Failed":
            changes["failure"] = {k: data.get(k) for k in ("reason", "message", "decision_id")}
        elif name == "Retried":
            changes.update(attempt=data.get("attempt", s.attempt + 1), failure=None)
        s = _Folded(**{**s.__dict__, **changes})
        states.append(s)
    return states


def check_invariants(timeline: Mapping[str, Any]) -> list[str]:
    """Re-checks DESIGN.md §1 from ``Timeline.to_json()`` output alone (no store). Returns the
    problems found, one sentence each; an empty list means every check held."""
    try:
        return _Checker(timeline).run()
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        return [f"malformed timeline: {type(exc).__name__}: {exc}"]


class _Checker:
    def __init__(self, timeline: Mapping[str, Any]) -> None:
        self.t = timeline
        self.problems: list[str] = []

    def flag(self, text: str) -> None:
        self.problems.append(text)

    def run(self) -> list[str]:
        events = list(self.t["events"])
        if not events:
            return ["the job has no events"]
        self.events = events
        self.states = fold_job_events(events)
        self.by_version = {e["version"]: e for e in events}
        self.check_job_sequence()
        invocations = list(self.t["invocations"])
        self.by_id = {i["id"]: i for i in invocations}
        for missing in self.t.get("missing_invocations") or ():
            self.flag(f"invocation {missing} was started by the job but has no events")
        self.check_starts(invocations)
        applied: Counter[tuple[str, int]] = Counter()
        for inv in invocations:
            for completion in self.check_invocation(inv):
                if completion["verdict"] == "Applied":
                    applied[(inv["id"], completion["job_version"])] += 1
        self.check_job_completions(applied)
        self.check_decisions(list(self.t.get("decisions") or ()))
        self.check_summary(invocations)
        return self.problems

    def state_at(self, version: object) -> _Folded | None:
        if isinstance(version, int) and 1 <= version <= len(self.states):
            return self.states[version - 1]
        return None

    # -- the job's own sequence ----------------------------------------------------------------

    def check_job_sequence(self) -> None:
        versions = [e["version"] for e in self.events]
        if versions != list(range(1, len(versions) + 1)):
            self.flag(f"job event versions are not 1..{len(versions)} in order")
        if self.events[0]["name"] != _ACTION_EVENT["Create"]:
            self.flag(f"the first job event is {self.events[0]['name']}, not Created")
        if self.t["version"] != versions[-1]:
            self.flag(f"version {self.t['version']} but the last event is {versions[-1]}")
        last = self.states[-1]
        for key in ("state", "attempt", "session_id", "current_invocation", "failure"):
            if self.t.get(key, getattr(last, key)) != getattr(last, key):
                self.flag(
                    f"{key} is {self.t.get(key)!r} but the job's events fold to "
                    f"{getattr(last, key)!r} (replay is truth)"
                )
        at = self.t.get("at")
        if at is not None:
            folded = self.state_at(at.get("version"))
            if folded is None:
                self.flag(f"'at' names version {at.get('version')!r}, which the job lacks")
                return
            for key in ("state", "attempt", "session_id", "current_invocation", "failure"):
                if at.get(key) != getattr(folded, key):
                    self.flag(
                        f"'at' (version {at['version']}) says {key} {at.get(key)!r} but the "
                        f"events fold to {getattr(folded, key)!r}"
                    )

    def check_starts(self, invocations: list[Mapping[str, Any]]) -> None:
        started: set[str] = set()
        for e in self.events:
            if e["name"] not in START_EVENTS:
                continue
            inv_id = e["data"].get("invocation_id")
            started.add(inv_id)
            inv = self.by_id.get(inv_id)
            if inv is None:
                self.flag(f"job v{e['version']} {e['name']} started invocation {inv_id}, "
                          "which the timeline lacks")  # fmt: skip
                continue
            attempt = self.states[e["version"] - 1].attempt
            if inv["expected_version"] != e["version"] or inv["attempt"] != attempt:
                self.flag(
                    f"invocation {inv['label']} expects job v{inv['expected_version']} attempt "
                    f"{inv['attempt']}, but was started at v{e['version']} attempt {attempt}"
                )
        for inv in invocations:
            if inv["recognised"] and inv["id"] not in started:
                self.flag(f"invocation {inv['label']} is Started but no job event started it")

    # -- one invocation: Finished -> exactly one verdict, and every verdict justified ----------

    def check_invocation(self, inv: Mapping[str, Any]) -> list[dict[str, Any]]:
        label = f"invocation {inv['label']}"
        events = list(inv["events"])
        if not events or events[0]["name"] not in ("Started", "Unrecognised"):
            self.flag(f"{label} does not begin with Started or Unrecognised")
        if bool(events and events[0]["name"] == "Started") != bool(inv["recognised"]):
            self.flag(f"{label}: 'recognised' disagrees with its first event")
        derived: list[dict[str, Any]] = []
        pending: Mapping[str, Any] | None = None
        for e in events[1:]:
            if e["name"] == "Finished":
                if pending is not None:
                    self.flag(f"{label} v{e['version'] - 1}: Finished without a verdict")
                    derived.append(_completion(pending, None))
                pending = e
            elif e["name"] in VERDICTS:
                if pending is None:
                    self.flag(f"{label} v{e['version']}: {e['name']} without a Finished before it")
                derived.append(_completion(pending, e))
                pending = None
        if pending is not None:
            self.flag(f"{label} v{pending['version']}: Finished without a verdict")
            derived.append(_completion(pending, None))
        given = [{k: c.get(k) for k in _COMPLETION_KEYS} for c in inv.get("completions") or ()]
        if given != derived:
            self.flag(f"{label}: completions[] disagree with its recorded events")
        for n, c in enumerate(derived):
            self.check_verdict(inv, label, n, c)
        self.check_compensations(inv, label, derived)
        return derived

    def check_verdict(
        self, inv: Mapping[str, Any], label: str, n: int, c: Mapping[str, Any]
    ) -> None:
        verdict, reason = c["verdict"], c["reason"]
        if verdict is None:
            return
        what = f"{label} completion {n + 1} ({c['action']})"
        if n > 0:  # anything after the first verdict is a duplicate (the guard checks it first)
            if (verdict, reason) != ("Discarded", DiscardReason.DUPLICATE):
                self.flag(f"{what} came after a verdict but is {verdict} {reason or ''}".rstrip())
            if verdict == "Applied":
                self.check_applied(inv, what, c)  # and say what the job was made to do
            return
        if not inv["recognised"]:
            if (verdict, reason) != ("Discarded", DiscardReason.UNKNOWN_INVOCATION):
                self.flag(f"{what} names an unstarted invocation but is {verdict} {reason}")
            return
        if verdict == "Applied":
            self.check_applied(inv, what, c)
        else:
            self.check_discarded(inv, what, c)

    def check_discarded(self, inv: Mapping[str, Any], what: str, c: Mapping[str, Any]) -> None:
        """The guard's reason, re-decided on the job as it was at the version the guard saw."""
        reason = c["reason"]
        if reason not in _DISCARD_REASONS:
            self.flag(f"{what} discarded with unknown reason {reason!r}")
            return
        seen = self.state_at(c["job_version_seen"])
        if seen is None:
            self.flag(f"{what} saw job version {c['job_version_seen']!r}, which the job lacks")
            return
        if c["job_state_seen"] != seen.state:
            self.flag(
                f"{what} says it saw {c['job_state_seen']} at v{c['job_version_seen']}, "
                f"but the job was {seen.state}"
            )
        current = seen.current_invocation == inv["id"]
        in_version = c["job_version_seen"] == inv["expected_version"]
        if reason == DiscardReason.SUPERSEDED and current:
            self.flag(f"{what} discarded as superseded, yet it was the current invocation")
        elif reason == DiscardReason.JOB_MOVED_ON and (
            not current or (in_version and _allows(c["action"], seen.state))
        ):
            self.flag(f"{what} discarded as job_moved_on, but the job had not moved on from it")
        elif reason in (DiscardReason.DUPLICATE, DiscardReason.UNKNOWN_INVOCATION):
            self.flag(f"{what} is the first completion of a started invocation, not {reason}")

    def check_applied(self, inv: Mapping[str, Any], what: str, c: Mapping[str, Any]) -> None:
        version = c["job_version"]
        event = self.by_version.get(version) if isinstance(version, int) else None
        if event is None:
            self.flag(f"{what} Applied at job v{version!r}, which the job lacks")
            return
        expected_event = _ACTION_EVENT.get(c["action"] or "")
        if event["name"] != expected_event or event["data"].get("invocation_id") != inv["id"]:
            self.flag(
                f"{what} Applied at job v{version}, but that event is {event['name']} from "
                f"invocation {event['data'].get('invocation_id')}"
            )
        for key, value in (c.get("params") or {}).items():
            if event["data"].get(key) != value:
                self.flag(f"{what}: job v{version} has {key}={event['data'].get(key)!r}, "
                          f"the completion said {value!r}")  # fmt: skip
        before = self.state_at(version - 1)
        if before is None or before.current_invocation != inv["id"]:
            self.flag(f"{what} Applied at v{version} but was not the current invocation")
        if version - 1 != inv["expected_version"]:
            self.flag(
                f"{what} Applied at v{version} but was dispatched at v{inv['expected_version']} "
                "(a stale effect: the job had moved on)"
            )

    def check_compensations(
        self, inv: Mapping[str, Any], label: str, completions: list[dict[str, Any]]
    ) -> None:
        discarded_sessions = {
            (c.get("params") or {}).get("session_id")
            for c in completions
            if c["verdict"] == "Discarded" and c["action"] == "SessionSpawned"
        }
        live_sessions = {e["data"].get("session_id") for e in self.events
                         if e["name"] == "SessionSpawned"}  # fmt: skip
        for e in inv["events"]:
            if e["name"] != "Compensated":
                continue
            session = e["data"].get("session_id")
            if session not in discarded_sessions:
                self.flag(f"{label} compensated session {session!r}, which no discarded "
                          "SessionSpawned of it created")  # fmt: skip
            if session in live_sessions:
                self.flag(f"{label} compensated session {session!r}, which the job applied")
        given = [c.get("session_id") for c in inv.get("compensations") or ()]
        recorded = [
            e["data"].get("session_id") for e in inv["events"] if e["name"] == "Compensated"
        ]
        if given != recorded:
            self.flag(f"{label}: compensations[] disagree with its recorded events")

    # -- the job side: every effect of a completion has its Applied ----------------------------

    def check_job_completions(self, applied: Mapping[tuple[str, int], int]) -> None:
        for e in self.events:
            inv_id = e["data"].get("invocation_id")
            if e["name"] not in COMPLETION_EVENTS:
                continue
            if inv_id is None:
                continue  # an operator's or a timeout's Fail: no completion involved
            count = applied.get((inv_id, e["version"]), 0)
            if count != 1:
                inv = self.by_id.get(inv_id)
                name = f"invocation {inv['label']}" if inv else f"unknown invocation {inv_id}"
                self.flag(
                    f"job v{e['version']} {e['name']} was caused by {name} with "
                    f"{count} matching Applied verdicts, not exactly 1 (stale or silent effect)"
                )

    def check_decisions(self, decisions: list[Mapping[str, Any]]) -> None:
        for n, d in enumerate(decisions, 1):
            what = f"decision {n} ({d['id']})"
            if d["job_id"] != self.t["job"]:
                self.flag(f"{what} belongs to job {d['job_id']}")
            names = [e["name"] for e in d["events"]]
            if not names or names[0] != "Requested" or len(names) > 2:
                self.flag(f"{what} events are {names}, not Requested then one decision")
            status = {"Approved": "approved", "Rejected": "rejected"}.get(names[-1], "pending")
            if d["status"] != status:
                self.flag(f"{what} status {d['status']} but its events say {status}")
            if d["invocation_id"] and d["invocation_id"] not in self.by_id:
                self.flag(f"{what} names invocation {d['invocation_id']}, not one of this job's")

    def check_summary(self, invocations: list[Mapping[str, Any]]) -> None:
        summary = self.t.get("summary")
        if summary is None:
            return
        completions = [c for i in invocations for c in i["completions"]]
        counts = {
            "events": len(self.events),
            "invocations": len(invocations),
            "completions": len(completions),
            "applied": sum(1 for c in completions if c["verdict"] == "Applied"),
            "discarded": sum(1 for c in completions if c["verdict"] == "Discarded"),
        }
        for key, value in counts.items():
            if summary.get(key) != value:
                self.flag(f"summary says {key}={summary.get(key)!r}, the timeline has {value}")


def _allows(action: object, state: str) -> bool:
    row = TRANSITIONS.get(action) if isinstance(action, str) else None
    return row is not None and state in {str(s) for s in row.sources}


_COMPLETION_KEYS = (
    "action", "params", "verdict", "reason", "job_version", "job_version_seen", "job_state_seen",
)  # fmt: skip


def _completion(
    finished: Mapping[str, Any] | None, verdict: Mapping[str, Any] | None
) -> dict[str, Any]:
    f = (finished or {}).get("data") or {}
    v = (verdict or {}).get("data") or {}
    return {
        "action": f.get("action"),
        "params": f.get("params", {}),
        "verdict": verdict["name"] if verdict else None,
        "reason": v.get("reason"),
        "job_version": v.get("job_version"),
        "job_version_seen": v.get("job_version_seen"),
        "job_state_seen": v.get("job_state_seen"),
    }
