"""Image plumbing between the record (uint8 arrays) and diffusers (PIL images): sizes, masks, edges."""

from __future__ import annotations

from typing import Any

import numpy as np


def pipeline_size(image: np.ndarray, multiple: int = 8) -> tuple[int, int]:
    """(height, width) a pipeline can take for this image: its own, rounded down to the VAE's multiple."""
    height, width = image.shape[:2]
    return max(multiple, height // multiple * multiple), max(multiple, width // multiple * multiple)


def to_pil(image: np.ndarray, size: tuple[int, int] | None = None) -> Any:
    """RGB uint8 array -> PIL, resized to (height, width) when given and different."""
    from PIL import Image

    pil = Image.fromarray(image)
    if size is not None and (pil.height, pil.width) != size:
        pil = pil.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return pil


def mask_pil(mask: np.ndarray, size: tuple[int, int] | None = None) -> Any:
    """HxW uint8 mask (255 = edit) -> PIL 'L' (diffusers' inpainting reads white as 'repaint')."""
    from PIL import Image

    pil = Image.fromarray(mask, mode="L") if mask.dtype == np.uint8 else Image.fromarray((mask * 255).astype(np.uint8), mode="L")
    if size is not None and (pil.height, pil.width) != size:
        pil = pil.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return pil


def back_to(image: np.ndarray, like: np.ndarray) -> np.ndarray:
    """A generated image at the size of the record's image (a no-op when the sizes already agree)."""
    if image.shape[:2] == like.shape[:2]:
        return image
    return np.asarray(to_pil(image, like.shape[:2]))


def canny(image: np.ndarray, low: int = 100, high: int = 200) -> np.ndarray:
    """Canny edges of an RGB image as a 3-channel uint8 image, the ControlNet-canny condition.

    EditWorld and diffusers' controlnet-canny-sdxl card both use thresholds 100/200.
    """
    import cv2

    edges = cv2.Canny(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), low, high)
    return np.ascontiguousarray(np.repeat(edges[:, :, None], 3, axis=2))


def paste_back(generated: np.ndarray, source: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """generated inside the (soft) mask, the source outside it: M * generated + (1 - M) * source."""
    alpha = (mask.astype(np.float32) / 255.0)[:, :, None]
    mixed = alpha * generated.astype(np.float32) + (1.0 - alpha) * source.astype(np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
