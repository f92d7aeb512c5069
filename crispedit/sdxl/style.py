"""Style edits: the whole image re-rendered in a style, its structure kept.

Two ways, both on SDXL base:

* ``controlnet`` - text-to-image from the style prompt with ControlNet-canny on the SOURCE's
  edges (diffusers/controlnet-canny-sdxl-1.0): the layout follows the edges, everything
  else follows the prompt ("a watercolor painting of ...");
* ``img2img`` - the source noised to ``strength`` and denoised with the style prompt: lower
  strength keeps more of the photo (0.3 is diffusers' default, 0.5-0.7 changes the style).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from crispedit.sdxl.batching import run_pipe
from crispedit.sdxl.images import canny, to_pil
from crispedit.sdxl.options import Sampler


@dataclass(frozen=True)
class StyleRequest:
    source: np.ndarray
    prompt: str
    seed: int


def run_style(
    pipe: Any,
    requests: Sequence[StyleRequest],
    sampler: Sampler,
    size: tuple[int, int],
    method: Literal["controlnet", "img2img"],
    strength: float,
    controlnet_scale: float,
    canny_thresholds: tuple[int, int] = (100, 200),
) -> list[np.ndarray]:
    height, width = size
    kwargs: dict[str, Any]
    if method == "controlnet":
        kwargs = {
            "image": [to_pil(canny(r.source, *canny_thresholds), size) for r in requests],
            "controlnet_conditioning_scale": controlnet_scale,
            "height": height,
            "width": width,
        }
    else:
        kwargs = {"image": [to_pil(r.source, size) for r in requests], "strength": strength}
    return run_pipe(pipe, sampler, [r.prompt for r in requests], [r.seed for r in requests], **kwargs)
