"""A filter on how much the edit changed: pairs that are (almost) identical teach nothing.

The score is the mean absolute difference over RGB on [0, 1], computed as a signed
difference (AnyEdit's uint8 subtraction wraps around; this does not). A pair whose source and
target differ in size (an old target a re-edited dataset kept) has no score. With both bounds
null the stage only scores (``refilter --filters basic`` decides later).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from crispedit.core.images import pixel_l1
from crispedit.core.sample import Sample
from crispedit.core.stage import FilterStage, StageParams, register_stage


class PixelChangeParams(StageParams):
    min_l1: float | None = Field(0.01, ge=0, le=1, description="reject pairs whose mean RGB change on [0, 1] is below this; null: none")
    max_l1: float | None = Field(1.0, ge=0, le=1, description="reject pairs whose mean RGB change on [0, 1] is above this; null: none")

    @model_validator(mode="after")
    def _ordered(self) -> PixelChangeParams:
        if self.min_l1 is not None and self.max_l1 is not None and self.min_l1 > self.max_l1:
            raise ValueError(f"min_l1 ({self.min_l1}) is above max_l1 ({self.max_l1})")
        return self


@register_stage
class PixelChangeFilter(FilterStage[PixelChangeParams]):
    kind = "pixel_change"

    def score_columns(self) -> list[str]:
        return ["pixel_l1"]

    def score(self, batch: list[Sample]) -> list[dict[str, float | None]]:
        return [{"pixel_l1": pixel_l1(s.source_image, s.target_image) if s.source_image.shape == s.target_image.shape else None}
                for s in batch]

    def thresholds(self) -> dict[str, tuple[float | None, float | None]]:
        bounds = (self.params.min_l1, self.params.max_l1)
        return {"pixel_l1": bounds} if bounds != (None, None) else {}

    def decide(self, scores: dict[str, float | None]) -> str | None:
        if not self.thresholds():
            return None
        score = scores.get("pixel_l1")
        if score is None:
            return "no score: pixel_l1 was not computed (source and target differ in size)"
        if self.params.min_l1 is not None and score < self.params.min_l1:
            return f"too little change: pixel_l1 {score:.4f} < {self.params.min_l1}"
        if self.params.max_l1 is not None and score > self.params.max_l1:
            return f"too much change: pixel_l1 {score:.4f} > {self.params.max_l1}"
        return None
