"""Mine one video: decode it once, find its boundaries, measure candidate pairs, keep the best.

This is what the worker process runs (crispedit.video.worker), so a decoder that hangs or
crashes takes down only that process. The decode loop hands every frame, small, to the
boundary detectors (cuts, fades, dissolves, glitches: crispedit.video.transitions) and keeps
one frame per ``1 / sample_fps`` seconds at the pair's size (crispedit.video.sampling), with
its blockiness measured at its own size. Every time is the reader's, from the clip's timeline
(crispedit.video.timeline), and a kept frame's recorded time is the time of the picture kept.
Nothing relies on the container's frame count: a clip is cut short when its decoded footage
is shorter than the seconds the container declares. Analysis then works on the kept frames.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crispedit.video.measures import FrameFeatures, MeasureSettings, Step, frame_features, measure_pair, measure_step, similarity
from crispedit.video.pairs import Candidate, candidates, cheap_refusal, refusal, select, why_none
from crispedit.video.quality import blockiness
from crispedit.video.readers import Frame, Reader, VideoUnreadable, sample_step
from crispedit.video.sampling import FrameSampler
from crispedit.video.scenes import CutDetector
from crispedit.video.settings import MiningSettings
from crispedit.video.transitions import Boundaries, TransitionSettings


class Rejected(Exception):
    """The video gives no pair; ``reason`` is 'category: detail'."""


@dataclass
class Decoded:
    """What one decode pass leaves: kept frames, their times and scenes, and what was seen on the way."""

    frames: list[np.ndarray]
    times: list[float]
    indices: list[int]
    scenes: list[int | None]  # None: the kept frame is inside a transition, flat, or a glitch
    blocks: list[float]  # blockiness of each kept frame at its own size
    cuts: list[float]
    transitions: list[dict[str, Any]]
    glitches: list[float]
    decoded: int
    decoded_seconds: float
    declared: int | None
    declared_seconds: float | None
    native_fps: float | None
    codec: str
    size: tuple[int, int]
    timing: dict[str, Any] = field(default_factory=dict)  # the reader's report: where the times came from
    nudged: int = 0  # kept frames taken one or two frames late because the frame due was a glitch
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
    """One sequential pass: every frame to the boundary detectors, one kept frame per sampling interval."""
    try:
        info = reader.open(path)
    except VideoUnreadable as error:
        reader.close()
        raise Rejected(str(error)) from None
    if info.width <= 0 or info.height <= 0:
        reader.close()
        raise Rejected("undecodable video: the stream has no picture size")
    size = fit(info.width, info.height, settings.max_side, settings.size_multiple)
    cut_step = sample_step(info.width, settings.cut_width)
    fps = info.fps or 25.0
    detector = CutDetector(
        settings.cut_detector, fps, content_threshold=settings.content_threshold,
        adaptive_threshold=settings.adaptive_threshold, adaptive_window=settings.adaptive_window,
        min_content_val=settings.min_content_val, min_scene_seconds=settings.min_scene_seconds,
    )
    boundaries = Boundaries(detector, fps, TransitionSettings(
        blend_ratio=settings.blend_ratio, blend_change=settings.blend_change, glitch_change=settings.glitch_change))
    frames: list[np.ndarray] = []
    times: list[float] = []
    indices: list[int] = []
    blocks: list[float] = []

    def keep(frame: Frame) -> None:
        frames.append(frame.rgb(size))
        times.append(round(frame.time, 4))
        indices.append(frame.index)
        blocks.append(blockiness(frame.luma()))

    sampler = FrameSampler(1.0 / settings.sample_fps, fps, boundaries, keep)
    all_times: list[float] = []
    stopped = None
    limited = False
    try:
        for frame in reader.frames():
            if frame.time > settings.max_seconds:
                limited = True
                break
            all_times.append(frame.time)
            boundaries.add(frame.index, frame.small_bgr(cut_step))
            sampler.offer(frame)
    except VideoUnreadable as error:
        stopped = error.detail
    finally:
        timing = reader.report()
        reader.close()
    decoded = len(all_times)
    found = boundaries.finish()
    sampler.finish()
    per_frame = found.scenes(decoded)
    return Decoded(
        frames=frames, times=times, indices=indices, scenes=[per_frame[i] for i in indices], blocks=blocks,
        cuts=[round(all_times[c], 4) for c in found.cuts if c < decoded],
        transitions=[t.as_seconds(all_times) for t in found.transitions],
        glitches=[round(all_times[g], 4) for g in found.glitches if g < decoded],
        decoded=decoded, decoded_seconds=info.timeline.seconds(decoded), declared=info.declared_frames,
        declared_seconds=info.declared_seconds, native_fps=info.fps, codec=info.codec, size=size,
        timing=timing, nudged=sampler.nudged, stopped=stopped, limited=limited,
    )


def check_decoded(clip: Decoded, settings: MiningSettings) -> None:
    """Reject what decoding showed: nothing decoded, cut short (by seconds of footage), too short.

    Frame counts are only reported: an AVI's "repeat the previous frame" entries count in its
    declared frames but hold no picture (OpenCV's tree.avi: 444 entries, 68 pictures, 29.6 s of
    29.6 s), so comparing counts rejected a complete file.
    """
    if clip.decoded == 0:
        detail = f" ({clip.stopped})" if clip.stopped else ""
        raise Rejected(f"undecodable video: no frame could be decoded{detail}")
    seconds = clip.decoded_seconds
    if not clip.limited and clip.declared_seconds:
        # The declared length is only compared with what decoded, never used to drive decoding.
        if seconds < (1.0 - settings.truncation_tolerance) * clip.declared_seconds:
            detail = f"; {clip.stopped}" if clip.stopped else ""
            raise Rejected(f"truncated video: decoded {seconds:.2f} s of the {clip.declared_seconds:.2f} s the container declares "
                           f"({clip.decoded} frames){detail}")
    if clip.decoded < 2 or seconds < settings.min_seconds:
        raise Rejected(f"video too short: {clip.decoded} frame(s), {seconds:.2f} s decoded; min_seconds is {settings.min_seconds:g}")


def measure_settings(settings: MiningSettings) -> MeasureSettings:
    return MeasureSettings(
        flow_preset=settings.flow_preset, ransac_threshold=settings.ransac_threshold,
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
        c.measures = measure_pair(features, ordered, c.i, c.j, knobs, max(clip.blocks[c.i], clip.blocks[c.j]))  # type: ignore[arg-type]
        c.refused = refusal(c.measures, settings)
    chosen = select(found, settings)
    info = {
        "frames_decoded": clip.decoded,
        "frames_declared": clip.declared,
        "frames_kept": len(clip.frames),
        "frames_nudged": clip.nudged,
        "seconds_decoded": round(clip.decoded_seconds, 4),
        "seconds_declared": None if clip.declared_seconds is None else round(clip.declared_seconds, 4),
        "native_fps": None if clip.native_fps is None else round(clip.native_fps, 4),
        "codec": clip.codec,
        "cuts": clip.cuts,
        "transitions": clip.transitions,
        "glitches": clip.glitches,
        "scenes": len({s for s in clip.scenes if s is not None}),
        "candidates": len(found),
        "refused": _counts(found),
        **clip.timing,
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
