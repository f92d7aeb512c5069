"""The ``inpaint`` stage: SDXL inpainting repaints the source's mask from the output caption (branch inpaint).

EditWorld's second step: the masked region of a generated (or real) source is redrawn with
the target caption, the rest kept by the pipeline (at latent level; ``paste_back`` also keeps
the source's pixels outside the soft mask exactly).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from crispedit.core.sample import Sample
from crispedit.core.stage import register_stage
from crispedit.models.hub import ModelFiles, sdxl_pipeline_files
from crispedit.models.spec import ModelSpec
from crispedit.sdxl.images import back_to, paste_back, pipeline_size
from crispedit.sdxl.stages.base import SDXL_INPAINT, GeneratorParams, GeneratorStage, by_size


class InpaintParams(GeneratorParams):
    inpaint_model: ModelSpec = Field(
        SDXL_INPAINT, description="an SDXL inpainting checkpoint (9-channel UNet), or SDXL base (EditWorld) loaded as an inpaint pipeline"
    )
    guidance_scale: float = Field(7.5, ge=0.0, description="classifier-free guidance (the inpainting pipeline's default and EditWorld's: 7.5)")
    strength: float = Field(0.9999, gt=0.0, le=1.0, description="how far the masked region is noised (diffusers' and EditWorld's 0.9999)")
    paste_back: bool = Field(False, description="keep the source's pixels outside the soft mask: M * generated + (1 - M) * source")


@register_stage
class InpaintStage(GeneratorStage[InpaintParams]):
    """The target: the source with its mask repainted by SDXL inpainting from ``target_caption``."""

    kind = "inpaint"
    branch = "inpaint"

    def inputs(self) -> set[str]:
        return {"source_image", "mask", "target_caption"}

    def outputs(self) -> set[str]:
        return {"target_image", "branch"}

    def model_ids(self) -> dict[str, str]:
        return {"inpaint_model": self.params.inpaint_model.describe()}

    def model_files(self) -> dict[str, ModelFiles]:
        return {"inpaint_model": sdxl_pipeline_files(self.params.inpaint_model, self.params.variant)}

    def load(self) -> None:
        from crispedit.sdxl.models import load_pipeline, set_scheduler

        p = self.params
        self.pipe = load_pipeline("inpaint", p.inpaint_model, p.options(), self.twin_seed("inpaint"), twin="sdxl-inpaint")
        self.scheduler_class = set_scheduler(self.pipe, p.scheduler)

    def generate(self, samples: list[Sample]) -> None:
        from crispedit.sdxl.batching import run_in_calls
        from crispedit.sdxl.inpaint import InpaintRequest, run_inpaint

        p = self.params
        sampler = p.sampler().for_tiny(self.context.tiny)
        for size, group in by_size(samples, lambda s: pipeline_size(s.source_image)).items():
            requests = [InpaintRequest(s.source_image, s.mask, s.target_caption or "", s.seed("noise")) for s in group]

            def call(chunk: list[Any], size: tuple[int, int] = size) -> list[Any]:
                return run_inpaint(self.pipe, chunk, sampler, size, p.strength)

            for sample, request, image in zip(group, requests, run_in_calls(requests, p.max_batch, p.exact_batches, call), strict=True):
                image = back_to(image, sample.source_image)
                if p.paste_back:
                    image = paste_back(image, sample.source_image, sample.mask)
                sample.target_image = image
                self.record(sample, seed=request.seed, strength=p.strength, paste_back=p.paste_back, height=size[0], width=size[1])
