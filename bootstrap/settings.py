"""What a sequent process is configured with, in one frozen object.

Everything sequent writes outside the event store (the built guest module, the compiled-module
cache, the default SQLite store) lives under one state directory: ``$SEQUENT_HOME``, else
``.sequent`` in the working directory, the same folder the default store URL names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from domain.store_url import DB_URL_ENV
from integrations.limits import SandboxLimits

HOME_ENV = "SEQUENT_HOME"
MODULE_DIR_ENV = "SEQUENT_MODULE_DIR"
DEFAULT_STATE_DIR = Path(".sequent")
# Policy changes by other processes become visible to this one's checks within this many
# seconds; this process's own policy writes are seen at once (PolicyBook).
POLICY_STALENESS_SECONDS = 0.05
HTTP_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Settings:
    store_url: str | None = None  # None: a SQLite file in the state directory
    state_dir: Path = DEFAULT_STATE_DIR
    module: Path | None = None  # None: the project's build_session_message, built on first use
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    policy_staleness: float = POLICY_STALENESS_SECONDS
    http_timeout: float = HTTP_TIMEOUT_SECONDS
    built_modules_dir: Path | None = None  # None: <state_dir>/modules
    compile_cache: bool = True  # keep compiled modules under <state_dir>/module-cache

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from ``$SEQUENT_DB``, ``$SEQUENT_HOME`` and ``$SEQUENT_MODULE_DIR``;
        ``overrides`` (say, a ``--db`` flag) win where they are not None."""
        env = os.environ if environ is None else environ
        module_dir = env.get(MODULE_DIR_ENV)
        settings = cls(
            store_url=env.get(DB_URL_ENV) or None,
            state_dir=Path(env.get(HOME_ENV) or DEFAULT_STATE_DIR),
            built_modules_dir=Path(module_dir) if module_dir else None,
        )
        return settings.with_(**overrides)

    def with_(self, **overrides: object) -> Settings:
        """A copy with the given fields replaced; None means "keep what is set"."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]

    @property
    def url(self) -> str:
        """The store URL in force: the configured one, else the state directory's SQLite file."""
        if self.store_url:
            return self.store_url
        return f"sqlite:///{self.state_dir / 'sequent.db'}"

    @property
    def modules_dir(self) -> Path:
        return self.built_modules_dir or self.state_dir / "modules"

    @property
    def module_cache_dir(self) -> Path | None:
        return self.state_dir / "module-cache" if self.compile_cache else None
