"""What is measured on sampled frames, on steps between consecutive frames, and on candidate pairs.

Per frame (once): the grey analysis image, an HSV histogram, the Laplacian variance, and ORB
features. Per *step* (two consecutive sampled frames of one scene, 0.5 s apart at 2 fps):
the camera's motion, a RANSAC homography on ORB matches (refused when the matches are too few
or crowd into one part of the frame, where they are likely the subject), else fitted to a
grid of the optical flow's own vectors; then DIS optical flow between the first frame and the
second warped into its view, which is the subject's (residual) motion. Per *pair* (i, j):
the steps from i to j are chained (homographies multiplied, subject motions added up), and
the second frame warped into the first's view gives the area that changed.

Why steps: dense flow cannot follow a part that moves further than about its own size between
the two images (measured for this module: DIS and Farneback both lose a 12-px square moved
8 px or more at 64x48, and a 60-px square moved 40 px at 320x240), and pairs 1-4 s apart often
move that far. Consecutive samples move a little, flow follows them, and a video of n samples
needs n-1 flows whatever the number of candidate pairs. Costs at 427x240 on one core
(research/video.md §4): DIS FAST 1.4 ms, ORB(1000)+matching+RANSAC 21 ms, Laplacian 0.14 ms,
two histograms 0.06 ms.

Motions are in percent of the analysis frame's diagonal, so one threshold means the same at
64x48 and at 1080p.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: ORB features per analysis frame (research/video.md §4 timed 1000 at 427x240; a homography needs far fewer, and
#: brute-force matching costs grow with the square of the count).
ORB_FEATURES = 300
#: A 4x4 grid over the frame; ORB inliers must fall in enough of its cells to describe the scene, not one object.
COVERAGE_GRID = 4
#: A homography replaces the 4-DoF similarity only when it keeps this many times the inliers (plus 8).
HOMOGRAPHY_GAIN = 1.2
#: Share of the frame's short side left out along every edge when looking for moving pixels.
BORDER = 0.04
#: Step (pixels of the analysis frame) of the flow vectors a fallback homography is fitted to.
FLOW_GRID_STEP = 6


@dataclass(frozen=True)
class MeasureSettings:
    """The knobs measures need (from the mining stage's parameters)."""

    flow_preset: str = "fast"
    ransac_threshold: float = 0.6
    min_camera_matches: int = 20
    min_inlier_coverage: float = 0.25
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
    _orb: tuple[np.ndarray, np.ndarray | None] | None = field(default=None, repr=False)

    def orb(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(points Nx2 float32, descriptors) of ORB keypoints, computed once."""
        if self._orb is None:
            import cv2

            border = max(4, min(31, min(self.gray.shape) // 6))  # ORB's 31-px border would leave nothing of a tiny frame
            orb = cv2.ORB_create(nfeatures=ORB_FEATURES, edgeThreshold=border, patchSize=border)
            keypoints, descriptors = orb.detectAndCompute(self.gray, None)
            self._orb = (np.array([k.pt for k in keypoints], np.float32).reshape(-1, 2), descriptors)
        return self._orb


def frame_features(rgb: np.ndarray, analysis: tuple[int, int], settings: MeasureSettings) -> FrameFeatures:
    """Features of a kept frame: sharpness from the frame itself, the rest at the analysis size.

    The analysis size is fixed (frames are scaled up as well as down): DIS works on patches of
    fixed size, and on a 96x72 frame it followed a 3-px motion as 0.6 px (measured for this
    module), while at 320 px it is within a few percent.
    """
    import cv2

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


@dataclass
class Camera:
    """The camera's motion between two frames: a homography and how it was found."""

    homography: np.ndarray | None
    method: str  # "orb", "flow", or "none" when neither could be fitted
    matches: int
    inlier_ratio: float | None


def camera_from_orb(a: FrameFeatures, b: FrameFeatures, settings: MeasureSettings) -> Camera:
    """RANSAC homography on cross-checked ORB matches; refused when too few or crowded into one area.

    research/video.md §4: on low-texture frames ORB returned fewer than 4 matches and
    ``findHomography`` raised, hence the guards. With a few dozen matches a homography's eight
    degrees of freedom can bend to fit the moving subject plus a few background points (seen
    here on 96x72 clips: a still camera read as 1.9 % motion), so a 4-DoF similarity is fitted
    too and the homography is used only when it explains clearly more matches.
    """
    import cv2

    points_a, desc_a = a.orb()
    points_b, desc_b = b.orb()
    if desc_a is None or desc_b is None or len(points_a) < 4 or len(points_b) < 4:
        return Camera(None, "none", 0, None)
    matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(desc_a, desc_b)
    if len(matches) < max(4, settings.min_camera_matches):
        return Camera(None, "none", len(matches), None)
    src = points_a[[m.queryIdx for m in matches]]
    dst = points_b[[m.trainIdx for m in matches]]
    threshold = ransac_px(settings, a.gray.shape)
    try:
        homography, h_inliers = cv2.findHomography(src, dst, cv2.RANSAC, threshold)
        similar, s_inliers = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=threshold)
    except cv2.error:
        return Camera(None, "none", len(matches), None)
    h_count = int(h_inliers.sum()) if homography is not None and h_inliers is not None else 0
    s_count = int(s_inliers.sum()) if similar is not None and s_inliers is not None else 0
    if h_count == 0 and s_count == 0:
        return Camera(None, "none", len(matches), None)
    if h_count >= HOMOGRAPHY_GAIN * s_count + 8:
        model, keep = homography, h_inliers.ravel().astype(bool)
    else:
        model, keep = np.vstack([similar, [0.0, 0.0, 1.0]]), s_inliers.ravel().astype(bool)
    ratio = float(keep.mean())
    if keep.sum() < max(4, settings.min_camera_matches) or coverage(src[keep], a.gray.shape) < settings.min_inlier_coverage:
        return Camera(None, "none", len(matches), ratio)
    return Camera(model, "orb", len(matches), ratio)


def camera_from_flow(flow: np.ndarray, settings: MeasureSettings) -> Camera:
    """RANSAC homography on a grid of flow vectors (the frame's border left out): the dominant motion."""
    import cv2

    height, width = flow.shape[:2]
    margin = max(1, min(height, width) // 10)
    ys, xs = np.mgrid[margin : height - margin : FLOW_GRID_STEP, margin : width - margin : FLOW_GRID_STEP]
    if xs.size < 8:
        return Camera(None, "none", 0, None)
    src = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float32)
    dst = src + flow[ys.ravel(), xs.ravel()]
    try:
        homography, inliers = cv2.findHomography(src, dst, cv2.RANSAC, ransac_px(settings, flow.shape))
    except cv2.error:
        return Camera(None, "none", len(src), None)
    if homography is None or inliers is None:
        return Camera(None, "none", len(src), None)
    return Camera(homography, "flow", len(src), float(inliers.mean()))


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


def coverage(points: np.ndarray, shape: tuple[int, ...]) -> float:
    """Fraction of the cells of a 4x4 grid over the frame that hold at least one point."""
    height, width = shape[:2]
    cells = {(min(COVERAGE_GRID - 1, int(y * COVERAGE_GRID / height)), min(COVERAGE_GRID - 1, int(x * COVERAGE_GRID / width)))
             for x, y in points}
    return len(cells) / COVERAGE_GRID**2


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
    """Motion between two consecutive sampled frames of one scene."""

    homography: np.ndarray  # identity when the camera could not be estimated
    method: str
    matches: int
    inlier_ratio: float | None
    flow: float  # mean total flow, % of the diagonal
    subject: float  # mean residual flow over the moving pixels, % of the diagonal (0 when nothing moves)
    vector: tuple[float, float]  # mean residual over the moving pixels, pixels (x, y)
    moving_area: float
    colour: str | None  # colour word of the moving pixels in the first frame
    centre: tuple[float, float] | None  # where they are, as fractions of width and height


def measure_step(a: FrameFeatures, b: FrameFeatures, settings: MeasureSettings) -> Step:
    """Camera (ORB, else flow) and the residual subject motion between consecutive frames."""
    import cv2

    height, width = a.gray.shape[:2]
    diagonal = math.hypot(height, width)
    camera = camera_from_orb(a, b, settings)
    if camera.homography is not None:
        # b warped into a's view: the flow between them is the subject's motion alone.
        warped, valid = steady(b.gray, camera.homography, a.gray.shape)
        residual = optical_flow(a.gray, warped, settings.flow_preset)
        total = induced_flow(camera.homography, a.gray.shape) + residual
    else:
        orb_matches, orb_ratio = camera.matches, camera.inlier_ratio
        total = optical_flow(a.gray, b.gray, settings.flow_preset)
        camera = camera_from_flow(total, settings)
        valid = np.ones((height, width), bool)
        if camera.homography is None:
            camera = Camera(None, "none", orb_matches, orb_ratio)
            residual = total
        else:
            induced = induced_flow(camera.homography, a.gray.shape)
            residual = total - induced
            # Pixels the camera carries out of view have no counterpart in b: their flow means nothing.
            ys, xs = np.mgrid[0:height, 0:width]
            to_x, to_y = xs + induced[..., 0], ys + induced[..., 1]
            valid = (to_x >= 0) & (to_x <= width - 1) & (to_y >= 0) & (to_y <= height - 1)
    length = magnitude(residual)
    # Flow next to the frame's edges (and to content entering or leaving view) is unreliable: leave a margin out.
    margin = max(2, round(BORDER * min(height, width)))
    inner = np.zeros((height, width), bool)
    inner[margin:-margin, margin:-margin] = True
    valid = np.logical_and(inner, cv2.erode(valid.astype(np.uint8), np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)) > 0)
    moving = (length > settings.moving_threshold / 100.0 * diagonal) & valid
    area = float(moving.mean())
    subject, vector, colour, centre = 0.0, (0.0, 0.0), None, None
    if area >= settings.min_moving_area:
        subject = float(length[moving].mean()) / diagonal * 100.0
        vector = (float(residual[..., 0][moving].mean()), float(residual[..., 1][moving].mean()))
        colour = colour_name(a.rgb[moving].reshape(-1, 3).mean(0))
        ys, xs = np.nonzero(moving)
        centre = (round(float(xs.mean()) / width, 3), round(float(ys.mean()) / height, 3))
    return Step(
        homography=camera.homography if camera.homography is not None else np.eye(3),
        method=camera.method, matches=camera.matches, inlier_ratio=camera.inlier_ratio,
        flow=float(magnitude(total).mean()) / diagonal * 100.0,
        subject=subject, vector=vector, moving_area=area, colour=colour, centre=centre,
    )


