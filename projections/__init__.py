"""Read models built from the event store, their runners, rebuild, verify and audit
(DESIGN.md §4).

May import ``domain``. Never imports ``integrations`` internals or ``scripts``.
"""
