"""``sessions``: every session a ``SessionSpawned`` completion reported, whether the job took
it, and whether sequent stopped it — a discarded one still alive is an orphan (invariant 4).
Sessions reconciliation stopped appear too, reported or not (a dead worker's session was never
reported): ``compensated`` says sequent stopped the session, by the discarded run's
compensation or by reconciliation; the events say which."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from domain.log import (
    APPLIED,
    DISCARDED,
    FINISHED,
    INVOCATION_CREATED,
    SESSION_STOPS,
    STARTED,
    UNATTRIBUTED_ORPHAN_STOPPED,
    UNRECOGNISED,
    VERDICTS,
    Notice,
)
from projections.projection import Lookup, Projection, Touched, Upsert, Write, column_indexes
from projections.schema import SESSION_INVOCATIONS, SESSIONS

SESSION_SPAWNED_ACTION = "SessionSpawned"

_SI = column_indexes(SESSION_INVOCATIONS)
_S = column_indexes(SESSIONS)


class SessionsProjection(Projection):
    """Every session a ``SessionSpawned`` completion reported, whether the job took it, and
    whether a compensation stopped it: a discarded one still alive is an orphan."""

    name = "sessions"
    topics = (STARTED, UNRECOGNISED, FINISHED, APPLIED, DISCARDED, *sorted(SESSION_STOPS))
    tables = (SESSIONS, SESSION_INVOCATIONS)

    def writes(self, batch: Sequence[Notice], lookup: Lookup) -> list[Write]:
        created = {n.key for n in batch if n.topic in INVOCATION_CREATED}
        runs = {n.key for n in batch if n.topic != UNATTRIBUTED_ORPHAN_STOPPED}
        invocations = Touched(lookup(SESSION_INVOCATIONS, runs - created))
        sessions = Touched(lookup(SESSIONS, self._mentioned(batch, invocations.stored)))
        for n in batch:
            self._fold(n, invocations, sessions)
        writes: list[Write] = []
        if invocations.rows:
            writes.append(Upsert(SESSION_INVOCATIONS, invocations.tuples()))
        if sessions.rows:
            writes.append(Upsert(SESSIONS, sessions.tuples()))
        return writes

    @staticmethod
    def _mentioned(batch: Sequence[Notice], invocations: dict[str, tuple[Any, ...]]) -> set[str]:
        """Sessions the batch may touch: reported by a Finished in it, or by one in an earlier
        batch whose verdict is in this one (kept on the invocation), or stopped in it."""
        mentioned = {r[_SI["session_id"]] for r in invocations.values()} - {None}
        for n in batch:
            if n.topic == FINISHED and n.event.action == SESSION_SPAWNED_ACTION:
                mentioned.add(str(n.event.params.get("session_id")))
            elif n.topic in SESSION_STOPS:
                mentioned.add(str(n.event.session_id))
        return mentioned

    @staticmethod
    def _fold(n: Notice, invocations: Touched, sessions: Touched) -> None:
        topic = n.topic
        if topic == UNATTRIBUTED_ORPHAN_STOPPED:  # no run, so no job either
            sid = str(n.event.session_id)
            s = sessions.get(sid, lambda: [sid, None, None, None, n.timestamp, 0, 1, n.id])
            s[_S["compensated"]], s[_S["alive"]], s[_S["position"]] = 1, 0, n.id
            return
        if topic in INVOCATION_CREATED:
            invocations.put(n.key, [n.key, str(n.event.job_id), None, n.id])
            return
        invocation = invocations.get(n.key, lambda: [n.key, None, None, n.id])
        invocation[_SI["position"]] = n.id

        def session(session_id: str) -> list[Any]:
            return sessions.get(
                session_id,
                lambda: [session_id, invocation[_SI["job_id"]], n.key, None, n.timestamp, 0, 1,
                         n.id],
            )  # fmt: skip

        if topic == FINISHED:
            e = n.event
            spawned = e.action == SESSION_SPAWNED_ACTION
            invocation[_SI["session_id"]] = str(e.params.get("session_id")) if spawned else None
        elif topic in VERDICTS:
            session_id = invocation[_SI["session_id"]]
            invocation[_SI["session_id"]] = None  # each Finished pairs with one verdict
            if session_id is not None:
                s = session(session_id)
                if topic == APPLIED:
                    s[_S["verdict"]] = "applied"
                elif s[_S["verdict"]] is None:
                    s[_S["verdict"]] = "discarded"
                s[_S["position"]] = n.id
        elif topic in SESSION_STOPS:  # a compensation, or reconciliation naming this run
            s = session(str(n.event.session_id))
            s[_S["compensated"]], s[_S["alive"]], s[_S["position"]] = 1, 0, n.id
