"""The composition root: settings in, a wired sequent out (DESIGN.md §6).

``Settings`` (settings.py) says where the store is, where sequent keeps its state, which guest
module runs, the sandbox limits, how stale a cached policy set may be and how long an outbound
HTTP call may take; ``Settings.from_env()`` reads them from the environment. Two builders
(system.py): ``open_service(settings)`` opens the event store alone (job commands, audit, read
models); ``build_system(settings)`` wires the whole system around it (sandbox, Cedar
authorizer, session client, dispatcher, read models). Every entry point starts here: each CLI
command, the worker, the race, the demo, the benchmark, and the tests.

May import ``domain``, ``integrations`` and ``projections``; only ``scripts`` and ``tests``
import it.
"""

from bootstrap.settings import Settings
from bootstrap.system import System, build_system, open_service

__all__ = ["Settings", "System", "build_system", "open_service"]
