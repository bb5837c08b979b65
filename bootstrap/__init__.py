"""The composition root: settings in, a wired sequent out (DESIGN.md §6).

``Settings`` (settings.py) says where the store is, where sequent keeps its state, which guest
module runs, the sandbox limits, how stale a cached policy set may be and how long an outbound
HTTP call may take; ``Settings.from_env()`` reads them from the environment. Four builders:
``open_service(settings)`` (service.py) opens the event store alone (job commands, audit, read
models); ``open_reconciler(settings)`` (reconciler.py) adds a session client to it, for
reconciliation; ``build_system(settings)`` (system.py) wires the whole system around it
(sandbox, Cedar authorizer, session client, dispatcher with its reconciler, read models);
``open_console(settings)`` (console.py) wires the web console over the store and its read
models. Every entry point starts here: each CLI command, the worker, the race, the demo, the
benchmark, the console, and the tests.

May import ``domain``, ``integrations``, ``projections`` and ``console``; only ``scripts`` and
``tests`` import it.
"""

from typing import TYPE_CHECKING, Any

from bootstrap.reconciler import open_reconciler
from bootstrap.service import open_service
from bootstrap.settings import Settings

if TYPE_CHECKING:
    from bootstrap.console import Console, open_console
    from bootstrap.system import System, build_system

__all__ = [
    "Console",
    "Settings",
    "System",
    "build_system",
    "open_console",
    "open_reconciler",
    "open_service",
]


def __getattr__(name: str) -> Any:
    # The whole system loads the sandbox (wasmtime, ~10 MB) and the console its web stack:
    # only on first use, so commands that need the store alone start without them.
    if name in ("System", "build_system"):
        from bootstrap import system  # noqa: PLC0415

        return getattr(system, name)
    if name in ("Console", "open_console"):
        from bootstrap import console  # noqa: PLC0415

        return getattr(console, name)
    raise AttributeError(f"module 'bootstrap' has no attribute {name!r}")
