"""What sequent shows a monitoring system (DESIGN.md §9), as names only: its Prometheus metrics
(name, help, labels) and its OpenTelemetry span and attribute names.

Two processes declare metrics from this table: the console (``console/metrics.py``: store-wide
totals read from the read models) and the worker (``integrations/telemetry.py``: its own
counters and histograms). Both read the names here, so a dashboard written against one never
misses the other. No metrics library is imported here: this is the contract, not a client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class Metric:
    name: str  # without the _total a client adds to a counter's sample
    help: str
    labels: tuple[str, ...] = ()
    kind: str = "counter"  # counter | gauge | histogram

    @property
    def exposed(self) -> str:
        """The name scrapers see: a counter's samples end in ``_total``."""
        return f"{self.name}_total" if self.kind == "counter" else self.name


COMPLETIONS: Final = Metric(
    "sequent_completions",
    "Completions that reached the guard, by verdict (applied, discarded) and discard reason.",
    ("verdict", "reason"),
)
INVOCATION_DURATION: Final = Metric(
    "sequent_invocation_duration_seconds",
    "Wall-clock seconds of one sandbox run of an invocation (claim to outcome, excluding the "
    "completion).",
    kind="histogram",
)
SANDBOX_FAILURES: Final = Metric(
    "sequent_sandbox_failures",
    "Sandbox runs that failed, by classified kind (fuel_exhausted, timeout, denied, ...).",
    ("kind",),
)
LEASES_EXPIRED: Final = Metric(
    "sequent_leases_expired",
    "Runs whose lease ran out before their completion was recorded (another worker may have "
    "taken the invocation over).",
)
COMPENSATIONS: Final = Metric(
    "sequent_compensations",
    "Sessions left behind by a discarded SessionSpawned that a compensation stopped.",
)
ORPHANS: Final = Metric(
    "sequent_orphans",
    "Sessions a discarded completion left behind that no compensation stopped.",
)
JOBS: Final = Metric("sequent_jobs", "Jobs by their current state.", ("state",), "gauge")
DECISIONS: Final = Metric(
    "sequent_decisions", "Cedar authorization decisions by status.", ("status",), "gauge"
)
PROJECTION_LAG_EVENTS: Final = Metric(
    "sequent_projection_lag_events",
    "Notifications between a read model's position and the head of the log.",
    ("projection",),
    "gauge",
)
PROJECTION_SKIPPED: Final = Metric(
    "sequent_projection_skipped_events",
    "Events of a read model's topics it could not fold and recorded as skipped instead.",
    ("projection",),
    "gauge",
)
PROJECTION_LAG_SECONDS: Final = Metric(
    "sequent_projection_lag_seconds",
    "Age of the oldest notification a read model has not applied yet (0 when at the head).",
    ("projection",),
    "gauge",
)

# The verdict label's values: dispatch_audit's words, lower case.
APPLIED_LABEL: Final = "applied"
DISCARDED_LABEL: Final = "discarded"

# -- OpenTelemetry -------------------------------------------------------------------------------

TRACER_NAME: Final = "sequent"
# One span per invocation run, with one child span per step (the http_call spans are children
# of the sandbox span: the guest makes them while it runs).
RUN_SPAN: Final = "sequent.invocation"
CLAIM_SPAN: Final = "sequent.claim"
SANDBOX_SPAN: Final = "sequent.sandbox"
HTTP_CALL_SPAN: Final = "sequent.http_call"
COMPLETION_SPAN: Final = "sequent.completion"

JOB_ID: Final = "sequent.job_id"
INVOCATION_ID: Final = "sequent.invocation_id"
ATTEMPT: Final = "sequent.attempt"
VERDICT: Final = "sequent.verdict"
REASON: Final = "sequent.reason"
ACTION: Final = "sequent.action"
OUTCOME: Final = "sequent.outcome"  # ok | error
ERROR_KIND: Final = "sequent.error_kind"
CEDAR_DECISION: Final = "sequent.cedar.decision"  # allow | deny
DECISION_ID: Final = "sequent.cedar.decision_id"
WORKER: Final = "sequent.worker"
