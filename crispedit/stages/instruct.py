"""Instruction synthesis. The ``template`` backend writes instructions offline, from the edit catalogue.

It chooses the edit as well as the words, so the generator that follows performs exactly
the edit the instruction names (see crispedit.classical_edits).
"""

from __future__ import annotations

import random
from typing import Literal

from pydantic import Field, field_validator

from crispedit.classical_edits import EDITS
from crispedit.sample import Sample, derive_seed
from crispedit.stages.base import Stage, StageParams, register_stage


class InstructParams(StageParams):
    backend: Literal["template"] = "template"
    edits: list[str] | None = Field(None, description="names of the edits to draw from; all when unset")

    @field_validator("edits")
    @classmethod
    def _known(cls, edits: list[str] | None) -> list[str] | None:
        if edits is not None:
            unknown = [e for e in edits if e not in EDITS]
            if unknown:
                raise ValueError(f"unknown edits {unknown}; known: {sorted(EDITS)}")
            if not edits:
                raise ValueError("list at least one edit")
        return edits


@register_stage
class InstructStage(Stage):
    kind = "instruct"
    Params = InstructParams
    params: InstructParams
    default_batch_size = 256

    def __call__(self, batch: list[Sample]) -> list[Sample]:
        names = self.params.edits or sorted(EDITS)
        seed = self.context.seed
        for sample in batch:
            image_index = sample.meta.get("image_index", sample.index)
            variant = sample.meta.get("variant", 0)
            # Different variants of one image get different edits until the catalogue runs out.
            order = random.Random(derive_seed(seed, "edit-order", image_index)).sample(names, len(names))
            edit = EDITS[order[variant % len(order)]]
            rng = random.Random(derive_seed(seed, "edit-params", sample.index))
            params = edit.sample_params(rng)
            sample.instruction = rng.choice(edit.phrasings(params))
            sample.inverse_instruction = edit.inverse(params)
            sample.task = edit.task
            sample.target_caption = f"{sample.source_caption}, {edit.caption(params)}" if sample.source_caption else edit.caption(params)
            sample.edit_objects = []
            sample.meta["edit"] = {"name": edit.name, "params": params}
            sample.provenance["instruct"] = {"backend": "template", "edit": edit.name, "params": params}
        return batch
