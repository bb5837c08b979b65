"""``sequent bench``: the shape and arithmetic of its results, never its timings.

The suite runs once with ``--quick`` and a tiny ``--scale``, so these tests take seconds; no test
asserts how fast anything is.
"""

from __future__ import annotations

import io
import json
import math
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from domain import CurationService
from scripts import bench, cli
from scripts.bench.history import fill_history
from scripts.bench.plot import TITLES as PLOT_TITLES
from scripts.bench.plot import plot, target_fraction
from scripts.bench.race import time_to_running
from scripts.bench.rebuild import fill_log
from scripts.bench.stores import with_temporary_schema
from scripts.bench.transactions import counting_transactions
from scripts.cli.bench import figure
from scripts.cli.commands import build_parser

TINY = "0.02"
REQUIRED = {"name", "unit", "value", "baseline", "ratio", "target", "meets", "n", "p50", "p99",
            "notes"}  # fmt: skip
QUICK_SUITE = [
    (bench.GUARDED, "memory"),
    (bench.GUARDED, "sqlite"),
    (bench.SANDBOX, None),
    (bench.CYCLES, None),
    (bench.REBUILD, "sqlite"),
    (bench.AUDIT, "sqlite"),
    (bench.TRANSACTIONS, "sqlite"),
    (bench.CURVE_COMPLETION, "sqlite"),
    (bench.CURVE_START, "sqlite"),
]  # BATCHED and WORKERS are PostgreSQL only: nothing without --pg


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(["bench", *argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def quick_results() -> list[dict[str, Any]]:
    code, out, err = run("--quick", "--json", "--scale", TINY)
    assert code == 0, err
    results: list[dict[str, Any]] = json.loads(out)
    return results


def test_quick_json_has_one_object_per_measurement(quick_results: list[dict[str, Any]]) -> None:
    assert [(m["name"], m["backend"]) for m in quick_results] == QUICK_SUITE
    for m in quick_results:
        assert set(m) >= REQUIRED, m["name"]
        assert isinstance(m["notes"], str)
        assert m["notes"]


def test_quick_leaves_out_the_race() -> None:
    assert bench.RACE not in bench.default_names(quick=True)
    assert bench.default_names(quick=False) == list(bench.MEASUREMENT_NAMES)


def test_ratio_is_speed_relative_to_the_baseline(quick_results: list[dict[str, Any]]) -> None:
    for m in quick_results:
        assert m["value"] > 0, m["name"]
        assert m["baseline"] > 0, m["name"]
        if m["unit"] in (bench.TIME_UNIT, bench.COUNT_UNIT):
            assert m["better"] == "lower"
            assert m["ratio"] == pytest.approx(m["baseline"] / m["value"])
        else:
            assert m["unit"] in bench.RATE_UNITS
            assert m["better"] == "higher"
            assert m["ratio"] == pytest.approx(m["value"] / m["baseline"])


def test_percentiles_and_counts(quick_results: list[dict[str, Any]]) -> None:
    for m in quick_results:
        assert m["n"] > 0
        assert 0 < m["p50"] <= m["p99"], m["name"]
        assert m["latency_unit"] == "us"
    sandbox = next(m for m in quick_results if m["name"] == bench.SANDBOX)
    assert sandbox["value"] == sandbox["p50"]  # the headline is the p50 of the whole invocation
    for step, figures in sandbox["details"]["breakdown"].items():
        assert figures["n"] > 0, step
        assert 0 < figures["p50"] <= figures["p99"], step


def test_meets_follows_target(quick_results: list[dict[str, Any]]) -> None:
    for m in quick_results:
        assert m["target"] is not None, m["name"]  # §7 sets one for each of these
        measured = m["ratio"] if m["target_on"] == "ratio" else m["value"]
        expected = measured >= m["target"] if m["target_op"] == ">=" else measured <= m["target"]
        assert m["meets"] is expected, m["name"]
    targets = {m["name"]: (m["target_on"], m["target_op"], m["target"]) for m in quick_results}
    assert targets == {
        bench.GUARDED: ("ratio", ">=", 0.9),
        bench.SANDBOX: ("value", "<=", 150.0),
        bench.CYCLES: ("value", ">=", 1000.0),
        bench.REBUILD: ("ratio", ">=", 0.8),
        bench.AUDIT: ("value", "<=", 20_000.0),  # 20 ms, in us
        bench.TRANSACTIONS: ("value", "<=", 2.0),
        bench.CURVE_COMPLETION: ("ratio", ">=", 0.8),
        bench.CURVE_START: ("value", "<=", 1_000_000.0),  # 1 s, in us
    }


def test_guarded_completion_is_held_to_the_bare_pair(
    quick_results: list[dict[str, Any]],
) -> None:
    for m in (m for m in quick_results if m["name"] == bench.GUARDED):
        details = m["details"]
        assert m["baseline"] == pytest.approx(details["bare_pair"]["ops_per_s"])
        single = details["bare"]["ops_per_s"]
        assert details["ratio_vs_bare_single"] == pytest.approx(m["value"] / single)


def test_job_cycles_all_applied(quick_results: list[dict[str, Any]]) -> None:
    cycles = next(m for m in quick_results if m["name"] == bench.CYCLES)
    assert cycles["details"]["applied"] == cycles["n"]
    assert cycles["details"]["dispatch_errors"] == 0


def test_rebuild_reports_both_scans_and_peak_rss(quick_results: list[dict[str, Any]]) -> None:
    m = next(m for m in quick_results if m["name"] == bench.REBUILD)
    details = m["details"]
    assert m["unit"] == "events/s"
    assert m["baseline"] == pytest.approx(details["bare_cursor_scan"]["rows_per_s"])
    assert details["ratio_vs_bare_cursor_scan"] == pytest.approx(m["ratio"])
    library = details["library_scan"]["rows_per_s"]
    assert library > 0
    assert details["ratio_vs_library_scan"] == pytest.approx(m["value"] / library)
    assert details["events_in_log"] == details["job_events"] + details["invocation_events"]
    assert m["n"] == details["job_events"] * details["rounds"]  # every job event, each round
    assert details["checksums_equal"] is True
    assert details["events_per_s_target"] == 100_000.0  # SQLite
    assert details["events_per_s_meets"] is (m["value"] >= 100_000.0)
    rss = details["peak_rss"]
    assert rss["events"] == details["job_events"]
    assert rss["checksums_equal"] is True
    assert rss["rss_before_rebuild_mb"] > 0  # the kernel's RSS counters lag: no <= VmHWM
    assert rss["vmhwm_mb"] > 0
    assert details["rss_meets"] is (rss["vmhwm_mb"] <= details["rss_target_mb"] == 200.0)
    assert details["rss_target_applies"] is False  # a tiny log, not 1M events
    verifying = details["verify_peak_rss"]
    assert verifying["ok"] is True
    assert verifying["checked"] >= details["jobs"]  # a job_status row each, and more
    assert details["verify_rss_meets"] is (verifying["vmhwm_mb"] <= 200.0)


def test_audit_timeline_is_p50_against_a_bare_read(quick_results: list[dict[str, Any]]) -> None:
    m = next(m for m in quick_results if m["name"] == bench.AUDIT)
    details = m["details"]
    assert m["unit"] == bench.TIME_UNIT
    assert m["value"] == m["p50"] == details["breakdown"]["total"]["p50"]
    assert m["baseline"] == details["breakdown"]["bare_events_get"]["p50"]
    assert details["p50_ms"] == pytest.approx(m["value"] / 1e3)
    assert details["job_events"] >= 4  # Created, Submitted, SessionSpawned, progress
    assert details["snapshots"] == details["job_events"] // 100


def test_batched_completions_need_postgres() -> None:
    code, out, err = run("--quick", "--json", "--scale", TINY, "--only", bench.BATCHED)
    assert code == 0, err
    assert json.loads(out) == []


def test_fill_log_writes_exactly_that_many_events() -> None:
    svc = CurationService.open("memory://")
    try:
        filled = fill_log(svc, 1234)
        assert filled.events == 1234 == svc.recorder.max_notification_id()
        assert filled.jobs == 12
        assert filled.invocation_events == 3 * 12
    finally:
        svc.close()


def test_rebuild_size_from_config_and_the_events_flag() -> None:
    assert bench.BenchConfig().rebuild_event_count == 100_000
    assert bench.BenchConfig(quick=True).rebuild_event_count == 10_000
    assert bench.BenchConfig(quick=True, rebuild_events=5000).rebuild_event_count == 5000
    args = build_parser().parse_args(["bench", "--quick", "--events", "1000000"])
    assert args.events == 1_000_000


def test_only_selects() -> None:
    code, out, err = run("--quick", "--json", "--scale", TINY, "--only", bench.SANDBOX)
    assert code == 0, err
    assert [m["name"] for m in json.loads(out)] == [bench.SANDBOX]


def test_only_keeps_the_suites_order_and_drops_repeats() -> None:
    names = bench.parse_names(f"{bench.CYCLES}, {bench.GUARDED},{bench.CYCLES}")
    assert names == [bench.GUARDED, bench.CYCLES]


@pytest.mark.parametrize("only", ["nope", f"{bench.SANDBOX},nope", ","])
def test_unknown_name_is_one_line_on_stderr(only: str) -> None:
    code, out, err = run("--quick", "--json", "--only", only)
    assert code != 0
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("sequent: error:")
    assert "unknown measurement" in err


def test_table_for_people() -> None:
    code, out, err = run("--quick", "--scale", TINY, "--only", bench.SANDBOX)
    assert code == 0, err
    assert bench.SANDBOX in out
    assert "compile_cold" in out
    assert "cedar_check_in_run" in out


def test_wired_into_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "--only", "nope"]) != 0
    assert len(capsys.readouterr().err.splitlines()) == 1


