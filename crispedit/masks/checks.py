"""Mask sanity checks UltraEdit filters on: the edit region covers 1%-90% of the image in <= 500 contours.

A mask that covers almost nothing means the keyword was not really found; one that covers
almost everything is a global edit pretending to be local; hundreds of contours mean the
segmentation shattered on texture. Each check returns a reason a person can act on.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def binarize(mask: np.ndarray, level: int = 127) -> np.ndarray:
    """uint8 mask (255 = edit) -> uint8 0/1 where mask > level; a float mask in [0, 1] is scaled first."""
    if np.issubdtype(mask.dtype, np.floating):
        mask = np.rint(np.clip(mask, 0.0, 1.0) * 255.0).astype(np.uint8)
    return (mask > level).astype(np.uint8)


def coverage(mask: np.ndarray, level: int = 127) -> float:
    """Fraction of the image inside the edit region."""
    return float(binarize(mask, level).mean()) if mask.size else 0.0


def count_contours(mask: np.ndarray, level: int = 127) -> int:
    """Number of outer contours (separate regions, 8-connected) of the edit region; holes are not counted."""
    contours, _ = cv2.findContours(binarize(mask, level), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return len(contours)


@dataclass(frozen=True)
class MaskReport:
    coverage: float
    contours: int
    reason: str | None  # None: the mask passes


def check_mask(
    mask: np.ndarray, *, min_coverage: float = 0.01, max_coverage: float = 0.90, max_contours: int = 500, level: int = 127
) -> MaskReport:
    """Coverage within [min, max] and at most ``max_contours`` regions; the first failure is the reason."""
    cov = coverage(mask, level)
    n = count_contours(mask, level)
    reason = None
    if cov < min_coverage:
        reason = f"mask too small: coverage {cov:.4f} < {min_coverage}"
    elif cov > max_coverage:
        reason = f"mask too large: coverage {cov:.4f} > {max_coverage}"
    elif n > max_contours:
        reason = f"mask too fragmented: {n} contours > {max_contours}"
    return MaskReport(cov, n, reason)
