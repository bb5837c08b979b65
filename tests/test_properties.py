"""Hypothesis interleaves submits, retries, operator actions and completions of many invocations
on one job, and checks invariants 1-3 of DESIGN.md §1 after every step against a model of the
job kept independently here."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from domain import (
    Applied,
    CurationService,
    Discarded,
    Dispatch,
    InvalidDispatch,
    InvalidTransition,
)
from simulation.model import MOVES  # the state machine written out apart from domain/

COMPLETIONS = {
    "SessionSpawned": st.builds(lambda n: {"session_id": f"s-{n}"}, st.integers(0, 99)),
    "Fail": st.sampled_from(
        [
            {"reason": "module_error", "message": "trap"},
            {"reason": "service_error", "message": "409 not valid from Running"},
            {"reason": "timeout"},
        ]
    ),
}
OPERATOR_ACTIONS: dict[str, dict[str, Any]] = {
    "RecordProgress": {"entry": "tick"},
    "Complete": {"output": {"n": 1}},
    "FinalizeCompletion": {},
    "RepairRequired": {"defects": ["d"]},
    "Fail": {"reason": "operator"},
    "Retry": {},
}


class JobUnderFire(RuleBasedStateMachine):
    url = "memory://"
    dispatches = Bundle("dispatches")

    @initialize()
    def open_job(self) -> None:
        self.tmp = TemporaryDirectory()
        self.svc = CurationService.open(self.url.replace("TMP", str(Path(self.tmp.name))))
        self.job_id = self.svc.create_job({"target": "t"})
        self.state = "Queued"
        self.version = 1
        self.current: UUID | None = None
        self.started: set[UUID] = set()
        self.settled: set[UUID] = set()
        self.sent: Counter[UUID] = Counter()  # completions sent, per invocation
        self.fails_expected = 0

    def teardown(self) -> None:
        self.svc.close()
        self.tmp.cleanup()

    def _move(self, action: str) -> None:
        self.state = MOVES[(self.state, action)]
        self.version += 1

    @rule(target=dispatches)
    def submit(self) -> Dispatch | None:
        if self.state != "Queued":
            with pytest.raises(InvalidTransition):
                self.svc.submit(self.job_id)
            return None
        dispatch = self.svc.submit(self.job_id)
        self._move("Submit")
        self.current = dispatch.invocation_id
        self.started.add(self.current)
        assert dispatch.expected_version == self.version
        return dispatch

    @rule(action=st.sampled_from(sorted(OPERATOR_ACTIONS)))
    def operator(self, action: str) -> None:
        if (self.state, action) not in MOVES:
            with pytest.raises(InvalidTransition):
                self.svc.execute(self.job_id, action, OPERATOR_ACTIONS[action])
            return
        dispatch = self.svc.execute(self.job_id, action, OPERATOR_ACTIONS[action])
        self._move(action)
        self.fails_expected += action == "Fail"
        if dispatch is not None:  # RepairRequired starts a new invocation
            self.current = dispatch.invocation_id
            self.started.add(self.current)

    @precondition(lambda self: self.current is not None)
    @rule(data=st.data(), action=st.sampled_from(sorted(COMPLETIONS)))
    def complete_current_run(self, data: st.DataObject, action: str) -> None:
        # Reconstructs the current dispatch, as a run that is still in flight would carry it.
        job = self.svc.get(self.job_id)
        invocation = self.svc.invocation(job.current_invocation or uuid4())
        dispatch = Dispatch(
            self.job_id, invocation.id, invocation.expected_version, invocation.attempt
        )
        self._complete(dispatch, action, data.draw(COMPLETIONS[action]))

    @rule(
        dispatch=dispatches,
        field=st.sampled_from(["expected_version", "attempt"]),
        delta=st.sampled_from([-1, 1, 1000]),
    )
    def complete_a_garbled_run(self, dispatch: Dispatch | None, field: str, delta: int) -> None:
        # Invariant 6: a dispatch that contradicts its invocation's record is refused and
        # settles nothing, so the genuine completion still counts.
        if dispatch is None:
            return
        garbled = replace(dispatch, **{field: getattr(dispatch, field) + delta})
        before = self.svc.invocation(dispatch.invocation_id).completions
        with pytest.raises(InvalidDispatch, match=field):
            self.svc.complete(garbled, "Fail", {"reason": "timeout"})
        assert self.svc.invocation(dispatch.invocation_id).completions == before

    @rule(dispatch=dispatches, data=st.data(), action=st.sampled_from(sorted(COMPLETIONS)))
    def complete_any_run(self, dispatch: Dispatch | None, data: st.DataObject, action: str) -> None:
        if dispatch is not None:
            self._complete(dispatch, action, data.draw(COMPLETIONS[action]))

    @rule(action=st.sampled_from(sorted(COMPLETIONS)))
    def complete_unknown_run(self, action: str) -> None:
        dispatch = Dispatch(self.job_id, uuid4(), self.version, 1)
        params = {"session_id": "ghost"} if action == "SessionSpawned" else {"reason": "timeout"}
        verdict = self._complete(dispatch, action, params)
        assert isinstance(verdict, Discarded)
        assert verdict.reason == "unknown_invocation"

    def _complete(self, dispatch: Dispatch, action: str, params: dict[str, Any]) -> Any:
        before = self.svc.get(self.job_id)
        expected = self._expected_reason(dispatch, action)
        verdict = self.svc.complete(dispatch, action, params)
        self.sent[dispatch.invocation_id] += 1
        after = self.svc.get(self.job_id)
        if expected is None:
            assert isinstance(verdict, Applied), verdict
            self._move(action)
            self.fails_expected += action == "Fail"
            self.settled.add(dispatch.invocation_id)
            assert after.version == before.version + 1
            return verdict
        # Invariant 1: a stale completion, success or failure, never changes the job.
        assert isinstance(verdict, Discarded), verdict
        assert verdict.reason == expected
        assert (after.version, after.state, after.session_id) == (
            before.version,
            before.state,
            before.session_id,
        )
        self.settled.add(dispatch.invocation_id)
        return verdict

    def _expected_reason(self, dispatch: Dispatch, action: str) -> str | None:
        if dispatch.invocation_id in self.settled:
            return "duplicate"
        if dispatch.invocation_id not in self.started:
            return "unknown_invocation"
        if dispatch.invocation_id != self.current:
            return "superseded"
        if dispatch.expected_version != self.version:
            return "job_moved_on"
        if (self.state, action) not in MOVES:
            return "job_moved_on"
        return None

    @invariant()
    def model_matches_the_store(self) -> None:
        job = self.svc.get(self.job_id)
        assert (job.state, job.version) == (self.state, self.version)

    @invariant()
    def every_completion_recorded_exactly_once(self) -> None:
        # Invariant 2: per invocation, as many Finished as completions sent, each followed by
        # exactly one verdict.
        for invocation_id, sent in self.sent.items():
            names = [e.name for e in self.svc.invocation_history(invocation_id)]
            verdicts = names[1:]
            assert verdicts[0::2] == ["Finished"] * sent
            assert all(v in ("Applied", "Discarded") for v in verdicts[1::2])
            assert len(verdicts[1::2]) == sent
            assert verdicts.count("Applied") <= 1

    @invariant()
    def no_failure_the_model_did_not_ask_for(self) -> None:
        # Invariant 3 (its observable half): every Failed on the job is an operator Fail or an
        # Applied Fail completion; no discard or conflict ever became a failure.
        failed = [e for e in self.svc.history(self.job_id, invocations=False) if e.name == "Failed"]
        assert len(failed) == self.fails_expected


JobUnderFire.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestJobUnderFireInMemory = JobUnderFire.TestCase


class JobUnderFireOnSQLite(JobUnderFire):
    url = "sqlite:///TMP/jobs.db"


JobUnderFireOnSQLite.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestJobUnderFireOnSQLite = JobUnderFireOnSQLite.TestCase
