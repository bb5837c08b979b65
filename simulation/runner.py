"""The stand-in for the sandbox and its host: what a ``build_session_message`` run does, as the
dispatcher's ``Runner``, with the fault the scheduler chose for it.

A run asks the real Cedar authorizer about its ``POST {session_service}/sessions`` (a denial
records a pending Decision, as in production), then posts the session message to the session
model with the host's fencing token, ``Idempotency-Key: <invocation id>``, and answers what the
guest would: ``ok`` with the session id, or an error of the kind the host classifies. It maps
nothing to an action: the dispatcher's declaration does that.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from domain import Dispatch
from domain.orphan import SESSION_SERVICE_KEY
from integrations.authorizer import CedarAuthorizer
from integrations.dispatcher import RunOutcome
from simulation.sessions import SessionModels

INTEGRATION = "build_session_message"
MODULE_SHA256 = "5" * 64  # no module runs; the claim still records which one "did"


class RunFault(StrEnum):
    NONE = "ok"
    POST_FAILS = "post_500"  # the service answers 500 and creates nothing
    ANSWER_LOST = "answer_lost"  # the service created the session, the answer never came back
    CRASH_BEFORE_POST = "crash_before_post"  # the worker dies during the run
    CRASH_AFTER_POST = "crash_after_post"  # ... or right after the session was created


class WorkerCrashed(Exception):
    """The worker running this step died; everything it held in memory is gone."""


class SimulatedRunner:
    module_sha256 = MODULE_SHA256

    def __init__(self, authorizer: CedarAuthorizer, sessions: SessionModels) -> None:
        self.authorizer = authorizer
        self.sessions = sessions
        self.fault = RunFault.NONE  # set by the scheduler before each run

    def fencing_key(self, dispatch: Dispatch) -> str | None:
        """The host-set ``Idempotency-Key`` of every outbound call of this run."""
        return str(dispatch.invocation_id)

    def __call__(self, dispatch: Dispatch, job_input: dict[str, Any]) -> RunOutcome:
        job = job_input["job"]
        url = str(job["spec"][SESSION_SERVICE_KEY])
        decision = self.authorizer.check(
            INTEGRATION,
            self.module_sha256,
            "POST",
            f"{url}/sessions",
            str(dispatch.job_id),
            str(dispatch.invocation_id),
        )
        if self.fault is RunFault.CRASH_BEFORE_POST:
            raise WorkerCrashed("during the run")
        if not decision.allowed:
            return RunOutcome(
                error_kind="denied", message=decision.reason, decision_id=decision.decision_id
            )
        if self.fault is RunFault.POST_FAILS:
            return RunOutcome(error_kind="http_error", message="POST /sessions: status 500")
        message = {
            "job_id": job["id"],
            "attempt": job["attempt"],
            "invocation_id": job_input["invocation_id"],
        }
        session_id = self.sessions.create(url, message, self.fencing_key(dispatch))
        if self.fault is RunFault.CRASH_AFTER_POST:
            raise WorkerCrashed("after the POST")
        if self.fault is RunFault.ANSWER_LOST:
            return RunOutcome(error_kind="http_error", message="POST /sessions: connection reset")
        return RunOutcome(ok={"session_id": session_id})
