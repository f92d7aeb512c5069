"""Sampler settings and speed/memory options as plain data (no torch), built from a stage's params.

Every sampler value ends up in a sample's provenance, so a pair can be regenerated from its
row alone; the options (precision, memory savers, compilation) change speed, not the recipe.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

Scheduler = Literal["default", "euler", "euler_ancestral", "ddim", "dpmpp_2m"]
DType = Literal["auto", "float32", "float16", "bfloat16"]

#: --tiny runs the same code on random-weight twins; these caps keep such a dry run fast on a CPU.
TINY_MAX_SIDE = 64
TINY_MAX_STEPS = 3


@dataclass(frozen=True)
class RunOptions:
    """How a generator stage runs its pipelines: precision, memory savers and compilation."""

    dtype: DType = "auto"
    device: str = "auto"
    max_batch: int = 4
    vae_tiling: bool = False
    cpu_offload: bool = False
    compile: bool = False
    variant: str | None = None


@dataclass(frozen=True)
class Sampler:
    """One pipeline call's sampler settings (what provenance records for every image)."""

    steps: int = 30
    guidance_scale: float = 5.0
    negative_prompt: str | None = None
    scheduler: Scheduler = "default"

    def for_tiny(self, tiny: bool) -> Sampler:
        """Under --tiny the step count is capped (the code path is the same, only shorter)."""
        return replace(self, steps=min(self.steps, TINY_MAX_STEPS)) if tiny else self

    def record(self) -> dict[str, Any]:
        return asdict(self)


def tiny_size(height: int, width: int, tiny: bool, multiple: int = 8) -> tuple[int, int]:
    """A text-to-image size: as asked, or under --tiny scaled so the long side is at most TINY_MAX_SIDE."""
    if not tiny or max(height, width) <= TINY_MAX_SIDE:
        return height, width
    scale = TINY_MAX_SIDE / max(height, width)
    return max(multiple, int(height * scale) // multiple * multiple), max(multiple, int(width * scale) // multiple * multiple)
