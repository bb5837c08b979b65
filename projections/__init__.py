"""Read models built from the event store, kept exactly once in step with the log, rebuilt,
verified against a replay, and the audit of one job (DESIGN.md §4, §5).

Where things live: ``runner.py`` has ``Projections``, built from a service (``Projections(
service)``, as bootstrap's ``System.projections`` does), which follows the log through
``domain.log``'s reader and answers queries, and hands rebuilds to ``rebuild.py`` and checks to
``verify.py`` (replay parity). A read model is a ``Projection`` (``projection.py``: the base
class and the writes it asks for), one module each — ``job_status.py``, ``dispatch_audit.py``,
``sessions.py``, ``decisions.py`` — listed in ``catalog.py``; their tables and row types are in
``schema.py`` (with each one's ``<name>_skipped`` table: the events it could not fold, which
never stop it), and ``recorders.py`` (with ``sqlite_recorder.py`` and ``postgres_recorder.py``;
``backends.py`` picks one for a store) stores them with the library's tracking recorders in the
events' own database, one rebuild of a projection at a time. ``verify.py`` also checks the log
itself: transitions against the table, undecodable events, every job snapshot. The audit:
``timeline.py`` loads a job's ``Timeline`` (state at any version, folded from its events; JSON,
export) from records in ``timeline_records.py``; ``invariants.py`` re-checks
DESIGN.md §1 from its JSON alone. ``errors.py`` holds the typed errors and the one translation
of driver errors; ``progress.py`` and ``gc_pause.py`` serve long replays.

May import ``domain`` (and libraries) only, never integrations, scripts or bootstrap; no
module takes part in an import cycle. ``tests/test_layers.py`` checks both.
"""

from projections.catalog import PROJECTION_NAMES
from projections.invariants import check_invariants
from projections.rebuild import RebuildReport
from projections.runner import Projections
from projections.timeline import Timeline
from projections.verify import VerifyReport

__all__ = [
    "PROJECTION_NAMES",
    "Projections",
    "RebuildReport",
    "Timeline",
    "VerifyReport",
    "check_invariants",
]
