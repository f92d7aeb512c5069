"""The ``mask_filter`` stage: reject pairs whose edit mask is too small, too large or shattered.

UltraEdit keeps region edits whose mask covers 1%-90% of the image in at most 500
contours. The coverage and the contour count are kept as scores so a dataset can be
re-filtered with other bounds without regrounding.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from crispedit.masks.checks import check_mask
from crispedit.sample import Sample
from crispedit.stages.base import Stage, StageParams, register_stage


class MaskFilterParams(StageParams):
    min_coverage: float = Field(0.01, ge=0.0, le=1.0, description="UltraEdit: 1%")
    max_coverage: float = Field(0.90, ge=0.0, le=1.0, description="UltraEdit: 90%")
    max_contours: int = Field(500, ge=1, description="UltraEdit: 500")
    level: int = Field(127, ge=0, le=254, description="a uint8 mask pixel is inside the region when above this")
    mask: Literal["soft", "precise"] = Field("soft", description="sample.mask, or the ground stage's precise mask")
    skip_whole_image: bool = Field(True, description="global edits (keyword NONE) carry a full mask by design")

    @model_validator(mode="after")
    def _ordered(self) -> MaskFilterParams:
        if self.min_coverage > self.max_coverage:
            raise ValueError(f"min_coverage ({self.min_coverage}) is above max_coverage ({self.max_coverage})")
        return self


@register_stage
class MaskFilter(Stage):
    """Coverage and contour checks on the edit mask; each failure is a reject with its reason."""

    kind = "mask_filter"
    Params = MaskFilterParams
    params: MaskFilterParams
    default_batch_size = 64

    def __call__(self, batch: list[Sample]) -> list[Sample]:
        p = self.params
        for sample in batch:
            if not sample.alive:
                continue
            mask: np.ndarray | None = sample.mask if p.mask == "soft" else sample.meta.get("precise_mask")
            if mask is None:
                sample.fail(self.name, f"no mask: the sample has no {p.mask} mask (run the ground stage first)")
                continue
            report = check_mask(
                mask, min_coverage=p.min_coverage, max_coverage=p.max_coverage, max_contours=p.max_contours, level=p.level
            )
            sample.scores["mask_coverage"] = report.coverage
            sample.scores["mask_contours"] = float(report.contours)
            if report.reason and not (p.skip_whole_image and sample.meta.get("whole_image")):
                sample.fail(self.name, report.reason)
        return batch

    def score_columns(self) -> list[str]:
        return ["mask_coverage", "mask_contours"]
