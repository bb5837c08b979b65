"""Stand-ins for the sandbox measurement: a session client and a host that answer every
request 201 with a session without a network, and the real Cedar authorizer timing each check
it makes. They replace the network, never the code under measurement."""

from __future__ import annotations

import time
from typing import Any

from integrations.authorizer import AuthzOutcome, CedarAuthorizer
from integrations.session_client import SessionClient
from scripts.bench.harness import Timings

CANNED_BODY = '{"session_id":"s-bench","created":0}'


def created() -> dict[str, Any]:
    """The session service's answer to POST /sessions."""
    return {"status": 201, "headers": {"content-type": "application/json"}, "body": CANNED_BODY}


class CannedClient(SessionClient):
    """The session client the Cedar-checked host calls out through, answering at once."""

    def request(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return created()


class CannedHost:
    """HostCalls for the baselines: the same answer, and no Cedar."""

    def http_call(self, request: dict[str, Any]) -> dict[str, Any]:
        return created()

    def log(self, level: int, message: str) -> None:
        return None


class TimedAuthorizer(CedarAuthorizer):
    """The real authorizer, timing each check it makes (Cedar as seen inside a run)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timings = Timings()

    def check(self, *args: Any, **kwargs: Any) -> AuthzOutcome:
        started = time.perf_counter_ns()
        outcome = super().check(*args, **kwargs)
        self.timings.add(time.perf_counter_ns() - started)
        return outcome
