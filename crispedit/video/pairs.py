"""Which frame pairs are candidates, which pass the checks, and which are kept.

Candidates are two kept frames of one scene between ``min_gap`` and ``max_gap`` seconds apart,
with no unusable frame between them: a kept frame inside a fade or dissolve, flat (black or
white) or a glitch has no scene (``None``, crispedit.video.transitions) and is never a pair's
frame, nor jumped over, so no pair spans or sits inside a transition. A candidate passes when
both frames are sharp, their colours are alike, the camera barely moved, the subject moved
within the band, a real share of the frame changed, and neither frame is blocky (last, so a
clip refused for its motion keeps that reason). Within each scene the passing pairs are
ranked by the share of the frame that changed (the visible size of the edit), then by subject
motion, and the best ``pairs_per_scene`` are kept that share no stretch of time with a kept
one and whose sources are ``min_pair_gap`` apart, so a long single shot gives several pairs;
across the video the best ``max_pairs`` remain.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from crispedit.video.measures import PairMeasures
from crispedit.video.settings import MiningSettings


@dataclass
class Candidate:
    i: int
    j: int
    t_source: float
    t_target: float
    scene: int
    measures: PairMeasures | None = None
    refused: str | None = None

    @property
    def rank(self) -> tuple[float, float, float, int]:
        assert self.measures is not None
        return (-round(self.measures.change, 4), -round(self.measures.subject, 4), self.t_source, self.j)


def candidates(times: list[float], scenes: list[int | None], settings: MiningSettings) -> list[Candidate]:
    """Every (i, j) of one scene, no unusable frame between them, ``min_gap`` to ``max_gap`` seconds apart, in time order."""
    eps = 1e-6
    found = []
    for i, t_i in enumerate(times):
        scene = scenes[i]
        if scene is None:
            continue
        for j in range(i + 1, len(times)):
            gap = times[j] - t_i
            if gap > settings.max_gap + eps or scenes[j] != scene:
                break  # another scene or an unusable frame: nothing past it belongs to this stretch
            if gap >= settings.min_gap - eps:
                found.append(Candidate(i, j, t_i, times[j], scene))
    return found


def cheap_refusal(sharp_i: float, sharp_j: float, similar: float, settings: MiningSettings) -> str | None:
    """Checks that need no motion measure, run first so refused pairs cost almost nothing."""
    if min(sharp_i, sharp_j) < settings.min_sharpness:
        return "blurry"
    if similar < settings.min_similarity:
        return "dissimilar"
    return None


def refusal(m: PairMeasures, settings: MiningSettings) -> str | None:
    """The first check a measured pair fails (a short name), or None."""
    reason = cheap_refusal(m.sharpness_source, m.sharpness_target, m.similarity, settings)
    if reason:
        return reason
    if m.camera > settings.max_camera_motion:
        return "camera motion"
    if m.subject < settings.min_subject_motion:
        return "too little motion"
    if m.subject > settings.max_subject_motion:
        return "too much motion"
    if m.change < settings.min_change:
        return "too little change"
    if m.change > settings.max_change:
        return "too much change"
    if m.blockiness > settings.max_blockiness:
        return "blocky"
    return None


def select(found: list[Candidate], settings: MiningSettings) -> list[Candidate]:
    """The kept pairs, in time order (their order as children of the video)."""
    by_scene: dict[int, list[Candidate]] = {}
    for c in found:
        if c.refused is None and c.measures is not None:
            by_scene.setdefault(c.scene, []).append(c)
    picked: list[Candidate] = []
    for scene in sorted(by_scene):
        kept: list[Candidate] = []
        for c in sorted(by_scene[scene], key=lambda c: c.rank):
            if len(kept) >= settings.pairs_per_scene:
                break
            if _apart(c, kept, settings.min_pair_gap):
                kept.append(c)
        picked += kept
    best = sorted(picked, key=lambda c: c.rank)[: settings.max_pairs]
    return sorted(best, key=lambda c: (c.t_source, c.t_target))


def _apart(c: Candidate, kept: list[Candidate], min_pair_gap: float) -> bool:
    """No stretch of time shared with a kept pair (not even a frame), and the sources ``min_pair_gap`` apart."""
    for k in kept:
        disjoint = c.t_source > k.t_target + 1e-6 or k.t_source > c.t_target + 1e-6
        if not disjoint or abs(c.t_source - k.t_source) < min_pair_gap - 1e-6:
            return False
    return True


def why_none(found: list[Candidate], settings: MiningSettings) -> str:
    """The reject reason of a video that gave no pair: what refused its candidates, most common first."""
    if not found:
        return f"no pair: no two kept frames of one scene are {settings.min_gap:g}-{settings.max_gap:g} s apart"
    counts = Counter(c.refused or "not kept" for c in found)
    parts = ", ".join(f"{name} ({n})" for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"no pair: {len(found)} candidates refused: {parts}"
