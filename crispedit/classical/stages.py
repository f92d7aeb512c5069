"""The ``classical`` generator: the target is the source with a global OpenCV edit applied."""

from __future__ import annotations

from crispedit.classical.edits import EDITS
from crispedit.core.sample import Sample
from crispedit.core.stage import Stage, register_stage


@register_stage
class ClassicalStage(Stage):
    kind = "classical"
    default_batch_size = 8

    def inputs(self) -> set[str]:
        return {"source_image", "meta.edit"}

    def outputs(self) -> set[str]:
        return {"target_image", "branch"}

    def __call__(self, batch: list[Sample]) -> list[Sample]:
        for sample in batch:
            chosen = sample.meta.get("edit")
            if chosen is None:
                sample.fail(self.name, "no edit chosen: put an instruct stage (template backend) before classical")
                continue
            edit = EDITS[chosen["name"]]
            sample.target_image = edit.apply(sample.source_image, chosen["params"])
            sample.branch = "classical"
            sample.provenance["generate"] = {"backend": "classical", "edit": edit.name, "params": chosen["params"]}
        return batch
