"""The ``video_pairs`` stage: one video in, several (source frame, target frame) pairs out.

Branch ``video``. Each video is decoded once, front to back, in a killable worker process
(crispedit.video.worker) at ``sample_fps``; PySceneDetect finds its cuts; candidate pairs of
one scene are measured (sharpness, blockiness, colour similarity, camera motion from the
background band's DIS optical flow, subject motion from the flow with the camera removed, the
share of the frame that changed); no pair spans or sits in a fade or dissolve; the best pairs
of each scene are kept, up to ``max_pairs`` per video. Each kept
pair becomes a child of the video's item (``sample.spawn``) whose provenance records the
video, both frame times in seconds, the sampling rate, the reader and every measure; the
measures are also score columns. A video that gives no pair is returned rejected, with the
checks that refused its candidates in the reason.
"""

from __future__ import annotations

import os
import tempfile
import threading
from functools import cache
from importlib import metadata
from typing import Any, ClassVar

from pydantic import field_validator

from crispedit.core.sample import Sample
from crispedit.core.stage import Resources, Stage, StageParams, register_stage
from crispedit.video.readers import READERS, reader_ref
from crispedit.video.settings import MiningSettings

#: Score columns every pair carries (motions in % of the frame diagonal).
SCORE_COLUMNS = [
    "video_similarity", "video_flow", "video_camera", "video_subject", "video_change",
    "video_sharpness_source", "video_sharpness_target", "video_subject_area", "video_blockiness", "video_camera_support",
]


class VideoPairsParams(StageParams, MiningSettings):
    """The mining settings (crispedit.video.settings), as recipe keys."""

    @field_validator("reader")
    @classmethod
    def _known_reader(cls, name: str) -> str:
        if name not in READERS:
            raise ValueError(f"unknown reader {name!r}; known: {', '.join(sorted(READERS))}")
        return name


@register_stage
class VideoPairsStage(Stage[VideoPairsParams]):
    """Mines frame pairs from each video (decode once, cuts, camera and subject motion, selection); one child per pair."""

    kind = "video_pairs"
    resources: ClassVar[Resources] = Resources(num_cpus=1)
    #: Videos per call: each is decoded and measured whole, so batches stay small.
    default_batch_size = 2

    def inputs(self) -> set[str]:
        return {"meta.video"}

    def outputs(self) -> set[str]:
        return {"source_image", "target_image", "meta.video_change"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.worker: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["worker"] = None  # a process handle does not travel; each copy starts its own
        return state

    def score_columns(self) -> list[str]:
        return list(SCORE_COLUMNS)

    def model_ids(self) -> dict[str, str]:
        module = {"pyav": "av", "decord": "decord"}.get(self.params.reader)
        return {
            "reader": f"{self.params.reader}: {module_version(module)}" if module else self.params.reader,
            "cuts": f"{module_version('scenedetect')} {self.params.cut_detector}",
            "measures": f"{module_version('cv2')} DIS {self.params.flow_preset}, background-band camera, RANSAC similarity",
        }

    def setup(self) -> None:
        if self.worker is None:
            self.worker = shared_worker()

    def __call__(self, batch: list[Sample]) -> list[Sample]:
        settings = self.params.model_dump(include=set(MiningSettings.model_fields))
        ref = reader_ref(self.params.reader)
        out: list[Sample] = []
        for sample in batch:
            video = sample.meta.get("video")
            if not isinstance(video, dict) or not (video.get("path") or video.get("data")):
                sample.scores.update({c: None for c in SCORE_COLUMNS if c not in sample.scores})
                sample.fail(self.name, "no video: the item carries no meta.video (use the videos source)")
                out.append(sample)
                continue
            with _local_copy(video) as path, _WORKER_LOCK:
                outcome = self.worker.mine(path, settings, ref)
            if outcome.reject is not None:
                sample.scores.update({c: None for c in SCORE_COLUMNS if c not in sample.scores})  # a video, not a pair: nothing measured
                sample.fail(self.name, outcome.reject)
                out.append(sample)
                continue
            out += self._children(sample, outcome.mined)
        return out

    def _children(self, sample: Sample, mined: Any) -> list[Sample]:
        meta = {k: v for k, v in sample.meta.items() if k != "video"}  # the bytes stay with the parent
        children = []
        for position, pair in enumerate(mined.pairs):
            provenance = dict(sample.provenance)
            provenance["video"] = {
                "ref": sample.source_ref,
                "t_source": pair.t_source,
                "t_target": pair.t_target,
                "scene": pair.scene,
                "sample_fps": self.params.sample_fps,
                "reader": self.params.reader,
                "size": [int(pair.source.shape[1]), int(pair.source.shape[0])],
                "measures": {**pair.scores, "camera_methods": pair.methods},
                "change": pair.description,
                **mined.info,
            }
            children.append(sample.spawn(
                position,
                source_image=pair.source,
                target_image=pair.target,
                branch="video",
                scores={**sample.scores, **pair.scores},
                provenance=provenance,
                meta={**meta, "video_change": {**pair.description, "t_source": pair.t_source, "t_target": pair.t_target}},
            ))
        return children


_WORKER: list[Any] = []
_WORKER_LOCK = threading.Lock()


def shared_worker() -> Any:
    """One worker process per Python process, reused by every stage instance in it.

    Ray runs CPU stages as tasks that build their stages anew for each call, in worker
    processes it keeps; sharing the child spares each call a fresh interpreter (about half a
    second). Jobs carry their own settings, so nothing leaks from one stage to another.
    """
    with _WORKER_LOCK:
        if not _WORKER:
            from crispedit.video.worker import MiningWorker

            _WORKER.append(MiningWorker())
        return _WORKER[0]


class _local_copy:
    """The video as a local path: its own path, or its bytes written to a temporary file for the worker."""

    def __init__(self, video: dict[str, Any]) -> None:
        self.video = video
        self.temporary: str | None = None

    def __enter__(self) -> str:
        if self.video.get("path"):
            return str(self.video["path"])
        handle, self.temporary = tempfile.mkstemp(prefix="crispedit-video-", suffix=self.video.get("suffix") or ".mp4")
        with os.fdopen(handle, "wb") as out:
            out.write(self.video["data"])
        return self.temporary

    def __exit__(self, *exc: object) -> None:
        if self.temporary is not None:
            try:
                os.unlink(self.temporary)
            except OSError:
                pass


@cache
def _providers() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def module_version(module: str) -> str:
    """'distribution version' of whatever installed distribution provides an importable module.

    The module ``scenedetect`` comes from the ``scenedetect-headless`` distribution here, and
    ``cv2`` from ``opencv-python-headless``: asking for the module's own name found nothing and
    the provenance said ``scenedetect (not installed)``. Several providers are all named.
    """
    found = []
    for name in sorted(set(_providers().get(module, []))):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found) if found else f"{module} (not installed)"
