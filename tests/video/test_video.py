"""Video-frame pair mining on clips the tests write with OpenCV (crispedit.video.demo).

The clips are tiny (64x48, a few seconds at 10 fps) but real files: OpenCV's VideoWriter
encodes them (mp4v, MJPG), PyAV and decord decode them in the killable worker process, and
the captioner talks to tests/helpers/llm_server.py through the real openai client over HTTP.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crispedit.core.failures import TransientError
from crispedit.core.sample import Sample, sample_id
from crispedit.core.stage import BuildContext
from crispedit.engine.run import apply_stage
from crispedit.video import demo
from crispedit.video.readers import PyAVReader, register_reader
from crispedit.video.stages.video_caption import VideoCaptionParams, VideoCaptionStage
from crispedit.video.stages.video_pairs import SCORE_COLUMNS, VideoPairsParams, VideoPairsStage
from crispedit.video.stages.videos import VideosParams, VideosSource
from tests.helpers.llm_server import LLMServer, schema_answer
from tests.helpers.recipes import REPO

CONTEXT = BuildContext(recipe_name="video-test", fingerprint="video-test", seed=0)
KEY_ENV = "CRISPEDIT_TEST_VIDEO_KEY"
SIZE = (64, 48)
CUT_AT = 3.0  # seconds: demo.with_cut's second scene starts half-way through its 6 s


# --- readers that misbehave on purpose (found by the worker process through this module) ----------


@register_reader
class HangingReader(PyAVReader):
    """Decodes like PyAV, except that on a file whose name says "hang" it never returns (decord #373's behaviour)."""

    name = "test-hang"

    def open(self, path: str) -> Any:
        self.path = path
        return super().open(path)

    def frames(self) -> Iterator[Any]:
        if "hang" in Path(self.path).name:
            while True:
                time.sleep(3600)
        yield from super().frames()


@register_reader
class CrashingReader(PyAVReader):
    """Dies the way a native decoder does (no Python exception) on a file whose name says "crash"."""

    name = "test-crash"

    def open(self, path: str) -> Any:
        if "crash" in Path(path).name:
            os.abort()
        return super().open(path)


# --- clips -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    made = {
        "moving": demo.write_clip(folder / "moving.mp4", demo.moving_square(SIZE, 4.0, 10.0, 5.0), 10.0),
        "moving_avi": demo.write_clip(folder / "moving.avi", demo.moving_square(SIZE, 4.0, 10.0, 5.0), 10.0),
        "cut": demo.write_clip(folder / "cut.mp4", demo.with_cut(SIZE, 2 * CUT_AT, 10.0, 5.0), 10.0),
        "pan": demo.write_clip(folder / "pan.mp4", demo.camera_pan(SIZE, 4.0, 10.0, 10.0), 10.0),
        "still": demo.write_clip(folder / "still.mp4", demo.still(SIZE, 3.0, 10.0), 10.0),
        "single": demo.write_clip(folder / "single.mp4", demo.still(SIZE, 0.1, 10.0), 10.0),
    }
    whole_avi = made["moving_avi"].read_bytes()
    (folder / "cut_short.avi").write_bytes(whole_avi[: len(whole_avi) // 2])  # the RIFF header still claims the whole size
    made["cut_short_avi"] = folder / "cut_short.avi"
    (folder / "text.mp4").write_bytes(b"just some words, not a video\n")
    made["text"] = folder / "text.mp4"
    for name in ("hang", "crash"):
        made[name] = folder / f"{name}.mp4"
        made[name].write_bytes(made["moving"].read_bytes())
    return made


def item(path: Path, index: int = 0) -> Sample:
    return Sample(id=sample_id("video-test", index), index=index, source_ref=path.name, meta={"video": {"path": str(path), "suffix": path.suffix}})


_STAGES: dict[str, VideoPairsStage] = {}


def miner(**params: Any) -> VideoPairsStage:
    """One stage (and so one worker process) per distinct parameters, shared by the tests."""
    key = json.dumps(params, sort_keys=True)
    if key not in _STAGES:
        stage = VideoPairsStage(VideoPairsParams.model_validate(params), CONTEXT)
        stage.setup()  # what the engine does once per worker
        _STAGES[key] = stage
    return _STAGES[key]


def mine(path: Path, **params: Any) -> list[Sample]:
    return apply_stage(miner(**params), "video_pairs", [item(path)], batch_size=4)


@pytest.fixture(scope="module", autouse=True)
def _close_workers() -> Iterator[None]:
    yield
    for stage in _STAGES.values():
        if stage.worker is not None:
            stage.worker.close()  # the process's shared worker: the next stage to use it starts a new one


# --- the source ----------------------------------------------------------------------------------


def test_the_source_rejects_broken_files_by_name_and_keeps_the_order(clips: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "videos"
    demo.write_broken(folder, clips["moving"])  # empty.mp4, truncated.mp4, notes.txt, noise.mp4
    (folder / "good.mp4").write_bytes(clips["moving"].read_bytes())
    (folder / "cut_short.avi").write_bytes(clips["cut_short_avi"].read_bytes())
    (folder / ".hidden.mp4").write_bytes(b"skipped")
    source = VideosSource(VideosParams(folder=str(folder)), CONTEXT)
    assert source.count() == 6
    samples = source.load(0, 6)
    by_ref = {s.source_ref: s for s in samples}
    assert [s.source_ref for s in samples] == sorted(by_ref)
    reasons = {ref: s.reject.reason for ref, s in by_ref.items() if s.reject}
    assert reasons["empty.mp4"] == "empty file: 0 bytes"
    assert reasons["notes.txt"] == "not a video: it looks like text"
    assert reasons["noise.mp4"].startswith("not a video: it starts with bytes")
    assert reasons["truncated.mp4"].startswith("truncated video: the mdat box needs")
    assert reasons["cut_short.avi"].startswith("truncated video: the RIFF header declares")
    good = by_ref["good.mp4"]
    assert good.alive and good.meta["video"]["path"] == str(folder / "good.mp4")
    assert good.provenance["source"] == {"ref": "good.mp4", "container": "iso-bmff", "bytes": clips["moving"].stat().st_size}
    assert VideosSource(VideosParams(folder=str(folder), only_extensions=True), CONTEXT).count() == 5  # notes.txt left out


def test_the_source_reads_a_list_file_parquet_webdataset_and_fsspec_urls(clips: dict[str, Path], tmp_path: Path) -> None:
    data = clips["moving"].read_bytes()
    listing = tmp_path / "videos.txt"
    listing.write_text(f"# my clips\n{clips['moving']}\n\nmissing.mp4\n")
    listed = VideosSource(VideosParams(list_file=str(listing), absolute_paths=True), CONTEXT).load(0, 2)
    assert listed[0].alive and listed[0].meta["video"]["path"] == str(clips["moving"])
    assert listed[1].reject.reason.startswith("unreadable file: ") and listed[1].source_ref == "missing.mp4"

    table = pa.table({"video": [data, b"", b"plain text"], "caption": ["a red square", "nothing", "words"]})
    pq.write_table(table, tmp_path / "clips.parquet")
    rows = VideosSource(VideosParams(parquet=[str(tmp_path / "clips.parquet")]), CONTEXT).load(0, 3)
    assert rows[0].alive and rows[0].meta["video"]["data"] == data and rows[0].source_caption == "a red square"
    assert rows[1].reject.category in ("empty file", "missing video") and rows[2].reject.category == "not a video"

    with tarfile.open(tmp_path / "shard-0000.tar", "w") as tar:
        for name, blob in (("000000.mp4", data), ("000000.txt", b"a square moving right"), ("000001.txt", b"a caption alone")):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    wds = VideosSource(VideosParams(webdataset=str(tmp_path / "shard-0000.tar")), BuildContext("t", "t", 0, cache_dir=tmp_path / "cache"))
    members = wds.load(0, wds.count())
    assert members[0].alive and members[0].meta["video"] == {"data": data, "suffix": ".mp4"}
    assert members[0].source_caption == "a square moving right"
    assert members[1].reject.reason.startswith("missing video")

    import fsspec

    memory = fsspec.filesystem("memory")
    memory.pipe("/video-test/a.mp4", data)
    memory.pipe("/video-test/b.txt", b"hello")
    remote = VideosSource(VideosParams(folder="memory://video-test"), CONTEXT).load(0, 2)
    assert remote[0].meta["video"]["data"] == data and remote[1].reject.reason == "not a video: it looks like text"


def test_the_source_names_what_is_wrong_with_its_parameters(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one of"):
        VideosParams(folder=str(tmp_path), list_file=str(tmp_path / "x.txt"))
    with pytest.raises(ValueError, match="crispedit.video.demo"):
        VideosParams(folder=str(tmp_path / "absent"))


# --- mining ---------------------------------------------------------------------------------------


def test_a_moving_object_under_a_still_camera_gives_a_pair(clips: dict[str, Path]) -> None:
    out = mine(clips["moving"])
    assert out and all(s.alive for s in out)
    parent = item(clips["moving"])
    for child in out:
        video = child.provenance["video"]
        assert child.parent_id == parent.id and child.branch == "video"
        assert video["ref"] == "moving.mp4" and video["reader"] == "pyav" and video["sample_fps"] == 2.0
        assert 1.0 <= video["t_target"] - video["t_source"] <= 4.0
        assert child.source_image.shape == child.target_image.shape == (48, 64, 3)
        assert set(SCORE_COLUMNS) <= set(child.scores)
        assert child.scores["video_camera"] <= 3.0 and 1.0 <= child.scores["video_subject"] <= 40.0
        assert child.meta["video_change"]["direction"] == "right" and child.meta["video_change"]["colour"] == "red"
        assert "video" not in child.meta  # the video's bytes or path stay with the parent


def test_no_pair_spans_a_cut(clips: dict[str, Path]) -> None:
    out = mine(clips["cut"])
    assert len(out) == 2 and all(s.alive for s in out)
    assert out[0].provenance["video"]["cuts"] == [CUT_AT]
    sides = []
    for child in out:
        video = child.provenance["video"]
        assert (video["t_source"] < CUT_AT) == (video["t_target"] < CUT_AT)
        sides.append(video["t_source"] < CUT_AT)
    assert sides == [True, False]  # one pair per scene, in time order
    assert [c.meta["video_change"]["direction"] for c in out] == ["right", "left"]


def test_a_camera_pan_is_refused_as_camera_motion_or_flagged(clips: dict[str, Path]) -> None:
    [refused] = mine(clips["pan"])
    assert refused.reject is not None and refused.reject.stage == "video_pairs"
    assert refused.reject.reason.startswith("no pair: ") and "camera motion" in refused.reject.reason
    kept = mine(clips["pan"], max_camera_motion=100.0, min_subject_motion=0.0, min_change=0.0)
    assert kept and all(c.scores["video_camera"] > 3.0 for c in kept)  # let through, the score says it is camera motion
    assert all(c.scores["video_subject"] < 1.0 for c in kept)


def test_a_still_video_gives_no_pair(clips: dict[str, Path]) -> None:
    [refused] = mine(clips["still"])
    assert refused.reject.reason.startswith("no pair: ") and "too little motion" in refused.reject.reason
    assert all(refused.scores[c] is None for c in SCORE_COLUMNS)


@pytest.mark.parametrize(
    ("clip", "category"),
    [("single", "video too short"), ("cut_short_avi", "truncated video"), ("text", "undecodable video")],
)
def test_what_decoding_shows_becomes_a_reject_by_name(clips: dict[str, Path], clip: str, category: str) -> None:
    [refused] = mine(clips[clip])
    assert refused.reject is not None and refused.reject.category == category, refused.reject


@pytest.mark.parametrize(
    ("params", "check"),
    [
        ({"min_subject_motion": 60.0, "max_subject_motion": 80.0}, "too little motion"),
        ({"max_subject_motion": 2.0, "min_subject_motion": 1.0}, "too much motion"),
        ({"min_similarity": 0.9999}, "dissimilar"),
        ({"min_sharpness": 1e9}, "blurry"),
        ({"min_change": 0.5}, "too little change"),
    ],
)
def test_each_threshold_refuses_what_it_should(clips: dict[str, Path], params: dict[str, float], check: str) -> None:
    [refused] = mine(clips["moving"], **params)
    assert refused.reject is not None and check in refused.reject.reason


def test_kept_pairs_respect_the_count_and_the_gap_between_them(clips: dict[str, Path]) -> None:
    out = mine(clips["moving"], pairs_per_scene=10, max_pairs=2, min_pair_gap=1.0, min_gap=0.5, max_gap=1.0)
    assert len(out) == 2
    starts = [c.provenance["video"]["t_source"] for c in out]
    assert starts == sorted(starts) and starts[1] - starts[0] >= 1.0
    assert all(0.5 <= c.provenance["video"]["t_target"] - c.provenance["video"]["t_source"] <= 1.0 for c in out)
    assert len({c.id for c in out}) == 2


def test_both_readers_find_the_same_pairs(clips: dict[str, Path]) -> None:
    pytest.importorskip("decord")
    times = {}
    for reader in ("pyav", "decord"):
        out = mine(clips["cut"], reader=reader)
        times[reader] = [(c.provenance["video"]["t_source"], c.provenance["video"]["t_target"]) for c in out]
        assert out[0].provenance["video"]["reader"] == reader
    assert times["pyav"] == times["decord"]


def test_a_hanging_decoder_becomes_a_decode_timeout_and_the_next_video_goes_on(clips: dict[str, Path]) -> None:
    stage = miner(reader="test-hang", decode_timeout=1.5)
    began = time.perf_counter()
    out = apply_stage(stage, "video_pairs", [item(clips["hang"], 0), item(clips["moving"], 1)], batch_size=2)
    assert time.perf_counter() - began < 30
    hung, *pairs = out
    assert hung.reject is not None and hung.reject.reason.startswith("decode timeout: no result after 1.5 s")
    assert pairs and all(p.alive and p.index == 1 for p in pairs)
    assert stage.worker.starts >= 2  # the hung worker was killed and a new one took the next video
    assert stage.worker.process is not None and stage.worker.process.poll() is None


def test_a_crashing_decoder_becomes_a_reject(clips: dict[str, Path]) -> None:
    out = apply_stage(miner(reader="test-crash"), "video_pairs", [item(clips["crash"], 0), item(clips["moving"], 1)], batch_size=2)
    assert out[0].reject is not None and out[0].reject.reason.startswith("decoder crashed: the worker process died")
    assert all(s.alive for s in out[1:]) and len(out) > 1


def test_unknown_readers_are_refused_when_the_recipe_is_read() -> None:
    with pytest.raises(ValueError, match="unknown reader 'vlc'"):
        VideoPairsParams(reader="vlc")
    with pytest.raises(ValueError, match="max_gap"):
        VideoPairsParams(min_gap=3.0, max_gap=2.0)


# --- the captioner against the local server ------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[LLMServer]:
    with LLMServer() as running:
        yield running


@pytest.fixture
def llm(server: LLMServer, monkeypatch: pytest.MonkeyPatch) -> LLMServer:
    server.reset()
    server.responder = schema_answer
    monkeypatch.setenv(KEY_ENV, "sk-video-test")
    return server


@pytest.fixture(scope="module")
def mined_pairs(clips: dict[str, Path]) -> list[Sample]:
    return mine(clips["cut"])


def captioner(url: str, tmp_path: Path, **params: Any) -> VideoCaptionStage:
    llm_settings = {"base_url": url, "model": "local-vlm", "api_key_env": KEY_ENV, "timeout": 2.0, "max_retries": 2,
                    "max_invalid_retries": 1, "backoff_initial": 0.01, "backoff_max": 0.05, **params.pop("llm", {})}
    context = BuildContext("video-test", "video-test", 0, cache_dir=tmp_path / "cache")
    stage = VideoCaptionStage(VideoCaptionParams.model_validate({"backend": "openai", "llm": llm_settings, **params}), context)
    stage.setup()
    return stage


def caption(stage: VideoCaptionStage, samples: list[Sample]) -> list[Sample]:
    try:
        return apply_stage(stage, "video_caption", [s.clone() for s in samples], batch_size=8)
    finally:
        stage.client.close()


def test_the_vlm_sees_both_frames_labelled_and_its_answer_fills_the_pair(llm: LLMServer, mined_pairs: list[Sample], tmp_path: Path) -> None:
    out = caption(captioner(llm.url, tmp_path), mined_pairs)
    assert all(s.alive for s in out) and llm.count == len(mined_pairs)
    parts = llm.requests[0]["messages"][-1]["content"]
    kinds = [p["type"] for p in parts]
    assert kinds == ["text", "text", "image_url", "text", "image_url"]
    assert parts[1]["text"] == "Frame A (before):" and parts[3]["text"] == "Frame B (after):"
    assert all(p["image_url"]["url"].startswith("data:image/jpeg;base64,") for p in parts if p["type"] == "image_url")
    assert parts[2]["image_url"]["url"] != parts[4]["image_url"]["url"]
    schema = llm.requests[0]["response_format"]["json_schema"]
    assert schema["strict"] is True and schema["schema"]["properties"]["category"]["enum"][0] == "spatial_transformation"
    for sample in out:
        assert sample.instruction and sample.source_caption and sample.target_caption and sample.edit_objects == ["cat"]
        assert sample.task == "spatial_transformation" and sample.provenance["video_caption"]["backend"] == "openai"
        assert sample.usage["video_caption"]["requests"] == 1
    again = caption(captioner(llm.url, tmp_path), mined_pairs)  # same pairs, same questions: answered from the cache
    assert llm.count == len(mined_pairs) and [s.instruction for s in again] == [s.instruction for s in out]


def test_malformed_json_is_asked_again_and_a_persistent_schema_violation_is_a_reject(
    llm: LLMServer, mined_pairs: list[Sample], tmp_path: Path,
) -> None:
    llm.fail("malformed")
    out = caption(captioner(llm.url, tmp_path / "a"), mined_pairs[:1])
    assert out[0].alive and out[0].usage["video_caption"]["retries"] == 1
    llm.reset()
    llm.fail("schema", times=10)
    [refused] = caption(captioner(llm.url, tmp_path / "b"), mined_pairs[:1])
    assert refused.reject is not None and refused.reject.reason.startswith("llm-invalid: ")


def test_429_and_timeouts_are_retried_and_an_outage_is_transient(llm: LLMServer, mined_pairs: list[Sample], tmp_path: Path) -> None:
    llm.fail("rate_limit", retry_after=0.1)
    llm.fail("slow", delay=1.0)
    out = caption(captioner(llm.url, tmp_path / "a", llm={"timeout": 0.4}), mined_pairs[:2])
    assert all(s.alive for s in out) and sum(s.usage["video_caption"].get("retries", 0) for s in out) == 2
    llm.reset()
    llm.fail("server_error", times=100)
    with pytest.raises(TransientError, match="llm-unavailable"):
        caption(captioner(llm.url, tmp_path / "b"), mined_pairs[:1])


def test_a_pair_the_model_calls_unusable_is_a_reject(llm: LLMServer, mined_pairs: list[Sample], tmp_path: Path) -> None:
    llm.responder = lambda body: {**schema_answer(body), "usable": False}
    [refused] = caption(captioner(llm.url, tmp_path), mined_pairs[:1])
    assert refused.reject is not None and refused.reject.reason.startswith("unusable pair: ")


def test_two_step_describes_with_the_images_then_rewrites_in_text(llm: LLMServer, mined_pairs: list[Sample], tmp_path: Path) -> None:
    out = caption(captioner(llm.url, tmp_path, mode="two_step"), mined_pairs)
    assert all(s.alive for s in out) and llm.count == 2 * len(mined_pairs)
    first, second = llm.requests[0], llm.requests[-1]
    assert any(p["type"] == "image_url" for p in first["messages"][-1]["content"])
    assert isinstance(second["messages"][-1]["content"], str) and "What changed:" in second["messages"][-1]["content"]
    assert all(s.provenance["video_caption"]["changes"] and s.usage["video_caption"]["requests"] == 2 for s in out)


def test_tiny_answers_offline_from_the_measured_change(mined_pairs: list[Sample]) -> None:
    stage = VideoCaptionStage(
        VideoCaptionParams(backend="openai", llm={"base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": None}),
        BuildContext("video-test", "video-test", 0, tiny=True),
    )
    assert not stage.in_actor_pool
    out = apply_stage(stage, "video_caption", [s.clone() for s in mined_pairs], batch_size=8)
    assert [s.instruction for s in out] == ["make the red object move to the right", "make the blue object move to the left"]
    assert all(s.task == "spatial_transformation" and s.provenance["video_caption"]["backend"] == "template (tiny)" for s in out)


# --- whole builds -------------------------------------------------------------------------------------


def digests(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*/*.parquet"))}


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory laid out as recipes/video.yaml expects: out/video_demo/videos."""
    root = tmp_path_factory.mktemp("video-demo")
    demo.write_demo(root / "out" / "video_demo" / "videos")
    return root


@pytest.mark.slow
def test_the_video_recipe_builds_offline_with_tiny_and_rebuilds_the_same_bytes(demo_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from crispedit.engine import build
    from crispedit.recipe import load_plan

    monkeypatch.chdir(demo_folder)
    outs = [demo_folder / "first", demo_folder / "second"]
    for out in outs:
        result = build(load_plan(REPO / "recipes" / "video.yaml", tiny=True, out=out), runner="local", progress=False)
        assert result.summary["complete"]
    assert digests(outs[0]) == digests(outs[1]) and digests(outs[0])
    rows = pq.read_table(outs[0] / "data").to_pylist()
    provenance = [json.loads(r["provenance"]) for r in rows]
    assert sorted(p["video"]["ref"] for p in provenance) == ["cut_in_the_middle.mp4", "cut_in_the_middle.mp4", "moving_square.mp4"]
    assert all(p["video_caption"]["backend"] == "template (tiny)" for p in provenance)
    assert all(r["instruction"].startswith("make the ") and r["task"] == "spatial_transformation" for r in rows)
    rejects = {r["source_ref"]: r["reason"].split(":")[0] for r in pq.read_table(outs[0] / "rejects").to_pylist()}
    assert rejects == {
        "empty.mp4": "empty file", "truncated.mp4": "truncated video", "notes.txt": "not a video", "noise.mp4": "not a video",
        "single_frame.mp4": "video too short", "still_scene.mp4": "no pair", "camera_pan.avi": "no pair",
    }


@pytest.mark.slow
def test_a_build_killed_with_sigkill_reruns_to_the_same_bytes(demo_folder: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "video.yaml"
    text = (REPO / "recipes" / "video.yaml").read_text().replace("shard_size: 4 ", "shard_size: 2 ")
    recipe.write_text(text.replace("folder: out/video_demo/videos", f"folder: {demo_folder / 'out' / 'video_demo' / 'videos'}"))
    (tmp_path / "filters").symlink_to(REPO / "filters")

    def run(out: Path, fault: str | None = None) -> subprocess.CompletedProcess[bytes]:
        env = {k: v for k, v in os.environ.items() if k != "CRISPEDIT_FAULT"}
        if fault:
            env.update(CRISPEDIT_FAULT=fault, CRISPEDIT_FAULT_LOG=str(tmp_path / "faults.log"))
        command = [sys.executable, "-m", "crispedit.cli", "build", str(recipe), "--tiny", "--runner", "local", "--out", str(out), "--no-progress"]
        return subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, timeout=300)

    clean, killed = tmp_path / "clean", tmp_path / "killed"
    assert run(clean).returncode == 0
    result = run(killed, "after-data:2")
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    assert (tmp_path / "faults.log").read_text().split() == ["after-data:2"]
    assert run(killed).returncode == 0
    assert digests(killed) == digests(clean)
