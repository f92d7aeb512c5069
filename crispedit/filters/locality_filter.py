"""The ``locality_filter`` stage: pixel change inside and outside the edit mask.

A local edit should change its region and leave the rest alone. ``l1_inside`` and
``l1_outside`` are the mean absolute RGB difference on [0, 1] over the mask's pixels and
over the others (the same signed difference as ``pixel_change``). Pairs without a mask, or
whose mask covers nothing (or everything), get None for the side that has no pixels; a
bound on a missing side is not applied, since a global edit has no outside to keep.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from crispedit.core.bounds import Bound
from crispedit.core.sample import Sample
from crispedit.core.stage import FilterStage, StageParams, register_stage


class LocalityParams(StageParams):
    level: int = Field(127, ge=0, le=254, description="a uint8 mask pixel is inside the edit region when above this")
    max_l1_outside: float | None = Field(None, ge=0, le=1, description="reject when the mean change outside the mask is above this")
    min_l1_inside: float | None = Field(None, ge=0, le=1, description="reject when the mean change inside the mask is below this")


def masked_l1(source: np.ndarray, target: np.ndarray, mask: np.ndarray | None, level: int = 127) -> tuple[float | None, float | None]:
    """(mean |s - t| inside the mask, outside it) on [0, 1]; None for a side without pixels."""
    if source.shape != target.shape:
        raise ValueError(f"source {source.shape} and target {target.shape} differ in shape")
    if mask is None:
        return None, None
    if mask.shape != source.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not match the image {source.shape[:2]}")
    diff = np.abs(source.astype(np.int16) - target.astype(np.int16)).mean(axis=2) / 255.0
    inside = mask > level
    count = int(inside.sum())
    inner = float(diff[inside].mean()) if count else None
    outer = float(diff[~inside].mean()) if count < inside.size else None
    return inner, outer


@register_stage
class LocalityFilter(FilterStage[LocalityParams]):
    """Edit locality: how much changed inside the mask, and how much leaked outside it."""

    kind = "locality_filter"

    def inputs(self) -> set[str]:
        return {"source_image", "target_image", "mask"}

    def score_columns(self) -> list[str]:
        return ["l1_inside", "l1_outside"]

    def thresholds(self) -> dict[str, tuple[Bound, Bound]]:
        bounds = {"l1_inside": (self.params.min_l1_inside, None), "l1_outside": (None, self.params.max_l1_outside)}
        return {k: v for k, v in bounds.items() if v != (None, None)}

    def score(self, batch: list[Sample]) -> list[dict[str, float | None]]:
        out: list[dict[str, float | None]] = []
        for s in batch:
            inner, outer = masked_l1(s.source_image, s.target_image, s.mask, self.params.level)
            out.append({"l1_inside": inner, "l1_outside": outer})
        return out

    def decide(self, scores: dict[str, float | None]) -> str | None:
        inner, outer = scores.get("l1_inside"), scores.get("l1_outside")
        p = self.params
        if inner is None and outer is None and (p.min_l1_inside is not None or p.max_l1_outside is not None):
            return "no mask: locality needs the edit mask"
        if p.min_l1_inside is not None and inner is not None and inner < p.min_l1_inside:
            return f"edit region unchanged: l1_inside {inner:.4f} < {p.min_l1_inside:g}"
        if p.max_l1_outside is not None and outer is not None and outer > p.max_l1_outside:
            return f"edit leaked outside the mask: l1_outside {outer:.4f} > {p.max_l1_outside:g}"
        return None
