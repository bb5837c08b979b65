"""What one sandboxed run may use. Apart from the runtime so that settings can name limits
without loading wasmtime."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

PAGE_BYTES: Final = 65536  # one wasm linear-memory page


@dataclass(frozen=True)
class SandboxLimits:
    """Per-invocation bounds. ``module_bytes`` applies when a module is loaded."""

    fuel: int = 1_000_000_000
    wall_clock_seconds: float = 30.0
    memory_bytes: int = 64 * 1024 * 1024
    output_bytes: int = 1024 * 1024
    module_bytes: int = 10 * 1024 * 1024
    http_calls: int = 16
    http_response_bytes: int = 1024 * 1024
    log_lines: int = 256
    table_elements: int = 10_000

    def __post_init__(self) -> None:
        if self.wall_clock_seconds <= 0 or self.memory_bytes < PAGE_BYTES:
            raise ValueError("wall_clock_seconds must be > 0 and memory_bytes >= one 64 KiB page")
        counts = (self.fuel, self.output_bytes, self.module_bytes, self.http_response_bytes)
        if min(*counts, self.http_calls, self.log_lines, self.table_elements) < 0:
            raise ValueError(f"sandbox limits must not be negative: {self}")
