"""`sequent invoke`: one module, once, with the real limits and host functions."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from bootstrap import Settings
from domain import CurationService
from domain.cedar import default_policies
from integrations.modules.build import build_session_message_wasm
from integrations.session_service import SessionService
from scripts import cli
from tests.support.cli import Cli

MODULES = Path(__file__).parent / "modules"
KEYS = {"outcome", "error_kind", "message", "output", "fuel_used", "seconds"}


def invoke(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(["invoke", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEQUENT_DB", f"sqlite:///{tmp_path / 'store.db'}")


def test_the_real_module_spawns_a_session_when_cedar_permits(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with SessionService(seed=9) as sessions:
        svc = CurationService.open()
        svc.policies.add_policy(default_policies(sessions.url))
        svc.close()
        job_input = {
            "invocation_id": "inv-1",
            "job": {"id": "job-1", "attempt": 1, "spec": {"session_service": sessions.url,
                                                          "target": "t"}, "settings": {}},
        }  # fmt: skip
        wasm = str(build_session_message_wasm())
        code, out, err = invoke(
            capsys, "--module", wasm, "--input", json.dumps(job_input), "--json"
        )
        assert (code, err) == (0, "")
        result = json.loads(out)
        assert set(result) >= KEYS
        assert result["outcome"] == "ok"
        assert list(sessions.sessions) == [result["output"]["session_id"]]


def test_without_a_permit_the_call_is_denied_and_recorded(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = invoke(capsys, "--module", str(MODULES / "echo.wat"), "--json")
    assert code == 0
    result = json.loads(out)
    assert result["output"]["response"]["error"]["kind"] == "denied"
    decision_id = result["decision_id"]
    code, out, _ = invoke(capsys, "--module", str(MODULES / "echo.wat"), "--json", "--no-network")
    assert json.loads(out)["decision_id"] is None, "--no-network records nothing"
    cli.main(["decisions", "--json"])
    decisions = json.loads(capsys.readouterr().out)
    assert [d["id"] for d in decisions] == [decision_id]


def test_limits_apply(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = invoke(
        capsys, "--module", str(MODULES / "loop_forever.wat"), "--fuel", "100000", "--json"
    )
    result = json.loads(out)
    assert (code, result["outcome"], result["error_kind"]) == (0, "failed", "fuel_exhausted")
    assert result["fuel_used"] == 100000


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--module", "/nonexistent.wasm"], "unreadable"),
        (["--module", __file__], "not_wasm"),
        (["--module", str(MODULES / "echo.wat"), "--input", "{bad"], "JSON"),
        (["--module", str(MODULES / "echo.wat"), "--fuel", "0"], "at least 1"),
    ],
)
def test_bad_input_is_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    code, out, err = invoke(capsys, *argv, "--no-network")
    assert code != 0
    assert out == ""
    assert len(err.splitlines()) == 1
    assert fragment in err


def test_a_cli_submitted_job_run_by_sequent_worker_shows_the_module_that_ran(
    sequent: Cli, tmp_path: Path
) -> None:
    """Issue 8: the submitter knows no module; the worker records the one it ran, and the audit
    shows that sha (no policy: the run is denied, and still claimed by that module)."""
    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    job = sequent("job", "create", "--spec", '{"target": "t"}', "--db", db, "--json").json()
    sequent("job", "submit", job["job_id"], "--db", db, "--json").json()
    assert sequent("worker", "--once", "--db", db).code == 0

    audit = sequent("audit", job["job_id"], "--db", db, "--json").json()
    [run] = audit["invocations"]
    ran = hashlib.sha256(build_session_message_wasm(Settings.from_env().modules_dir).read_bytes())
    assert run["module_sha256"] == ran.hexdigest()
    assert [c["verdict"] for c in run["completions"]] == ["Applied"]
