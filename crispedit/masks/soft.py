"""The Emu Edit soft mask: a precise mask widened into a smooth mask, a box mask and a hull, fused.

Emu Edit (and UltraEdit after it) blend latents or pixels through a *soft* mask rather than
the precise segmentation, because a segmentation hugs the object's old silhouette and an
edit (a hat on the cat, a larger car) usually needs room around it. The recipe sets every
weight, radius and sigma; this module is the maths only: pure functions of numpy arrays,
built on OpenCV primitives so they cost milliseconds per megapixel.

Conventions: a *binary* mask is an HxW array whose non-zero pixels are the edit region; a
*soft* mask is HxW float32 in [0, 1]; storage is HxW uint8 with 255 = edit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

Box = Sequence[float]  # (x0, y0, x1, y1) in pixels, x1/y1 exclusive edges as in xyxy detector output


def as_binary(mask: np.ndarray) -> np.ndarray:
    """Any mask (bool, uint8 0/255, float in [0, 1]) as uint8 0/1, the form OpenCV morphology wants."""
    if mask.ndim != 2:
        raise ValueError(f"a mask is HxW, got shape {mask.shape}")
    if mask.dtype == np.bool_:
        return mask.astype(np.uint8)
    if np.issubdtype(mask.dtype, np.floating):
        return (mask > 0.5).astype(np.uint8)
    return (mask > 0).astype(np.uint8)


def ellipse_kernel(radius: int) -> np.ndarray:
    """The (2r+1)x(2r+1) elliptical structuring element: dilation by it grows a region by r px in every axis direction."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    size = 2 * int(radius) + 1
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Grow a binary mask by ``radius`` pixels with an elliptical kernel (uint8 0/1)."""
    binary = as_binary(mask)
    if radius == 0:
        return binary
    return cv2.dilate(binary, ellipse_kernel(radius))


def gaussian_kernel_size(sigma: float) -> int:
    """Odd kernel side covering +-3 sigma, so the truncated Gaussian keeps >99.7% of its mass."""
    return 2 * math.ceil(3.0 * sigma) + 1


def blur(mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-blur a mask to float32 in [0, 1]; sigma 0 returns the mask unchanged (as float).

    uint8 masks are read as 0/255 unless they are 0/1 (OpenCV morphology output).
    """
    if mask.dtype == np.uint8 and mask.max(initial=0) <= 1:
        unit = mask.astype(np.float32)
    elif mask.dtype == np.uint8:
        unit = mask.astype(np.float32) * np.float32(1.0 / 255.0)
    else:
        unit = np.clip(mask.astype(np.float32), 0.0, 1.0)
    return _blur_unit(unit, sigma)


def _blur_unit(unit: np.ndarray, sigma: float) -> np.ndarray:
    """Blur a float32 mask already in [0, 1]; a Gaussian (a convex combination) keeps it there."""
    if sigma <= 0:
        return unit
    k = gaussian_kernel_size(sigma)
    out = cv2.GaussianBlur(unit, (k, k), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)
    return np.clip(out, 0.0, 1.0, out=out)  # float rounding only


def smooth_mask(precise: np.ndarray, radius: int, sigma: float) -> np.ndarray:
    """Emu Edit's smooth mask: dilate the precise mask by ``radius`` px, then blur with ``sigma`` px."""
    return _blur_unit(dilate(precise, radius).astype(np.float32), sigma)


def box_pixels(box: Box, height: int, width: int) -> tuple[int, int, int, int]:
    """Integer pixel bounds (x0, y0, x1, y1 exclusive) that cover a float box, clipped to the image.

    Floor the top-left and ceil the bottom-right so the filled box always contains every
    pixel the detector's box touches (and hence the object SAM segmented inside it).
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    ix0 = min(max(int(math.floor(x0)), 0), width)
    iy0 = min(max(int(math.floor(y0)), 0), height)
    ix1 = min(max(int(math.ceil(x1)), 0), width)
    iy1 = min(max(int(math.ceil(y1)), 0), height)
    return ix0, iy0, ix1, iy1


def box_mask(shape: tuple[int, int], boxes: Iterable[Box]) -> np.ndarray:
    """The boxes filled (uint8 0/1). An empty box list gives an empty mask."""
    height, width = shape
    out = np.zeros((height, width), np.uint8)
    for box in boxes:
        x0, y0, x1, y1 = box_pixels(box, height, width)
        out[y0:y1, x0:x1] = 1
    return out


def boxes_of(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Tight xyxy boxes (exclusive edges) of each connected region: a box mask when no detector gave boxes."""
    binary = as_binary(mask)
    count, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    out = []
    for label in range(1, count):
        x, y, w, h = (int(v) for v in stats[label, :4])
        out.append((x, y, x + w, y + h))
    return out


