"""Emu Edit's per-pixel thresholding: undo the generator's changes that are too small to be the edit.

A diffusion edit re-renders every pixel, so even the background drifts a little (colour,
noise, JPEG-like texture). Emu Edit computes the per-pixel L1 distance between the new and
the previous image on [0, 1], low-pass filters it, and where the filtered distance is under
alpha (0.03) puts the previous pixel back. The low-pass filter makes the decision regional:
an isolated noisy pixel neither survives on its own nor punches a hole in a real edit.

In a multi-turn chain each turn is thresholded against the previous turn's thresholded
output, so unchanged regions stay bit-identical to the original through every turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from crispedit.masks.soft import gaussian_kernel_size


def pixel_distance(previous: np.ndarray, new: np.ndarray, reduce: Literal["sum", "mean"] = "sum") -> np.ndarray:
    """Per-pixel L1 distance over RGB on [0, 1] (float32 HxW); 'sum' is the L1 norm, 'mean' divides by 3."""
    if previous.shape != new.shape:
        raise ValueError(f"images differ in shape: {previous.shape} vs {new.shape}")
    diff = np.abs(previous.astype(np.float32) - new.astype(np.float32)) / 255.0
    d = diff.sum(axis=-1) if reduce == "sum" else diff.mean(axis=-1)
    return d.astype(np.float32)


def low_pass(distance: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian low-pass (kernel +-3 sigma); sigma 0 leaves the distance as is."""
    if sigma <= 0:
        return distance
    k = gaussian_kernel_size(sigma)
    return cv2.GaussianBlur(distance, (k, k), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)


@dataclass
class Thresholded:
    image: np.ndarray  # HxWx3 uint8: new where it changed enough, previous elsewhere
    kept_previous: np.ndarray  # HxW bool: where the previous pixel was put back

    @property
    def reverted_fraction(self) -> float:
        return float(self.kept_previous.mean())


def threshold_pixels(
    previous: np.ndarray,
    new: np.ndarray,
    *,
    alpha: float = 0.03,
    sigma: float = 2.0,
    reduce: Literal["sum", "mean"] = "sum",
) -> Thresholded:
    """Keep the previous pixel wherever the low-pass filtered L1 distance is under ``alpha``."""
    smoothed = low_pass(pixel_distance(previous, new, reduce), sigma)
    keep = smoothed < alpha
    out = np.where(keep[..., None], previous, new).astype(np.uint8)
    return Thresholded(out, keep)


def threshold_chain(
    turns: Sequence[np.ndarray], *, alpha: float = 0.03, sigma: float = 2.0, reduce: Literal["sum", "mean"] = "sum"
) -> list[Thresholded]:
    """Threshold every turn of a multi-turn chain; ``turns[0]`` is the original image.

    Turn t is compared with the *thresholded* turn t-1, so a pixel no turn really changed is
    the original's pixel at every turn.
    """
    if len(turns) < 2:
        raise ValueError("a chain needs the original image and at least one turn")
    out: list[Thresholded] = []
    previous = turns[0]
    for new in turns[1:]:
        result = threshold_pixels(previous, new, alpha=alpha, sigma=sigma, reduce=reduce)
        out.append(result)
        previous = result.image
    return out
