"""The job page's picture: one lane for the job, one per invocation (A, B, C…) and one for the
Cedar decisions about the job, every event in its lane on the row of its time.

Built from ``Timeline.to_json(at=V)`` — the very JSON ``sequent audit --json`` prints — so the
page shows nothing the audit does not. The cells say in words what each event did: the state a
job event moved the job to, the verdict of a completion (a discarded one with its reason and
the job state and version the guard saw), the session a compensation stopped and the discarded
completion it was for (linked both ways), who approved a decision under which policy. The
template only lays them out; everything is text, escaped there.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from domain import TRANSITIONS

# The state each job event moves its job to, by event name (the transition table's).
STATE_AFTER_EVENT: Mapping[str, str] = {t.event: str(t.target) for t in TRANSITIONS.values()}
# A run of more than this many job events of one name (progress entries) shows as its first
# event, one "N more" cell and its last, as ``sequent audit`` does.
COLLAPSE_RUNS = 10
DATA_CHARS = 240  # of an event's data shown in a cell; the audit JSON has all of it
MESSAGE_CHARS = 100


@dataclass(frozen=True)
class Link:
    href: str
    text: str


@dataclass(frozen=True)
class Cell:
    anchor: str  # the element id, so other cells and the discarded page can link here
    name: str  # the event's name
    kind: str  # what it was, for the eye: job, run, applied, discarded, compensated, ...
    headline: str
    lines: tuple[str, ...] = ()
    links: tuple[Link, ...] = ()
    later: bool = False  # after the version the page shows the job at (time travel)


@dataclass(frozen=True)
class Lane:
    key: str  # "job", an invocation's label, "cedar"
    title: str
    subtitle: str
    anchor: str
    badges: tuple[str, ...] = ()  # e.g. "discarded: superseded"
    discarded: bool = False


@dataclass(frozen=True)
class Row:
    time: str  # HH:MM:SS.ffffff
    lane: int
    cell: Cell
    active: frozenset[int] = field(default_factory=frozenset)  # lanes alive at this row


@dataclass(frozen=True)
class Lanes:
    lanes: tuple[Lane, ...]
    rows: tuple[Row, ...]


@dataclass
class _Event:
    lane: int
    timestamp: datetime
    order: int  # ties keep the audit's order: job, invocations, decisions
    cell: Cell


def lanes_of(audit: Mapping[str, Any]) -> Lanes:
    """The lanes and rows of one job's audit JSON (with ``"at"`` when time-travelling)."""
    at = audit.get("at")
    as_of = datetime.fromisoformat(at["at"]) if at else None
    labels = {i["id"]: i["label"] for i in audit["invocations"]}
    lanes: list[Lane] = [Lane("job", "job", f"{audit['state']} · v{audit['version']}", "lane-job")]
    events: list[_Event] = []

    def add(lane: int, e: Mapping[str, Any], cell: Cell) -> None:
        when = datetime.fromisoformat(e["timestamp"])
        if as_of is not None and when > as_of:
            cell = replace(cell, later=True)
        events.append(_Event(lane, when, len(events), cell))

    for e in _collapsed(audit["events"]):
        add(0, e, _job_cell(e, labels))
    for invocation in audit["invocations"]:
        lane = len(lanes)
        lanes.append(_invocation_lane(invocation))
        for e, cell in _invocation_cells(invocation):
            add(lane, e, cell)
    if audit["decisions"]:
        lane = len(lanes)
        count = len(audit["decisions"])
        lanes.append(Lane("cedar", "Cedar", f"{count} decision{'s' * (count != 1)}", "lane-cedar"))
        for n, decision in enumerate(audit["decisions"], 1):
            for e in decision["events"]:
                add(lane, e, _decision_cell(n, decision, e, labels))
    events.sort(key=lambda e: (e.timestamp, e.order))
    return Lanes(tuple(lanes), tuple(_rows(events)))


def _rows(events: Sequence[_Event]) -> Iterable[Row]:
    """Each event on its own row; a lane's rail runs from its first event to its last."""
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for i, e in enumerate(events):
        first.setdefault(e.lane, i)
        last[e.lane] = i
    for i, e in enumerate(events):
        active = frozenset(lane for lane in first if first[lane] <= i <= last[lane])
        yield Row(e.timestamp.strftime("%H:%M:%S.%f"), e.lane, e.cell, active)