# -- the arithmetic, without running anything ---------------------------------------------------


def measurement(
    unit: str, value: float, baseline: float, target: bench.Target | None
) -> bench.Measurement:
    return bench.Measurement("m", unit, value, baseline, 1, 1.0, 2.0, "notes", target)


def test_ratio_and_meets_for_rates_and_times() -> None:
    rate = measurement("ops/s", 700.0, 1000.0, bench.Target(0.7, "ratio", ">="))
    assert (rate.better, rate.ratio, rate.meets) == ("higher", 0.7, True)
    slower = measurement("ops/s", 690.0, 1000.0, bench.Target(0.7, "ratio", ">="))
    assert slower.meets is False
    time = measurement("us", 400.0, 200.0, bench.Target(200.0, "value", "<="))
    assert (time.better, time.ratio, time.meets) == ("lower", 0.5, False)
    untargeted = measurement("jobs/s", 40.0, 50.0, None)
    assert untargeted.meets is None
    assert untargeted.to_json()["target"] is None


def test_nearest_rank_percentiles() -> None:
    timings = bench.Timings()
    for ns in range(100, 0, -1):  # 1..100 us, out of order
        timings.add(ns * 1000)
    assert (timings.percentile_us(0.5), timings.percentile_us(0.99)) == (50.0, 99.0)
    assert timings.rate() == pytest.approx(100 / (5050e3 / 1e9))
    assert bench.Timings().percentile_us(0.5) == 0.0


