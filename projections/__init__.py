"""Read models built from the event store, their runners, rebuild, verify and audit
(DESIGN.md §4).

``Projections`` (runner.py) keeps the read models (views.py, stored by store.py in the events'
own database) exactly once in step with the notification log (log.py); ``Timeline`` (audit.py)
reads a job's history straight from the event store.

May import ``domain``. Never imports ``integrations`` internals or ``scripts``.
"""

from projections.invariants import check_invariants
from projections.runner import Projections
from projections.timeline import Timeline

__all__ = ["Projections", "Timeline", "check_invariants"]
