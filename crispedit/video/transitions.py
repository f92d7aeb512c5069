"""Scene boundaries on the one decode pass: hard cuts, fades, dissolves, and one-frame glitches that are not cuts.

Every decoded frame's thumbnail (the cut detector's, about ``cut_width`` pixels wide) goes
through :class:`Boundaries`; :meth:`Boundaries.finish` then gives the cuts, the gradual
transitions as frame ranges, the glitch frames and the flat (black or white) frames. A frame
inside a transition, a flat frame and a glitch frame belong to no scene, and the frames
either side of a transition are different scenes, so no pair spans or sits inside one.

**Fades and dissolves: one test.** Inside a dissolve every frame is a mix of the frames
before and after it, ``F_k ~ a F_(k-w) + (1-a) F_(k+w)``; a fade is the same with a black or
white end. For each frame the best ``a`` is fitted by least squares on the grey thumbnail
(w = ``blend_seconds``, 0.25 s each side) and the mix's residual is divided by the residual
of the nearer end alone. On real clips (tests/video/real_clips.py) the ratio is 0.02-0.31
inside MoviePy's trailer's four fades through black and its dissolve, with the ends 30-90
grey levels apart; motion gives 0.5-1.3 (a mix of two positions is a ghost, not the frame in
between), a hard cut about 1 (the frame is one end, not a mix), the trailer's zooming title
text 0.5-0.58. A frame is *mixing* when the ratio is under ``blend_ratio`` and the ends differ
by more than ``blend_change``; runs of ``MIN_RUN`` mixing frames, merged across gaps up to 2w
(the bottom of a fade through black is a flat frame, not a mix), widened by w (the mix's ends)
and then while the mean grey keeps ramping the same way (a fade's slow start), are the
transitions. PySceneDetect's ThresholdDetector was tried first: on the trailer it reports
three fade midpoints without extents and misses the dissolve and the final fade-out.

**Glitch frames.** A frame unlike both neighbours while the neighbours are alike (HSV
difference over ``glitch_change`` to each, the neighbours' own under half of that) is a
glitch: a corrupt frame, a one-frame flash. The cut detector is fed the previous frame in its
place, so a glitch is not a cut and does not push a real cut next to it out of place
(OpenCV's Megamind_bugy.avi: a glitch at frame 40 was a cut, and the real cut at frame 98 was
found at 101 because of a glitch at 100).

**Partial glitches.** The same test per pixel, between neighbours alike overall (HSV
difference under ``glitch_change``, so never across a cut): the share of thumbnail pixels more
than ``OUTLIER_LEVEL`` grey levels from both neighbours while the neighbours agree there. Fast
motion gives such pixels too (up to 4.9 % of the frame in the trailer, 3.1 % in bikes.mp4),
but smoothly over several frames; a corrupt frame is a peak: over ``OUTLIER_SHARE`` and
``OUTLIER_PEAK`` times its neighbours' shares. On the eleven real clips that picks every
corrupt frame of Megamind_bugy.avi (every 5th frame from 5 to 120: grey bars, speckle, whole
frames) and 1-3 frames elsewhere. Such a frame is not a boundary; :mod:`crispedit.video.sampling`
keeps the frame after it instead.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from crispedit.video.scenes import CutDetector

#: Mixing frames in a row that make a transition.
MIN_RUN = 3
#: A transition's edge moves outwards while the mean grey keeps moving its way by this much a frame ...
RAMP_STEP = 0.3
#: ... for at most this long on each side.
RAMP_SECONDS = 1.0
#: A frame whose grey standard deviation is under this is flat; darker than ``DARK`` black, brighter than ``BRIGHT`` white.
FLAT_STD, DARK, BRIGHT = 6.0, 24.0, 232.0
#: Grey difference (0-255, thumbnail) that makes a pixel an outlier against a neighbour.
OUTLIER_LEVEL = 30
#: Share of outlier pixels, and its ratio to both neighbours' shares, that make a frame a (partial) glitch.
OUTLIER_SHARE, OUTLIER_PEAK = 0.003, 3.0


@dataclass(frozen=True)
class TransitionSettings:
    """The knobs of the gradual-transition and glitch tests (recipe keys of ``video_pairs``)."""

    blend_seconds: float = 0.25
    blend_ratio: float = 0.35
    blend_change: float = 12.0
    glitch_change: float = 12.0


@dataclass
class Transition:
    """A gradual transition: frames ``first`` to ``last`` (decoded indices, inclusive)."""

    first: int
    last: int
    kind: str  # fade-black, fade-white or dissolve

    def as_seconds(self, times: list[float]) -> dict[str, float | str]:
        return {"kind": self.kind, "start": round(times[self.first], 4), "end": round(times[min(self.last, len(times) - 1)], 4)}


@dataclass
class Found:
    """What the boundary detectors found in one clip (decoded frame indices)."""

    cuts: list[int]
    transitions: list[Transition]
    glitches: list[int]
    flat: list[int] = field(default_factory=list)

    def unusable(self) -> set[int]:
        """Frames no pair may use: inside a transition, flat, or a glitch."""
        out = set(self.glitches) | set(self.flat)
        for t in self.transitions:
            out.update(range(t.first, t.last + 1))
        return out

    def scenes(self, count: int) -> list[int | None]:
        """The scene of each of ``count`` frames (None: unusable); a new scene after every cut and every transition."""
        starts = sorted(set(self.cuts) | {t.last + 1 for t in self.transitions})
        bad = self.unusable()
        out: list[int | None] = []
        scene, pointer = 0, 0
        for index in range(count):
            while pointer < len(starts) and starts[pointer] <= index:
                scene += 1
                pointer += 1
            out.append(None if index in bad else scene)
        return out


def hsv_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute HSV difference: PySceneDetect's ContentDetector score with its default equal weights."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@dataclass
class _Seen:
    index: int
    bgr: np.ndarray
    hsv: np.ndarray
    grey: np.ndarray  # int16


class Boundaries:
    """Feed every decoded frame's thumbnail in order (:meth:`add`), then :meth:`finish`.

    Per-frame signals stay on the object for figures and tuning: ``changes`` (HSV difference to
    the previous frame), ``means`` (mean grey), ``ratios`` (the mix test; 1 where not measured)
    and ``shares`` (outlier pixels).
    """

    def __init__(self, cut_detector: CutDetector, fps: float, settings: TransitionSettings | None = None) -> None:
        self.cuts = cut_detector
        self.s = settings or TransitionSettings()
        self.fps = fps if fps and fps > 0 else 25.0
        self.w = max(2, round(self.s.blend_seconds * self.fps))
        self.window: deque[tuple[int, np.ndarray]] = deque(maxlen=2 * self.w + 1)
        self.mixing: list[int] = []
        self.dark: list[int] = []
        self.bright: list[int] = []
        self.glitches: list[int] = []
        self.previous: _Seen | None = None  # the frame before the pending one, as decoded
        self.pending: _Seen | None = None  # waiting for the frame after it
        self.shown: _Seen | None = None  # what the detectors saw last
        self.glitch_set: set[int] = set()
        self.finished = False
        self.changes: list[float] = []
        self.means: list[float] = []
        self.ratios: list[float] = []
        self.shares: list[float] = []
        self.count = 0

    def add(self, index: int, bgr: np.ndarray) -> None:
        """The next frame's thumbnail (BGR uint8); indices must increase by one from 0."""
        import cv2

        seen = _Seen(index, bgr, cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.int16))
        if self.pending is not None:
            self._release(seen)
        self.previous, self.pending = self.pending, seen
        self.count = index + 1

    def outlier(self, index: int) -> bool | None:
        """Whether frame ``index`` is a one-frame outlier (a glitch, whole or partial); None until that is known.

        Known once the frame two after it is in (the peak test compares with the next frame's share), or at the end.
        """
        if index + 1 >= len(self.shares) and not self.finished:
            return None
        if index in self.glitch_set:
            return True
        share = self.share(index)
        return share > OUTLIER_SHARE and share >= OUTLIER_PEAK * max(self.share(index - 1), self.share(index + 1))

    def share(self, index: int) -> float:
        """Share of frame ``index``'s thumbnail pixels unlike both neighbours while those agree (0 where unknown)."""
        return self.shares[index] if 0 <= index < len(self.shares) else 0.0

    def _release(self, after: _Seen | None) -> None:
        """Judge the pending frame against its neighbours, then hand it (or, a glitch, the frame before it) to the detectors."""
        frame, before = self.pending, self.previous
        assert frame is not None
        shown, share = frame, 0.0
        if before is not None and after is not None:
            d1, d2 = hsv_difference(before.hsv, frame.hsv), hsv_difference(frame.hsv, after.hsv)
            around = hsv_difference(before.hsv, after.hsv)
            if min(d1, d2) > self.s.glitch_change and around < 0.5 * min(d1, d2):
                self.glitches.append(frame.index)
                self.glitch_set.add(frame.index)
                shown = self.shown or frame  # the detectors see the frame before in its place
            if around < self.s.glitch_change:
                # Only between neighbours alike overall: next to a cut, a moving subject's pixels in the new scene's first
                # frame can sit where both the old scene and the next frame are background (a synthetic 64x48 cut did).
                unlike = (np.abs(frame.grey - before.grey) > OUTLIER_LEVEL) & (np.abs(frame.grey - after.grey) > OUTLIER_LEVEL)
                share = float((unlike & (np.abs(before.grey - after.grey) < OUTLIER_LEVEL / 2)).mean())
        self.shares.append(share)
        self.changes.append(hsv_difference(before.hsv, frame.hsv) if before is not None else 0.0)
        self.cuts.add(frame.index, shown.bgr)
        self._flat(frame.index, shown.grey)
        self.window.append((frame.index, shown.grey.astype(np.float32)))
        self._blend()
        self.shown = shown

    def _flat(self, index: int, grey: np.ndarray) -> None:
        mean, std = float(grey.mean()), float(grey.std())
        self.means.append(mean)
        if std < FLAT_STD:
            if mean < DARK:
                self.dark.append(index)
            elif mean > BRIGHT:
                self.bright.append(index)

    def _blend(self) -> None:
        """The mix test for the window's middle frame, once the window is full."""
        if len(self.window) < 2 * self.w + 1:
            return
        (_, a), (index, f), (_, b) = self.window[0], self.window[self.w], self.window[-1]
        d = a - b
        ratio = 1.0
        if float(np.abs(d).mean()) > self.s.blend_change:
            alpha = float(np.clip(((f - b) * d).sum() / max(float((d * d).sum()), 1e-6), 0.0, 1.0))
            residual = float(np.abs(f - (alpha * a + (1 - alpha) * b)).mean())
            nearer = min(float(np.abs(f - a).mean()), float(np.abs(f - b).mean()))
            ratio = residual / max(nearer, 1e-6)
            if ratio < self.s.blend_ratio:
                self.mixing.append(index)
        self.ratios += [1.0] * (index - len(self.ratios)) + [ratio]

    def finish(self) -> Found:
        """Everything found, once the last frame is in."""
        if self.pending is not None:
            self._release(None)
            self.previous, self.pending = self.pending, None
        self.finished = True
        cuts = self.cuts.finish()
        self.ratios += [1.0] * (self.count - len(self.ratios))
        glitches = set(self.glitches)
        return Found(
            cuts=[c for c in cuts if c not in glitches], transitions=self._transitions(), glitches=list(self.glitches),
            flat=sorted(set(self.dark) | set(self.bright)),
        )

    def _ramp(self, edge: int, direction: int) -> int:
        """Move a transition's edge outwards while the mean grey keeps changing the way it changes at the edge.

        The mix test starts where the two ends differ clearly; a fade's slow start (the trailer's
        dissolve dims for 0.25 s before that) is still part of it.
        """
        means, limit = self.means, max(1, round(RAMP_SECONDS * self.fps))
        inward = edge - direction
        if not (0 <= inward < len(means) and 0 <= edge < len(means)):
            return edge
        sign = np.sign(means[inward] - means[edge])
        for _ in range(limit):
            outer = edge + direction
            if not 0 <= outer < len(means):
                break
            change = means[edge] - means[outer]
            if sign == 0 or np.sign(change) != sign or abs(change) < RAMP_STEP:
                break
            edge = outer
        return edge

    def _transitions(self) -> list[Transition]:
        runs: list[list[int]] = []
        for index in self.mixing:
            if runs and index - runs[-1][1] <= 1:
                runs[-1][1] = index
            else:
                runs.append([index, index])
        merged: list[list[int]] = []
        for first, last in (r for r in runs if r[1] - r[0] + 1 >= MIN_RUN):
            if merged and first - merged[-1][1] <= 2 * self.w + 1:
                merged[-1][1] = last
            else:
                merged.append([first, last])
        dark, bright = set(self.dark), set(self.bright)
        out = []
        for first, last in merged:
            first, last = self._ramp(max(0, first - self.w), -1), self._ramp(min(self.count - 1, last + self.w), +1)
            span = set(range(first - 1, last + 2))
            kind = "fade-black" if span & dark else "fade-white" if span & bright else "dissolve"
            out.append(Transition(first, last, kind))
        return out
