"""A filter on how much the edit changed: pairs that are (almost) identical teach nothing.

The score is the mean absolute difference over RGB on [0, 1], computed as a signed
difference (AnyEdit's uint8 subtraction wraps around; this does not).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from crispedit.sample import Sample
from crispedit.stages.base import Stage, StageParams, register_stage


class PixelChangeParams(StageParams):
    min_l1: float = Field(0.01, ge=0, le=1)
    max_l1: float = Field(1.0, ge=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> PixelChangeParams:
        if self.min_l1 > self.max_l1:
            raise ValueError(f"min_l1 ({self.min_l1}) is above max_l1 ({self.max_l1})")
        return self


def pixel_l1(source: np.ndarray, target: np.ndarray) -> float:
    if source.shape != target.shape:
        raise ValueError(f"source {source.shape} and target {target.shape} differ in shape")
    return float(np.abs(source.astype(np.int16) - target.astype(np.int16)).mean() / 255.0)


@register_stage
class PixelChangeFilter(Stage):
    kind = "pixel_change"
    Params = PixelChangeParams
    params: PixelChangeParams
    default_batch_size = 64

    def score_columns(self) -> list[str]:
        return ["pixel_l1"]

    def __call__(self, batch: list[Sample]) -> list[Sample]:
        for sample in batch:
            score = pixel_l1(sample.source_image, sample.target_image)
            sample.scores["pixel_l1"] = score
            if score < self.params.min_l1:
                sample.fail(self.name, f"too little change: pixel_l1 {score:.4f} < {self.params.min_l1}")
            elif score > self.params.max_l1:
                sample.fail(self.name, f"too much change: pixel_l1 {score:.4f} > {self.params.max_l1}")
        return batch
