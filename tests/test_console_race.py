"""The console after the incident, as a person and a Prometheus server meet it: a race (10 jobs,
seed 7, every real part) on SQLite and PostgreSQL, then the real console on a loopback port.

A person opens the job page of a job whose run completed after the job had moved on, in
headless Chromium (Debian's package, driven by Playwright), and sees the lanes, the discarded
run marked with its reason and what the job was when it arrived, the compensation that stopped
its session, and the job as it was at version 1. Screenshots are kept under the test's
tmp_path and in .sequent/test-artefacts/.

Prometheus reads ``/metrics``: the race's completions by verdict and reason, as the read
models count them and as the race itself reported them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from prometheus_client.parser import text_string_to_metric_families

from projections import Projections
from projections.schema import AuditRow
from scripts.cli.race import RaceConfig, run_race
from tests.support import browser as browser_setup
from tests.support.browser import LAUNCH_ARGS, keep_artefact
from tests.support.console import serving

RACE = RaceConfig(jobs=10, seed=7)


@dataclass(frozen=True)
class Raced:
    url: str
    store: str  # sqlite | postgres
    figures: dict[str, Any]  # what run_race reported


@pytest.fixture
def raced(shared_store_url: str) -> Raced:
    store = "postgres" if shared_store_url.startswith("postgresql") else "sqlite"
    return Raced(shared_store_url, store, run_race(RACE, shared_store_url))


@pytest.fixture
def browser(chromium: str) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=list(LAUNCH_ARGS))
        try:
            yield launched
        finally:
            launched.close()


def shoot(page: Page, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    keep_artefact(path, name)


def incident_job(projections: Projections) -> list[AuditRow]:
    """The discarded completions of the job a person would look at first: one with a discarded
    run, and among those the one with the most story (Cedar decisions, most runs)."""
    by_job: dict[str, list[AuditRow]] = {}
    for row in projections.discarded():
        by_job.setdefault(str(row.job_id), []).append(row)
    assert by_job, "the race produced no discarded completion"
    decided = {d.job_id for d in projections.decisions()}
    runs = Counter(str(r.job_id) for r in projections.audit())
    job = max(by_job, key=lambda j: (j in decided, runs[j], j))
    return by_job[job]


def test_a_person_sees_the_discarded_run_its_reason_the_compensation_and_version_1(
    raced: Raced, browser: Browser, tmp_path: Path
) -> None:
    with serving(raced.url) as served:
        discards = incident_job(served.console.projections)
        job_id = str(discards[0].job_id)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})

        # The jobs list: the person finds the job and opens it.
        page.goto(served.url)
        expect(page.locator("h1")).to_have_text("Jobs")
        page.click(f'a[href="/jobs/{job_id}"]')
        expect(page).to_have_url(f"{served.url}jobs/{job_id}")
        audit = page.request.get(f"{served.url}jobs/{job_id}/audit.json").json()
        labels = {i["id"]: i["label"] for i in audit["invocations"]}

        # The lanes: the job, then one per run, A, B, C…, then Cedar if it decided anything.
        titles = [t.split("\n")[0].strip() for t in page.locator("th.lane").all_inner_texts()]
        expected = ["job"] + [f"run {i['label']}" for i in audit["invocations"]]
        assert titles == expected + (["Cedar"] if audit["decisions"] else [])
        assert titles[1:3] == ["run A", "run B"]

        for row in discards:
            label = labels[row.invocation_id]
            # The run's lane says it was discarded, and why.
            expect(page.locator(f"#lane-{label}")).to_contain_text(f"discarded: {row.reason}")
            # Its discarded completion: the reason and the job as the guard saw it.
            cell = page.locator(f'.ev.discarded[id^="run-{label}-"]').first
            expect(cell).to_contain_text(f"Discarded: {row.reason}")
            expect(cell).to_contain_text(f"job was {row.job_state_seen} at v{row.job_version_seen}")
            # The compensation that stopped the session it left, linked to it.
            compensation = page.locator(f'.ev.compensated[id^="run-{label}-"]')
            expect(compensation).to_contain_text("stopped session s-")
            compensation.get_by_role("link", name="for the discarded completion").click()
            assert page.evaluate("location.hash") == f"#{cell.get_attribute('id')}"

        # Applied and discarded completions look different, not only read differently.
        discarded_style = page.locator(".ev.discarded").first.evaluate(
            "e => getComputedStyle(e).borderTopStyle + ' ' + getComputedStyle(e).backgroundImage"
        )
        applied_style = page.locator(".ev.applied").first.evaluate(
            "e => getComputedStyle(e).borderTopStyle + ' ' + getComputedStyle(e).backgroundImage"
        )
        assert discarded_style.startswith("dashed")
        assert "gradient" in discarded_style
        assert applied_style == "solid none"
        page.goto(f"{served.url}jobs/{job_id}")
        shoot(page, tmp_path, f"console-job-{raced.store}.png")

        # Time travel: version 1 is the job as created, Queued; then step forward.
        page.click("#first")
        expect(page.locator("#as-of")).to_contain_text(f"As of version 1 of {audit['version']}")
        expect(page.locator("#state-at")).to_have_text("Queued")
        shoot(page, tmp_path, f"console-job-{raced.store}-at-1.png")
        page.click("#next")
        expect(page.locator("#state-at")).to_have_text("Ready")
        page.click("#latest")
        expect(page.locator("#state-at")).to_have_text(audit["state"])
        page.close()


def test_metrics_after_a_race_are_its_completions_by_verdict_and_reason(raced: Raced) -> None:
    with serving(raced.url) as served:
        text = httpx.get(f"{served.url}metrics", timeout=10).text
        projections = served.console.projections
        audit = projections.audit()
        jobs = Counter(r.state for r in projections.jobs())
        sessions = projections.sessions()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    completions = {
        dict(labels)["verdict"] + ":" + dict(labels)["reason"]: value
        for (name, labels), value in samples.items()
        if name == "sequent_completions_total"
    }
    # As the read models count them ...
    counted = Counter(f"{r.verdict}:{r.reason or ''}" for r in audit)
    assert completions == dict(counted)
    # ... and as the race reported them.
    figures = raced.figures
    race = {"applied:": figures["applied"]}
    race.update({f"discarded:{k}": v for k, v in figures["discarded_by_reason"].items()})
    assert completions == race
    assert figures["discarded"] > 0
    assert samples[("sequent_compensations_total", ())] == figures["compensated"]
    assert samples[("sequent_compensations_total", ())] == sum(s.compensated for s in sessions)
    assert samples[("sequent_orphans_total", ())] == figures["orphan_sessions"] == 0
    for state in ("Running", "Failed", "Completed"):
        assert samples[("sequent_jobs", (("state", state),))] == jobs[state]
    assert samples[("sequent_jobs", (("state", "Running"),))] == figures["running"]
    for name in projections.names:
        assert samples[("sequent_projection_lag_events", (("projection", name),))] >= 0
        assert ("sequent_projection_lag_seconds", (("projection", name),)) in samples


# -- the browser's set-up ---------------------------------------------------------------------


def test_a_failed_browser_install_is_tried_once_and_told_to_every_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tries: list[int] = []

    def install() -> str:
        tries.append(1)
        return "apt-get install -y chromium exited 100: E: Unable to locate package chromium"

    monkeypatch.setattr(browser_setup, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.setattr(browser_setup, "_install", install)
    first = browser_setup.ensure_chromium(tmp_path / "lock")
    second = browser_setup.ensure_chromium(tmp_path / "lock")  # another worker, same run
    assert first == second
    assert first is not None
    assert "Unable to locate package" in first
    assert tries == [1]


def test_an_installed_browser_needs_no_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    present = tmp_path / "chromium"
    present.touch()
    monkeypatch.setattr(browser_setup, "CHROMIUM", present)
    monkeypatch.setattr(browser_setup, "_install", lambda: pytest.fail("installed again"))
    assert browser_setup.ensure_chromium(tmp_path / "lock") is None
