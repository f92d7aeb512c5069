"""Shared tiny twins for the mask tests: built once per session, they are the slow part."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest


@pytest.fixture(scope="session")
def tiny_grounding_models() -> tuple[Any, Any, Any, Any]:
    from crispedit.masks.twins import tiny_grounding_dino, tiny_sam

    detector, detector_processor = tiny_grounding_dino(0)
    segmenter, segmenter_processor = tiny_sam(1)
    return detector, detector_processor, segmenter, segmenter_processor


@pytest.fixture
def drawn_image() -> np.ndarray:
    """A 96x128 RGB picture: a red rectangle and a blue disc on grey."""
    import cv2

    image = np.full((96, 128, 3), 120, np.uint8)
    cv2.rectangle(image, (20, 15), (60, 55), (220, 40, 40), thickness=-1)
    cv2.circle(image, (95, 60), 18, (30, 60, 210), thickness=-1)
    return image
