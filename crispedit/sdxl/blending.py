"""Soft masks at latent and attention-layer resolution, and latent blending between a source and a target.

Emu Edit and UltraEdit keep everything outside the edit region by blending the target's
latents with the source's through a mask M after denoising steps:

    z_target <- M * z_target + (1 - M) * z_source

computed as ``torch.lerp(z_source, z_target, M)``, which is exact at both ends: where M = 0
the result IS z_source bit for bit, and where the two agree it is unchanged (the textbook
form can differ from either by one ulp). So with a hard mask applied at every step, the
target's latents outside the mask equal the source's exactly; blending the final step is
what makes that hold for the returned latents, so the final step is always blended.

Masks arrive as the record's ``mask`` (HxW uint8, 255 = edit, often soft) and are area-
averaged to the latent grid (8x smaller for SDXL) and to each attention layer's grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class StepWindow:
    """Which of N denoising steps an operation runs at: i in [start*N, end*N), every ``every``-th."""

    start: float = 0.0
    end: float = 1.0
    every: int = 1

    def active(self, step: int, total: int) -> bool:
        first = math.ceil(self.start * total - 1e-9)
        return first <= step < self.end * total - 1e-9 and (step - first) % self.every == 0

    def steps(self, total: int) -> list[int]:
        return [i for i in range(total) if self.active(i, total)]


def latent_mask(mask: np.ndarray | None, latent_hw: tuple[int, int], binarize: bool = False) -> np.ndarray:
    """A record mask (HxW uint8 0..255, or None = edit everywhere) as float32 (h, w) in [0, 1] on the latent grid.

    Each latent pixel gets the mean of the image pixels it covers; ``binarize`` then cuts at 0.5.
    """
    import cv2

    height, width = latent_hw
    if mask is None:
        return np.ones((height, width), np.float32)
    unit = mask.astype(np.float32) / 255.0
    grid = cv2.resize(unit, (width, height), interpolation=cv2.INTER_AREA) if unit.shape != (height, width) else unit
    grid = np.clip(grid, 0.0, 1.0)
    return (grid > 0.5).astype(np.float32) if binarize else grid.astype(np.float32)


def layer_grid(latent_hw: tuple[int, int], sequence_length: int) -> tuple[int, int]:
    """The (h, w) grid of an attention layer with ``sequence_length`` queries over a latent of ``latent_hw``.

    The layer's grid is the latent grid shrunk by the factor that gives L pixels (the UNet
    halves both sides per level), so it is found from L alone, whatever the image size.
    """
    height, width = latent_hw
    factor = math.sqrt(height * width / sequence_length)
    grid = (round(height / factor), round(width / factor))
    if grid[0] * grid[1] != sequence_length:
        raise ValueError(f"a layer of {sequence_length} queries does not tile a {height}x{width} latent")
    return grid


def layer_mask(masks: torch.Tensor, sequence_length: int) -> torch.Tensor:
    """(P, 1, h, w) latent masks -> (P, L, 1) at an attention layer whose query count is L (see :func:`layer_grid`)."""
    import torch.nn.functional as F

    height, width = masks.shape[-2:]
    grid = layer_grid((height, width), sequence_length)
    resized = masks if grid == (height, width) else F.adaptive_avg_pool2d(masks, grid)
    return resized.flatten(2).transpose(1, 2)


def blend_pairs(latents: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Rows [s1, t1, s2, t2, ...] -> the same rows with each target lerped towards its source by (1 - M).

    ``masks`` is (P, 1, h, w); sources are returned untouched.
    """
    import torch

    pairs = latents.view(-1, 2, *latents.shape[1:])
    source, target = pairs[:, 0], pairs[:, 1]
    blended = torch.lerp(source, target, masks.to(latents.dtype))
    return torch.stack([source, blended], dim=1).view_as(latents)
