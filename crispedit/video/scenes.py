"""Scene cuts with PySceneDetect's detectors, fed the frames our own decode pass already has.

``scenedetect.detect(path, ...)`` would open and decode the file a second time; its detector
classes take frames one at a time (``process_frame``), so the decode loop hands each frame,
downscaled, to the detector and the clip is decoded once. A pair is only ever made of two
frames of one scene, so no pair spans a cut.

Defaults (PySceneDetect@131c5f60, research/video.md §3): ContentDetector threshold 27 and
AdaptiveDetector ratio 3.0, window 2, min_content_val 15, both on HSV differences of frames
downscaled to about 256 px wide (the library's own auto-downscale). Adaptive is the default
here: its published F1 on BBC Planet Earth is 91.6 against Content's 86.7 (benchmark/README.md).
The minimum scene length is 0.6 s, the library's benchmark-sweep winner, rather than its
15-frame default, so it means the same at any frame rate.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any

import numpy as np


class CutDetector:
    """Cuts in one clip: frame indices where a new scene starts.

    ``add`` each decoded frame (BGR, any small size) in order, then ``finish``.
    """

    def __init__(
        self,
        kind: str,
        fps: float,
        *,
        content_threshold: float = 27.0,
        adaptive_threshold: float = 3.0,
        adaptive_window: int = 2,
        min_content_val: float = 15.0,
        min_scene_seconds: float = 0.6,
    ) -> None:
        from scenedetect import AdaptiveDetector, ContentDetector

        self.fps = fps if fps and fps > 0 else 25.0
        min_frames = max(1, round(min_scene_seconds * self.fps))
        self.detector: Any
        if kind == "content":
            self.detector = ContentDetector(threshold=content_threshold, min_scene_len=min_frames)
        elif kind == "adaptive":
            self.detector = AdaptiveDetector(
                adaptive_threshold=adaptive_threshold, min_scene_len=min_frames,
                window_width=adaptive_window, min_content_val=min_content_val,
            )
        else:
            raise ValueError(f"unknown cut detector {kind!r} (adaptive or content)")
        self.cuts: list[int] = []
        self.last = -1

    def _timecode(self, index: int) -> Any:
        from scenedetect import FrameTimecode

        return FrameTimecode(index, fps=self.fps)

    def add(self, index: int, bgr: np.ndarray) -> None:
        """The next frame; indices must increase by one."""
        self.last = index
        self.cuts += [tc.frame_num for tc in self.detector.process_frame(self._timecode(index), bgr)]

    def finish(self) -> list[int]:
        """All cut frame indices, sorted (a detector may hold back a few frames until the end)."""
        if self.last >= 0:
            self.cuts += [tc.frame_num for tc in self.detector.post_process(self._timecode(self.last))]
        return sorted({c for c in self.cuts if c > 0})


def scene_of(frame_index: int, cuts: list[int]) -> int:
    """The scene number of a frame: how many cuts come at or before it."""
    return bisect_right(cuts, frame_index)