@dataclass
class PairMeasures:
    """Everything measured on one candidate pair (motions in % of the frame diagonal)."""

    similarity: float
    flow: float
    camera: float
    subject: float
    change: float
    sharpness_source: float
    sharpness_target: float
    camera_inliers: float | None
    methods: dict[str, int]
    description: dict[str, Any]

    def scores(self) -> dict[str, float | None]:
        """The pair's score columns (rounded so equal inputs give equal bytes on any machine)."""
        return {
            "video_similarity": round(self.similarity, 4),
            "video_flow": round(self.flow, 4),
            "video_camera": round(self.camera, 4),
            "video_subject": round(self.subject, 4),
            "video_change": round(self.change, 4),
            "video_sharpness_source": round(self.sharpness_source, 2),
            "video_sharpness_target": round(self.sharpness_target, 2),
            "video_camera_inliers": None if self.camera_inliers is None else round(self.camera_inliers, 4),
        }


def measure_pair(frames: list[FrameFeatures], steps: list[Step], i: int, j: int, settings: MeasureSettings) -> PairMeasures:
    """Chain the steps i..j-1: camera = product of homographies, subject = motion added up; change = warped difference."""
    import cv2

    a, b = frames[i], frames[j]
    height, width = a.gray.shape[:2]
    diagonal = math.hypot(height, width)
    chain = np.eye(3)
    dx = dy = subject = flow = 0.0
    methods: dict[str, int] = {}
    inliers: list[float] = []
    colour = centre = None
    for step in steps[i:j]:
        chain = step.homography @ chain
        dx, dy = dx + step.vector[0], dy + step.vector[1]
        subject += step.subject
        flow += step.flow
        methods[step.method] = methods.get(step.method, 0) + 1
        if step.inlier_ratio is not None:
            inliers.append(step.inlier_ratio)
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
        similarity=similarity(a, b), flow=flow, camera=camera, subject=subject, change=change,
        sharpness_source=a.sharpness, sharpness_target=b.sharpness,
        camera_inliers=min(inliers) if inliers else None, methods=dict(sorted(methods.items())), description=description,
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
