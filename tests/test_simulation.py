"""The whole-system simulation: it holds every invariant over hundreds of seeds, replays a seed
exactly, catches the incident's handling, and catches each safeguard taken out in turn (each
mutation test names the first seed that caught it when it was written)."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from typing import Any

import pytest

import domain.guard
import domain.service
import integrations.dispatcher
from domain import CurationService, Dispatch
from domain.invocation import Invocation
from domain.work import WorkChanges
from integrations.reconcile import Reconciler, ReconcileReport
from projections import Projections
from simulation import run_seed, simulate
from simulation.runner import SimulatedRunner


def read_model_drift(service: CurationService) -> list[str]:
    """Replay parity of the read models (invariant 5), as the simulation's end-of-seed check."""
    report = Projections(service).verify()
    if report.drifted or report.missing:
        return [f"read models: {report.drifted} drifted, {report.missing} missing"]
    return []


def test_300_seeds_hold_every_invariant_and_the_read_models_replay() -> None:
    summary = simulate(300, processes=1, end_check=read_model_drift, end_check_every=1)
    assert summary["violations"] == 0, summary.get("trace")
    assert summary["first_failing_seed"] is None
    assert summary["steps"] >= 300 * 30
    assert set(summary) >= {"seeds", "steps", "violations", "first_failing_seed", "seconds"}


def test_a_seed_replays_exactly_here_and_in_another_process() -> None:
    first, again = run_seed(12), run_seed(12)
    assert first.trace == again.trace
    assert first.trace_hash == again.trace_hash
    assert run_seed(13).trace_hash != first.trace_hash
    # The same seeds, run by two forked processes, end with the same fingerprints.
    forked = simulate(120, start=0, processes=2)
    assert forked["steps"] == sum(run_seed(seed).steps for seed in range(120))


def test_the_incidents_handling_is_caught_within_100_seeds() -> None:
    summary = simulate(100, baseline=True, processes=1)
    assert summary["violations"] > 0
    seed = summary["first_failing_seed"]
    assert seed < 100
    assert summary["replay"] == f"sequent simulate --seeds 1 --start {seed} --steps 30 --baseline"
    # A stale completion moved a job, a 409 became a Fail, or a verdict was recorded wrongly.
    assert summary["violation"].split(":")[0] in {"invariant 1", "invariant 2", "invariant 3"}
    replayed = run_seed(seed, baseline=True)
    assert replayed.violation == summary["violation"]
    assert replayed.trace[-1].startswith(f"!!! {summary['violation']} (replay: sequent simulate")


# -- mutations: each safeguard out in turn -----------------------------------------------------


def without_check(index: int) -> Callable[..., Any]:
    """``domain.guard.decide`` with its ``index``-th ``if`` removed, compiled against the
    guard module's own names (so Apply and Discarded are the real classes)."""
    tree = ast.parse(inspect.getsource(domain.guard))
    decide = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "decide")
    decide.body.remove([s for s in decide.body if isinstance(s, ast.If)][index])
    names = dict(vars(domain.guard))
    exec(compile(ast.Module([decide], type_ignores=[]), domain.guard.__file__, "exec"), names)
    mutant: Callable[..., Any] = names["decide"]
    return mutant


def first_violation(seeds: int = 100) -> tuple[int, str] | None:
    summary = simulate(seeds, processes=1, stop_at_first=True)
    if summary["first_failing_seed"] is None:
        return None
    return summary["first_failing_seed"], summary["violation"]


@pytest.mark.parametrize(
    ("check", "caught_as"),
    [
        # seed 0: a forged completion for an invocation never started reaches the next check
        (0, "invariant error: AttributeError"),
        # seed 2: a run's second completion is discarded as job_moved_on, not duplicate
        (1, "invariant 2"),
        # seed 3: a stale run's completion is discarded as job_moved_on, not superseded
        (2, "invariant 2"),
        # seed 8: the first attempt's late Fail kills the retried, Queued job
        (3, "invariant 1"),
    ],
    ids=["unknown_invocation", "duplicate", "superseded", "job_moved_on"],
)
def test_each_guard_check_taken_out_is_caught(
    monkeypatch: pytest.MonkeyPatch, check: int, caught_as: str
) -> None:
    monkeypatch.setattr(domain.service, "decide", without_check(check))
    found = first_violation()
    assert found is not None
    assert found[1].startswith(caught_as)


