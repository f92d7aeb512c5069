"""The ``pixel_threshold`` post-process: Emu Edit's per-pixel thresholding of the target image.

Runs after generation: where the low-pass filtered L1 distance between target and source
is under alpha, the source pixel is put back, so the background of a pair is exactly the
source's. For a multi-turn chain, ``sample.meta["turn_images"]`` (a list of HxWx3 uint8
images, turn 0 the original) is thresholded turn by turn and the target becomes the last turn.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from crispedit.core.sample import Sample
from crispedit.core.stage import Stage, StageParams, register_stage
from crispedit.masks.pixel_threshold import threshold_chain

TURNS_KEY = "turn_images"


class PixelThresholdParams(StageParams):
    alpha: float = Field(0.03, ge=0.0, description="Emu Edit: 0.03 on [0, 1] images")
    sigma: float = Field(2.0, ge=0.0, description="Gaussian low-pass sigma in pixels (0: no filter)")
    reduce: Literal["sum", "mean"] = Field("sum", description="L1 over RGB: the sum (norm) or the mean of the 3 channels")


@register_stage
class PixelThreshold(Stage[PixelThresholdParams]):
    """Put source pixels back where the generator changed them by less than alpha."""

    kind = "pixel_threshold"
    default_batch_size = 32

    def inputs(self) -> set[str]:
        return {"source_image", "target_image"}

    def outputs(self) -> set[str]:
        return {"target_image"}

    def __call__(self, batch: list[Sample]) -> list[Sample]:
        p = self.params
        for sample in batch:
            turns = sample.meta.get(TURNS_KEY)
            if turns is None:
                if sample.source_image is None or sample.target_image is None:
                    sample.fail(self.name, "missing image: pixel thresholding needs a source and a target")
                    continue
                turns = [sample.source_image, sample.target_image]
            results = threshold_chain(turns, alpha=p.alpha, sigma=p.sigma, reduce=p.reduce)
            if TURNS_KEY in sample.meta:
                sample.meta[TURNS_KEY] = [turns[0]] + [r.image for r in results]
            sample.target_image = results[-1].image
            sample.scores["pixel_reverted"] = results[-1].reverted_fraction
        return batch

    def score_columns(self) -> list[str]:
        return ["pixel_reverted"]
