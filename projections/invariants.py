"""The offline invariant check: ``check_invariants(timeline_json)`` re-checks DESIGN.md §1 from
``Timeline.to_json()`` output alone, with no store.

It shares no code with the loader (``projections.timeline``): it folds the job's JSON events
through its own reading of the transition table and re-derives each invocation's completions
from its JSON events, so a mistake in the loader shows up as a disagreement instead of being
repeated. Each job event is also checked against the table from the state the event before it
left the job in (``domain.log.invalid_step``): the log can hold a transition the table forbids
(written by a command that trusted a corrupted snapshot), and a fold alone would not show it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from domain import DiscardReason
from domain.log import JOB, invalid_step
from domain.transitions import TRANSITIONS, JobState

COMPLETION_EVENTS = frozenset(TRANSITIONS[a].event for a in ("SessionSpawned", "Fail"))
START_EVENTS = frozenset(TRANSITIONS[a].event for a in ("Submit", "RepairRequired"))
VERDICTS = ("Applied", "Discarded")
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
        # Each event valid, by the table, from the state the one before it left the job in: a
        # fold cannot show this (every event fixes the state it leaves, whatever it follows).
        before: str | None = None
        for e, after in zip(self.events, self.states, strict=True):
            why = invalid_step(f"{JOB}.{e['name']}", before)
            if why is not None:
                self.flag(f"job v{e['version']}: invalid transition: {why}")
            before = after.state
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
        # A denial joins the decision already pending for its request, so a job may show a
        # decision another job asked for: only one its own failure names.
        named = {e["data"].get("decision_id") for e in self.events if e["name"] == "Failed"}
        for n, d in enumerate(decisions, 1):
            what = f"decision {n} ({d['id']})"
            if d["job_id"] != self.t["job"]:
                if d["id"] not in named:
                    self.flag(f"{what} belongs to job {d['job_id']} and no failure names it")
                continue
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
