"""The ``style`` stage: whole-image style edits that keep the structure (branch style).

For instructions such as "make it a watercolor painting": the target is drawn from the
output caption either with ControlNet-canny on the SOURCE's edges (the layout stays, the
look follows the prompt) or as img2img of the source at a recorded strength.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from crispedit.core.sample import Sample
from crispedit.core.stage import register_stage
from crispedit.models.hub import ModelFiles, controlnet_files, sdxl_pipeline_files
from crispedit.models.spec import ModelSpec
from crispedit.sdxl.images import back_to, pipeline_size
from crispedit.sdxl.stages.base import CONTROLNET_CANNY, SDXL_BASE, GeneratorParams, GeneratorStage, by_size


class StyleParams(GeneratorParams):
    base_model: ModelSpec = Field(SDXL_BASE, description="the SDXL checkpoint (id or path, revision)")
    method: Literal["controlnet", "img2img"] = Field("controlnet", description="structure from the source's Canny edges, or img2img of the source")
    controlnet_model: ModelSpec = Field(CONTROLNET_CANNY, description="the ControlNet-canny checkpoint (method controlnet)")
    controlnet_scale: float = Field(0.5, ge=0.0, description="edge-condition strength (the controlnet-canny-sdxl card suggests 0.5)")
    canny_low: int = Field(100, ge=0, le=255, description="Canny lower threshold")
    canny_high: int = Field(200, ge=0, le=255, description="Canny upper threshold")
    strength: float = Field(0.6, gt=0.0, le=1.0, description="img2img: how far the source is noised (more: more style, less photo)")

    @model_validator(mode="after")
    def _thresholds(self) -> StyleParams:
        if self.canny_low > self.canny_high:
            raise ValueError("canny_low must not exceed canny_high")
        return self


@register_stage
class StyleStage(GeneratorStage[StyleParams]):
    """The target: the source re-rendered in the style its output caption names, structure kept."""

    kind = "style"
    branch = "style"

    def inputs(self) -> set[str]:
        return {"source_image", "target_caption"}

    def outputs(self) -> set[str]:
        return {"target_image", "branch"}

    def model_ids(self) -> dict[str, str]:
        ids = {"base_model": self.params.base_model.describe()}
        if self.params.method == "controlnet":
            ids["controlnet_model"] = self.params.controlnet_model.describe()
        return ids

    def model_files(self) -> dict[str, ModelFiles]:
        p = self.params
        files = {"base_model": sdxl_pipeline_files(p.base_model, p.variant)}
        if p.method == "controlnet":
            files["controlnet_model"] = controlnet_files(p.controlnet_model, p.variant)
        return files

    def load(self) -> None:
        from crispedit.sdxl.models import load_controlnet, load_pipeline, set_scheduler

        p = self.params
        options = p.options()
        if p.method == "controlnet":
            controlnet = load_controlnet(p.controlnet_model, options, self.twin_seed("controlnet"))
            self.pipe = load_pipeline("controlnet", p.base_model, options, self.twin_seed("base"), controlnet=controlnet)
        else:
            self.pipe = load_pipeline("img2img", p.base_model, options, self.twin_seed("base"))
        self.scheduler_class = set_scheduler(self.pipe, p.scheduler)

    def generate(self, samples: list[Sample]) -> None:
        from crispedit.sdxl.batching import run_in_calls
        from crispedit.sdxl.style import StyleRequest, run_style

        p = self.params
        sampler = p.sampler().for_tiny(self.context.tiny)
        for size, group in by_size(samples, lambda s: pipeline_size(s.source_image)).items():
            requests = [StyleRequest(s.source_image, s.target_caption or "", s.seed("noise")) for s in group]

            def call(chunk: list[Any], size: tuple[int, int] = size) -> list[Any]:
                return run_style(self.pipe, chunk, sampler, size, p.method, p.strength, p.controlnet_scale, (p.canny_low, p.canny_high))

            for sample, request, image in zip(group, requests, run_in_calls(requests, p.max_batch, p.exact_batches, call), strict=True):
                sample.target_image = back_to(image, sample.source_image)
                method: dict[str, Any] = (
                    {"controlnet_scale": p.controlnet_scale, "canny": [p.canny_low, p.canny_high]}
                    if p.method == "controlnet" else {"strength": p.strength}
                )
                self.record(sample, seed=request.seed, method=p.method, height=size[0], width=size[1], **method)