def _collapsed(events: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Runs of more than COLLAPSE_RUNS same-named job events as first, "N more", last."""
    out: list[Mapping[str, Any]] = []
    start = 0
    while start < len(events):
        end = start + 1
        while end < len(events) and events[end]["name"] == events[start]["name"]:
            end += 1
        if end - start <= COLLAPSE_RUNS:
            out.extend(events[start:end])
        else:
            hidden = events[start + 1]
            out.append(events[start])
            out.append({
                **hidden,
                "name": f"… {end - start - 2} more {hidden['name']}",
                "data": {"versions": f"{hidden['version']}..{events[end - 1]['version'] - 1}"},
                "collapsed": True,
            })  # fmt: skip
            out.append(events[end - 1])
        start = end
    return out


def compact(value: Any, limit: int = DATA_CHARS) -> str:
    """JSON on one line, cut at ``limit`` characters."""
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "), sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- the job's lane ------------------------------------------------------------------------------


def _job_cell(e: Mapping[str, Any], labels: Mapping[str, str]) -> Cell:
    name, version, data = e["name"], e["version"], e["data"]
    anchor = f"job-v{version}"
    if e.get("collapsed"):
        return Cell(anchor, name, "job collapsed", f"versions {data['versions']}")
    state = STATE_AFTER_EVENT.get(name, "?")
    kind = "job failed" if name == "Failed" else "job"
    lines: list[str] = []
    links = [Link(f"?at={version}#timeline", f"as of v{version}")]
    invocation = data.get("invocation_id")
    if name == "Created":
        lines.append(f"spec {compact(data.get('spec'))}")
    elif name == "Configured":
        lines.append(f"settings {compact(data.get('settings'))}")
    elif name == "Failed":
        lines.append(f"reason {data.get('reason')}")
        if data.get("message"):
            lines.append(compact(data["message"], MESSAGE_CHARS))
        if data.get("decision_id"):
            lines.append(f"decision {data['decision_id']}")
    elif name == "Retried":
        lines.append(f"attempt {data.get('attempt')}")
    elif name == "SessionSpawned":
        lines.append(f"session {data.get('session_id')}")
    elif invocation is None and data:
        lines.append(compact(data))
    if invocation is not None and str(invocation) in labels:
        label = labels[str(invocation)]
        verb = "starts" if name in ("Submitted", "RepairRequired") else "from"
        links.append(Link(f"#lane-{label}", f"{verb} run {label}"))
    return Cell(anchor, name, kind, f"v{version} → {state}", tuple(lines), tuple(links))


# -- invocation lanes ---------------------------------------------------------------------------


def _invocation_lane(invocation: Mapping[str, Any]) -> Lane:
    label = invocation["label"]
    reasons = [str(c["reason"]) for c in invocation["completions"] if c["verdict"] == "Discarded"]
    badges = tuple(f"discarded: {r}" for r in dict.fromkeys(reasons))
    if invocation["compensations"]:
        badges += (f"compensated: {len(invocation['compensations'])}",)
    if not invocation["recognised"]:
        badges = ("unrecognised", *badges)
    attempt = invocation["attempt"]
    return Lane(
        label,
        f"run {label}",
        f"attempt {attempt if attempt is not None else '-'} · "
        f"dispatched at v{invocation['expected_version']}",
        f"lane-{label}",
        badges,
        discarded=bool(reasons),
    )


def _invocation_cells(
    invocation: Mapping[str, Any],
) -> Iterable[tuple[Mapping[str, Any], Cell]]:
    label = invocation["label"]
    events = invocation["events"]
    # A compensation and the discarded completion whose session it stopped link to each other.
    stopped_by = {c["session_id"]: c for c in invocation["compensations"]}
    compensated_at: dict[str, str] = {}  # session -> anchor of its compensation
    discarded_at: dict[str, str] = {}  # session -> anchor of the discard that left it
    pending_session: str | None = None
    for e in events:
        anchor = f"run-{label}-v{e['version']}"
        if e["name"] == "Finished":
            session = (e["data"].get("params") or {}).get("session_id")
            pending_session = str(session) if session is not None else None
        elif e["name"] == "Discarded" and pending_session is not None:
            discarded_at.setdefault(pending_session, anchor)
        elif e["name"] == "Compensated":
            compensated_at[str(e["data"].get("session_id"))] = anchor
    pending_session = None
    for e in events:
        anchor = f"run-{label}-v{e['version']}"
        name, data = e["name"], e["data"]
        if name == "Finished":
            params = data.get("params") or {}
            session = params.get("session_id")
            pending_session = str(session) if session is not None else None
            cell = Cell(anchor, name, "run", f"completion: {data.get('action')}",
                        (compact(params, MESSAGE_CHARS),))  # fmt: skip
        elif name == "Applied":
            cell = Cell(anchor, name, "applied", "Applied",
                        (f"job moved to v{data.get('job_version')}",))  # fmt: skip
        elif name == "Discarded":
            cell = _discarded_cell(anchor, data, pending_session, compensated_at, stopped_by)
        elif name == "Compensated":
            session = str(data.get("session_id"))
            links: tuple[Link, ...] = ()
            if session in discarded_at:
                links = (Link(f"#{discarded_at[session]}", "for the discarded completion"),)
            cell = Cell(anchor, name, "compensated", "Compensated",
                        (f"stopped session {session}",), links)  # fmt: skip
        else:
            cell = _run_cell(anchor, name, data)
        yield e, cell


def _discarded_cell(
    anchor: str,
    data: Mapping[str, Any],
    session: str | None,
    compensated_at: Mapping[str, str],
    stopped_by: Mapping[str, Any],
) -> Cell:
    lines = [f"job was {data.get('job_state_seen')} at v{data.get('job_version_seen')}"]
    links: tuple[Link, ...] = ()
    if session is not None and session in stopped_by:
        lines.append(f"left session {session}")
        links = (Link(f"#{compensated_at[session]}", "compensated"),)
    elif session is not None:
        lines.append(f"left session {session}, not compensated")
    return Cell(
        anchor, "Discarded", "discarded", f"Discarded: {data.get('reason')}", tuple(lines), links
    )


def _run_cell(anchor: str, name: str, data: Mapping[str, Any]) -> Cell:
    if name == "Started":
        return Cell(anchor, name, "run", "Started",
                    (f"attempt {data.get('attempt')}, expects job v{data.get('expected_version')}",
                     str(data.get("integration", ""))))  # fmt: skip
    if name == "Unrecognised":
        return Cell(anchor, name, "run unrecognised", "Unrecognised", (compact(data),))
    if name == "Claimed":
        sha = str(data.get("module_sha256") or "")
        return Cell(anchor, name, "run", "Claimed",
                    (f"worker {data.get('worker')}",
                     f"lease until {_clock(data.get('lease_until'))}")
                    + ((f"module {sha[:12]}",) if sha else ()))  # fmt: skip
    return Cell(anchor, name, "run", name, (compact(data),) if data else ())


def _uid_name(uid: object) -> str:
    """``HttpEndpoint::"http://h:80/sessions"`` -> ``http://h:80/sessions`` (Cedar's entity id)."""
    text = str(uid)
    _, sep, quoted = text.partition('::"')
    return quoted[:-1] if sep and quoted.endswith('"') else text


def _clock(value: object) -> str:
    try:
        return datetime.fromisoformat(str(value)).strftime("%H:%M:%S")
    except ValueError:
        return str(value)


# -- the Cedar lane -----------------------------------------------------------------------------


def _decision_cell(
    n: int, decision: Mapping[str, Any], e: Mapping[str, Any], labels: Mapping[str, str]
) -> Cell:
    name, data = e["name"], e["data"]
    anchor = f"decision-{n}-v{e['version']}"
    if name == "Requested":
        run = labels.get(str(decision.get("invocation_id")))
        lines = [f"{_uid_name(decision['action'])} {_uid_name(decision['resource'])}"]
        links = (Link(f"#lane-{run}", f"asked by run {run}"),) if run else ()
        return Cell(anchor, name, "decision denied", f"decision {n}: denied, pending",
                    tuple(lines), links)  # fmt: skip
    if name == "Approved":
        return Cell(anchor, name, "decision approved", f"decision {n}: approved",
                    (f"by {data.get('by')}", f"policy {data.get('policy_id')}"))  # fmt: skip
    if name == "Rejected":
        return Cell(anchor, name, "decision rejected", f"decision {n}: rejected",
                    (f"by {data.get('by')}", compact(data.get("reason", ""))))  # fmt: skip
    return Cell(anchor, name, "decision", f"decision {n}: {name}", (compact(data),))
