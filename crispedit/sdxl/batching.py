"""Per-sample randomness and fixed-shape pipeline calls: why a batch gives its samples' bytes one by one.

Two things make an image depend on the other images of its call, and both are removed here:

* shared random state - every image gets its own ``torch.Generator`` seeded from its sample
  (diffusers draws row i's noise from generator i), created on the CPU so a seed draws the
  same noise on any device;
* kernel choice - CPU and GPU libraries pick algorithms by tensor shape, so a batch of 4 and
  a batch of 1 can differ in the last float bit (enough to flip a rounded pixel). With
  ``exact`` every call is padded to the same row count; rows of a same-shaped call do not
  depend on each other's contents, so an image's bytes no longer depend on its neighbours.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")


def generators(seeds: Sequence[int]) -> list[Any]:
    """One CPU generator per image (diffusers accepts a list, one per batch row)."""
    import torch

    return [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]


def run_in_calls(items: Sequence[T], size: int, exact: bool, call: Callable[[list[T]], list[R]]) -> list[R]:
    """``call`` over chunks of at most ``size`` items (padded to ``size`` with the last item when ``exact``)."""
    out: list[R] = []
    for start in range(0, len(items), size):
        chunk = list(items[start : start + size])
        padded = chunk + [chunk[-1]] * (size - len(chunk)) if exact else chunk
        results = call(padded)
        out.extend(results[: len(chunk)])
    return out


def to_uint8(images: np.ndarray) -> list[np.ndarray]:
    """Pipeline output in [0, 1] (N, H, W, 3) -> uint8 RGB arrays, rounded as diffusers' PIL conversion rounds."""
    return [np.ascontiguousarray((np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)) for image in images]


def run_pipe(pipe: Any, sampler: Any, prompts: Sequence[str], seeds: Sequence[int], **inputs: Any) -> list[np.ndarray]:
    """One call of an image-conditioned SDXL pipeline with a ``Sampler``'s settings, each row seeded alone, as uint8 images.

    What the inpaint, refine and style branches share; ``inputs`` are each pipeline's own
    (images, masks, strength, ControlNet scale, ...).
    """
    import torch

    negative = [sampler.negative_prompt] * len(prompts) if sampler.negative_prompt else None
    with torch.no_grad():
        images = pipe(
            prompt=list(prompts),
            negative_prompt=negative,
            num_inference_steps=sampler.steps,
            guidance_scale=sampler.guidance_scale,
            generator=generators(seeds),
            output_type="np",
            **inputs,
        ).images
    return to_uint8(images)
