"""The ``copy`` generator: the target is a fresh copy of the source.

It exists to measure the engine's own cost (benchmarks/overhead.py): everything a real
generator pays for except the model.
"""

from __future__ import annotations

from crispedit.core.sample import Sample
from crispedit.core.stage import Stage, register_stage


@register_stage
class CopyStage(Stage):
    kind = "copy"
    default_batch_size = 64

    def inputs(self) -> set[str]:
        return {"source_image"}

    def outputs(self) -> set[str]:
        return {"target_image", "branch", "instruction"}

    def __call__(self, batch: list[Sample]) -> list[Sample]:
        for sample in batch:
            sample.target_image = sample.source_image.copy()
            sample.branch = "copy"
            sample.instruction = sample.instruction or "Leave the image unchanged"
        return batch
