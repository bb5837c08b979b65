"""An in-memory model of the session service (``integrations/session_service.py``): the same
surface the client gives the rest of sequent (create with an idempotency key, list, delete), at
several URLs, with the faults the scheduler injects.

It honours ``Idempotency-Key`` as the service does once fenced: a second create with the same key
answers the first session (if still live) instead of creating another, and ``GET /sessions``
items carry the key they were created with. It also keeps what the real service cannot know and
the checks need: which run really created each session (from the message, not the key, so a
run that sent no key is still counted).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from integrations.session_client import SessionServiceError
from simulation.clock import VirtualClock


@dataclass(frozen=True)
class ModelSession:
    session_id: str
    service_url: str
    created: float
    idempotency_key: str | None
    creator: str | None  # the invocation whose run posted it (its message says), if any

    def as_json(self) -> dict[str, Any]:
        item: dict[str, Any] = {"session_id": self.session_id, "created": self.created}
        if self.idempotency_key is not None:
            item["idempotency_key"] = self.idempotency_key
        return item


class SessionModels:
    """The session services of one seed, by URL. Implements what the reconciler
    (``SessionDirectory``) and the dispatcher's compensation (``SessionStopper``) call."""

    def __init__(self, clock: VirtualClock, urls: Mapping[str, str]) -> None:
        """``urls``: service URL -> the prefix of its session ids."""
        self.clock = clock
        self.prefixes = dict(urls)
        self.live: dict[str, ModelSession] = {}
        self.created: list[ModelSession] = []  # every session ever created, in order
        self.by_key: dict[str, ModelSession] = {}
        self.deleted: dict[str, str] = {}  # session -> who stopped it ("reconcile", "compensate")
        self.fail_lists: set[str] = set()  # URLs whose next GET /sessions answers 500
        self.fail_deletes = 0  # how many of the next DELETEs answer 500
        self.refused: list[str] = []  # sessions a DELETE failed for, since the scheduler looked

    # -- POST /sessions --------------------------------------------------------------------

    def create(
        self, service_url: str, message: Mapping[str, Any], idempotency_key: str | None
    ) -> str:
        if idempotency_key is not None and idempotency_key in self.by_key:
            return self.by_key[idempotency_key].session_id  # the first answer, again
        prefix = self.prefixes[service_url]
        creator = message.get("invocation_id")
        session = ModelSession(
            f"{prefix}{len(self.created) + 1}",
            service_url,
            self.clock.seconds(),
            idempotency_key,
            creator if isinstance(creator, str) else None,
        )
        self.created.append(session)
        self.live[session.session_id] = session
        if idempotency_key is not None:
            self.by_key[idempotency_key] = session
        return session.session_id

    # -- GET /sessions, DELETE /sessions/{id} ----------------------------------------------

    def list(self, service_url: str = "") -> list[dict[str, Any]]:
        if service_url in self.fail_lists:
            self.fail_lists.discard(service_url)
            raise SessionServiceError("http_error", "GET /sessions: status 500", status=500)
        return [s.as_json() for s in self.live.values() if s.service_url == service_url]

    def delete(self, session_id: str, service_url: str = "") -> bool:
        return self._delete(session_id, service_url, "reconcile")

    def stop(self, service_url: str, session_id: str) -> bool:
        """The compensating DELETE (``integrations.sandboxed.SessionStopper``'s surface)."""
        try:
            return self._delete(session_id, service_url, "compensate")
        except SessionServiceError:
            return False

    def _delete(self, session_id: str, service_url: str, by: str) -> bool:
        if self.fail_deletes:
            self.fail_deletes -= 1
            self.refused.append(session_id)
            raise SessionServiceError("http_error", "DELETE: status 500", status=500)
        session = self.live.get(session_id)
        if session is None or session.service_url != service_url:
            return False
        del self.live[session_id]
        self.deleted[session_id] = by
        return True

    # -- what the checks read ----------------------------------------------------------------

    def sessions_by_creator(self, creator: str) -> int:
        return sum(1 for s in self.created if s.creator == creator)
