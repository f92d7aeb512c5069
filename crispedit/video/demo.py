"""Small synthetic clips with known content, written with OpenCV: the tests' videos and the demo folder.

Each clip has a textured background (smoothed noise, so flow and ORB have something to hold
on to, as real footage does) and a known event: a coloured square that moves under a still
camera, a hard cut between two such scenes, a pure camera pan, a still scene, a single
frame. Broken files (empty, truncated, text, random bytes) sit beside them, so a demo build
shows every reject reason too. Everything is drawn from fixed seeds: the same bytes every time.

    python -m crispedit.video.demo out/video_demo/videos       # what recipes/video.yaml reads
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np

#: Codecs OpenCV's FFmpeg backend writes on every platform without extra libraries.
CODECS = {".mp4": "mp4v", ".avi": "MJPG"}


def texture(height: int, width: int, seed: int, cell: int = 6) -> np.ndarray:
    """Smoothed colour noise: structure at a few scales, like a real scene, and no flat areas."""
    import cv2

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // cell), max(2, width // cell), 3), dtype=np.uint8)
    base = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    fine = rng.integers(-16, 17, (height, width, 3), dtype=np.int16)
    return np.clip(base // 2 + 64 + fine, 0, 255).astype(np.uint8)


def write_clip(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    """Write RGB frames with OpenCV's VideoWriter (mp4v for .mp4, MJPG for .avi)."""
    import cv2

    height, width = frames[0].shape[:2]
    fourcc = cv2.VideoWriter_fourcc(*CODECS[path.suffix.lower()])
    writer = cv2.VideoWriter(str(path), fourcc, fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write {path.suffix} files here")
    try:
        for frame in frames:
            writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    finally:
        writer.release()
    return path


def square(frame: np.ndarray, x: float, y: float, side: int, colour: tuple[int, int, int]) -> np.ndarray:
    """A copy of the frame with a square of ``colour`` whose top-left corner is at (x, y).

    The square carries its own fine pattern (a real object has texture; a flat one gives
    optical flow nothing to follow inside it).
    """
    out = frame.copy()
    x0, y0 = round(x), round(y)
    pattern = texture(side, side, sum(colour), cell=3).astype(np.int16).mean(-1, keepdims=True) - 128
    patch = np.clip(np.array(colour, np.int16) * 0.8 + pattern, 0, 255).astype(np.uint8)
    top, left = max(0, y0), max(0, x0)
    bottom, right = min(out.shape[0], y0 + side), min(out.shape[1], x0 + side)
    if bottom > top and right > left:
        out[top:bottom, left:right] = patch[top - y0 : bottom - y0, left - x0 : right - x0]
    return out


def moving_square(
    size: tuple[int, int] = (64, 48), seconds: float = 4.0, fps: float = 10.0, speed: float = 4.0,
    colour: tuple[int, int, int] = (230, 30, 30), seed: int = 1, start: tuple[float, float] | None = None,
) -> list[np.ndarray]:
    """A still camera on a textured scene; a square crosses it at ``speed`` pixels per second (leftwards if negative)."""
    width, height = size
    side = max(6, height // 4)
    background = texture(height, width, seed)
    x0, y0 = start if start is not None else ((width - side) * (0.25 if speed >= 0 else 0.75), (height - side) / 2)
    return [square(background, x0 + speed * k / fps, y0, side, colour) for k in range(round(seconds * fps))]


def camera_pan(size: tuple[int, int] = (64, 48), seconds: float = 4.0, fps: float = 10.0, speed: float = 4.0, seed: int = 2) -> list[np.ndarray]:
    """Nothing moves in the scene; the camera slides over a wider canvas at ``speed`` pixels per second."""
    width, height = size
    travel = int(abs(speed) * seconds) + 2
    canvas = texture(height, width + travel, seed)
    frames = []
    for k in range(round(seconds * fps)):
        x = speed * k / fps
        lo = int(np.floor(x))
        frac = x - lo
        a = canvas[:, lo : lo + width].astype(np.float32)
        b = canvas[:, lo + 1 : lo + 1 + width].astype(np.float32)
        frames.append(np.clip((1 - frac) * a + frac * b + 0.5, 0, 255).astype(np.uint8))
    return frames


def still(size: tuple[int, int] = (64, 48), seconds: float = 4.0, fps: float = 10.0, seed: int = 3) -> list[np.ndarray]:
    """A still scene: the same frame throughout (the encoder's noise is the only change)."""
    width, height = size
    frame = texture(height, width, seed)
    return [frame.copy() for _ in range(round(seconds * fps))]


def with_cut(size: tuple[int, int] = (64, 48), seconds: float = 6.0, fps: float = 10.0, speed: float = 4.0) -> list[np.ndarray]:
    """Two scenes with a hard cut in the middle; in each a square moves under a still camera."""
    half = seconds / 2
    first = moving_square(size, half, fps, speed, (230, 30, 30), seed=11)
    second = moving_square(size, half, fps, -speed, (30, 60, 230), seed=12)
    return first + second


DEMO_CLIPS: dict[str, Callable[[], tuple[list[np.ndarray], float]]] = {
    "moving_square.mp4": lambda: (moving_square((96, 72), 4.0, 10.0, 6.0), 10.0),
    "cut_in_the_middle.mp4": lambda: (with_cut((96, 72), 6.0, 10.0, 6.0), 10.0),
    "camera_pan.avi": lambda: (camera_pan((96, 72), 4.0, 10.0, 10.0), 10.0),
    "still_scene.mp4": lambda: (still((96, 72), 3.0, 10.0), 10.0),
    "single_frame.mp4": lambda: (still((96, 72), 0.1, 10.0), 10.0),
}


def write_broken(folder: Path, sample_clip: Path) -> list[Path]:
    """Files a collection really contains: empty, cut short, text, random bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    whole = sample_clip.read_bytes()
    made = {
        "empty.mp4": b"",
        "truncated.mp4": whole[: len(whole) // 3],
        "notes.txt": b"a text file that is not a video\n",
        "noise.mp4": np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    }
    paths = []
    for name, data in made.items():
        (folder / name).write_bytes(data)
        paths.append(folder / name)
    return paths


def write_demo(folder: str | Path, broken: bool = True) -> list[Path]:
    """Write the demo clips (and, with ``broken``, the broken files) into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, make in DEMO_CLIPS.items():
        frames, fps = make()
        written.append(write_clip(folder / name, frames, fps))
    if broken:
        written += write_broken(folder, folder / "moving_square.mp4")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write crispedit's synthetic demo clips (and broken files) into a folder.")
    parser.add_argument("folder", nargs="?", default="out/video_demo/videos", help="where to write them (created)")
    parser.add_argument("--no-broken", action="store_true", help="only the decodable clips")
    args = parser.parse_args(argv)
    for path in write_demo(args.folder, broken=not args.no_broken):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
