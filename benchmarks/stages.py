"""Benchmark-only stage kinds, registered through a recipe's ``plugins: [benchmarks.stages]``."""

from __future__ import annotations

import math
import time

import numpy as np
from pydantic import Field

from crispedit.classical.copy import CopyStage
from crispedit.core.sample import Sample
from crispedit.core.stage import Resources, Stage, StageParams, register_stage


@register_stage
class CopyInActorStage(CopyStage):
    """The copy generator run the way a model stage runs: in an actor pool, so every sample
    crosses two Ray step boundaries (the transport a real GPU stage pays for)."""

    kind = "copy_actor"
    in_actor_pool = True


class SimulatedParams(StageParams):
    per_call_s: float = Field(0.0, ge=0, description="seconds one call costs whatever its size (a model's latency)")
    per_item_s: float = Field(0.0, ge=0, description="seconds each item adds")
    concurrency: int = Field(1, ge=1, description="items served at once (an LLM server's batch); they share the per-item time")
    make_images: bool = Field(False, description="write a small source and target image (the generator)")


@register_stage
class SimulatedModelStage(Stage[SimulatedParams]):
    """A model stage that holds a GPU and sleeps a calibrated time: the duty-cycle benchmark's
    SDXL-like generator, grounder, CLIP-like scorer and LLM-like judge, on fake Ray GPUs."""

    kind = "simulated_model"
    in_actor_pool = True
    resources = Resources(num_cpus=1.0, num_gpus=1.0)
    default_batch_size = 4

    def inputs(self) -> set[str]:
        return set()

    def outputs(self) -> set[str]:
        return {"source_image", "target_image", "instruction"} if self.params.make_images else set()

    def __call__(self, batch: list[Sample]) -> list[Sample]:
        p = self.params
        time.sleep(p.per_call_s + p.per_item_s * math.ceil(len(batch) / p.concurrency))
        if p.make_images:
            for sample in batch:
                sample.source_image = np.zeros((8, 8, 3), np.uint8)
                sample.target_image = np.full((8, 8, 3), 255, np.uint8)
                sample.instruction = "make it white"
        return batch