def test_scaled_sizes_never_reach_zero() -> None:
    tiny = bench.QUICK.scaled(0.0001)
    assert all(count >= 1 for count in vars(tiny).values())
    assert tiny.cycle_batch >= 2
    assert tiny.completion_rounds == 1


def test_temporary_schema_replaces_one_in_the_url() -> None:
    url, schema = with_temporary_schema("postgresql://u:pw@h:5432/db?schema=mine")
    assert url.endswith(f"?schema={schema}")
    assert "mine" not in url
    assert schema.startswith("sequent_bench_")


def test_time_to_running_reads_the_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    svc = CurationService.open(url)
    try:
        for index in range(3):
            dispatch = svc.submit(svc.create_job({"target": f"t{index}"}))
            svc.complete(dispatch, "SessionSpawned", {"session_id": f"s-{index}"})
        svc.submit(svc.create_job({"target": "never runs"}))
    finally:
        svc.close()
    latencies = time_to_running(url)
    assert latencies.n == 3
    assert all(ns > 0 and math.isfinite(ns) for ns in latencies.ns)


@pytest.mark.postgres
def test_postgres_backend_in_a_schema_it_drops(
    pg_server: str, request: pytest.FixtureRequest
) -> None:
    request.node.user_properties.append(("store", "postgres"))  # counted in the summary

    def bench_schemas() -> int:
        with psycopg.connect(pg_server) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'sequent_bench_%'"
            ).fetchone()
        return int(row[0]) if row else 0

    before = bench_schemas()
    code, out, err = run(
        "--quick", "--json", "--scale", "0.01", "--only", bench.GUARDED, "--pg", pg_server
    )
    assert code == 0, err
    results = json.loads(out)
    assert [m["backend"] for m in results] == [
        "memory",
        "sqlite",
        "postgresql",
        "postgresql+db_functions",  # the library's insert function
    ]
    assert all(m["n"] > 0 and m["value"] > 0 for m in results)
    assert bench_schemas() == before


