"""Multi-turn chains: one image edited turn after turn, every turn measured against turn 0.

No-reference checks miss what a chain accumulates (Banana100): each turn can look fine
next to the turn before while the picture drifts away from the original. So every turn's
result is compared with the ORIGINAL image: CLIP and DINOv2 image similarity
(``chain_clip_i``, ``chain_dino_i``, from :mod:`crispedit.models.clip`) and the mean RGB change on
[0, 1] outside the union of the masks of every turn so far (``chain_l1_outside``: what no
turn was asked to touch; the whole image when no turn has a mask). Between turns, Emu
Edit's per-pixel thresholding (:mod:`crispedit.masks.pixel_threshold`) puts the previous
pixel back where a turn changed it by less than alpha (``chain_reverted``: the fraction put
back), so regions no turn really edited stay the original's bytes.
"""

from __future__ import annotations

import cv2
import numpy as np

from crispedit.core.bounds import Bound, bound_checks
from crispedit.derived.pairs import union_mask
from crispedit.filters.locality_filter import masked_l1

CHAIN_COLUMNS = ("chain_clip_i", "chain_dino_i", "chain_l1_outside", "chain_reverted")
_LABELS = {c: ("chain broken", "chain broken") for c in CHAIN_COLUMNS}


def fit(image: np.ndarray, shape: tuple[int, ...], nearest: bool = False) -> np.ndarray:
    """``image`` at the height and width of ``shape`` (a generator may round sides to multiples of 8)."""
    if image.shape[:2] == tuple(shape[:2]):
        return image
    method = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return cv2.resize(image, (int(shape[1]), int(shape[0])), interpolation=method)


def l1_outside(original: np.ndarray, current: np.ndarray, masks: list[np.ndarray | None], level: int = 127) -> float | None:
    """Mean |original - current| over RGB on [0, 1] outside the union of ``masks`` (all pixels when none);
    None when the union covers the whole image."""
    shape = current.shape
    union = union_mask([fit(m, shape, nearest=True) for m in masks if m is not None], level)
    outside = union if union is not None else np.zeros(shape[:2], np.uint8)
    return masked_l1(fit(original, shape), current, outside, level)[1]


def chain_break(scores: dict[str, float | None], bounds: dict[str, tuple[Bound, Bound]], turn: int) -> str | None:
    """Why the chain stops at ``turn`` (``chain broken: ...``), or None when every bound holds."""
    reason = bound_checks(scores, bounds, _LABELS)
    return None if reason is None else f"{reason} at turn {turn} (measured against turn 0)"
