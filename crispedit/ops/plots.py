"""Score histograms per task with the filter thresholds drawn, for the card and the preview.

Drawn with matplotlib's object API on an Agg canvas (no pyplot, no display, no global
backend switch), so it works on a headless build node and inside a library call.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa

from crispedit.core.bounds import Bounds

MAX_BINS = 60


def _values(table: pa.Table | None, column: str) -> tuple[np.ndarray, list[str]]:
    if table is None or column not in table.column_names:
        return np.array([], dtype=np.float64), []
    values = table.column(column).to_numpy(zero_copy_only=False).astype(np.float64)
    if "task" in table.column_names:
        tasks = [t if t is not None else "(none)" for t in table.column("task").to_pylist()]
    else:
        tasks = ["(all)"] * len(values)
    return values, tasks


def score_histogram(
    kept: pa.Table,
    rejected: pa.Table | None,
    column: str,
    bounds: Bounds | None,
    path: Path,
    title: str | None = None,
) -> bool:
    """One PNG: kept pairs per task (step lines), rejects (grey), thresholds (dashed). False if no values."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values, tasks = _values(kept, column)
    rejected_values, _ = _values(rejected, column)
    finite = np.concatenate([values[np.isfinite(values)], rejected_values[np.isfinite(rejected_values)]])
    if finite.size == 0:
        return False
    low, high = float(finite.min()), float(finite.max())
    if low == high:
        low, high = low - 0.5, high + 0.5
    edges = np.histogram_bin_edges(finite, bins="auto", range=(low, high))
    if len(edges) - 1 > MAX_BINS:
        edges = np.linspace(low, high, MAX_BINS + 1)

    figure = Figure(figsize=(6.4, 3.4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    if rejected_values.size and np.isfinite(rejected_values).any():
        axes.hist(rejected_values[np.isfinite(rejected_values)], bins=edges, color="0.8", label=f"rejected ({rejected_values.size})")
    by_task: dict[str, list[float]] = defaultdict(list)
    for value, task in zip(values, tasks, strict=True):
        if np.isfinite(value):
            by_task[task].append(value)
    for task in sorted(by_task):
        axes.hist(by_task[task], bins=edges, histtype="step", linewidth=1.6, label=f"{task} ({len(by_task[task])})")
    for side, value in zip(("min", "max"), bounds or (None, None), strict=True):
        if value is not None:
            axes.axvline(value, color="crimson", linestyle="--", linewidth=1.2)
            axes.annotate(f"{side} {value:g}", (value, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                          textcoords="offset points", color="crimson", fontsize=8)
    axes.set_title(title or column, fontsize=10)
    axes.set_xlabel(column)
    axes.set_ylabel("pairs")
    axes.legend(fontsize=7, loc="best")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return True


def score_histograms(
    kept: pa.Table,
    rejected: pa.Table | None,
    columns: list[str],
    thresholds: dict[str, Bounds],
    folder: Path,
    prefix: str = "hist-",
) -> dict[str, Path]:
    """One histogram per score column that has values; returns column -> file."""
    made = {}
    for column in columns:
        path = folder / f"{prefix}{column}.png"
        if score_histogram(kept, rejected, column, thresholds.get(column), path):
            made[column] = path
    return made


def survival_plots(values: dict[str, np.ndarray], thresholds: dict[str, float], folder: Path, prefix: str = "survival-") -> dict[str, Path]:
    """One PNG per score: kept fraction vs threshold, the knee (dotted) and the build's bound (dashed); column -> file."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from crispedit.ops.agreement import survival

    made = {}
    for column, v in values.items():
        curve = survival(v)
        if curve.thresholds.size == 0:
            continue
        figure = Figure(figsize=(6.4, 3.4), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot(1, 1, 1)
        axes.step(curve.thresholds, curve.kept, where="post", linewidth=1.6, label=f"kept fraction ({int(np.isfinite(v).sum())} scored)")
        if curve.knee is not None:
            axes.axvline(curve.knee, color="seagreen", linestyle=":", linewidth=1.4, label=f"knee {curve.knee:g} keeps {curve.kept_at(curve.knee):.0%}")
        if column in thresholds:
            axes.axvline(thresholds[column], color="crimson", linestyle="--", linewidth=1.2, label=f"build min {thresholds[column]:g}")
        axes.set_ylim(0, 1.02)
        axes.set_title(f"survival of {column}", fontsize=10)
        axes.set_xlabel(f"min {column}")
        axes.set_ylabel("kept fraction")
        axes.legend(fontsize=7, loc="best")
        figure.tight_layout()
        path = folder / f"{prefix}{column}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, format="png")
        made[column] = path
    return made
