"""A filter's kept range per score column: one representation for deciding, the card, the preview and the histograms."""

from __future__ import annotations

#: One side of a kept range; None: no bound on that side.
Bound = float | None
#: (min, max) kept for one score column.
Bounds = tuple[Bound, Bound]


def bound_checks(
    scores: dict[str, float | None], bounds: dict[str, tuple[Bound, Bound]], labels: dict[str, tuple[str, str]] | None = None,
) -> str | None:
    """The first violated bound, in ``bounds`` order, as a reject reason; None when all hold.

    ``labels`` gives each column's reason categories (below the minimum, above the maximum).

    A score a bound applies to but that is missing is a reject too ("no score"): keeping a
    pair nobody could measure would let it past the filter unseen.
    """
    for column, (low, high) in bounds.items():
        if low is None and high is None:
            continue
        value = scores.get(column)
        if value is None:
            return f"no score: {column} could not be computed"
        below, above = (labels or {}).get(column, ("too low", "too high"))
        if low is not None and value < low:
            return f"{below}: {column} {value:.4f} < {low:g}"
        if high is not None and value > high:
            return f"{above}: {column} {value:.4f} > {high:g}"
    return None
