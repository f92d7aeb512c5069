"""Global photo edits done with OpenCV, each with the words that truthfully describe it.

An edit's parameters are drawn once (by the instruct stage, from the item's seed), and the
same parameters choose both the wording ("a little brighter" vs "much brighter") and the
pixels, so the instruction never claims more or less than the image shows.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

Params = dict[str, Any]


@dataclass(frozen=True)
class ClassicalEdit:
    name: str
    task: str
    sample_params: Callable[[random.Random], Params]
    apply: Callable[[np.ndarray, Params], np.ndarray]
    phrasings: Callable[[Params], list[str]]
    caption: Callable[[Params], str]
    inverse: Callable[[Params], str | None]


def _degree(amount: float, low: float, high: float) -> str:
    """'slightly' / '' / 'much' for an amount inside [low, high], split in thirds."""
    third = (high - low) / 3
    if amount < low + third:
        return "slightly "
    if amount > high - third:
        return "much "
    return ""


def _lut(image: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    table = np.clip(np.round(fn(np.arange(256, dtype=np.float64))), 0, 255).astype(np.uint8)
    return cv2.LUT(image, table)


def _grayscale(image: np.ndarray, _: Params) -> np.ndarray:
    return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


_SEPIA = np.array([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]], dtype=np.float32)


def _sepia(image: np.ndarray, _: Params) -> np.ndarray:
    return cv2.transform(image, _SEPIA)  # saturates at 255, as uint8 transforms do


def _pencil(image: np.ndarray, params: Params) -> np.ndarray:
    gray, color = cv2.pencilSketch(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), sigma_s=60, sigma_r=0.07, shade_factor=0.05)
    if params.get("color"):
        return cv2.cvtColor(color, cv2.COLOR_BGR2RGB)
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)


def _watercolor(image: np.ndarray, _: Params) -> np.ndarray:
    return cv2.cvtColor(cv2.stylization(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), sigma_s=60, sigma_r=0.45), cv2.COLOR_BGR2RGB)


def _cartoon(image: np.ndarray, _: Params) -> np.ndarray:
    smooth = image
    for _ in range(2):
        smooth = cv2.bilateralFilter(smooth, d=9, sigmaColor=75, sigmaSpace=75)
    flat = (smooth // 32) * 32 + 16
    gray = cv2.medianBlur(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), 5)
    edges = cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, 9, 4)
    return cv2.bitwise_and(flat.astype(np.uint8), flat.astype(np.uint8), mask=edges)


def _brightness(image: np.ndarray, params: Params) -> np.ndarray:
    gain = params["gain"]
    return _lut(image, lambda x: x * gain)


def _contrast(image: np.ndarray, params: Params) -> np.ndarray:
    factor = params["factor"]
    return _lut(image, lambda x: (x - 128.0) * factor + 128.0)


def _blur(image: np.ndarray, params: Params) -> np.ndarray:
    sigma = params["sigma"] * max(image.shape[:2]) / 512.0
    return cv2.GaussianBlur(image, (0, 0), sigmaX=max(sigma, 0.5))


def _sharpen(image: np.ndarray, params: Params) -> np.ndarray:
    blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=2.0)
    return cv2.addWeighted(image, 1.0 + params["amount"], blurred, -params["amount"], 0)


def _invert(image: np.ndarray, _: Params) -> np.ndarray:
    return cv2.bitwise_not(image)


def _temperature(image: np.ndarray, params: Params) -> np.ndarray:
    shift = params["shift"]  # > 0 warmer, < 0 cooler
    out = image.astype(np.int16)
    out[..., 0] += shift
    out[..., 2] -= shift
    return np.clip(out, 0, 255).astype(np.uint8)


def _saturation(image: np.ndarray, params: Params) -> np.ndarray:
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 1] = np.clip(hsv[..., 1] * params["factor"], 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


def _posterize(image: np.ndarray, params: Params) -> np.ndarray:
    step = 256 // params["levels"]
    return ((image // step) * step + step // 2).astype(np.uint8)


def _details(image: np.ndarray, _: Params) -> np.ndarray:
    return cv2.cvtColor(cv2.detailEnhance(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), sigma_s=10, sigma_r=0.15), cv2.COLOR_BGR2RGB)


def _mirror(image: np.ndarray, _: Params) -> np.ndarray:
    return np.ascontiguousarray(image[:, ::-1])


def _vignette(image: np.ndarray, params: Params) -> np.ndarray:
    height, width = image.shape[:2]
    ys = np.linspace(-1.0, 1.0, height)[:, None]
    xs = np.linspace(-1.0, 1.0, width)[None, :]
    radius = np.sqrt(xs**2 + ys**2) / np.sqrt(2.0)
    falloff = 1.0 - params["strength"] * np.clip(radius, 0, 1) ** 2
    return np.clip(image * falloff[..., None], 0, 255).astype(np.uint8)


def _const(text: str | None) -> Callable[[Params], str | None]:
    return lambda _: text


EDITS: dict[str, ClassicalEdit] = {
    e.name: e
    for e in [
        ClassicalEdit(
            "grayscale", "color", lambda r: {}, _grayscale,
            lambda p: ["Convert the photo to black and white", "Make it grayscale", "Remove all the color from the image"],
            lambda p: "in black and white", _const("Restore the original colors"),
        ),
        ClassicalEdit(
            "sepia", "style", lambda r: {}, _sepia,
            lambda p: ["Give it a sepia tone", "Make it look like an old sepia photograph", "Apply a brownish vintage sepia filter"],
            lambda p: "in sepia tones", _const("Remove the sepia tone"),
        ),
        ClassicalEdit(
            "pencil_sketch", "style", lambda r: {"color": False}, _pencil,
            lambda p: ["Turn it into a pencil sketch", "Make it look like a graphite drawing", "Redraw the image as a pencil sketch"],
            lambda p: "as a pencil sketch", _const("Turn the sketch back into a photo"),
        ),
        ClassicalEdit(
            "color_pencil", "style", lambda r: {"color": True}, _pencil,
            lambda p: ["Make it look like a colored-pencil drawing", "Redraw it with colored pencils"],
            lambda p: "as a colored-pencil drawing", _const("Turn the drawing back into a photo"),
        ),
        ClassicalEdit(
            "watercolor", "style", lambda r: {}, _watercolor,
            lambda p: ["Make it look like a watercolor painting", "Paint it in a soft watercolor style"],
            lambda p: "as a watercolor painting", _const("Turn the painting back into a photo"),
        ),
        ClassicalEdit(
            "cartoon", "style", lambda r: {}, _cartoon,
            lambda p: ["Make it look like a cartoon", "Turn the photo into a cartoon with flat colors and dark outlines"],
            lambda p: "in a cartoon style", _const("Turn the cartoon back into a photo"),
        ),
        ClassicalEdit(
            "brighten", "tone", lambda r: {"gain": round(r.uniform(1.2, 1.7), 2)}, _brightness,
            lambda p: [f"Make the photo {_degree(p['gain'], 1.2, 1.7)}brighter", f"Increase the brightness{' a lot' if p['gain'] > 1.53 else ''}"],
            lambda p: "brighter", _const("Make it darker"),
        ),
        ClassicalEdit(
            "darken", "tone", lambda r: {"gain": round(r.uniform(0.45, 0.8), 2)}, _brightness,
            lambda p: [f"Make the photo {_degree(1.25 - p['gain'], 0.45, 0.8)}darker", "Lower the brightness"],
            lambda p: "darker", _const("Make it brighter"),
        ),
        ClassicalEdit(
            "more_contrast", "tone", lambda r: {"factor": round(r.uniform(1.3, 1.8), 2)}, _contrast,
            lambda p: [f"Increase the contrast {'a lot' if p['factor'] > 1.63 else ''}".strip(), "Make the image punchier with more contrast"],
            lambda p: "with high contrast", _const("Reduce the contrast"),
        ),
        ClassicalEdit(
            "less_contrast", "tone", lambda r: {"factor": round(r.uniform(0.4, 0.7), 2)}, _contrast,
            lambda p: ["Reduce the contrast", "Make the image look flat and washed out"],
            lambda p: "with low contrast", _const("Increase the contrast"),
        ),
        ClassicalEdit(
            "blur", "quality", lambda r: {"sigma": round(r.uniform(2.0, 6.0), 2)}, _blur,
            lambda p: [f"Blur the image {'heavily' if p['sigma'] > 4.7 else ''}".strip(), "Make the photo out of focus"],
            lambda p: "blurry", _const("Sharpen the image"),
        ),
        ClassicalEdit(
            "sharpen", "quality", lambda r: {"amount": round(r.uniform(0.8, 1.8), 2)}, _sharpen,
            lambda p: ["Sharpen the image", "Make the details crisper"],
            lambda p: "sharpened", _const("Soften the image slightly"),
        ),
        ClassicalEdit(
            "invert", "color", lambda r: {}, _invert,
            lambda p: ["Invert the colors", "Make it look like a photographic negative"],
            lambda p: "with inverted colors", _const("Invert the colors"),
        ),
        ClassicalEdit(
            "warmer", "color", lambda r: {"shift": r.randint(20, 45)}, _temperature,
            lambda p: ["Give the photo a warmer tone", "Make the colors warmer, more orange"],
            lambda p: "with warm tones", _const("Make the colors cooler"),
        ),
        ClassicalEdit(
            "cooler", "color", lambda r: {"shift": -r.randint(20, 45)}, _temperature,
            lambda p: ["Give the photo a cooler tone", "Make the colors colder, more blue"],
            lambda p: "with cool blue tones", _const("Make the colors warmer"),
        ),
        ClassicalEdit(
            "saturate", "color", lambda r: {"factor": round(r.uniform(1.5, 2.2), 2)}, _saturation,
            lambda p: ["Make the colors more vivid", "Increase the saturation"],
            lambda p: "with vivid saturated colors", _const("Tone the colors down"),
        ),
        ClassicalEdit(
            "desaturate", "color", lambda r: {"factor": round(r.uniform(0.2, 0.5), 2)}, _saturation,
            lambda p: ["Make the colors muted", "Reduce the saturation"],
            lambda p: "with muted colors", _const("Make the colors more vivid"),
        ),
        ClassicalEdit(
            "posterize", "style", lambda r: {"levels": r.choice([3, 4])}, _posterize,
            lambda p: ["Posterize the image into a few flat color levels", "Make it look like a screen-printed poster"],
            lambda p: "posterized", _const(None),
        ),
        ClassicalEdit(
            "enhance_details", "quality", lambda r: {}, _details,
            lambda p: ["Enhance the fine details", "Bring out the textures and details"],
            lambda p: "with enhanced details", _const("Smooth out the fine details"),
        ),
        ClassicalEdit(
            "mirror", "geometry", lambda r: {}, _mirror,
            lambda p: ["Flip the image horizontally", "Mirror the photo left to right"],
            lambda p: "mirrored left to right", _const("Flip the image horizontally"),
        ),
        ClassicalEdit(
            "vignette", "style", lambda r: {"strength": round(r.uniform(0.5, 0.85), 2)}, _vignette,
            lambda p: ["Add a dark vignette around the edges", "Darken the corners of the photo"],
            lambda p: "with a dark vignette", _const("Remove the vignette"),
        ),
    ]
}
