"""Which decoded frames are kept: one per sampling interval, never a one-frame outlier.

A kept frame is the first frame at or after each multiple of ``1 / sample_fps`` seconds (half a
frame early counts). A corrupt frame (OpenCV's Megamind_bugy.avi has one every fifth frame in
its first four seconds: grey bars, speckle, whole garbage frames) decodes without an error,
so nothing but its pixels says it is broken; when the frame due is a one-frame outlier
(:meth:`crispedit.video.transitions.Boundaries.outlier`) the frame after it is taken instead,
up to ``NUDGES`` frames later, and if all of them are outliers the one with the fewest outlier
pixels. A glitch lasts one frame, so the next frame is almost always clean, and it is only
1/fps later than the time asked for; the time recorded is the frame actually kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from crispedit.video.readers import Frame
from crispedit.video.transitions import Boundaries

#: Frames after the due one that may take its place.
NUDGES = 2


class FrameSampler:
    """Offer every decoded frame in order (after the boundary detectors have seen it); ``keep`` is called for each kept one."""

    def __init__(self, interval: float, fps: float, boundaries: Boundaries, keep: Callable[[Frame], None]) -> None:
        self.interval = interval
        self.half_frame = 0.5 / fps
        self.boundaries = boundaries
        self.keep = keep
        self.next_time = 0.0
        self.held: list[Frame] = []  # the frame due, then the frames that may replace it
        self.nudged = 0  # kept frames that replaced an outlier

    def offer(self, frame: Frame) -> None:
        due = frame.time >= self.next_time - self.half_frame
        if self.held and (due or len(self.held) > NUDGES):
            self._settle(final=True)
        if self.held:
            self.held.append(frame)
        elif due:
            self.held = [frame]
            self.next_time = (math.floor((frame.time + self.half_frame) / self.interval) + 1) * self.interval
        self._settle(final=False)

    def finish(self) -> None:
        """After the last frame (and ``Boundaries.finish``): keep what is still held."""
        self._settle(final=True)

    def _settle(self, final: bool) -> None:
        """Keep the first held frame that is not an outlier, once that is known; with ``final``, decide now."""
        for position, frame in enumerate(self.held):
            verdict = self.boundaries.outlier(frame.index)
            if verdict is None and not final:
                return
            if not verdict:
                self._take(frame, position)
                return
        if final and self.held:
            best = min(range(len(self.held)), key=lambda k: self.boundaries.share(self.held[k].index))
            self._take(self.held[best], best)

    def _take(self, frame: Frame, position: int) -> None:
        self.nudged += position > 0
        self.held = []
        self.keep(frame)