def test_the_guards_last_check_is_unreachable_as_its_comment_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The transition check after the version check can never decide anything while Submit
    and RepairRequired land in Ready: without it, the simulation finds nothing."""
    monkeypatch.setattr(domain.service, "decide", without_check(4))
    assert first_violation() is None


def test_without_fencing_a_retried_run_makes_a_second_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_key(self: SimulatedRunner, dispatch: Dispatch) -> None:
        return None

    monkeypatch.setattr(SimulatedRunner, "fencing_key", no_key)
    found = first_violation()
    assert found is not None  # seed 2: a run taken over after a crash after its POST posts again
    assert found[1].startswith("invariant 4")
    assert "sessions (no fencing)" in found[1]


def test_without_reconciliation_an_orphan_outlives_the_reconcile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def off(self: Reconciler, service_url: str, now: Any = None) -> ReconcileReport:
        return ReconcileReport()

    monkeypatch.setattr(Reconciler, "reconcile", off)
    found = first_violation()
    assert found is not None  # seed 0: the last pass leaves a finished run's session live
    assert found[1].startswith("invariant 4")
    assert "still live after reconcile" in found[1]


def test_without_compensation_a_discarded_session_stays_live(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(integrations.dispatcher.Dispatcher, "compensate", lambda *a: False)
    found = first_violation()
    assert found is not None  # seed 1: a late run's SessionSpawned is discarded
    assert found[1].startswith("invariant 4")
    assert "was not stopped" in found[1]


def test_compensating_a_duplicate_would_stop_the_session_its_job_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With fencing, a run's second completion carries the very session its first one
    applied; the compensation must leave it to the job."""
    monkeypatch.setattr(integrations.dispatcher, "holds_session", lambda *a: False)
    found = first_violation()
    assert found is not None  # seed 20: a run taken over after its lease completes again
    assert found[1].startswith("invariant 4")
    assert "which was stopped" in found[1]


def test_without_the_dispatch_check_a_garbled_completion_settles_a_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def unchecked(self: Invocation, dispatch: Dispatch, job_id: Any) -> None:
        return None

    monkeypatch.setattr(Invocation, "check_dispatch", unchecked)
    found = first_violation()
    assert found is not None  # seed 2: a dispatch naming another job is recorded as a discard
    assert found[1].startswith("invariant 6")


def test_a_work_table_that_forgets_leases_would_offer_a_held_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(WorkChanges, "_lease", lambda self, run, until: None)
    found = first_violation()
    assert found is not None  # seed 0: a run just claimed is offered to every worker again
    assert found[1].startswith("invariant work table: would offer")


def test_a_work_table_that_forgets_finished_runs_would_offer_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = WorkChanges._run

    def keeps_finished(self: WorkChanges, event: Any) -> None:
        if type(event).__name__ != "Finished":
            original(self, event)

    monkeypatch.setattr(WorkChanges, "_run", keeps_finished)
    found = first_violation()
    assert found is not None
    assert found[1].startswith("invariant work table: open runs")


def test_a_work_table_that_misses_a_job_leaving_its_session_would_keep_an_orphan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = WorkChanges._session

    def no_moves(self: WorkChanges, job_id: Any, kind: str, event: Any, state: str) -> None:
        if kind == "SessionSpawned" or job_id in self.spawned:
            original(self, job_id, kind, event, state)

    monkeypatch.setattr(WorkChanges, "_session", no_moves)
    found = first_violation()
    assert found is not None  # seed 0: a failed job's session still counts as held
    assert found[1].startswith(("invariant 4", "invariant work table"))
