"""Whole-system deterministic simulation (DESIGN.md §5, ``sequent simulate``): the real domain,
guard, dispatcher steps, Cedar authorizer and reconciler, on a memory store with a virtual
clock, driven by a seeded scheduler through crashes, lost and late answers, timeouts, denials
and approvals, with invariants 1-4 and 6 checked after every step against a model of its own
(``world.py`` says what runs, which faults, which checks; ``model.py`` is the model). The
stand-ins are the sandbox run (``runner.py``) and the session service (``sessions.py``); the
incident's own completion handling, for baselines, is ``incident.py``.

May import ``domain`` and ``integrations``. ``tests/test_layers.py`` checks this.
"""

from simulation.run import DEFAULT_STEPS, SeedResult, replay_command, run_seed, simulate

__all__ = ["DEFAULT_STEPS", "SeedResult", "replay_command", "run_seed", "simulate"]
