"""The ``mask_filter`` stage: reject pairs whose edit mask is too small, too large or shattered.

UltraEdit keeps region edits whose mask covers 1%-90% of the image in at most 500
contours. The coverage and the contour count are kept as scores so a dataset can be
re-filtered with other bounds without regrounding.

UltraEdit applies the rule to its region edits only: a free-form edit has no mask. With
``unmasked: keep`` (the bundled ``ultraedit`` chain) a pair without a mask passes as one the
rule does not apply to, and ``refilter`` can apply the rule to a build that never made masks
(every pair global) and so never scored them. With every bound null the stage only scores.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from crispedit.core.sample import Sample
from crispedit.core.stage import FilterStage, StageParams, register_stage
from crispedit.masks.checks import check_mask


class MaskFilterParams(StageParams):
    min_coverage: float | None = Field(0.01, ge=0.0, le=1.0, description="smallest fraction of the image the edit region may cover (UltraEdit: 1%); null: none")
    max_coverage: float | None = Field(0.90, ge=0.0, le=1.0, description="largest fraction of the image the edit region may cover (UltraEdit: 90%); null: none")
    max_contours: int | None = Field(500, ge=1, description="most separate regions the mask may have (UltraEdit: 500); null: no limit")
    unmasked: Literal["reject", "keep"] = Field(
        "reject", description="a pair without a mask: reject it (`no mask`), or keep it as one the rule does not apply to "
        "(UltraEdit checks region edits only; a global edit has no mask)",
    )
    level: int = Field(127, ge=0, le=254, description="a uint8 mask pixel is inside the region when above this")
    mask: Literal["soft", "precise"] = Field("soft", description="sample.mask, or the ground stage's precise mask")
    skip_whole_image: bool = Field(True, description="global edits (keyword NONE) carry a full mask by design: keep them")

    @model_validator(mode="after")
    def _ordered(self) -> MaskFilterParams:
        if self.min_coverage is not None and self.max_coverage is not None and self.min_coverage > self.max_coverage:
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
        p = self.params
        bounds = {"mask_coverage": (p.min_coverage, p.max_coverage), "mask_contours": (None, p.max_contours)}
        return {k: v for k, v in bounds.items() if v != (None, None)}

    def not_applicable(self, stored: set[str]) -> str | None:
        if self.params.unmasked == "keep" and self.params.mask == "soft" and "mask" not in stored:
            return "no edit mask (a global edit): the mask rule checks region edits only"
        return None

    def decide(self, scores: dict[str, float | None]) -> str | None:
        p = self.params
        coverage, contours = scores.get("mask_coverage"), scores.get("mask_contours")
        if coverage is None or contours is None:
            if p.unmasked == "keep" or not self.thresholds():
                return None  # the rule does not apply to a pair without a mask (or there is no rule)
            return f"no mask: the sample has no {p.mask} mask (run the ground stage first)"
        if p.skip_whole_image and scores.get("mask_whole_image"):
            return None
        if p.min_coverage is not None and coverage < p.min_coverage:
            return f"mask too small: coverage {coverage:.4f} < {p.min_coverage}"
        if p.max_coverage is not None and coverage > p.max_coverage:
            return f"mask too large: coverage {coverage:.4f} > {p.max_coverage}"
        if p.max_contours is not None and contours > p.max_contours:
            return f"mask too fragmented: {int(contours)} contours > {p.max_contours}"
        return None
