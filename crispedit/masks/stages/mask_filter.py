"""The ``mask_filter`` stage: reject pairs whose edit mask is too small, too large or shattered.

UltraEdit keeps region edits whose mask covers 1%-90% of the image in at most 500
contours. The coverage and the contour count are kept as scores so a dataset can be
re-filtered with other bounds without regrounding.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from crispedit.core.sample import Sample
from crispedit.core.stage import FilterStage, StageParams, register_stage
from crispedit.masks.checks import check_mask


class MaskFilterParams(StageParams):
    min_coverage: float = Field(0.01, ge=0.0, le=1.0, description="smallest fraction of the image the edit region may cover (UltraEdit: 1%)")
    max_coverage: float = Field(0.90, ge=0.0, le=1.0, description="largest fraction of the image the edit region may cover (UltraEdit: 90%)")
    max_contours: int = Field(500, ge=1, description="most separate regions the mask may have (UltraEdit: 500)")
    level: int = Field(127, ge=0, le=254, description="a uint8 mask pixel is inside the region when above this")
    mask: Literal["soft", "precise"] = Field("soft", description="sample.mask, or the ground stage's precise mask")
    skip_whole_image: bool = Field(True, description="global edits (keyword NONE) carry a full mask by design: keep them")

    @model_validator(mode="after")
    def _ordered(self) -> MaskFilterParams:
        if self.min_coverage > self.max_coverage:
            raise ValueError(f"min_coverage ({self.min_coverage}) is above max_coverage ({self.max_coverage})")
        return self


@register_stage
class MaskFilter(FilterStage[MaskFilterParams]):
    """Coverage and contour checks on the edit mask; each failure is a reject with its reason."""

    kind = "mask_filter"

    def score_columns(self) -> list[str]:
        return ["mask_coverage", "mask_contours", "mask_whole_image"]

    def inputs(self) -> set[str]:
        return {"mask"} if self.params.mask == "soft" else {"meta.precise_mask"}

    def score(self, batch: list[Sample]) -> list[dict[str, float | None]]:
        out: list[dict[str, float | None]] = []
        for sample in batch:
            mask: np.ndarray | None = sample.mask if self.params.mask == "soft" else sample.meta.get("precise_mask")
            whole = float(bool(sample.meta.get("whole_image")))
            if mask is None:
                out.append({"mask_coverage": None, "mask_contours": None, "mask_whole_image": whole})
                continue
            report = check_mask(mask, level=self.params.level)
            out.append({"mask_coverage": report.coverage, "mask_contours": float(report.contours), "mask_whole_image": whole})
        return out

    def thresholds(self) -> dict[str, tuple[float | None, float | None]]:
        return {"mask_coverage": (self.params.min_coverage, self.params.max_coverage), "mask_contours": (None, self.params.max_contours)}

    def decide(self, scores: dict[str, float | None]) -> str | None:
        p = self.params
        coverage, contours = scores.get("mask_coverage"), scores.get("mask_contours")
        if coverage is None or contours is None:
            return f"no mask: the sample has no {p.mask} mask (run the ground stage first)"
        if p.skip_whole_image and scores.get("mask_whole_image"):
            return None
        if coverage < p.min_coverage:
            return f"mask too small: coverage {coverage:.4f} < {p.min_coverage}"
        if coverage > p.max_coverage:
            return f"mask too large: coverage {coverage:.4f} > {p.max_coverage}"
        if contours > p.max_contours:
            return f"mask too fragmented: {int(contours)} contours > {p.max_contours}"
        return None
