"""The two builders: the service alone, or the whole system wired around it.

Each process builds one of these once, from ``Settings``, so the CLI, the worker, the race, the
demo, the benchmark and the tests run the same parts wired the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bootstrap.service import open_service
from bootstrap.settings import Settings
from domain import CurationService
from integrations.authorizer import CedarAuthorizer
from integrations.dispatcher import Completer, Dispatcher
from integrations.limits import SandboxLimits
from integrations.modules.build import build_session_message_wasm
from integrations.reconcile import Reconciler
from integrations.runtime import LoadedModule, Runtime
from integrations.sandboxed import SandboxRunner, SessionStopper
from integrations.session_client import SessionClient
from projections import Projections


@dataclass
class System:
    settings: Settings
    service: CurationService
    runtime: Runtime
    module: LoadedModule
    authorizer: CedarAuthorizer
    client: SessionClient
    _projections: Projections | None = field(default=None, repr=False)
    _closed: bool = field(default=False, repr=False)

    @property
    def limits(self) -> SandboxLimits:
        return self.settings.limits

    @property
    def runner(self) -> SandboxRunner:
        return SandboxRunner(
            self.runtime, self.module, self.authorizer, self.client, limits=self.limits
        )

    @property
    def projections(self) -> Projections:
        """The read models over this system's store, opened on first use."""
        if self._projections is None:
            self._projections = Projections(self.service)
        return self._projections

    @property
    def reconciler(self) -> Reconciler:
        """Stops and records the sessions no job holds: the workers' periodic pass."""
        return Reconciler(self.service, self.client)

    def dispatcher(self, *, completer: Completer | None = None, compensate: bool = True,
                   **options: Any) -> Dispatcher:  # fmt: skip
        """A dispatcher over this system; ``completer`` replaces the guarded completion only
        in the race's baseline simulation. ``compensate`` keeps invariant 4: it stops the
        sessions of discarded completions and reconciles periodically."""
        return Dispatcher(
            self.service,
            self.runner,
            completer=completer,
            sessions=SessionStopper(self.client) if compensate else None,
            reconciler=self.reconciler if compensate else None,
            **options,
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._projections is not None:
            self._projections.close()
        self.client.close()
        self.service.close()

    def __enter__(self) -> System:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build_system(settings: Settings | None = None) -> System:
    """Opens the store and wires everything around it; the guest module is the one settings
    name, else the project's own build_session_message, built (or reused) from its source."""
    settings = settings or Settings.from_env()
    runtime = Runtime(settings.limits, cache_dir=settings.module_cache_dir)
    path = settings.module or build_session_message_wasm(settings.modules_dir)
    loaded = runtime.load_file(path)
    service = open_service(settings)
    return System(
        settings=settings,
        service=service,
        runtime=runtime,
        module=loaded,
        authorizer=CedarAuthorizer(service.policies),
        client=SessionClient(timeout=settings.http_timeout),
    )
