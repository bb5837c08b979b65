"""The composition root: one place that builds the service, the sandbox, the authorizer, the
session client and the dispatcher from a store URL. The CLI, the race, the demo and the tests
all start here, so they run the same parts wired the same way."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domain import CurationService
from integrations.authorizer import CedarAuthorizer
from integrations.dispatcher import Completer, Dispatcher
from integrations.modules.build import build_session_message_wasm
from integrations.runtime import LoadedModule, Runtime, SandboxLimits
from integrations.sandboxed import SandboxRunner, SessionStopper
from integrations.sessions import SessionClient

MODULE_CACHE_DIR = Path(".sequent") / "module-cache"
# Policy changes by other processes become visible to this one's checks within this many
# seconds; this process's own policy writes are seen at once (PolicyBook).
POLICY_STALENESS_SECONDS = 0.05


@dataclass
class System:
    service: CurationService
    runtime: Runtime
    module: LoadedModule
    authorizer: CedarAuthorizer
    client: SessionClient
    limits: SandboxLimits | None = None
    _closed: bool = field(default=False, repr=False)

    @property
    def runner(self) -> SandboxRunner:
        return SandboxRunner(
            self.runtime, self.module, self.authorizer, self.client, limits=self.limits
        )

    def dispatcher(self, *, completer: Completer | None = None, compensate: bool = True,
                   **options: Any) -> Dispatcher:  # fmt: skip
        """A dispatcher over this system; ``completer`` replaces the guarded completion only
        in the race's baseline simulation."""
        return Dispatcher(
            self.service,
            self.runner,
            completer=completer,
            sessions=SessionStopper(self.client) if compensate else None,
            **options,
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.client.close()
        self.service.close()


def build(
    url: str | None = None,
    *,
    module: Path | None = None,
    limits: SandboxLimits | None = None,
    cache_dir: Path | None = MODULE_CACHE_DIR,
    http_timeout: float = 10.0,
) -> System:
    """Opens the store and wires everything; ``module`` defaults to the project's own
    build_session_message, built (or reused) from its source."""
    runtime = Runtime(limits, cache_dir=cache_dir)
    loaded = runtime.load((module or build_session_message_wasm()).read_bytes())
    service = CurationService.open(url, module_sha256=loaded.sha256)
    service.policies.max_staleness = POLICY_STALENESS_SECONDS
    return System(
        service=service,
        runtime=runtime,
        module=loaded,
        authorizer=CedarAuthorizer(service.policies),
        client=SessionClient(timeout=http_timeout),
        limits=limits,
    )
