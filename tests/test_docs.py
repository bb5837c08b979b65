"""The README's copy of the state machine matches the table the code runs on."""

from __future__ import annotations

from pathlib import Path

import pytest

from domain import TRANSITIONS, Applied, CurationService
from integrations.host import NoNetwork
from integrations.runtime import Runtime

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_table() -> dict[str, list[str]]:
    lines = README.read_text().splitlines()
    start = lines.index("| action | params | from | to | event |") + 2
    rows: dict[str, list[str]] = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def names(cell: str) -> set[str]:
    return set() if cell == "—" else {part.strip() for part in cell.split(",")}


def test_readme_state_table_matches_the_code() -> None:
    rows = readme_table()
    assert list(rows) == list(TRANSITIONS)
    for action, (params, sources, target, event) in rows.items():
        row = TRANSITIONS[action]
        assert names(params) == {p.name for p in row.params}, action
        assert names(sources) == {str(s) for s in row.sources}, action
        assert (target, event) == (str(row.target), row.event), action


def readme_wat() -> str:
    text = README.read_text()
    start = text.index("```wat\n") + len("```wat\n")
    return text[start : text.index("```", start)]


def test_readme_wat_example_is_the_shipped_one_and_runs() -> None:
    shipped = Path(__file__).resolve().parent.parent / "integrations/modules/examples/minimal.wat"
    assert readme_wat() == shipped.read_text()
    result = Runtime().run(readme_wat(), {"invocation_id": "i", "job": {"id": "j"}}, NoNetwork())
    assert (result.outcome, result.output) == ("ok", {"session_id": "s-1"})


def test_readme_python_example_runs() -> None:
    text = README.read_text()
    start = text.index("```python\n") + len("```python\n")
    example = text[start : text.index("```", start)]
    example = example.replace('"sqlite:///jobs.db"', '"memory://"')
    namespace: dict[str, object] = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert isinstance(namespace["r"], Applied)
    job = namespace["svc"].get(namespace["job_id"])  # type: ignore[attr-defined]
    assert (job.state, job.attempt) == ("Queued", 2)


def test_readme_composition_root_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second Python block: the root's two builders, as the README shows them."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SEQUENT_DB", raising=False)
    text = README.read_text()
    first = text.index("```python\n")
    start = text.index("```python\n", first + 1) + len("```python\n")
    example = text[start : text.index("```", start)]
    namespace: dict[str, object] = {}
    exec(compile(example, "README.md", "exec"), namespace)
    svc = namespace["svc"]
    assert isinstance(svc, CurationService)
    assert svc.url == "sqlite:///jobs.db"
    assert (tmp_path / "jobs.db").is_file()
    assert (tmp_path / ".sequent" / "sequent.db").is_file()  # from_env(): the state folder
    svc.close()
