"""Stages used only by the tests of the stage contract, registered through a recipe's ``plugins:``.

They are small but real: ``candidates`` fans each item out into N seeded variants (the
shape of every best-of-N generator), ``outage`` fails like a model server that is down
while a flag file exists, ``buggy`` raises on every sample like a bug, and ``gpu_probe``
declares a GPU and records which GPUs Ray gave it; ``planted`` is a filter whose scores have a known distribution.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from pydantic import Field

from crispedit.core.failures import TransientError
from crispedit.core.sample import Sample
from crispedit.core.stage import FilterStage, Resources, Stage, StageParams, register_stage


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


class PlantedParams(StageParams):
    min_a: float | None = Field(None, description="reject when planted_a is below this")
    min_b: float | None = Field(None, description="reject when planted_b is below this")


#: What ``planted`` plants: three pairs in four are poor (planted_a uniform on [0, 3)), the rest good (uniform on [7, 10)).
POOR_SHARE, POOR, GOOD = 0.75, (0.0, 3.0), (7.0, 10.0)


@register_stage
class PlantedStage(FilterStage[PlantedParams]):
    """Two scores with a known distribution, drawn from each sample's seed: the shape a knee must be found in.

    ``planted_a`` is bimodal (POOR_SHARE of pairs on POOR, the rest on GOOD); ``planted_b`` is
    ``planted_a`` plus noise of +-1, a second judge that mostly agrees.
    """

    kind = "planted"

    def score_columns(self) -> list[str]:
        return ["planted_a", "planted_b"]

    def thresholds(self) -> dict[str, tuple[float | None, float | None]]:
        bounds = {"planted_a": (self.params.min_a, None), "planted_b": (self.params.min_b, None)}
        return {k: v for k, v in bounds.items() if v != (None, None)}

    def score(self, batch: list[Sample]) -> list[dict[str, float | None]]:
        out = []
        for sample in batch:
            rng = np.random.default_rng(sample.seed("planted"))
            low, high = POOR if rng.random() < POOR_SHARE else GOOD
            a = float(rng.uniform(low, high))
            out.append({"planted_a": a, "planted_b": a + float(rng.uniform(-1, 1))})
        return out

    def decide(self, scores: dict[str, float | None]) -> str | None:
        for column, (low, _) in self.thresholds().items():
            value = scores.get(column)
            if value is None or (low is not None and value < low):
                return f"low planted score: {column} {value} < {low}"
        return None
