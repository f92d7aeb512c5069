"""What is measured on kept frames, on steps between consecutive kept frames, and on candidate pairs.

Per frame (once): the grey analysis image, an HSV histogram, the Laplacian variance
(crispedit.video.quality; blockiness is measured while decoding, at the frame's own size).
Per *step* (two consecutive kept frames of one scene, 0.5 s apart at 2 fps): DIS optical flow
from the first to the second; the camera's motion from the background band alone
(crispedit.video.camera), so a large subject is never taken for the camera; the flow minus
the camera's is the subject's (residual) motion, over the pixels that still move. Per *pair*
(i, j): the steps from i to j are chained (camera models multiplied, subject motions added
up), and the second frame warped into the first's view gives the area that changed.

Why steps: dense flow cannot follow a part that moves further than about its own size between
the two images (measured for this module: DIS and Farneback both lose a 12-px square moved
8 px or more at 64x48, and a 60-px square moved 40 px at 320x240), and pairs 1-4 s apart often
move that far. Consecutive samples move a little, flow follows them, and a video of n samples
needs n-1 flows whatever the number of candidate pairs. Costs at 427x240 on one core
(research/video.md §4): DIS FAST 1.4 ms, Laplacian 0.14 ms, two histograms 0.06 ms.

Motions are in percent of the analysis frame's diagonal, so one threshold means the same at
64x48 and at 1080p.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Share of the frame's short side left out along every edge when looking for moving pixels.
BORDER = 0.04


@dataclass(frozen=True)
class MeasureSettings:
    """The knobs measures need (from the mining stage's parameters)."""

    flow_preset: str = "fast"
    ransac_threshold: float = 0.6
    moving_threshold: float = 1.0
    min_moving_area: float = 0.002
    change_threshold: int = 25
    sharpness_side: int = 256


@dataclass
class FrameFeatures:
    """One sampled frame at analysis size, with what every step and pair that uses it needs."""

    rgb: np.ndarray
    gray: np.ndarray
    hist: np.ndarray
    sharpness: float
    half: np.ndarray  # grey, blurred, at half the analysis size: what visible-change differences are taken on


def frame_features(rgb: np.ndarray, analysis: tuple[int, int], settings: MeasureSettings) -> FrameFeatures:
    """Features of a kept frame: sharpness from the frame itself, the rest at the analysis size.

    The analysis size is fixed (frames are scaled up as well as down): DIS works on patches of
    fixed size, and on a 96x72 frame it followed a 3-px motion as 0.6 px (measured for this
    module), while at 320 px it is within a few percent.
    """
    import cv2

    from crispedit.video.quality import sharpness

    sharp = sharpness(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), settings.sharpness_side)
    if (rgb.shape[1], rgb.shape[0]) != analysis:
        shrinking = analysis[0] < rgb.shape[1]
        rgb = cv2.resize(rgb, analysis, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1], None, [30, 32], [0, 180, 0, 256])
    cv2.normalize(hist, hist, 1.0, 0.0, cv2.NORM_L1)
    half = cv2.GaussianBlur(cv2.resize(gray, (max(2, gray.shape[1] // 2), max(2, gray.shape[0] // 2)), interpolation=cv2.INTER_AREA), (3, 3), 0)
    return FrameFeatures(rgb=rgb, gray=gray, hist=hist, sharpness=sharp, half=half)


def similarity(a: FrameFeatures, b: FrameFeatures) -> float:
    """1 - Bhattacharyya distance of hue/saturation histograms: 1 for the same colours, 0 for disjoint ones.

    The cheap content measure (research/video.md §8). Different scikit-image photos score 0.10-0.34.
    """
    import cv2

    return float(max(0.0, 1.0 - cv2.compareHist(a.hist, b.hist, cv2.HISTCMP_BHATTACHARYYA)))


_DIS: dict[str, Any] = {}


def optical_flow(a: np.ndarray, b: np.ndarray, preset: str) -> np.ndarray:
    """Dense flow from grey ``a`` to grey ``b`` (HxWx2, pixels) with OpenCV's DIS (one object per preset and process)."""
    import cv2

    if preset not in _DIS:
        presets = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                   "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
        _DIS[preset] = cv2.DISOpticalFlow_create(presets[preset])
    return _DIS[preset].calc(a, b, None)


def ransac_px(settings: MeasureSettings, shape: tuple[int, ...]) -> float:
    """RANSAC's reprojection threshold in pixels: ``ransac_threshold`` % of the diagonal.

    research/video.md §4 used 3 px at 427x240 (0.6 % of its diagonal); in pixels, the same 3 px
    would let a 64x48 frame's moving object pass as camera motion.
    """
    return settings.ransac_threshold / 100.0 * math.hypot(*shape[:2])


def magnitude(field: np.ndarray) -> np.ndarray:
    """Length of every vector of an HxWx2 float32 field (OpenCV's, faster than numpy's norm)."""
    import cv2

    return cv2.magnitude(np.ascontiguousarray(field[..., 0]), np.ascontiguousarray(field[..., 1]))


def induced_flow(homography: np.ndarray, shape: tuple[int, ...], step: int = 1) -> np.ndarray:
    """The displacement the camera alone causes, H(p) - p, at every ``step``-th pixel."""
    height, width = shape[:2]
    ys, xs = np.mgrid[0:height:step, 0:width:step].astype(np.float64)
    h = homography.astype(np.float64)
    denominator = h[2, 0] * xs + h[2, 1] * ys + h[2, 2]
    denominator = np.where(np.abs(denominator) < 1e-9, 1e-9, denominator)
    mapped_x = (h[0, 0] * xs + h[0, 1] * ys + h[0, 2]) / denominator
    mapped_y = (h[1, 0] * xs + h[1, 1] * ys + h[1, 2]) / denominator
    return np.stack([mapped_x - xs, mapped_y - ys], -1).astype(np.float32)


def steady(b: np.ndarray, homography: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``b`` seen from ``a``'s camera (dst(p) = b(H p)) and the mask of pixels that came from inside ``b``."""
    import cv2

    height, width = shape[:2]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpPerspective(b, homography, (width, height), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    inside = cv2.warpPerspective(np.full((height, width), 255, np.uint8), homography, (width, height),
                                 flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP)
    return warped, inside > 0


@dataclass
class Step:
    """Motion between two consecutive kept frames of one scene."""

    homography: np.ndarray  # the camera's model (the identity for a still camera)
    method: str  # how the camera was decided (crispedit.video.camera)
    support: float | None  # share of the band's textured points the camera model explains
    flow: float  # mean total flow, % of the diagonal
    subject: float  # mean residual flow over the moving pixels, % of the diagonal (0 when nothing moves)
    vector: tuple[float, float]  # mean residual over the moving pixels, pixels (x, y)
    moving_area: float  # share of the frame that moves apart from the camera
    colour: str | None  # colour word of the moving pixels in the first frame
    centre: tuple[float, float] | None  # where they are, as fractions of width and height


def measure_step(a: FrameFeatures, b: FrameFeatures, settings: MeasureSettings) -> Step:
    """Flow, the camera from the background band, and the subject's residual motion between consecutive frames."""
    import cv2

    from crispedit.video.camera import camera_motion

    height, width = a.gray.shape[:2]
    diagonal = math.hypot(height, width)
    flow = optical_flow(a.gray, b.gray, settings.flow_preset)
    camera = camera_motion(a.gray, b.gray, flow, ransac_px(settings, a.gray.shape))
    induced = induced_flow(camera.homography, a.gray.shape)
    residual = flow - induced
    # Pixels the camera carries out of view have no counterpart in b, and flow next to the frame's edges is
    # extrapolated: both are left out.
    ys, xs = np.mgrid[0:height, 0:width]
    to_x, to_y = xs + induced[..., 0], ys + induced[..., 1]
    valid = (to_x >= 0) & (to_x <= width - 1) & (to_y >= 0) & (to_y <= height - 1)
    margin = max(2, round(BORDER * min(height, width)))
    inner = np.zeros((height, width), bool)
    inner[margin:-margin, margin:-margin] = True
    valid = inner & (cv2.erode(valid.astype(np.uint8), np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)) > 0)
    length = magnitude(residual)
    moving = (length > settings.moving_threshold / 100.0 * diagonal) & valid
    area = float(moving.mean())
    subject, vector, colour, centre = 0.0, (0.0, 0.0), None, None
    if area >= settings.min_moving_area:
        subject = float(length[moving].mean()) / diagonal * 100.0
        vector = (float(residual[..., 0][moving].mean()), float(residual[..., 1][moving].mean()))
        colour = colour_name(a.rgb[moving].reshape(-1, 3).mean(0))
        my, mx = np.nonzero(moving)
        centre = (round(float(mx.mean()) / width, 3), round(float(my.mean()) / height, 3))
    return Step(
        homography=camera.homography, method=camera.method, support=camera.support,
        flow=float(magnitude(flow).mean()) / diagonal * 100.0,
        subject=subject, vector=vector, moving_area=area, colour=colour, centre=centre,
    )


@dataclass
class PairMeasures:
    """Everything measured on one candidate pair (motions in % of the frame diagonal)."""

    similarity: float
    flow: float
    camera: float
    subject: float
    subject_area: float
    change: float
    sharpness_source: float
    sharpness_target: float
    blockiness: float
    camera_support: float | None
    methods: dict[str, int]
    description: dict[str, Any]

    def scores(self) -> dict[str, float | None]:
        """The pair's score columns (rounded so equal inputs give equal bytes on any machine)."""
        return {
            "video_similarity": round(self.similarity, 4),
            "video_flow": round(self.flow, 4),
            "video_camera": round(self.camera, 4),
            "video_subject": round(self.subject, 4),
            "video_subject_area": round(self.subject_area, 4),
            "video_change": round(self.change, 4),
            "video_sharpness_source": round(self.sharpness_source, 2),
            "video_sharpness_target": round(self.sharpness_target, 2),
            "video_blockiness": round(self.blockiness, 3),
            "video_camera_support": None if self.camera_support is None else round(self.camera_support, 4),
        }


def measure_pair(
    frames: list[FrameFeatures], steps: list[Step], i: int, j: int, settings: MeasureSettings, blockiness: float = 0.0,
) -> PairMeasures:
    """Chain the steps i..j-1: camera = product of its models, subject = motion added up; change = warped difference.

    ``blockiness`` is the worse of the two frames' (measured while decoding, at their own size).
    """
    import cv2

    a, b = frames[i], frames[j]
    height, width = a.gray.shape[:2]
    diagonal = math.hypot(height, width)
    chain = np.eye(3)
    dx = dy = subject = flow = 0.0
    methods: dict[str, int] = {}
    supports: list[float] = []
    areas: list[float] = []
    colour = centre = None
    for step in steps[i:j]:
        chain = step.homography @ chain
        dx, dy = dx + step.vector[0], dy + step.vector[1]
        subject += step.subject
        flow += step.flow
        methods[step.method] = methods.get(step.method, 0) + 1
        areas.append(step.moving_area)
        if step.support is not None:
            supports.append(step.support)
        if colour is None and step.colour is not None:
            colour, centre = step.colour, step.centre
    grid = max(1, min(height, width) // 16)
    camera = float(magnitude(induced_flow(chain, a.gray.shape, grid)).mean()) / diagonal * 100.0
    # The changed share at half size (a quarter of the pixels; a share does not need more).
    to_half = np.diag([a.half.shape[1] / width, a.half.shape[0] / height, 1.0])
    warped, valid = steady(b.half, to_half @ chain @ np.linalg.inv(to_half), a.half.shape)
    changed = (cv2.absdiff(a.half, warped) > settings.change_threshold) & valid
    change = float(changed.sum()) / max(1, int(valid.sum()))
    description: dict[str, Any] = {}
    if subject > 0:
        if abs(dx) >= abs(dy):
            direction = "right" if dx > 0 else "left"
        else:
            direction = "down" if dy > 0 else "up"
        description = {"direction": direction, "shift": [round(dx / width, 4), round(dy / height, 4)],
                       "colour": colour, "centre": list(centre) if centre else None}
    return PairMeasures(
        similarity=similarity(a, b), flow=flow, camera=camera, subject=subject,
        subject_area=float(np.mean(areas)) if areas else 0.0, change=change,
        sharpness_source=a.sharpness, sharpness_target=b.sharpness, blockiness=blockiness,
        camera_support=min(supports) if supports else None, methods=dict(sorted(methods.items())), description=description,
    )


def colour_name(rgb: np.ndarray) -> str:
    """A plain colour word for a mean RGB value."""
    r, g, b = (float(c) / 255.0 for c in rgb)
    hue, lightness, saturation = colorsys.rgb_to_hls(r, g, b)
    if saturation < 0.2 or lightness < 0.12 or lightness > 0.9:
        return "black" if lightness < 0.2 else "white" if lightness > 0.8 else "grey"
    degrees = hue * 360
    for limit, name in ((15, "red"), (40, "orange"), (70, "yellow"), (165, "green"), (200, "cyan"), (260, "blue"),
                        (290, "purple"), (340, "pink")):
        if degrees < limit:
            return name
    return "red"
