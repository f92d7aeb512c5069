"""Stages used only by the tests of the stage contract, registered through a recipe's ``plugins:``.

They are small but real: ``candidates`` fans each item out into N seeded variants (the
shape of every best-of-N generator), ``outage`` fails like a model server that is down
while a flag file exists, ``buggy`` raises on every sample like a bug, and ``gpu_probe``
declares a GPU and records which GPUs Ray gave it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from pydantic import Field

from crispedit.core.failures import TransientError
from crispedit.core.sample import Sample
from crispedit.core.stage import Resources, Stage, StageParams, register_stage


class CandidatesParams(StageParams):
    n: int = Field(3, ge=1, description="candidates per item")


@register_stage
class CandidatesStage(Stage[CandidatesParams]):
    """N targets per item, each brightened by an amount drawn from the child's own seed."""

    kind = "candidates"
    default_batch_size = 4

    def inputs(self) -> set[str]:
        return {"source_image"}

    def outputs(self) -> set[str]:
        return {"target_image", "branch", "instruction"}

    def __call__(self, batch: list[Sample]) -> list[Sample]:
        out = []
        for sample in batch:
            for k in range(self.params.n):
                child = sample.spawn(k)
                lift = np.random.default_rng(child.seed("lift")).integers(1, 60)
                child.target_image = np.clip(sample.source_image.astype(np.int16) + lift, 0, 255).astype(np.uint8)
                child.instruction = "make it brighter"
                child.branch = "candidates"
                child.provenance["candidates"] = {"lift": int(lift), "seed": child.seed("lift")}
                out.append(child)
        return out


class OutageParams(StageParams):
    flag: str = Field(description="while this file exists the 'server' is down")


@register_stage
class OutageStage(Stage[OutageParams]):
    kind = "outage"

    def __call__(self, batch: list[Sample]) -> list[Sample]:
        if Path(self.params.flag).exists():
            raise TransientError("model server unreachable after 5 retries")
        return batch


@register_stage
class BuggyStage(Stage):
    kind = "buggy"

    def __call__(self, batch: list[Sample]) -> list[Sample]:
        raise KeyError("source_imgae")


@register_stage
class GpuProbeStage(Stage):
    kind = "gpu_probe"
    in_actor_pool = True
    resources = Resources(num_cpus=0.5, num_gpus=1)

    def setup(self) -> None:
        import ray

        self.gpu_ids = [str(g) for g in ray.get_gpu_ids()] if ray.is_initialized() else []
        self.visible = os.environ.get("CUDA_VISIBLE_DEVICES")

    def __call__(self, batch: list[Sample]) -> list[Sample]:
        for sample in batch:
            sample.provenance["gpu_probe"] = {"gpu_ids": self.gpu_ids, "visible": self.visible}
        return batch
