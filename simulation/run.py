"""Running seeds: one (``run_seed``), or many across processes (``simulate``).

A seed is the whole input: the same seed, steps and mode give the same trace, step for step,
in any process on any day (the trace names jobs, runs and workers by labels, never by their
random ids, and its sha256 is the seed's fingerprint). A failing seed comes with the command
that replays it.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from domain import CurationService
from simulation.clock import VirtualClock
from simulation.model import Violation
from simulation.world import World

DEFAULT_STEPS = 30
CHUNK = 50  # seeds a process runs between two reports of progress

# A check of the store after a seed, e.g. read-model parity (the simulation may not import
# ``projections``: the caller hands it in). Returns what it found wrong, nothing if all is well.
EndCheck = Callable[[CurationService], list[str]]


@dataclass(frozen=True)
class SeedResult:
    seed: int
    steps: int  # actions taken, the final drain included
    violation: str | None
    trace_hash: str
    trace: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.violation is None


def replay_command(seed: int, steps: int, baseline: bool) -> str:
    flags = " --baseline" if baseline else ""
    return f"sequent simulate --seeds 1 --start {seed} --steps {steps}{flags}"


def run_seed(
    seed: int, steps: int = DEFAULT_STEPS, baseline: bool = False, end_check: EndCheck | None = None
) -> SeedResult:
    """Runs one seed: ``steps`` scheduled actions, then the drain; stops at the first
    violation."""
    clock = VirtualClock()
    violation: Violation | None = None
    with clock.stamping_events(), _quiet("integrations"):
        world = World(seed, clock, baseline=baseline)
        try:
            for _ in range(steps):
                world.step()
            world.drain()
            problems = end_check(world.service) if end_check is not None else []
            if problems:
                violation = Violation("5", "; ".join(problems))
        except Violation as broken:
            violation = broken
        except Exception as exc:  # a step no fault explains blew up: that is a finding too
            violation = Violation("error", f"{type(exc).__name__}: {exc}")
        finally:
            world.close()
    trace = list(world.trace)
    found = world.labelled(str(violation)) if violation is not None else None
    if found is not None:
        trace.append(f"!!! {found} (replay: {replay_command(seed, steps, baseline)})")
    digest = hashlib.sha256("\n".join(trace).encode()).hexdigest()
    return SeedResult(seed, world.steps, found, digest, tuple(trace))


@contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """The warnings the injected faults make the workers log are expected: keep them out of
    the output (errors still show)."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


@dataclass(frozen=True)
class _Chunk:
    seeds: range
    steps: int
    baseline: bool
    end_check: EndCheck | None
    end_check_every: int


def _run_chunk(chunk: _Chunk) -> list[SeedResult]:
    results = []
    for seed in chunk.seeds:
        check = chunk.end_check if seed % chunk.end_check_every == 0 else None
        result = run_seed(seed, chunk.steps, chunk.baseline, check)
        # Only a failing seed's trace crosses the process boundary: the rest is a fingerprint.
        results.append(result if not result.ok else _without_trace(result))
    return results


def _without_trace(result: SeedResult) -> SeedResult:
    return SeedResult(result.seed, result.steps, result.violation, result.trace_hash, ())


def simulate(
    seeds: int,
    start: int = 0,
    baseline: bool = False,
    *,
    steps: int = DEFAULT_STEPS,
    processes: int = 2,
    end_check: EndCheck | None = None,
    end_check_every: int = 10,
    progress: Callable[[int], None] | None = None,
    stop_at_first: bool = False,
) -> dict[str, Any]:
    """Runs seeds ``start`` .. ``start + seeds - 1`` over ``processes`` processes (1: in this
    one). ``end_check`` runs after every ``end_check_every``-th seed; ``progress`` is told how
    many seeds each finished chunk held. Returns ``seeds, steps, violations`` (failing seeds),
    ``first_failing_seed`` (None if none), ``seconds``, and for the first failing seed its
    ``violation``, ``trace`` and ``replay`` command."""
    began = time.perf_counter()
    chunks = [
        _Chunk(range(s, min(s + CHUNK, start + seeds)), steps, baseline, end_check, end_check_every)
        for s in range(start, start + seeds, CHUNK)
    ]
    total_steps = 0
    failing: list[SeedResult] = []
    for results in _chunks_done(chunks, processes):
        total_steps += sum(r.steps for r in results)
        failing += [r for r in results if not r.ok]
        if progress is not None:
            progress(len(results))
        if failing and stop_at_first:
            break
    first = min(failing, key=lambda r: r.seed) if failing else None
    summary: dict[str, Any] = {
        "seeds": seeds,
        "steps": total_steps,
        "violations": len(failing),
        "first_failing_seed": first.seed if first else None,
        "seconds": round(time.perf_counter() - began, 3),
    }
    if first is not None:
        summary |= {
            "violation": first.violation,
            "replay": replay_command(first.seed, steps, baseline),
            "trace": list(first.trace),
        }
    return summary


def _chunks_done(chunks: list[_Chunk], processes: int) -> Iterator[list[SeedResult]]:
    if processes <= 1 or len(chunks) <= 1:
        yield from map(_run_chunk, chunks)
        return
    # fork: the children start with everything imported (and whatever a test patched).
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        yield from pool.imap(_run_chunk, chunks)
