"""Prompt-to-Prompt's LocalBlend: a mask from the edited words' cross-attention, recomputed after every step.

For pairs with no grounded mask, the edit region is where the model draws the edited words
(Hertz et al., 2022; google/prompt-to-prompt's ``LocalBlend``, stable notebook). After each
denoising step, per row (source and target of a pair):

1. the conditional-half cross-attention maps of the chosen layers - P2P: the 16x16 layers of
   the down and up blocks at 512 px (not the mid block), here the image/32 layers of the down
   and up blocks (SDXL at 1024 px: 32x32) or the grid ``map_side`` names - AFTER this step's
   attention edit, summed over all steps so far;
2. summed over the row's word tokens, averaged over layers x heads;
3. max-pooled over a (2d+1) x (2d+1) window (``dilation`` d; P2P: 3x3), resized to the latent
   (nearest), divided by its maximum and cut at ``threshold`` (P2P: 0.3, strictly above);
4. the target's mask is the union with its source's, and the target's latents become
   ``lerp(z_source, z_target, mask)``: outside the mask the source's, bit for bit.

``start`` (the null-text notebook's ``start_blend``, 0.2 there; none in the stable notebook)
skips the blend before step int(start x N). A row with no words has an empty mask (never a
division by zero).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

PLACES = ("down", "up")


@dataclass(frozen=True)
class LocalBlendSettings:
    """The stage's knobs."""

    threshold: float = 0.3
    dilation: int = 1
    start: float = 0.0
    map_side: int | None = None  # longest side of the layers read; None: image/32
    places: tuple[str, ...] = PLACES


@dataclass
class LocalBlend:
    """Word maps of the rows ``[s1, t1, s2, t2, ...]`` of one call, and the masks they give.

    ``words`` holds, per pair, the token positions of its edited words in (source, target),
    or None for a pair that is not blended this way (it has a grounded mask, or no words).
    """

    settings: LocalBlendSettings
    words: Sequence[tuple[Sequence[int], Sequence[int]] | None]
    grid: tuple[int, int]  # the attention grid read
    total_steps: int
    length: int = 77
    coverage: list[list[float | None]] = field(default_factory=list)  # per blended step, the mask fraction of each pair
    _sum: torch.Tensor | None = None
    _heads: int = 0
    _step_heads: int = 0
    _hot: torch.Tensor | None = None

    @property
    def active(self) -> bool:
        return any(w is not None for w in self.words)

    def reads(self, place: str | None, grid: tuple[int, int]) -> bool:
        return self.active and place in self.settings.places and grid == self.grid

    def one_hot(self, like: torch.Tensor) -> torch.Tensor:
        """(rows, length): 1 on each row's word tokens."""
        if self._hot is None or self._hot.device != like.device or self._hot.dtype != like.dtype:
            hot = torch.zeros(2 * len(self.words), self.length)
            for p, chosen in enumerate(self.words):
                if chosen is not None:
                    for side, positions in enumerate(chosen):
                        hot[2 * p + side, list(positions)] = 1.0
            self._hot = hot.to(like.device, like.dtype)
        return self._hot

    def record(self, probs: torch.Tensor) -> None:
        """probs: (rows, heads, queries, keys) of the conditional rows, after this layer's edit."""
        summed = torch.einsum("rhqk,rk->rq", probs.float(), self.one_hot(probs.float()))
        self._sum = summed if self._sum is None else self._sum + summed
        self._step_heads += probs.shape[1]

    def masks(self, latent_hw: tuple[int, int]) -> torch.Tensor:
        """(rows, 1, h, w) bool: each row's own mask at latent resolution."""
        assert self._sum is not None
        maps = (self._sum / self._heads).reshape(-1, 1, *self.grid)
        d = self.settings.dilation
        if d > 0:
            maps = F.max_pool2d(maps, kernel_size=2 * d + 1, stride=1, padding=d)
        maps = F.interpolate(maps, size=latent_hw, mode="nearest")
        peak = maps.amax(dim=(2, 3), keepdim=True)
        return torch.where(peak > 0, maps / peak.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(maps)) > self.settings.threshold

    def end_step(self, step: int, latents: torch.Tensor) -> torch.Tensor | None:
        """After the scheduler's step: the (P, 1, h, w) blend weights (1 for pairs not blended), or None before ``start``."""
        if self._step_heads:
            self._heads = self._step_heads  # layers x heads of one step (the same every step)
            self._step_heads = 0
        if not self.active or self._sum is None or step < int(self.settings.start * self.total_steps):
            return None
        own = self.masks(tuple(latents.shape[-2:]))
        weights = torch.ones(len(self.words), 1, *latents.shape[-2:], dtype=latents.dtype, device=latents.device)
        fractions: list[float | None] = []
        for p, chosen in enumerate(self.words):
            if chosen is None:
                fractions.append(None)
                continue
            union = own[2 * p] | own[2 * p + 1]
            weights[p] = union.to(latents.device, latents.dtype)
            fractions.append(round(float(union.float().mean()), 6))
        self.coverage.append(fractions)
        return weights
