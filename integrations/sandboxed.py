"""The real host behind a guest: Cedar-checked ``http_call`` over the session client, and the
runner that turns one sandbox run into the outcome the dispatcher completes with.

Everything a guest asks for goes through ``AuthorizedHost.http_call``: authorized first (a
denial records a pending Decision and the guest sees ``denied`` with its id), sent only then.
A check that could not be made because the store failed is neither a denial nor the service's
failure: nothing is sent, and the runner raises the StoreUnavailable once the guest returns, so
the run is retried rather than completed (its job failed) over a dropped connection.
"""

from __future__ import annotations

import logging
from typing import Any

from domain import Dispatch, StoreUnavailable
from domain.values import escape_unstorable
from integrations.authorizer import CedarAuthorizer
from integrations.dispatcher import RunOutcome
from integrations.host import guest_error
from integrations.limits import SandboxLimits
from integrations.runtime import LoadedModule, RunResult, Runtime
from integrations.session_client import SessionClient, SessionServiceError
from integrations.telemetry import HttpCallSpan, http_call_span

log = logging.getLogger(__name__)

# What a guest hears from http_call once the run is void (its answer is never used).
VOID_RUN = "not sent: the store is unavailable, this run will be repeated"

# Guest log levels 0..4 (ABI v1) as Python logging levels.
LOG_LEVELS = (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL)


class AuthorizedHost:
    """The host functions for one invocation: it knows the job and the module, so Cedar can
    be asked about exactly this run and a denial can name them."""

    def __init__(
        self,
        authorizer: CedarAuthorizer,
        client: SessionClient,
        *,
        integration: str,
        module_sha256: str,
        job_id: str,
        invocation_id: str,
        attempt: int = 1,
    ) -> None:
        self.authorizer = authorizer
        self.client = client
        self.integration = integration
        self.module_sha256 = module_sha256
        self.job_id = job_id
        self.invocation_id = invocation_id
        self.attempt = attempt
        self.denial: str | None = None  # why the last denied call was denied, in Cedar's terms
        self.store_failure: StoreUnavailable | None = None  # the run is void: see the module

    def http_call(self, request: dict[str, Any]) -> dict[str, Any]:
        method = str(request.get("method", ""))
        # A span in the run's trace: this call's Cedar decision and the answer.
        with http_call_span(method, self.job_id, self.invocation_id, self.attempt) as span:
            answer = self._http_call(method, str(request.get("url", "")), request, span)
            span.answered(answer)
            return answer

    def _http_call(
        self, method: str, url: str, request: dict[str, Any], span: HttpCallSpan
    ) -> dict[str, Any]:
        if self.store_failure is not None:
            return guest_error("http_error", VOID_RUN)
        try:
            decision = self.authorizer.check(
                self.integration, self.module_sha256, method, url, self.job_id, self.invocation_id
            )
        except StoreUnavailable as exc:
            self.store_failure = exc
            return guest_error("http_error", VOID_RUN)
        span.decided(decision)
        if not decision.allowed:
            self.denial = decision.reason
            return guest_error("denied", decision.reason, decision.decision_id)
        # The guest's own Host, fencing and hop-by-hop headers were dropped when its request was
        # read (host.guest_headers); httpx sets Host from the URL Cedar checked. The key is the
        # fencing token the session service honours: every run of this invocation (a retry, a
        # lease taken over) gets the one session the first created, never a second.
        headers = {
            **(request.get("headers") or {}),
            "Idempotency-Key": self.invocation_id,
            "Sequent-Attempt": str(self.attempt),
        }
        try:
            return self.client.request(method, url, headers, request.get("body"))
        except SessionServiceError as exc:
            return exc.as_json()

    def log(self, level: int, message: str) -> None:
        python_level = LOG_LEVELS[min(max(level, 0), len(LOG_LEVELS) - 1)]
        if log.isEnabledFor(python_level):
            log.log(python_level, "%s[%s]: %s", self.integration, self.invocation_id[:8], message)


def outcome_of(result: RunResult, denial: str | None = None) -> RunOutcome:
    """A sandbox result in the declaration's terms. The host's own record of a denial or an
    HTTP failure wins over whatever kind the guest claims, and a denial is told in the host's
    words (``denial``), not the guest's. The message never starts with the kind: the one
    who reports the failure names the kind once (``failure_params``: "denied: …"), and the
    runtime's message for a guest's error is already "<guest kind>: <guest message>"."""
    if result.outcome == "ok":
        return RunOutcome(ok=result.output)
    output = (result.output or {}) if result.outcome == "error" else {}
    guest_kind = output.get("kind")
    kind = result.error_kind or (guest_kind if isinstance(guest_kind, str) else None)
    if kind == "denied" and denial is not None:
        message = denial
    elif output:
        message = str(output.get("message", ""))
    else:
        message = result.message
    # The host's own words may quote what no store can hold (a trap names the guest's
    # functions); they are recorded with it escaped, never refused.
    return RunOutcome(
        error_kind=kind, message=escape_unstorable(message), decision_id=result.decision_id
    )


class SandboxRunner:
    """The dispatcher's Runner: one fresh sandbox per dispatch, real host functions."""

    def __init__(
        self,
        runtime: Runtime,
        module: LoadedModule,
        authorizer: CedarAuthorizer,
        client: SessionClient,
        *,
        integration: str = "build_session_message",
        limits: SandboxLimits | None = None,
    ) -> None:
        self.runtime = runtime
        self.module = module
        self.authorizer = authorizer
        self.client = client
        self.integration = integration
        self.limits = limits

    @property
    def module_sha256(self) -> str:
        return self.module.sha256

    def host_for(self, job_id: str, invocation_id: str, attempt: int = 1) -> AuthorizedHost:
        return AuthorizedHost(
            self.authorizer,
            self.client,
            integration=self.integration,
            module_sha256=self.module_sha256,
            job_id=job_id,
            invocation_id=invocation_id,
            attempt=attempt,
        )

    def __call__(self, dispatch: Dispatch, job_input: dict[str, Any]) -> RunOutcome:
        """The run's outcome; raises StoreUnavailable if an authorization check could not
        read or write the store (the run decided nothing and is to be retried)."""
        host = self.host_for(str(dispatch.job_id), str(dispatch.invocation_id), dispatch.attempt)
        result = self.runtime.run(self.module, job_input, host, self.limits)
        if host.store_failure is not None:
            raise host.store_failure
        return outcome_of(result, host.denial)


class SessionStopper:
    """Stops a session at the service its job named: the compensating DELETE."""

    def __init__(self, client: SessionClient) -> None:
        self.client = client

    def stop(self, service_url: str, session_id: str) -> bool:
        try:
            answer = self.client.request(
                "DELETE", f"{service_url.rstrip('/')}/sessions/{session_id}"
            )
        except SessionServiceError:
            log.warning("could not stop session %s at %s", session_id, service_url)
            return False
        return int(answer["status"]) in (200, 204)
