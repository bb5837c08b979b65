"""The console's ``/metrics``: the whole store's figures, read from the read models at each scrape.

A custom collector, not counters the console increments: every value is a fold of the event
history already kept by the read models, so a console started after a race shows that race's
completions, and two consoles on one store agree. What only a running worker can know — how
long its sandbox runs take, which kinds of failure they met, whose lease ran out — is the
worker's own ``--metrics-port`` (``integrations/telemetry.py``), under the same names
(``domain/observability.py``).

Store-wide families: ``sequent_completions_total{verdict,reason}`` (dispatch_audit: one per
recorded completion; ``reason`` is empty for an applied one), ``sequent_compensations_total``
(sessions a compensation stopped), ``sequent_orphans_total`` (a gauge here: sessions a
discarded completion left alive now; invariant 4 says 0), ``sequent_jobs{state}``,
``sequent_decisions{status}``, ``sequent_projection_lag_events{projection}`` (negative: a
position past the head, drift), ``sequent_projection_lag_seconds{projection}`` and
``sequent_projection_skipped_events{projection}``.

Each scrape reads the rows of the read models it counts (no grouped query exists in the read
models' API): fine for the stores this console is for, and the price of every figure being
the store's truth at that moment.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from console.lag import lags
from domain import JobState
from domain import observability as o
from projections import Projections
from projections.decisions import DECISION_STATUSES

Family = CounterMetricFamily | GaugeMetricFamily


class ReadModelCollector(Collector):
    """Collects the store-wide metrics from ``projections`` at each scrape."""

    def __init__(self, projections: Projections) -> None:
        self.projections = projections

    def collect(self) -> Iterator[Family]:
        p = self.projections
        completions = CounterMetricFamily(o.COMPLETIONS.name, o.COMPLETIONS.help,
                                          labels=o.COMPLETIONS.labels)  # fmt: skip
        counted = Counter((r.verdict, r.reason or "") for r in p.audit())
        for (verdict, reason), n in sorted(counted.items()):
            completions.add_metric([verdict, reason], n)
        yield completions

        sessions = p.sessions()
        yield CounterMetricFamily(
            o.COMPENSATIONS.name, o.COMPENSATIONS.help, value=sum(s.compensated for s in sessions)
        )
        yield GaugeMetricFamily(
            o.ORPHANS.exposed,  # a gauge here, under the worker's counter's name
            "Sessions a discarded completion left behind that are alive now (invariant 4: 0).",
            value=sum(s.orphan for s in sessions),
        )

        jobs = GaugeMetricFamily(o.JOBS.name, o.JOBS.help, labels=o.JOBS.labels)
        states = Counter(r.state for r in p.jobs())
        for state in JobState:
            jobs.add_metric([state.value], states.get(state.value, 0))
        yield jobs

        decisions = GaugeMetricFamily(o.DECISIONS.name, o.DECISIONS.help,
                                      labels=o.DECISIONS.labels)  # fmt: skip
        statuses = Counter(r.status for r in p.decisions())
        for status in DECISION_STATUSES:
            decisions.add_metric([status], statuses.get(status, 0))
        yield decisions

        events = GaugeMetricFamily(o.PROJECTION_LAG_EVENTS.name, o.PROJECTION_LAG_EVENTS.help,
                                   labels=o.PROJECTION_LAG_EVENTS.labels)  # fmt: skip
        seconds = GaugeMetricFamily(o.PROJECTION_LAG_SECONDS.name, o.PROJECTION_LAG_SECONDS.help,
                                    labels=o.PROJECTION_LAG_SECONDS.labels)  # fmt: skip
        skipped = GaugeMetricFamily(o.PROJECTION_SKIPPED.name, o.PROJECTION_SKIPPED.help,
                                    labels=o.PROJECTION_SKIPPED.labels)  # fmt: skip
        for lag in lags(p):
            events.add_metric([lag.projection], lag.events)
            seconds.add_metric([lag.projection], lag.seconds)
            skipped.add_metric([lag.projection], lag.skipped)
        yield events
        yield seconds
        yield skipped


def read_model_registry(projections: Projections) -> CollectorRegistry:
    """A registry of its own holding only the store-wide collector (not the process-global
    default one, so two consoles in one process, or tests, never collide)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ReadModelCollector(projections))
    return registry
