"""Mine one video: decode it once, find its cuts, measure candidate pairs, keep the best.

This is what the worker process runs (crispedit.video.worker), so a decoder that hangs or
crashes takes down only that process. The decode loop hands every frame, small, to the cut
detector and keeps one frame per ``1 / sample_fps`` seconds at the pair's size; nothing
relies on the container's frame count. Analysis then works on the kept frames only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crispedit.video.measures import FrameFeatures, MeasureSettings, Step, frame_features, measure_pair, measure_step, similarity
from crispedit.video.pairs import Candidate, candidates, cheap_refusal, refusal, select, why_none
from crispedit.video.readers import Reader, VideoUnreadable, sample_step
from crispedit.video.scenes import CutDetector, scene_of
from crispedit.video.settings import MiningSettings


class Rejected(Exception):
    """The video gives no pair; ``reason`` is 'category: detail'."""


@dataclass
class Decoded:
    """What one decode pass leaves: kept frames, their times and scenes, and what was seen on the way."""

    frames: list[np.ndarray]
    times: list[float]
    indices: list[int]
    cuts: list[float]
    scenes: list[int]
    decoded: int
    declared: int | None
    declared_seconds: float | None
    native_fps: float | None
    codec: str
    size: tuple[int, int]
    stopped: str | None = None
    limited: bool = False  # decoding stopped at max_seconds, not at the end of the file


@dataclass
class MinedPair:
    source: np.ndarray
    target: np.ndarray
    t_source: float
    t_target: float
    scene: int
    scores: dict[str, float | None]
    methods: dict[str, int]
    description: dict[str, Any]


@dataclass
class Mined:
    pairs: list[MinedPair]
    info: dict[str, Any] = field(default_factory=dict)


def fit(width: int, height: int, side: int, multiple: int = 1) -> tuple[int, int]:
    """(width, height) with the long side at most ``side`` (never enlarged), rounded down to ``multiple``."""
    scale = min(1.0, side / max(width, height))
    w = max(multiple, int(width * scale) // multiple * multiple)
    h = max(multiple, int(height * scale) // multiple * multiple)
    return w, h


def decode(path: str, reader: Reader, settings: MiningSettings) -> Decoded:
    """One sequential pass: cut detection on every frame, one kept frame per sampling interval."""
    try:
        info = reader.open(path)
    except VideoUnreadable as error:
        reader.close()
        raise Rejected(str(error)) from None
    if info.width <= 0 or info.height <= 0:
        raise Rejected("undecodable video: the stream has no picture size")
    size = fit(info.width, info.height, settings.max_side, settings.size_multiple)
    cut_step = sample_step(info.width, settings.cut_width)
    detector = CutDetector(
        settings.cut_detector, info.fps or 25.0, content_threshold=settings.content_threshold,
        adaptive_threshold=settings.adaptive_threshold, adaptive_window=settings.adaptive_window,
        min_content_val=settings.min_content_val, min_scene_seconds=settings.min_scene_seconds,
    )
    interval = 1.0 / settings.sample_fps
    half_frame = 0.5 / (info.fps or 25.0)
    frames: list[np.ndarray] = []
    times: list[float] = []
    indices: list[int] = []
    all_times: list[float] = []
    start: float | None = None
    next_time = 0.0
    stopped = None
    limited = False
    decoded = 0
    try:
        for frame in reader.frames():
            if start is None:
                start = frame.time
            t = frame.time - start
            if t > settings.max_seconds:
                limited = True
                break
            all_times.append(t)
            decoded += 1
            detector.add(len(all_times) - 1, frame.small_bgr(cut_step))
            if t >= next_time - half_frame:
                frames.append(frame.rgb(size))
                times.append(round(t, 4))
                indices.append(len(all_times) - 1)
                next_time = (math.floor((t + half_frame) / interval) + 1) * interval
    except VideoUnreadable as error:
        stopped = error.detail
    finally:
        reader.close()
    cuts = detector.finish()
    scenes = [scene_of(i, cuts) for i in indices]
    cut_times = [round(all_times[c], 4) for c in cuts if c < len(all_times)]
    return Decoded(frames, times, indices, cut_times, scenes, decoded, info.declared_frames, info.declared_seconds, info.fps,
                   info.codec, size, stopped, limited)


def check_decoded(clip: Decoded, settings: MiningSettings) -> None:
    """Reject what decoding showed: nothing decoded, cut short, too short."""
    if clip.decoded == 0:
        detail = f" ({clip.stopped})" if clip.stopped else ""
        raise Rejected(f"undecodable video: no frame could be decoded{detail}")
    fps = clip.native_fps or 25.0
    seconds = (clip.times[-1] if clip.times else 0.0) + 1.0 / fps
    if not clip.limited:
        # The declared length is only compared with what decoded, never used to drive decoding.
        keep = 1.0 - settings.truncation_tolerance
        detail = f"; {clip.stopped}" if clip.stopped else ""
        if clip.declared and clip.decoded < keep * clip.declared:
            raise Rejected(f"truncated video: decoded {clip.decoded} of the {clip.declared} frames the container declares{detail}")
        if not clip.declared and clip.declared_seconds and seconds < keep * clip.declared_seconds:
            raise Rejected(f"truncated video: decoded {seconds:.2f} s of the {clip.declared_seconds:.2f} s the container declares{detail}")
    if clip.decoded < 2 or seconds < settings.min_seconds:
        raise Rejected(f"video too short: {clip.decoded} frame(s), {seconds:.2f} s decoded; min_seconds is {settings.min_seconds:g}")


def measure_settings(settings: MiningSettings) -> MeasureSettings:
    return MeasureSettings(
        flow_preset=settings.flow_preset, ransac_threshold=settings.ransac_threshold,
        min_camera_matches=settings.min_camera_matches, min_inlier_coverage=settings.min_inlier_coverage,
        moving_threshold=settings.moving_threshold, min_moving_area=settings.min_moving_area,
        change_threshold=settings.change_threshold, sharpness_side=settings.sharpness_side,
    )


def analyse(clip: Decoded, settings: MiningSettings) -> Mined:
    """Measure the candidates of every scene and keep the best pairs (or raise Rejected with why none)."""
    knobs = measure_settings(settings)
    width, height = clip.size
    scale = settings.analysis_side / max(width, height)
    analysis = (max(8, round(width * scale)), max(8, round(height * scale)))
    features: list[FrameFeatures] = [frame_features(frame, analysis, knobs) for frame in clip.frames]
    found = candidates(clip.times, clip.scenes, settings)
    steps: dict[int, Step] = {}
    for c in found:
        c.refused = cheap_refusal(features[c.i].sharpness, features[c.j].sharpness, similarity(features[c.i], features[c.j]), settings)
        if c.refused is not None:
            continue
        for k in range(c.i, c.j):
            if k not in steps:
                steps[k] = measure_step(features[k], features[k + 1], knobs)
        ordered = [steps.get(k) for k in range(len(features) - 1)]
        c.measures = measure_pair(features, ordered, c.i, c.j, knobs)  # type: ignore[arg-type]
        c.refused = refusal(c.measures, settings)
    chosen = select(found, settings)
    info = {
        "frames_decoded": clip.decoded,
        "frames_declared": clip.declared,
        "frames_kept": len(clip.frames),
        "native_fps": None if clip.native_fps is None else round(clip.native_fps, 4),
        "codec": clip.codec,
        "cuts": clip.cuts,
        "scenes": (max(clip.scenes) + 1) if clip.scenes else 0,
        "candidates": len(found),
        "refused": _counts(found),
    }
    if not chosen:
        raise Rejected(why_none(found, settings))
    pairs = [_pair(clip, c) for c in chosen]
    return Mined(pairs, info)


def _counts(found: list[Candidate]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in found:
        if c.refused:
            counts[c.refused] = counts.get(c.refused, 0) + 1
    return dict(sorted(counts.items()))


def _pair(clip: Decoded, c: Candidate) -> MinedPair:
    assert c.measures is not None
    return MinedPair(
        source=clip.frames[c.i], target=clip.frames[c.j], t_source=c.t_source, t_target=c.t_target, scene=c.scene,
        scores=c.measures.scores(), methods=c.measures.methods, description=c.measures.description,
    )


def mine(path: str, reader: Reader, settings: MiningSettings, decoded: Callable[[dict[str, Any]], None] | None = None) -> Mined:
    """Decode and analyse one video; ``decoded`` is told when decoding is over (the worker's timeout moves on)."""
    clip = decode(path, reader, settings)
    if decoded is not None:
        decoded({"frames": clip.decoded})
    check_decoded(clip, settings)
    return analyse(clip, settings)
