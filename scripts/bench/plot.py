"""``sequent bench --plot FILE.png``: the cost curve and every measurement against its target, in
one picture (matplotlib's Agg canvas: no display needed).

Panels: completion p50 and p99 against the events in the store; completions per second against
them; the worker's first dispatch and its peak RSS against them (one line per backend each);
and, for every measurement with a target, how far it is from that target as a fraction, where
1 is the target exactly and more is better (``ratio / target`` or ``value / target`` for a
floor, ``target / value`` for a ceiling).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from scripts.bench.curve import RSS_TARGET_MB, START_TARGET_US
from scripts.bench.harness import CURVE_COMPLETION, CURVE_START, Measurement

BAR_CAP = 3.0  # fractions of target past this are drawn at it, their value written beside

TITLES = (
    "completion latency vs history",
    "completion throughput vs history",
    "worker first dispatch vs history",
    "worker peak RSS vs history",
    "each measurement vs its target",
)


def target_fraction(m: Measurement) -> float | None:
    """How far ``m`` is from its target: 1 at the target, more is better; None without one."""
    if m.target is None:
        return None
    measured = m.ratio if m.target.on == "ratio" else m.value
    if m.target.op == ">=":
        return measured / m.target.value
    return m.target.value / measured if measured else float("inf")


def plot(results: Sequence[Measurement], path: Path) -> Figure:
    """Draws the picture and writes it to ``path`` as PNG; returns the figure."""
    figure = Figure(figsize=(13, 13), layout="constrained")
    # Subfigures: the targets' long labels do not squeeze the curves' panels.
    halves = figure.subfigures(2, 1, height_ratios=[2.0, 1.2], squeeze=False)
    upper, lower = halves[0, 0], halves[1, 0]
    panels = list(upper.subplots(2, 2).flat)
    targets = lower.subplots()
    curves = {m.backend or "-": m for m in results if m.name == CURVE_COMPLETION}
    starts = {m.backend or "-": m for m in results if m.name == CURVE_START}
    latency, throughput, start, rss = panels
    _curve(latency, curves, {"p50": "p50", "p99": "p99"}, "µs per completion")
    _curve(throughput, curves, {"completions/s": "completions_per_s"}, "completions/s")
    _curve(start, starts, {"first dispatch": "first_dispatch_p50_s"}, "seconds from spawn",
           ceiling=START_TARGET_US / 1e6)  # fmt: skip
    _curve(rss, starts, {"VmHWM": "peak_rss_mb"}, "MB", ceiling=RSS_TARGET_MB)
    _targets(targets, results)
    for axes, title in zip([*panels, targets], TITLES, strict=True):
        axes.set_title(title)
    FigureCanvasAgg(figure)  # the canvas savefig draws on: Agg, whatever the default backend
    figure.savefig(path, format="png")
    return figure


def _curve(
    axes: Axes,
    by_backend: dict[str, Measurement],
    series: dict[str, str],
    ylabel: str,
    ceiling: float | None = None,
) -> None:
    """One line per backend and series; ``ceiling``: §7's target at 1M events, dashed."""
    axes.set_xlabel("events in the store")
    axes.set_ylabel(ylabel)
    if not by_backend:
        _nothing(axes, "no cost curve in this run")
        return
    axes.set_xscale("log")
    for backend, m in by_backend.items():
        points: list[dict[str, Any]] = list(m.details["points"])
        events = [p["events"] for p in points]
        for label, key in series.items():
            axes.plot(events, [p[key] for p in points], marker="o", label=f"{backend} {label}")
    if ceiling is not None:
        axes.axhline(ceiling, color="tab:red", linestyle="--", label="target at 1M events")
    axes.set_ylim(bottom=0)
    axes.legend()


def _targets(axes: Axes, results: Sequence[Measurement]) -> None:
    rows = [(m, f) for m in results if (f := target_fraction(m)) is not None]
    if not rows:
        _nothing(axes, "no measurement with a target in this run")
        return
    labels = [f"{m.name} ({m.backend})" if m.backend else m.name for m, _ in rows]
    fractions = [f for _, f in rows]
    bars = axes.barh(
        labels,
        [min(f, BAR_CAP) for f in fractions],
        color=["tab:green" if f >= 1 else "tab:red" for f in fractions],
    )
    axes.bar_label(bars, labels=[f"{f:.2f}" for f in fractions], padding=3)
    axes.axvline(1.0, color="black", linewidth=1)
    axes.set_xlim(0, BAR_CAP * 1.1)
    axes.set_xlabel(f"fraction of target (1 = the target; right of the line meets it; capped at "
                    f"{BAR_CAP:g})")  # fmt: skip
    axes.invert_yaxis()


def _nothing(axes: Axes, text: str) -> None:
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes)
