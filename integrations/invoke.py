"""Run one module file once, outside any job: the engine room of ``sequent invoke``.

It exists so a module author can try a ``.wasm`` or ``.wat`` file with the real limits and host
functions before an integration declaration points at it. Without an input it runs on a made-up
job; without a host it uses :class:`~integrations.host.NoNetwork`, so every ``http_call`` is
answered ``denied`` and nothing leaves the machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from integrations.host import HostCalls
from integrations.limits import SandboxLimits
from integrations.runtime import RunResult, Runtime

SAMPLE_INVOCATION_ID = "00000000-0000-4000-8000-00000000c0de"
SAMPLE_JOB_ID = "00000000-0000-4000-8000-0000000005a1"


def sample_input() -> dict[str, Any]:
    """ABI v1 input for a made-up job (its session service is a closed loopback port)."""
    return {
        "invocation_id": SAMPLE_INVOCATION_ID,
        "job": {
            "id": SAMPLE_JOB_ID,
            "attempt": 1,
            "spec": {"session_service": "http://127.0.0.1:9", "target": "sample-target"},
            "settings": {"priority": "normal"},
        },
    }


def invoke_module(
    path: Path,
    input: dict[str, Any] | None = None,
    host: HostCalls | None = None,
    limits: SandboxLimits | None = None,
    runtime: Runtime | None = None,
) -> RunResult:
    """Load ``path`` (wasm or WAT) and run it once; raises ModuleRejected for a non-module."""
    limits = limits or SandboxLimits()
    runtime = runtime or Runtime(limits)
    loaded = runtime.load_file(Path(path))
    return runtime.run(loaded, input if input is not None else sample_input(), host, limits)