@pytest.mark.postgres
def test_store_bound_measurements_on_postgres(
    pg_server: str, request: pytest.FixtureRequest
) -> None:
    request.node.user_properties.append(("store", "postgres"))
    names = f"{bench.REBUILD},{bench.AUDIT},{bench.BATCHED}"
    code, out, err = run("--quick", "--json", "--scale", "0.01", "--only", names, "--pg", pg_server)
    assert code == 0, err
    results = json.loads(out)
    assert [(m["name"], m["backend"]) for m in results] == [
        (bench.REBUILD, "sqlite"),
        (bench.REBUILD, "postgresql"),
        (bench.AUDIT, "sqlite"),
        (bench.AUDIT, "postgresql"),
        (bench.BATCHED, "postgresql"),
    ]
    rebuild_pg = results[1]
    assert rebuild_pg["details"]["events_per_s_target"] is None  # 100k/s is SQLite's target
    batched = results[-1]
    assert (batched["unit"], batched["target_on"], batched["target"]) == (
        "completions/s",
        "value",
        5000.0,
    )
    assert batched["meets"] is (batched["value"] >= 5000.0)
    assert batched["ratio"] == pytest.approx(batched["value"] / batched["baseline"])
    applied = batched["n"] + batched["details"]["one_by_one"]["n"]
    assert batched["details"]["verdicts"] == {"Applied": applied}


# -- transactions, the cost curve, worker processes, the picture -------------------------------


def test_transactions_count_both_sides(quick_results: list[dict[str, Any]]) -> None:
    m = next(m for m in quick_results if m["name"] == bench.TRANSACTIONS)
    details = m["details"]
    assert details["applied"] == m["n"] == details["jobs"]
    assert m["value"] == pytest.approx(details["operator"]["writes"] + details["worker"]["writes"])
    assert details["operator"]["writes"] == pytest.approx(1 / details["jobs"])  # start_jobs
    assert details["operator_one_by_one"]["writes"] == 3.0  # create, configure, submit
    assert details["bare"]["writes"] == m["baseline"] == 4.0  # and the complete
    total = details["operator"]["total"] + details["worker"]["total"]
    assert details["total_per_cycle"] == pytest.approx(total)
    assert details["total_meets"] is (total <= 2.0)


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_counting_transactions_sees_each_one_and_only_inside(url_for: Any, backend: str) -> None:
    svc = CurationService.open(url_for(backend))
    try:
        with counting_transactions(svc) as created:
            job_id = svc.create_job({"target": "t"})
        assert (created.writes, created.reads) == (1, 0)  # one save, nothing read
        with counting_transactions(svc) as read:
            svc.get(job_id)
        assert read.writes == 0
        assert read.reads >= 1
        svc.configure(job_id, {"k": "v"})  # not counted: outside any block
        assert (created.total, read.writes) == (1, 0)
        with counting_transactions(svc) as submitted:
            svc.submit(job_id)
        assert submitted.writes == 1  # the job and its new invocation in one save
    finally:
        svc.close()


def test_cost_curve_points_grow_and_workers_dispatch(quick_results: list[dict[str, Any]]) -> None:
    completion = next(m for m in quick_results if m["name"] == bench.CURVE_COMPLETION)
    start = next(m for m in quick_results if m["name"] == bench.CURVE_START)
    points = completion["details"]["points"]
    assert len(points) == 2  # the quick default: a first point and ten times it
    assert points[0]["events"] < points[1]["events"]
    assert [p["events"] for p in start["details"]["points"]] == [p["events"] for p in points]
    assert completion["value"] == points[-1]["p50"]
    assert completion["baseline"] == points[0]["p50"]
    p99_ratio = points[0]["p99"] / points[-1]["p99"]
    assert completion["details"]["p99_ratio"] == pytest.approx(p99_ratio)
    for point in [start["details"]["empty_store"], *start["details"]["points"]]:
        for each in point["starts"]:
            assert each["applied"] == 1  # the worker ran the one job submitted for it
            assert 0 < each["first_dispatch_s"] <= each["running_s"]
            assert each["peak_rss_mb"] > 0
    rss = start["details"]["peak_rss_mb"]
    assert start["details"]["rss_meets"] is (rss <= start["details"]["rss_target_mb"] == 150.0)
    assert start["details"]["targets_apply"] is False  # far from 1M events


def test_history_is_finished_jobs_through_the_recorder() -> None:
    svc = CurationService.open("memory://")
    try:
        filled = fill_history(svc, 95)
        assert (filled.jobs, filled.events) == (10, 100)  # whole jobs of 10 events
        assert svc.recorder.max_notification_id() == 100
        assert svc.open_runs() == []  # nothing left to run
        states = {svc.get(n.originator_id).state for n in svc.recorder.select_notifications(1, 100)
                  if n.topic.endswith("CurationJob.Created")}  # fmt: skip
        assert states == {"Completed"}
    finally:
        svc.close()


