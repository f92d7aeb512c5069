"""The ``refine`` stage: ControlNet-canny on the target's edges + IP-Adapter of the source re-render the target (branch refine).

EditWorld's identity step: the target keeps its structure (Canny 100/200 edges through
diffusers/controlnet-canny-sdxl-1.0) while the IP-Adapter (h94/IP-Adapter) carries the
source's appearance into it. With a mask only the mask is repainted (ControlNet inpainting,
as EditWorld); without one the whole target is (ControlNet img2img). Candidates get
distinct, recorded seeds (EditWorld's released code gives all five the same seed, 42).
``realistic`` adds EditWorld's last step: the refined target through SDXL img2img once more,
prompted with its caption plus ", realistic".
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from crispedit.core.sample import Sample
from crispedit.core.stage import register_stage
from crispedit.models.hub import ModelFiles, controlnet_files, ip_adapter_files, sdxl_pipeline_files
from crispedit.models.spec import ModelSpec
from crispedit.sdxl.images import back_to, pipeline_size
from crispedit.sdxl.options import Sampler, Scheduler
from crispedit.sdxl.stages.base import CONTROLNET_CANNY, IP_ADAPTER, SDXL_BASE, GeneratorParams, GeneratorStage, by_size

EDITWORLD_NEGATIVE = "monochrome, lowres, bad anatomy, worst quality, low quality"


class RealisticPass(BaseModel):
    """EditWorld's final img2img pass over the refined target (its t2i_branch_base.py: strength 0.5, otherwise
    the SDXL img2img pipeline's defaults: 50 steps, guidance 5.0, no negative prompt)."""

    model_config = ConfigDict(extra="forbid")

    strength: float = Field(0.5, gt=0.0, le=1.0, description="how far the refined target is noised again (EditWorld: 0.5)")
    steps: int = Field(50, ge=1, description="img2img steps before strength cuts them (EditWorld: 50; --tiny caps them at 3)")
    guidance_scale: float = Field(5.0, ge=0.0, description="classifier-free guidance of the pass (EditWorld: 5.0)")
    suffix: str = Field(", realistic", description="appended to the target caption for the pass (EditWorld: ', realistic')")

    def sampler(self, scheduler: Scheduler, tiny: bool) -> Sampler:
        return Sampler(self.steps, self.guidance_scale, None, scheduler).for_tiny(tiny)

    def record(self, sampler: Sampler, prompt: str, seed: int) -> dict[str, Any]:
        return {"strength": self.strength, "steps": sampler.steps, "guidance_scale": sampler.guidance_scale, "prompt": prompt, "seed": seed}


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
    realistic: RealisticPass | None = Field(
        None, description="EditWorld's final SDXL img2img pass with the caption + ', realistic' (off: null; `{}` takes EditWorld's values)"
    )

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
        self.realistic = derived_pipeline("img2img", self.masked) if p.realistic is not None else None

    def masked_region(self, sample: Sample) -> bool:
        return self.params.region == "mask" or (self.params.region == "auto" and sample.mask is not None)

    def generate(self, samples: list[Sample]) -> None:
        from crispedit.sdxl.batching import run_in_calls
        from crispedit.sdxl.refine import RefineRequest, run_realistic, run_refine

        p = self.params
        sampler = p.sampler().for_tiny(self.context.tiny)
        realistic_sampler = p.realistic.sampler(p.scheduler, self.context.tiny) if p.realistic is not None else None
        for (masked, size), group in by_size(samples, lambda s: (self.masked_region(s), pipeline_size(s.target_image))).items():  # type: ignore[arg-type]
            pipe = self.masked if masked else self.whole
            requests = [
                RefineRequest(s.source_image, s.target_image, s.target_caption or "", s.seed("noise"), s.mask if masked else None)
                for s in group
            ]

            def call(chunk: list[Any], pipe: Any = pipe, size: tuple[int, int] = size) -> list[Any]:
                images = run_refine(pipe, chunk, sampler, size, p.strength, p.controlnet_scale, (p.canny_low, p.canny_high))
                if p.realistic is None:
                    return images
                prompts = [r.prompt + p.realistic.suffix for r in chunk]
                return run_realistic(self.realistic, images, prompts, [r.seed for r in chunk], realistic_sampler, p.realistic.strength)

            for sample, request, image in zip(group, requests, run_in_calls(requests, p.max_batch, p.exact_batches, call), strict=True):
                sample.target_image = back_to(image, sample.target_image)
                self.record(
                    sample, seed=request.seed, region="mask" if masked else "whole", strength=p.strength,
                    controlnet_scale=p.controlnet_scale, ip_adapter_scale=p.ip_adapter_scale, canny=[p.canny_low, p.canny_high],
                    height=size[0], width=size[1], **self.realistic_record(request, realistic_sampler),
                )

    def realistic_record(self, request: Any, sampler: Sampler | None) -> dict[str, Any]:
        """Provenance of the ", realistic" pass (empty when it is off): its prompt, seed and sampler values."""
        realistic = self.params.realistic
        if realistic is None or sampler is None:
            return {}
        return {"realistic": realistic.record(sampler, request.prompt + realistic.suffix, request.seed)}
