"""Survival curves, knees and agreement statistics for ``crispedit report``: plain numbers, no plotting, no I/O.

* survival: for each threshold t among a score's values, the fraction of scored pairs with
  score >= t (what a ``min_`` threshold at t keeps);
* knee: the threshold farthest from the straight line joining the curve's two ends, both axes
  scaled to [0, 1] (Kneedle, Satopaa et al. 2011, the "maximum distance to the chord" form):
  where keeping more stops costing little and starts costing much. NHR-Edit chose its 4.7 by
  eye from such a curve; this picks the same kind of point reproducibly;
* Spearman's rho (scipy.stats.spearmanr) between two scores on the pairs both scored;
* Cohen's kappa (Cohen 1960) between two accept/reject vectors: (p_o - p_e) / (1 - p_e), with
  p_e from the two marginals; 1.0 when both raters agree and p_e is 1 (one class only);
* against an audit set of human labels: accuracy, kappa and the confusion table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Survival:
    """A score's survival curve and its knee."""

    thresholds: np.ndarray
    kept: np.ndarray
    knee: float | None

    def kept_at(self, threshold: float) -> float:
        i = int(np.searchsorted(self.thresholds, threshold, side="left"))
        return float(self.kept[i]) if i < len(self.kept) else 0.0


def survival(values: np.ndarray) -> Survival:
    """The curve over the finite values (NaN and None are unscored pairs, left out)."""
    finite = np.sort(np.asarray(values, dtype=np.float64)[np.isfinite(np.asarray(values, dtype=np.float64))])
    if finite.size == 0:
        return Survival(np.array([]), np.array([]), None)
    thresholds = np.unique(finite)
    kept = 1.0 - np.searchsorted(finite, thresholds, side="left") / finite.size
    return Survival(thresholds, kept, knee(thresholds, kept))


def knee(x: np.ndarray, y: np.ndarray) -> float | None:
    """The x farthest from the chord of (x, y) after scaling both to [0, 1]; None under three points or a flat curve."""
    if len(x) < 3 or x[-1] == x[0] or y[0] == y[-1]:
        return None
    xs = (x - x[0]) / (x[-1] - x[0])
    ys = (y - y[-1]) / (y[0] - y[-1])
    # the chord runs from (0, 1) to (1, 0); a decreasing curve's distance to it is proportional to 1 - xs - ys
    gap = np.abs(1.0 - xs - ys)
    return float(x[int(np.argmax(gap))])


def spearman(a: np.ndarray, b: np.ndarray) -> tuple[float | None, int]:
    """Spearman's rho on the pairs where both are finite, and how many those are (None under three or a constant)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    both = np.isfinite(a) & np.isfinite(b)
    n = int(both.sum())
    if n < 3 or np.ptp(a[both]) == 0 or np.ptp(b[both]) == 0:
        return None, n
    return float(spearmanr(a[both], b[both]).statistic), n


def kappa(a: np.ndarray, b: np.ndarray) -> float | None:
    """Cohen's kappa of two boolean vectors of one length; None when empty."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.size == 0:
        return None
    observed = float(np.mean(a == b))
    pa, pb = float(a.mean()), float(b.mean())
    expected = pa * pb + (1 - pa) * (1 - pb)
    if expected == 1.0:
        return 1.0 if observed == 1.0 else 0.0
    return (observed - expected) / (1.0 - expected)


def confusion(predicted: np.ndarray, truth: np.ndarray) -> dict[str, int]:
    """Counts with the human label as truth: kept and accepted (tp), kept but rejected by the human (fp), ..."""
    p, t = np.asarray(predicted, dtype=bool), np.asarray(truth, dtype=bool)
    return {"tp": int((p & t).sum()), "fp": int((p & ~t).sum()), "fn": int((~p & t).sum()), "tn": int((~p & ~t).sum())}
