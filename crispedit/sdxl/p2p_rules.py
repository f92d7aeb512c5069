"""What the two P2P modes decide: which steps, which CFG halves and which layers get attention control.

``default`` (crispedit's choice, InstructPix2Pix's reading of P2P):
  self-attention injected in BOTH guidance halves, at every resolution (or maps up to
  ``self_map_max``), for steps i < f x N; cross-attention windows i in [a x N, b x N).
``reference`` (published Prompt-to-Prompt, google/prompt-to-prompt ptp_utils.py and the
  stable notebook; diffusers' community pipeline_prompt2prompt.py):
  self-attention injected in the CONDITIONAL half only, only in layers whose map is at most
  image/32 per side (P2P's 16x16 at SD's 512 px; SDXL at 1024 px: the 32x32 layers, also the
  null-text notebook's literal 32x32 - a literal 16x16 would inject into none of SDXL's
  layers at 1024 px), for steps int(0 x N) <= i < int(f x N); the cross-attention schedule has
  N + 1 rows and a window (a, b) covers int(a(N+1)) <= i < int(b(N+1)); the replace mapping
  keeps the released code's positional tail (crispedit.sdxl.alignment).

Both: cross-attention control in the conditional half only; per-word windows
(``{word: c}`` or ``{word: [a, b]}``, P2P's ``{"default_": c, word: ...}``) override the
default window for that word's tokens (zero outside their window); re-weighting multiplies a
word's (mapped) map by its weight while the cross window is open, without renormalising.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Control = Literal["default", "reference"]
Window = float | tuple[float, float] | list[float]


@dataclass(frozen=True)
class ControlRules:
    """The rules one call runs under (resolved for its image size)."""

    control: Control = "default"
    self_halves: Literal["both", "cond"] = "both"
    self_map_max: int | None = None  # longest side of the largest attention map injected; None: every layer

    @property
    def replace_tail(self) -> Literal["shifted", "released"]:
        return "released" if self.control == "reference" else "shifted"

    def injects_at(self, grid: tuple[int, int]) -> bool:
        return self.self_map_max is None or max(grid) <= self.self_map_max


def resolve_rules(control: Control, self_map_max: int | None, height: int, width: int) -> ControlRules:
    """``self_map_max`` as given, or in reference mode the image/32 maps (P2P's 16x16 at 512 px)."""
    if control == "reference":
        return ControlRules("reference", "cond", self_map_max if self_map_max is not None else max(height, width) // 32)
    return ControlRules("default", "both", self_map_max)


def bounds(window: Window) -> tuple[float, float]:
    """A float c is the window (0, c); a pair is (start, end)."""
    if isinstance(window, int | float):
        return 0.0, float(window)
    low, high = window
    return float(low), float(high)


def window_steps(window: Window, total: int, control: Control, cross: bool) -> range:
    """The 0-based steps a window covers: default [ceil(aN), ceil(bN)); reference [int(a R), int(b R))
    with R = N + 1 rows for cross-attention (P2P's alpha table) and N for self-attention."""
    low, high = bounds(window)
    if control == "reference":
        rows = total + 1 if cross else total
        return range(int(low * rows), min(int(high * rows), total))
    return range(math.ceil(low * total - 1e-9), math.ceil(high * total - 1e-9))


def cross_schedule(
    total: int, length: int, default: Window, words: Mapping[str, Window], positions: Callable[[str], Sequence[int]], control: Control
) -> np.ndarray:
    """(N, length) 0/1: which target tokens take the edited map at each step.

    Every token gets the ``default`` window; each word of ``words`` (token positions from
    ``positions``, empty when the prompt lacks it) gets its own window instead.
    """
    alpha = np.zeros((total, length), np.float32)
    alpha[list(window_steps(default, total, control, cross=True))] = 1.0
    for word, window in words.items():
        tokens = list(positions(word))
        if tokens:
            alpha[:, tokens] = 0.0
            for step in window_steps(window, total, control, cross=True):
                alpha[step, tokens] = 1.0
    return alpha


def equalizer(length: int, weights: Mapping[str, float], positions: Callable[[str], Sequence[int]]) -> np.ndarray | None:
    """(length,) multipliers of the target's cross-attention columns, one per word (P2P's re-weighting); None when none apply."""
    scale = np.ones(length, np.float32)
    applied = False
    for word, value in weights.items():
        tokens = list(positions(word))
        if tokens:
            scale[tokens] = float(value)
            applied = True
    return scale if applied else None
