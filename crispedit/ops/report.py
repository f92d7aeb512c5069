"""``crispedit report OUT``: how a build's thresholds could be defended, from its own kept scores.

Every filter keeps its scores on every row, rejects included, so a build holds each score's whole
distribution. This reads the data rows and the filtered rejects that kept their scores, and writes
``OUT/report.json`` and one ``survival-COLUMN.png`` per score (kept fraction vs threshold, the
knee and the build's own bound marked; crispedit.ops.agreement says how each number is made):

* per score: pairs scored, the knee (a suggested ``min_`` threshold) and the fraction it keeps;
* per two scores: Spearman's rho, and Cohen's kappa of their accept decisions, each score cut at
  its build threshold (its lower bound) or, lacking one, at its knee;
* with ``--audit FILE``: a Parquet of human labels (``id``, ``label``: true = a good pair), joined
  by id; per score: accuracy, kappa and the confusion table of its accept decision against them.

``refilter --threshold-from-survival COLUMN`` applies the knee (crispedit.ops.refilter).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np

from crispedit.ops.agreement import confusion, kappa, spearman, survival

PREFIX = "survival-"


class ReportError(ValueError):
    """The build or the audit file cannot be reported on (the message names it)."""


def scored_rows(out: str | Path) -> tuple[Any, dict[str, np.ndarray], list[str]]:
    """The build, its score columns as float arrays over data rows then rejects (NaN = unscored), and the ids."""
    from crispedit.core.reader import read_columns
    from crispedit.ops.build_info import read_build

    build = read_build(out)
    columns = build.score_columns
    tables = [t for t in (read_columns(build.data_files(), [*columns, "id"]), read_columns(build.rejects_files(), [*columns, "id"]))
              if t is not None and t.num_rows]
    values: dict[str, np.ndarray] = {}
    ids: list[str] = []
    for table in tables:
        ids += [str(i) for i in table.column("id").to_pylist()] if "id" in table.column_names else [""] * table.num_rows
    for column in columns:
        parts = [t.column(column).to_numpy(zero_copy_only=False).astype(np.float64) if column in t.column_names
                 else np.full(t.num_rows, np.nan) for t in tables]
        values[column] = np.concatenate(parts) if parts else np.array([])
    return build, values, ids


def knee_of(out: str | Path, column: str) -> float:
    """The suggested threshold of one score of a build (for refilter)."""
    _build, values, _ids = scored_rows(out)
    if column not in values:
        raise ReportError(f"{out}: the build has no score {column!r} (it has {', '.join(values) or 'none'})")
    found = survival(values[column]).knee
    if found is None:
        raise ReportError(f"{out}: score {column!r} has no knee (fewer than three distinct values, or a flat curve)")
    return found


def report(out: str | Path, audit: str | Path | None = None, plots: bool = True) -> dict[str, Any]:
    """Write ``OUT/report.json`` (and the PNGs, for a local build) and return it."""
    from crispedit.core.storage import is_url

    build, values, ids = scored_rows(out)
    lower = {c: b[0] for c, b in build.thresholds.items() if b[0] is not None}
    curves = {c: survival(v) for c, v in values.items()}
    scores: dict[str, Any] = {}
    cuts: dict[str, float] = {}
    for column, curve in curves.items():
        cut = lower.get(column, curve.knee)
        if cut is not None:
            cuts[column] = float(cut)
        scores[column] = {
            "scored": int(np.isfinite(values[column]).sum()), "knee": curve.knee,
            "kept_at_knee": curve.kept_at(curve.knee) if curve.knee is not None else None,
            "threshold": lower.get(column), "kept_at_threshold": curve.kept_at(lower[column]) if column in lower else None,
        }
    pairs = []
    for a, b in itertools.combinations(list(values), 2):
        rho, n = spearman(values[a], values[b])
        both = np.isfinite(values[a]) & np.isfinite(values[b])
        k = kappa(values[a][both] >= cuts[a], values[b][both] >= cuts[b]) if a in cuts and b in cuts else None
        pairs.append({"a": a, "b": b, "pairs": n, "spearman": rho, "kappa": k, "cut_a": cuts.get(a), "cut_b": cuts.get(b)})
    result: dict[str, Any] = {"out": str(out), "rows": len(ids), "scores": scores, "agreement": pairs}
    if audit is not None:
        result["audit"] = _audit(Path(audit), values, ids, cuts)
    if not is_url(str(out)):
        folder = Path(out)
        if plots:
            from crispedit.ops.plots import survival_plots

            made = survival_plots(values, lower, folder, PREFIX)
            result["plots"] = {c: p.name for c, p in made.items()}
        (folder / "report.json").write_text(json.dumps(result, indent=1, allow_nan=False), encoding="utf-8")
    return result


def _audit(path: Path, values: dict[str, np.ndarray], ids: list[str], cuts: dict[str, float]) -> dict[str, Any]:
    """Each score's accept decision against human labels joined by id."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=["id", "label"])
    except (OSError, ValueError, KeyError) as error:
        raise ReportError(f"{path}: an audit set is a Parquet with columns id (the build's row id) and label (true = good): {error}") from None
    labels = {str(i): bool(v) for i, v in zip(table.column("id").to_pylist(), table.column("label").to_pylist(), strict=True)
              if v is not None}
    where = {i: n for n, i in enumerate(ids)}
    matched = [(where[i], label) for i, label in labels.items() if i in where]
    if not matched:
        raise ReportError(f"{path}: none of its {len(labels)} ids is a row of the build")
    rows = np.array([m[0] for m in matched])
    truth = np.array([m[1] for m in matched])
    out: dict[str, Any] = {"file": str(path), "labelled": len(labels), "matched": len(matched), "scores": {}}
    for column, cut in cuts.items():
        v = values[column][rows]
        scored = np.isfinite(v)
        predicted = v[scored] >= cut
        out["scores"][column] = {"cut": cut, "pairs": int(scored.sum()),
                                 "accuracy": float(np.mean(predicted == truth[scored])) if scored.any() else None,
                                 "kappa": kappa(predicted, truth[scored]), "confusion": confusion(predicted, truth[scored])}
    return out
