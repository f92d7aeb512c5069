"""Refinement: ControlNet-canny on the target's edges plus IP-Adapter features of the source (EditWorld).

EditWorld re-renders its inpainted target with ``StableDiffusionXLControlNetInpaintPipeline``:
the ControlNet (diffusers/controlnet-canny-sdxl-1.0) holds the target's structure through its
Canny edges (thresholds 100/200), the IP-Adapter (h94/IP-Adapter, ip-adapter_sdxl) pulls the
look of the SOURCE into the repainted region, so the object keeps the source's identity.
Without a mask the whole target is re-rendered with ``StableDiffusionXLControlNetImg2ImgPipeline``.

One IP image PER ROW needs care: diffusers' ``ip_adapter_image`` takes one image list per
ADAPTER, and the SDXL ControlNet pipelines repeat ``ip_adapter_image_embeds`` by the batch
size (they pass ``batch_size * num_images_per_prompt`` as the repeat count), so with B > 1
rows every row would attend to all B images. The embeddings are therefore computed here,
per row, with the pipeline's own ``encode_image``, and handed to the UNet unrepeated for
the duration of the call (:func:`per_row_ip_embeds`); a test checks that a row's image is
the same in a batch and alone.

EditWorld then passes its target once more through SDXL img2img with the target's prompt plus
", realistic" (strength 0.5, the pipeline's other defaults) to wash out inpainting seams;
:func:`run_realistic` is that pass, on the same UNet with the IP-Adapter switched off for the
call (:func:`without_ip_adapter`), so no second SDXL copy is held in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from crispedit.sdxl.batching import run_pipe
from crispedit.sdxl.images import canny, mask_pil, to_pil
from crispedit.sdxl.options import Sampler


@dataclass(frozen=True)
class RefineRequest:
    source: np.ndarray  # the IP-Adapter image (identity)
    target: np.ndarray  # re-rendered; its edges are the control
    prompt: str
    seed: int
    mask: np.ndarray | None = None  # None: the whole target


def ip_embeds(pipe: Any, images: Sequence[Any], guidance: bool) -> list[torch.Tensor]:
    """One IP-Adapter embedding per row as diffusers' ``ip_adapter_image_embeds`` wants it: [(rows[x2], 1, dim)]."""
    device = pipe.unet.device
    positive, negative = pipe.encode_image(list(images), device, 1)
    stacked = torch.cat([negative, positive]) if guidance else positive
    return [stacked[:, None, :]]


@contextmanager
def per_row_ip_embeds(pipe: Any, embeds: list[torch.Tensor]) -> Iterator[None]:
    """During one call, the pipeline's IP embedding preparation returns ``embeds`` as they are (one row each)."""
    pipe.prepare_ip_adapter_image_embeds = lambda *args, **kwargs: [e.to(pipe.unet.device, pipe.unet.dtype) for e in embeds]
    try:
        yield
    finally:
        del pipe.prepare_ip_adapter_image_embeds  # the class's method again


@contextmanager
def without_ip_adapter(unet: Any) -> Iterator[None]:
    """During one call the UNet attends to text only (plain attention, no image projection), as
    diffusers' ``unload_ip_adapter`` leaves it, and gets its IP-Adapter back afterwards."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    saved = dict(unet.attn_processors)
    projection = unet.encoder_hid_proj
    unet.set_attn_processor({name: AttnProcessor2_0() for name in saved})
    unet.encoder_hid_proj = None  # the UNet then asks for no image embeddings
    try:
        yield
    finally:
        unet.encoder_hid_proj = projection
        unet.set_attn_processor(saved)


def run_realistic(
    pipe: Any, images: Sequence[np.ndarray], prompts: Sequence[str], seeds: Sequence[int], sampler: Sampler, strength: float
) -> list[np.ndarray]:
    """EditWorld's last pass: ``images`` through SDXL img2img at ``strength`` with ``prompts`` (the
    suffix already added), each row seeded alone; ``pipe`` is an img2img pipeline over the refine UNet."""
    with without_ip_adapter(pipe.unet):
        return run_pipe(pipe, sampler, prompts, seeds, image=[to_pil(image) for image in images], strength=strength)


def run_refine(
    pipe: Any,
    requests: Sequence[RefineRequest],
    sampler: Sampler,
    size: tuple[int, int],
    strength: float,
    controlnet_scale: float,
    canny_thresholds: tuple[int, int] = (100, 200),
) -> list[np.ndarray]:
    """One image per request; ``pipe`` is the ControlNet-inpaint pipeline when the requests carry masks,
    else the ControlNet-img2img one (the stage picks)."""
    height, width = size
    guidance = sampler.guidance_scale > 1
    kwargs: dict[str, Any] = {}
    if requests[0].mask is not None:
        kwargs["mask_image"] = [mask_pil(r.mask, size) for r in requests]  # type: ignore[arg-type]
    with torch.no_grad():
        embeds = ip_embeds(pipe, [to_pil(r.source) for r in requests], guidance)
    with per_row_ip_embeds(pipe, embeds):
        return run_pipe(
            pipe, sampler, [r.prompt for r in requests], [r.seed for r in requests],
            image=[to_pil(r.target, size) for r in requests],
            control_image=[to_pil(canny(r.target, *canny_thresholds), size) for r in requests],
            ip_adapter_image_embeds=embeds,
            height=height,
            width=width,
            strength=strength,
            controlnet_conditioning_scale=controlnet_scale,
            **kwargs,
        )