def hull_mask(mask: np.ndarray) -> np.ndarray:
    """Each connected region replaced by its filled convex hull (uint8 0/1), as UltraEdit offers.

    Per region, not over the union: two keywords far apart must not merge into one hull
    that paints the background between them.
    """
    binary = as_binary(mask)
    out = np.zeros_like(binary)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    for contour in contours:
        cv2.fillConvexPoly(out, cv2.convexHull(contour), 1)
    return out | binary  # the hull of a 1-px line is degenerate; never lose a pixel


@dataclass(frozen=True)
class SoftMaskWeights:
    """Relative weights of the fused components; they are normalised to sum to 1."""

    precise: float = 0.0
    smooth: float = 0.5
    box: float = 0.5
    hull: float = 0.0

    def normalised(self) -> dict[str, float]:
        raw = {"precise": self.precise, "smooth": self.smooth, "box": self.box, "hull": self.hull}
        if any(w < 0 for w in raw.values()):
            raise ValueError(f"soft-mask weights must be >= 0, got {raw}")
        total = sum(raw.values())
        if total <= 0:
            raise ValueError("at least one soft-mask weight must be positive")
        return {name: w / total for name, w in raw.items()}


def fuse(components: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """Weighted sum of float masks with normalised weights, clipped to [0, 1] (float32).

    Components with weight 0 are skipped, so an all-precise weighting returns the precise
    mask bit for bit and costs nothing extra.
    """
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("fusion weights must sum to a positive number")
    out: np.ndarray | None = None
    for name, weight in weights.items():
        if weight == 0:
            continue
        term = components[name]
        scale = np.float32(weight / total)
        if out is None:
            out = term.astype(np.float32) if scale == 1 else np.multiply(term, scale, dtype=np.float32)
        else:
            out = cv2.scaleAdd(term.astype(np.float32, copy=False), float(scale), out, dst=out)
    assert out is not None
    return np.clip(out, 0.0, 1.0, out=out)


def soft_mask(
    precise: np.ndarray,
    boxes: Iterable[Box] | None = None,
    *,
    dilate_radius: int = 8,
    blur_sigma: float = 4.0,
    weights: SoftMaskWeights = SoftMaskWeights(),
) -> np.ndarray:
    """The Emu Edit soft mask (float32 HxW in [0, 1]) from a precise mask and its detector boxes.

    When ``boxes`` is None the box mask uses the tight boxes of the precise mask's regions.
    Only components with a positive weight are computed.
    """
    binary = as_binary(precise)
    w = weights.normalised()
    components: dict[str, np.ndarray] = {}
    if w["precise"] > 0:
        components["precise"] = binary.astype(np.float32)
    if w["smooth"] > 0:
        components["smooth"] = smooth_mask(binary, dilate_radius, blur_sigma)
    if w["box"] > 0:
        components["box"] = box_mask(binary.shape, boxes_of(binary) if boxes is None else boxes).astype(np.float32)
    if w["hull"] > 0:
        components["hull"] = hull_mask(binary).astype(np.float32)
    return fuse(components, w)


def to_uint8(soft: np.ndarray) -> np.ndarray:
    """Soft mask [0, 1] -> uint8 0..255 (rounded), the record's mask column."""
    return np.rint(np.clip(soft, 0.0, 1.0) * 255.0).astype(np.uint8)


def from_uint8(mask: np.ndarray) -> np.ndarray:
    """Stored uint8 mask -> float32 [0, 1]."""
    return mask.astype(np.float32) / 255.0
