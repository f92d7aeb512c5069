"""Soft-mask composition cost per megapixel vs the floor of the same OpenCV primitives called directly.

    python benchmarks/soft_mask.py [--repeats 20]

The floor runs exactly the primitives ``crispedit.masks.soft.soft_mask`` is built on
(dilate with the same elliptical kernel, GaussianBlur with the same kernel, box fill,
contours + convex hull, weighted sum), with no validation, no dtype normalisation and no
per-component dispatch. The ratio column is the overhead crispedit's code adds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import cv2
import numpy as np

from crispedit.masks import soft

SIZES = [(512, 512), (1024, 1024), (2048, 2048)]


def drawn_mask(height: int, width: int) -> np.ndarray:
    """Two ellipses and a concave polygon: a precise mask with a few regions, like a SAM union."""
    mask = np.zeros((height, width), np.uint8)
    cv2.ellipse(mask, (width // 3, height // 3), (width // 8, height // 6), 20, 0, 360, 255, -1)
    cv2.ellipse(mask, (2 * width // 3, 2 * height // 3), (width // 10, height // 12), 0, 0, 360, 255, -1)
    poly = np.array([[width // 10, height * 7 // 10], [width // 4, height * 6 // 10], [width // 5, height * 9 // 10]], np.int32)
    cv2.fillPoly(mask, [poly], 255)
    return mask


def floor(mask: np.ndarray, boxes: list[tuple[int, int, int, int]], radius: int, sigma: float, hull: bool) -> np.ndarray:
    """The same maths as soft_mask, OpenCV calls only."""
    binary = (mask > 0).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    k = soft.gaussian_kernel_size(sigma)
    smooth = cv2.GaussianBlur(cv2.dilate(binary, kernel).astype(np.float32), (k, k), sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)
    box = np.zeros_like(binary)
    for x0, y0, x1, y1 in boxes:
        box[y0:y1, x0:x1] = 1
    out = cv2.addWeighted(smooth, 0.5 if not hull else 1 / 3, box.astype(np.float32), 0.5 if not hull else 1 / 3, 0.0)
    if hull:
        filled = np.zeros_like(binary)
        contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for contour in contours:
            cv2.fillConvexPoly(filled, cv2.convexHull(contour), 1)
        out = cv2.addWeighted(out, 1.0, filled.astype(np.float32), 1 / 3, 0.0)
    return out


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time in ms over ``repeats`` calls, after one warm-up call."""
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--radius", type=int, default=8)
    parser.add_argument("--sigma", type=float, default=4.0)
    args = parser.parse_args()
    cv2.setNumThreads(1)  # one core, so the comparison does not depend on who else is busy
    print(f"soft-mask composition, radius {args.radius} px, sigma {args.sigma} px, median of {args.repeats}, 1 OpenCV thread")
    header = f"{'size':>11} {'MP':>6} {'variant':>16} {'crispedit ms/MP':>16} {'floor ms/MP':>12} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for height, width in SIZES:
        mask = drawn_mask(height, width)
        boxes = soft.boxes_of(mask)
        mp = height * width / 1e6
        variants = {
            "smooth+box": soft.SoftMaskWeights(0.0, 0.5, 0.5, 0.0),
            "smooth+box+hull": soft.SoftMaskWeights(0.0, 1.0, 1.0, 1.0),
        }
        for name, weights in variants.items():
            ours = timed(lambda: soft.soft_mask(mask, boxes, dilate_radius=args.radius, blur_sigma=args.sigma, weights=weights), args.repeats)  # noqa: B023 (called now)
            base = timed(lambda: floor(mask, boxes, args.radius, args.sigma, weights.hull > 0), args.repeats)  # noqa: B023 (called now)
            np.testing.assert_allclose(
                soft.soft_mask(mask, boxes, dilate_radius=args.radius, blur_sigma=args.sigma, weights=weights),
                np.clip(floor(mask, boxes, args.radius, args.sigma, weights.hull > 0), 0, 1), atol=1e-5,
            )
            print(f"{height:>5}x{width:<5} {mp:>6.2f} {name:>16} {ours / mp:>16.2f} {base / mp:>12.2f} {ours / base:>6.2f}")


if __name__ == "__main__":
    main()
