"""Each classical edit does what its instruction says, on a real photograph."""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest
from skimage import data

from crispedit.classical.edits import EDITS

PHOTO = cv2.resize(data.coffee(), (96, 64), interpolation=cv2.INTER_AREA)


def run(name: str, seed: int = 0) -> tuple[np.ndarray, dict]:
    edit = EDITS[name]
    params = edit.sample_params(random.Random(seed))
    return edit.apply(PHOTO, params), params


def luma(image: np.ndarray) -> float:
    return float(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).mean())


def saturation(image: np.ndarray) -> float:
    return float(cv2.cvtColor(image, cv2.COLOR_RGB2HSV)[..., 1].mean())


def sharpness(image: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


@pytest.mark.parametrize("name", sorted(EDITS))
def test_every_edit_keeps_shape_and_type_and_changes_pixels(name: str) -> None:
    out, params = run(name)
    assert out.shape == PHOTO.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - PHOTO.astype(int)).mean() > 1.0
    edit = EDITS[name]
    assert edit.phrasings(params) and all(p.strip() == p and p for p in edit.phrasings(params))
    assert edit.caption(params)


def test_directions_match_the_words() -> None:
    gray, _ = run("grayscale")
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    assert luma(run("brighten")[0]) > luma(PHOTO) + 10
    assert luma(run("darken")[0]) < luma(PHOTO) - 10
    assert run("more_contrast")[0].std() > PHOTO.std()
    assert run("less_contrast")[0].std() < PHOTO.std()
    assert sharpness(run("blur")[0]) < sharpness(PHOTO) / 2
    assert sharpness(run("sharpen")[0]) > sharpness(PHOTO)
    assert np.array_equal(run("invert")[0], 255 - PHOTO)
    assert np.array_equal(run("mirror")[0], PHOTO[:, ::-1])
    warm, cool = run("warmer")[0].astype(int), run("cooler")[0].astype(int)
    assert (warm[..., 0] - warm[..., 2]).mean() > (PHOTO[..., 0].astype(int) - PHOTO[..., 2]).mean() > (cool[..., 0] - cool[..., 2]).mean()
    assert saturation(run("saturate")[0]) > saturation(PHOTO) > saturation(run("desaturate")[0])
    levels = len(np.unique(run("posterize")[0]))
    assert levels <= 4
    vignette, params = run("vignette")
    corner, centre = vignette[:6, :6].astype(float), vignette[29:35, 45:51].astype(int)
    assert np.allclose(corner, PHOTO[:6, :6] * (1 - params["strength"]), atol=0.2 * 255 * params["strength"])
    assert corner.mean() < PHOTO[:6, :6].mean() * (1 - params["strength"] / 2)
    assert np.abs(centre - PHOTO[29:35, 45:51].astype(int)).max() <= 2


def test_wording_follows_the_amount() -> None:
    edit = EDITS["brighten"]
    assert edit.phrasings({"gain": 1.21})[0] == "Make the photo slightly brighter"
    assert edit.phrasings({"gain": 1.69})[0] == "Make the photo much brighter"
    assert edit.phrasings({"gain": 1.45})[0] == "Make the photo brighter"
