"""The ``refine`` stage: ControlNet-canny on the target's edges + IP-Adapter of the source re-render the target (branch refine).

EditWorld's identity step: the target keeps its structure (Canny 100/200 edges through
diffusers/controlnet-canny-sdxl-1.0) while the IP-Adapter (h94/IP-Adapter) carries the
source's appearance into it. With a mask only the mask is repainted (ControlNet inpainting,
as EditWorld); without one the whole target is (ControlNet img2img). Candidates get
distinct, recorded seeds (EditWorld's released code gives all five the same seed, 42).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from crispedit.core.sample import Sample
from crispedit.core.stage import register_stage
from crispedit.models.hub import ModelFiles, controlnet_files, ip_adapter_files, sdxl_pipeline_files
from crispedit.models.spec import ModelSpec
from crispedit.sdxl.images import back_to, pipeline_size
from crispedit.sdxl.stages.base import CONTROLNET_CANNY, IP_ADAPTER, SDXL_BASE, GeneratorParams, GeneratorStage, by_size

EDITWORLD_NEGATIVE = "monochrome, lowres, bad anatomy, worst quality, low quality"


class RefineParams(GeneratorParams):
    base_model: ModelSpec = Field(SDXL_BASE, description="the SDXL checkpoint (id or path, revision)")
    controlnet_model: ModelSpec = Field(CONTROLNET_CANNY, description="the ControlNet-canny checkpoint for SDXL")
    ip_adapter_model: ModelSpec = Field(IP_ADAPTER, description="the IP-Adapter repository")
    ip_adapter_weight: str = Field(
        "sdxl_models/ip-adapter_sdxl.safetensors", description="the adapter's file in that repository (its folder holds image_encoder/)"
    )
    ip_adapter_scale: float = Field(1.0, ge=0.0, description="strength of the source's image features (EditWorld: 1.0)")
    controlnet_scale: float = Field(1.0, ge=0.0, description="strength of the edge condition (EditWorld: the pipeline default 1.0)")
    canny_low: int = Field(100, ge=0, le=255, description="Canny lower threshold (EditWorld: 100)")
    canny_high: int = Field(200, ge=0, le=255, description="Canny upper threshold (EditWorld: 200)")
    region: Literal["auto", "mask", "whole"] = Field(
        "auto", description="'mask': repaint the mask only (EditWorld); 'whole': the whole target; 'auto': the mask when there is one"
    )
    strength: float = Field(0.9999, gt=0.0, le=1.0, description="how far the repainted region is noised (EditWorld: the default 0.9999)")
    negative_prompt: str | None = Field(EDITWORLD_NEGATIVE, description="negative prompt (EditWorld's IP-Adapter default)")

    @model_validator(mode="after")
    def _thresholds(self) -> RefineParams:
        if self.canny_low > self.canny_high:
            raise ValueError("canny_low must not exceed canny_high")
        return self


@register_stage
class RefineStage(GeneratorStage[RefineParams]):
    """The target re-rendered with ControlNet-canny (its own edges) and IP-Adapter features of the source."""

    kind = "refine"
    branch = "refine"

    def outputs(self) -> set[str]:
        return {"target_image", "branch"}

    def inputs(self) -> set[str]:
        return {"source_image", "target_image", "target_caption"} | ({"mask"} if self.params.region == "mask" else set())

    def model_ids(self) -> dict[str, str]:
        p = self.params
        return {
            "base_model": p.base_model.describe(),
            "controlnet_model": p.controlnet_model.describe(),
            "ip_adapter_model": f"{p.ip_adapter_model.describe()}:{p.ip_adapter_weight}",
        }

    def model_files(self) -> dict[str, ModelFiles]:
        p = self.params
        return {"base_model": sdxl_pipeline_files(p.base_model, p.variant),
                "controlnet_model": controlnet_files(p.controlnet_model, p.variant),
                "ip_adapter_model": ip_adapter_files(p.ip_adapter_model, p.ip_adapter_weight)}

    def load(self) -> None:
        from crispedit.sdxl.models import (
            attach_ip_adapter,
            derived_pipeline,
            load_controlnet,
            load_pipeline,
            set_scheduler,
        )

        p = self.params
        options = p.options()
        controlnet = load_controlnet(p.controlnet_model, options, self.twin_seed("controlnet"))
        self.masked = load_pipeline("controlnet_inpaint", p.base_model, options, self.twin_seed("base"), controlnet=controlnet)
        attach_ip_adapter(self.masked, p.ip_adapter_model, p.ip_adapter_weight, self.twin_seed("ip-adapter"))
        self.masked.set_ip_adapter_scale(p.ip_adapter_scale)
        self.scheduler_class = set_scheduler(self.masked, p.scheduler)
        self.whole = derived_pipeline("controlnet_img2img", self.masked)

    def masked_region(self, sample: Sample) -> bool:
        return self.params.region == "mask" or (self.params.region == "auto" and sample.mask is not None)

    def generate(self, samples: list[Sample]) -> None:
        from crispedit.sdxl.batching import run_in_calls
        from crispedit.sdxl.refine import RefineRequest, run_refine

        p = self.params
        sampler = p.sampler().for_tiny(self.context.tiny)
        for (masked, size), group in by_size(samples, lambda s: (self.masked_region(s), pipeline_size(s.target_image))).items():  # type: ignore[arg-type]
            pipe = self.masked if masked else self.whole
            requests = [
                RefineRequest(s.source_image, s.target_image, s.target_caption or "", s.seed("noise"), s.mask if masked else None)
                for s in group
            ]

            def call(chunk: list[Any], pipe: Any = pipe, size: tuple[int, int] = size) -> list[Any]:
                return run_refine(pipe, chunk, sampler, size, p.strength, p.controlnet_scale, (p.canny_low, p.canny_high))

            for sample, request, image in zip(group, requests, run_in_calls(requests, p.max_batch, p.exact_batches, call), strict=True):
                sample.target_image = back_to(image, sample.target_image)
                self.record(
                    sample, seed=request.seed, region="mask" if masked else "whole", strength=p.strength,
                    controlnet_scale=p.controlnet_scale, ip_adapter_scale=p.ip_adapter_scale, canny=[p.canny_low, p.canny_high],
                    height=size[0], width=size[1],
                )
