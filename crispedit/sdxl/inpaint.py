"""SDXL inpainting: the target is the source with its mask repainted from the output caption (EditWorld).

diffusers' ``StableDiffusionXLInpaintPipeline`` with either a 9-channel inpainting UNet
(diffusers/stable-diffusion-xl-1.0-inpainting-0.1: latents + mask + masked-image latents) or
the base 4-channel UNet (EditWorld's choice; the pipeline then re-composites the known
region after every step). The pipeline binarises the mask at 0.5. At strength 0.9999
(EditWorld and diffusers' default) the masked region starts from almost pure noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from crispedit.sdxl.batching import run_pipe
from crispedit.sdxl.images import mask_pil, to_pil
from crispedit.sdxl.options import Sampler


@dataclass(frozen=True)
class InpaintRequest:
    image: np.ndarray  # HxWx3 uint8: the source
    mask: np.ndarray  # HxW uint8, 255 = repaint
    prompt: str
    seed: int


def run_inpaint(pipe: Any, requests: Sequence[InpaintRequest], sampler: Sampler, size: tuple[int, int], strength: float) -> list[np.ndarray]:
    """One image per request, all of ``size`` = (height, width)."""
    height, width = size
    return run_pipe(
        pipe, sampler, [r.prompt for r in requests], [r.seed for r in requests],
        image=[to_pil(r.image, size) for r in requests],
        mask_image=[mask_pil(r.mask, size) for r in requests],
        height=height,
        width=width,
        strength=strength,
    )
