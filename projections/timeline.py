"""The audit of one job (DESIGN.md §5, ``sequent audit``): its timeline, read from the event
store itself — the job's and its invocations' own events — so it is the ground truth the read
models are checked against.

``Timeline.load(svc, job_id)`` reads, in this order and nothing more:

1. the job's events (one read of its sequence);
2. the events of each invocation the job started (one read per ``Submitted`` /
   ``RepairRequired``);
3. after catching up the ``dispatch_audit`` and ``decisions`` read models (``Projections``),
   the invocations that completions named for this job though nobody started them
   (``Unrecognised``: their dispatch_audit rows, then their events) and the Cedar decisions
   about the job (their rows, then each one's events up to the row's version). Neither costs a
   pass over the notification log;
4. nothing more for the job's state at any version: ``Timeline.state_at(v)`` folds the job's
   own events up to ``v`` — the state the table says event ``v`` leaves a job in
   (``STATE_AFTER``), and the fields the last events before it that set them recorded (only
   those are decoded: ten thousand progress entries cost ten thousand topic lookups). No
   snapshot is read, so a snapshot row changed by hand cannot change what the audit says.

``Timeline.state_at(v)`` is time travel over those events;
``Timeline.to_json()`` is complete enough for ``check_invariants`` (``projections.invariants``)
to re-check the invariants of DESIGN.md §1 offline, from the JSON alone;
``Timeline.export_jsonl(path)`` writes every event (job, invocations, decisions) as one JSON
line each, in time order. The records a timeline is made of are in
``projections.timeline_records``.

The JSON (``Timeline.to_json()``; ``sequent audit JOB --json``)::

    {"job", "state", "version", "attempt", "session_id", "current_invocation", "failure",
     "created_at", "updated_at",
     "events": [{"version", "name", "timestamp", "data"}],          # the job's, in order
     "invocations": [{"id", "label" (A, B, ...), "recognised", "attempt", "expected_version",
                      "integration", "module_sha256" (of its latest Claimed that names
                      one, else of its Started), "started_at",
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
from collections.abc import Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, overload
from uuid import UUID

from eventsourcing.persistence import StoredEvent

from domain import (
    CurationService,
    HistoryEntry,
    InvocationNotFound,
    JobNotFound,
    as_uuid,
)
from domain.log import (
    JOB_CREATED,
    JOB_FAILED,
    JOB_RETRIED,
    JOB_SESSION_SPAWNED,
    JOB_STARTS_INVOCATION,
    JOB_TOPICS,
    STATE_AFTER,
    UNREADABLE,
    LogReader,
    Stored,
    log_reader,
)
from domain.store_errors import first_line, store_call
from projections.decisions import DecisionsProjection
from projections.dispatch_audit import DispatchAuditProjection
from projections.errors import ExportFailed, UnreadableEvent, VersionOutOfRange
from projections.gc_pause import gc_paused
from projections.runner import Projections
from projections.timeline_records import (
    DecisionRecord,
    InvocationRecord,
    JobStateAt,
    event_json,
    plain,
)

# The read models the audit reads: which decisions are about the job, which unrecognised
# invocations name it.
READ_MODELS = (DecisionsProjection.name, DispatchAuditProjection.name)
# The job events that set a field of JobStateAt besides the state (which every job event sets,
# by the table), as the aggregate's @event bodies do: the only ones state_at decodes.
_SETS_FIELDS = frozenset(
    {JOB_CREATED, JOB_RETRIED, JOB_SESSION_SPAWNED, JOB_FAILED, *JOB_STARTS_INVOCATION}
)
_FAILURE_KEYS = ("reason", "message", "decision_id")


class StoredHistory(Sequence[HistoryEntry]):
    """An aggregate's events as read in one query (``LogReader.aggregate``), each decoded into
    a HistoryEntry the first time it is looked at. Names and versions come from the stored
    rows without decoding, so a job of 10k progress entries costs one read, and decoding only
    for what is shown. Rows read without their states (a long job's) get them from the store
    as they are decoded: ``read`` fetches many in one query, as iterating does."""

    def __init__(
        self,
        svc: CurationService,
        log: LogReader,
        aggregate: str,
        aggregate_id: UUID,
        rows: Sequence[Stored],
    ) -> None:
        self._mapper = svc.mapper
        self._url = svc.url
        self._log = log
        self._aggregate = aggregate
        self._id = aggregate_id
        self._rows = rows
        self._decoded: list[HistoryEntry | None] = [None] * len(rows)
        self._states: dict[int, bytes] = {}  # index -> state, of rows read without it

    def __len__(self) -> int:
        return len(self._rows)

    @overload
    def __getitem__(self, index: int) -> HistoryEntry: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[HistoryEntry]: ...

    def __getitem__(self, index: int | slice) -> HistoryEntry | Sequence[HistoryEntry]:
        if isinstance(index, slice):
            indexes = range(*index.indices(len(self)))
            self.read(indexes)
            return [self[i] for i in indexes]
        index = range(len(self))[index]  # IndexError outside, as a list's
        entry = self._decoded[index]
        if entry is None:
            version, topic, state = self._rows[index]
            if state is None:
                self.read([index])
                state = self._states.pop(index)
            try:
                event = self._mapper.to_domain_event(StoredEvent(self._id, version, topic, state))
            except UNREADABLE as exc:
                raise UnreadableEvent(self._aggregate, self._id, version, first_line(exc)) from None
            entry = self._decoded[index] = HistoryEntry.of(self._aggregate, event)
        return entry

    def __iter__(self) -> Iterator[HistoryEntry]:
        self.read(range(len(self)))
        return (self[i] for i in range(len(self)))

    def read(self, indexes: Iterable[int]) -> None:
        """Reads, in one query, the states of the events at ``indexes`` that are to be decoded
        and were read without them."""
        rows, decoded, states = self._rows, self._decoded, self._states
        wanted = {
            rows[i][0]: i
            for i in indexes
            if rows[i][2] is None and decoded[i] is None and i not in states
        }
        if wanted:
            with store_call(self._url):
                found = self._log.states_of(self._id, list(wanted))
            for version, state in found.items():
                states[wanted[version]] = state

    def name(self, index: int) -> str:
        """The event's class name (``ProgressRecorded``...), from its topic: no decoding."""
        return self.topic(index).rsplit(".", 1)[-1]

    def topic(self, index: int) -> str:
        return self._rows[index][1]

    def version(self, index: int) -> int:
        return self._rows[index][0]

    def having(self, topics: Collection[str]) -> list[int]:
        """The indexes of the events of ``topics``: no decoding."""
        return [i for i, row in enumerate(self._rows) if row[1] in topics]


class Timeline:
    """Everything recorded about one job, read from the event store (see the module doc)."""

    def __init__(
        self,
        svc: CurationService,
        job_id: UUID,
        events: StoredHistory,
        invocations: Sequence[InvocationRecord],
        decisions: Sequence[DecisionRecord],
        missing_invocations: Sequence[UUID] = (),
    ) -> None:
        self.svc = svc
        self.job_id = job_id
        self.events = events  # the job's own events
        self.invocations = tuple(invocations)
        self.decisions = tuple(decisions)
        # Invocation ids a job event names but the store has no events for (an integrity
        # problem: Submitted and Started are saved together). check_invariants reports them.
        self.missing_invocations = tuple(missing_invocations)
        self.version = events.version(len(events) - 1)  # without decoding it
        self._setting_fields = events.having(_SETS_FIELDS)
        self.current = self._read_state(self.version)

    @classmethod
    def load(
        cls, svc: CurationService, job_id: UUID | str, projections: Projections | None = None
    ) -> Timeline:
        """``projections``: the service's read models, caught up here for the job's decisions
        and unrecognised runs (default: opened on ``svc`` for this load). Raises MalformedId,
        JobNotFound, StoreUnavailable, or ProjectionFailed if a read model it needs is broken
        (``sequent rebuild`` repairs it)."""
        job_uuid = as_uuid(job_id)
        with gc_paused():
            return cls._load(svc, job_uuid, projections)

    @classmethod
    def _load(
        cls, svc: CurationService, job_uuid: UUID, projections: Projections | None
    ) -> Timeline:
        log = log_reader(svc.recorder, svc.mapper)
        with store_call(svc.url):
            rows = log.aggregate(job_uuid, states=False)
            events = StoredHistory(svc, log, "job", job_uuid, rows)
            if not events or events.topic(0) not in JOB_TOPICS:  # say, a decision's id
                raise JobNotFound(job_uuid)
            fields = events.having(_SETS_FIELDS)
            events.read([*fields, len(events) - 1])  # what this and the current state decode
        started = [events[i].data["invocation_id"] for i in events.having(JOB_STARTS_INVOCATION)]
        invocations: list[InvocationRecord] = []
        missing: list[UUID] = []
        for invocation_id in dict.fromkeys(started):
            try:
                history = svc.invocation_history(invocation_id)
            except InvocationNotFound:
                missing.append(invocation_id)
                continue
            invocations.append(InvocationRecord.of(label_for(len(invocations)), history))
        read_models = projections or Projections(svc)
        read_models.catch_up(READ_MODELS)
        for history in _unrecognised(svc, read_models, job_uuid, {str(i) for i in started}):
            invocations.append(InvocationRecord.of(label_for(len(invocations)), history))
        named = {events[i].data.get("decision_id") for i in events.having({JOB_FAILED})}
        decisions = _decisions(svc, log, read_models, job_uuid, {str(d) for d in named if d})
        return cls(svc, job_uuid, events, invocations, decisions, missing)

    # -- time travel --------------------------------------------------------------------------

    def state_at(self, version: int) -> JobStateAt:
        """The job as it was right after event ``version`` (1 = Created), folded from its
        events (see the module doc). VersionOutOfRange outside 1..``self.version``."""
        if isinstance(version, bool) or not isinstance(version, int):
            raise VersionOutOfRange(self.job_id, version, self.version)
        if not 1 <= version <= self.version:
            raise VersionOutOfRange(self.job_id, version, self.version)
        if version == self.version:
            return self.current
        return self._read_state(version)

    def _read_state(self, version: int) -> JobStateAt:
        events = self.events
        attempt, session_id, current_invocation = 1, None, None
        failure: dict[str, Any] | None = None
        for index in self._setting_fields:
            if index >= version:
                break
            topic, data = events.topic(index), events[index].data
            # .get: an event written by hand may lack a field; the audit shows what is there
            # (and check_invariants says what is wrong) rather than stop.
            if topic == JOB_RETRIED:
                attempt, failure = data.get("attempt", attempt + 1), None
            elif topic == JOB_SESSION_SPAWNED:
                session_id = data.get("session_id")
            elif topic == JOB_FAILED:
                failure = {key: data.get(key) for key in _FAILURE_KEYS}
            elif topic in JOB_STARTS_INVOCATION:
                current_invocation = data.get("invocation_id")
        return JobStateAt(
            job_id=self.job_id,
            version=version,
            state=str(STATE_AFTER[events.topic(version - 1)]),
            attempt=attempt,
            session_id=session_id,
            current_invocation=current_invocation,
            failure=failure,
            at=events[version - 1].timestamp,
        )

    # -- what it holds -------------------------------------------------------------------------

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
        runs = self._runs()
        events.read(
            i
            for start, end in runs
            for i in (range(start, end) if end - start <= limit else (start, start + 1, end - 1))
        )
        rows: list[HistoryEntry] = []
        for start, end in runs:
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
        return rows

    def _runs(self) -> list[tuple[int, int]]:
        """(start, end) of each run of consecutive job events of one name."""
        name = self.events.name
        runs: list[tuple[int, int]] = []
        start, total = 0, len(self.events)
        while start < total:
            end = start + 1
            while end < total and name(end) == name(start):
                end += 1
            runs.append((start, end))
            start = end
        return runs

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


def label_for(index: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA, as spreadsheet columns."""
    label = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        label = chr(ord("A") + rest) + label
    return label


def _unrecognised(
    svc: CurationService, read_models: Projections, job_id: UUID, started: Collection[str]
) -> Iterator[list[HistoryEntry]]:
    """The histories of the invocations that completions named for this job but nobody started
    (their first event is ``Unrecognised``), in the order they were recorded.

    Found in dispatch_audit, by its index on job_id, not in the log: the guard saves such an
    invocation together with the verdict on its first completion, so each has a row there,
    whereas a reader over the Unrecognised topic would still visit every notification of the
    log on every audit: neither store indexes the topic column."""
    named = dict.fromkeys(r.invocation_id for r in read_models.audit(job_id=str(job_id)))
    for invocation_id in named:
        if invocation_id in started:
            continue
        history = svc.invocation_history(invocation_id)
        if history[0].name == "Unrecognised":
            yield history


def _decisions(
    svc: CurationService, log: LogReader, read_models: Projections, job_id: UUID, named: set[str]
) -> list[DecisionRecord]:
    """The Cedar decisions about this job as the decisions read model has them — those it asked
    for, and those its failures name (a denial joins the decision another job's denial of the
    same request opened) — in the order they were requested, each with its events up to the
    version its row has folded (so a decision approved since the catch-up shows as the row
    does, and row and events agree)."""
    rows = read_models.decisions(job_id=str(job_id))
    asked = {r.decision_id for r in rows}
    for decision_id in sorted(named - asked):
        rows += read_models.decisions(decision_id=decision_id)
    rows.sort(key=lambda r: (r.requested_at or "", r.decision_id))
    records: list[DecisionRecord] = []
    for row in rows:
        decision = UUID(row.decision_id)
        with store_call(svc.url):
            stored = log.aggregate(decision, lte=row.version)
        history = StoredHistory(svc, log, "decision", decision, stored)
        records.append(DecisionRecord.of(row, history))
    return records
