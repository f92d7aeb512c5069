"""Every knob of video-pair mining, with its default and where the default comes from.

The ``video_pairs`` stage's recipe parameters are this model; the worker process that decodes
and measures receives it as plain data. Sources in brackets: ``[rv §N]`` is
../shared/research/video.md (section N), ``[own]`` a choice made and checked in this project's
tests on synthetic clips, where no anchor published a number (research/video.md §1: "Published
numeric bands (flow, CLIP, camera) were not obtainable for any anchor").
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class MiningSettings(BaseModel):
    """Decoding, cut detection, measures and selection of frame pairs from one video."""

    model_config = ConfigDict(extra="forbid")

    # -- decoding -----------------------------------------------------------------------------
    reader: str = Field(
        "pyav",
        description="'pyav' (FFmpeg via PyAV: maintained, BSD) or 'decord' (the design card's; x86_64 wheels only, last "
        "release 2021). Both decode the clip once, front to back [rv §8 prefers PyAV]",
    )
    sample_fps: float = Field(2.0, gt=0, le=30, description="frames kept per second of video; Data-Juicer's motion filter samples 2 fps [rv §2]")
    threads: int = Field(1, ge=0, description="decoder threads; 1 matches the stage's one declared CPU, 0 lets the decoder choose [rv §4]")
    max_seconds: float = Field(
        120.0, gt=0,
        description="decode at most this much of each video; the kept frames are held in memory (about 106 MB for 120 s at 2 fps and 512 px)",
    )
    min_seconds: float = Field(1.0, gt=0, description="a video with less decoded footage is a reject (`video too short`) [own: the shortest gap]")
    truncation_tolerance: float = Field(
        0.1, ge=0, le=1,
        description="a decode that covers less than (1 - this) of the seconds the container declares is a reject "
        "(`truncated video`); seconds, not frame counts, since an AVI's repeat-the-previous-frame entries count as frames "
        "but hold no picture; the declared length is only compared, never used to drive decoding [own]",
    )
    decode_timeout: float = Field(
        120.0, gt=0,
        description="seconds a video may take to decode in the worker process before it is killed and the video becomes a "
        "reject (`decode timeout`); decord can loop forever on a file that declares more frames than it has [rv §7, decord #373]",
    )
    analysis_timeout: float = Field(120.0, gt=0, description="seconds the measures of one decoded video may take before the worker is killed [own]")
    max_side: int = Field(512, ge=16, description="long side of the pair's images (kept frames are scaled down to it, never up)")
    size_multiple: int = Field(8, ge=1, description="round the pair's width and height down to a multiple of this, as image sources do")
    analysis_side: int = Field(
        320, ge=16,
        description="long side at which flow and differences are computed; research measured DIS at 427x240 [rv §4, §8]",
    )

    # -- scene cuts ---------------------------------------------------------------------------
    cut_detector: Literal["adaptive", "content"] = Field(
        "adaptive",
        description="PySceneDetect detector fed every decoded frame: adaptive scored F1 91.6 against content's 86.7 on BBC "
        "Planet Earth [rv §5]",
    )
    cut_width: int = Field(
        128, ge=16,
        description="every frame is point-sampled down to about this width for cut detection. PySceneDetect downscales to "
        "about 256 [rv §3]; its detectors compare whole-frame colour statistics, and at 64, 128 and 256 px they found the same "
        "cuts in this project's tests and benchmark clips, 128 costing a sixth less CPU per 480p frame than 256 [own]",
    )
    content_threshold: float = Field(27.0, gt=0, description="content detector: HSV change that makes a cut; PySceneDetect's default [rv §3]")
    adaptive_threshold: float = Field(3.0, gt=0, description="adaptive detector: ratio to the neighbours' average change; PySceneDetect's default [rv §3]")
    adaptive_window: int = Field(2, ge=1, description="adaptive detector: frames on each side in the average; PySceneDetect's default [rv §3]")
    min_content_val: float = Field(15.0, ge=0, description="adaptive detector: least HSV change a cut needs; PySceneDetect's default [rv §3]")
    min_scene_seconds: float = Field(0.6, ge=0, description="shortest scene; PySceneDetect's benchmark sweep chose 0.6 s [rv §3]")
    blend_ratio: float = Field(
        0.35, gt=0, le=1,
        description="a frame is inside a fade or dissolve when the best mix of the frames 0.25 s either side leaves less than this "
        "share of the nearer one's difference; real fades and the trailer's dissolve 0.02-0.31, motion 0.5-1.3 [own, real clips]",
    )
    blend_change: float = Field(12.0, ge=0, description="the two ends of such a mix must differ by this mean grey level (0-255) [own, real clips]")
    glitch_change: float = Field(
        12.0, ge=0,
        description="HSV difference to both neighbours (which are alike) that makes a frame a glitch, not a cut [own, real clips]",
    )

    # -- measures -----------------------------------------------------------------------------
    flow_preset: Literal["ultrafast", "fast", "medium"] = Field(
        "fast", description="OpenCV DIS preset: 1.4 ms per frame pair at 427x240 for fast, 7.1 ms for medium [rv §4]"
    )
    ransac_threshold: float = Field(
        0.6, gt=0,
        description="tolerance of the camera test on the background band's flow (still camera, and the RANSAC similarity), % of the "
        "frame diagonal; research used 3 px at 427x240 (0.6 %) [rv §4]",
    )
    moving_threshold: float = Field(
        1.0, gt=0, description="residual flow (after the camera) above this % of the diagonal between two kept frames marks a pixel as moving [own]"
    )
    min_moving_area: float = Field(0.002, ge=0, le=1, description="fewer moving pixels than this share of the frame count as no subject motion [own]")
    change_threshold: int = Field(
        25, ge=1, le=255, description="grey-level difference (after the camera is compensated) that marks a pixel as changed [own]"
    )
    sharpness_side: int = Field(256, ge=16, description="long side at which the Laplacian variance is measured (fixed, so it compares across resolutions) [rv §3]")

    # -- selection ----------------------------------------------------------------------------
    min_gap: float = Field(1.0, gt=0, description="least time between a pair's frames, seconds; InstructMove used gaps of about 3 s [rv §1, secondary]")
    max_gap: float = Field(4.0, gt=0, description="most time between a pair's frames, seconds [rv §1: InstructMove about 3 s, secondary]")
    min_sharpness: float = Field(
        100.0, ge=0,
        description="both frames need at least this Laplacian variance; the usual blur cut-off is about 100 [rv §3]; at 256 px "
        "photos measure 367-1661, blurred (sigma 3) 9-43 [own]",
    )
    min_similarity: float = Field(
        0.6, ge=0, le=1,
        description="1 - Bhattacharyya distance of hue/saturation histograms; different photos score 0.10-0.34, the frames of one "
        "shot above 0.9 [own]: the cheap content check [rv §8]",
    )
    max_camera_motion: float = Field(
        3.0, ge=0,
        description="camera motion between the frames, mean displacement in % of the diagonal; pans above it are refused "
        "(AURORA and InstructMove dropped camera motion without publishing a number [rv §1]) [own]",
    )
    min_subject_motion: float = Field(
        1.0, ge=0,
        description="how far the moving part travels between the frames, % of the diagonal (camera removed); a still video "
        "gives 0. Data-Juicer keeps clips above 0.25 px mean flow [rv §2] [own]",
    )
    max_subject_motion: float = Field(
        40.0, gt=0, description="upper end of the motion band: faster subjects rarely keep their identity [rv §1, InstructMove's moderate band] [own]"
    )
    min_change: float = Field(0.01, ge=0, le=1, description="share of the frame that must visibly change once the camera is compensated [own]")
    max_change: float = Field(0.6, gt=0, le=1, description="a larger changed share means a different view, not an edit [own]")
    max_blockiness: float = Field(
        0.75, ge=0,
        description="both frames' grey step across the 8-px coding grid beyond the step elsewhere must stay under this (grey "
        "levels): starved encoders pass a sharpness floor; carphone_distorted.mp4 0.94, its pristine source 0.15 [own, real clips]",
    )
    pairs_per_scene: int = Field(
        3, ge=1,
        description="best pairs kept per scene (the largest visible change first, then the most subject motion), disjoint in "
        "time, their sources min_pair_gap apart, so a long single shot gives several [own]",
    )
    max_pairs: int = Field(6, ge=1, description="pairs kept per video at most (K), best first")
    min_pair_gap: float = Field(2.0, ge=0, description="seconds between the source frames of two pairs kept from one video [own]")

    @model_validator(mode="after")
    def _consistent(self) -> MiningSettings:
        if self.max_gap < self.min_gap:
            raise ValueError(f"max_gap ({self.max_gap}) is below min_gap ({self.min_gap})")
        if self.max_subject_motion < self.min_subject_motion:
            raise ValueError("max_subject_motion is below min_subject_motion")
        if self.max_change < self.min_change:
            raise ValueError("max_change is below min_change")
        if self.min_gap * self.sample_fps < 1:
            raise ValueError(f"min_gap {self.min_gap} s is shorter than one sample at sample_fps {self.sample_fps}")
        return self