def test_curve_and_plot_flags() -> None:
    args = build_parser().parse_args(["bench", "--curve", "100000, 10000,100000"])
    assert args.curve == (10_000, 100_000)
    assert bench.BenchConfig(curve=args.curve).curve_points == (10_000, 100_000)
    assert bench.BenchConfig(quick=True).curve_points == (1000, 10_000)


BAD_FLAGS = [("--curve", "ten"), ("--curve", "0"), ("--plot", "out.jpg"), ("--plot", "/nope/x.png")]


@pytest.mark.parametrize(("flag", "value"), BAD_FLAGS)
def test_bad_curve_or_plot_is_one_line(flag: str, value: str) -> None:
    code, out, err = run("--quick", flag, value)
    assert code != 0
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("sequent: error:")


def test_plot_writes_a_png_with_every_panel(tmp_path: Path) -> None:
    picture = tmp_path / "bench.png"
    code, out, err = run("--quick", "--json", "--scale", TINY, "--only", bench.CURVE,
                         "--curve", "20,200", "--plot", str(picture))  # fmt: skip
    assert code == 0, err
    results = [measurement_of(m) for m in json.loads(out)]
    data = picture.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 20_000  # five drawn panels, not an empty canvas
    figure = plot(results, tmp_path / "again.png")
    assert [axes.get_title() for axes in figure.axes[:5]] == list(PLOT_TITLES)
    latency = figure.axes[0]
    assert [line.get_label() for line in latency.get_lines()] == ["sqlite p50", "sqlite p99"]
    assert list(np.asarray(latency.get_lines()[0].get_xdata())) == [
        p["events"] for p in results[0].details["points"]
    ]
    targets = figure.axes[4]
    assert len(targets.patches) == 2  # a bar per measurement with a target


def test_target_fraction_is_one_at_the_target() -> None:
    floor = measurement("jobs/s", 50.0, 100.0, bench.Target(1.0, "ratio", ">="))
    ceiling = measurement("us", 2_000_000.0, 1.0, bench.Target(1_000_000.0, "value", "<="))
    count = measurement(bench.COUNT_UNIT, 5.0, 4.0, bench.Target(2.0, "value", "<="))
    assert target_fraction(floor) == 0.5
    assert target_fraction(ceiling) == 0.5
    assert target_fraction(count) == 0.4
    assert (count.better, count.ratio, count.meets) == ("lower", 0.8, False)
    assert target_fraction(measurement("ops/s", 1.0, 1.0, None)) is None


def measurement_of(payload: dict[str, Any]) -> bench.Measurement:
    target = None
    if payload["target"] is not None:
        target = bench.Target(payload["target"], payload["target_on"], payload["target_op"])
    return bench.Measurement(
        payload["name"], payload["unit"], payload["value"], payload["baseline"], payload["n"],
        payload["p50"], payload["p99"], payload["notes"], target, payload["backend"],
        payload["details"],
    )  # fmt: skip


@pytest.mark.postgres
def test_worker_processes_and_curve_on_postgres(
    pg_server: str, request: pytest.FixtureRequest
) -> None:
    request.node.user_properties.append(("store", "postgres"))
    names = f"{bench.TRANSACTIONS},{bench.WORKERS}"
    code, out, err = run("--quick", "--json", "--scale", "0.02", "--only", names, "--pg", pg_server)
    assert code == 0, err
    results = json.loads(out)
    assert [(m["name"], m["backend"]) for m in results] == [
        (bench.TRANSACTIONS, "sqlite"),
        (bench.TRANSACTIONS, "postgresql"),
        (bench.WORKERS, "postgresql"),
    ]
    assert results[1]["details"]["operator_one_by_one"]["writes"] == 3.0
    workers = results[-1]
    runs = workers["details"]["runs"]
    assert [r["workers"] for r in runs] == [1, 2, 4]
    for r in runs:
        assert r["runs"] == r["applied"] == r["jobs"] == workers["details"]["jobs"]
        assert len(r["runs_per_worker"]) == r["workers"]
        assert r["claims_lost_pct"] == pytest.approx(100 * r["leased_elsewhere"] / r["runs"])
    assert runs[0]["leased_elsewhere"] == 0  # a worker alone loses no claim
    assert workers["ratio"] == pytest.approx(runs[-1]["jobs_per_s"] / runs[0]["jobs_per_s"])
    lost = workers["details"]["claims_lost_pct_max"]
    assert workers["details"]["claims_lost_meets"] is (lost <= 5.0)


def test_figures_by_unit() -> None:
    assert figure(4537.2, "ops/s") == "4,537/s"
    assert figure(333.6, bench.TIME_UNIT) == "333.6µs"
    assert figure(5.0, bench.COUNT_UNIT) == "5.00"
