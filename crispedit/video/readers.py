"""Video readers behind one interface: PyAV (the default) and decord, chosen in the recipe.

A reader decodes one clip once, front to back, and yields every frame with its presentation
time in seconds. The time is never the one the decoder attaches to the frame: it comes from
the clip's :class:`~crispedit.video.timeline.Timeline` (the container's packet stamps in
display order, or index / fps for the whole clip where those cannot be trusted), the k-th
decoded frame taking the k-th time, so PyAV and decord give the same time to the same
picture. After the last frame, :meth:`Reader.report` says where the times came from and how
many of the decoder's own stamps disagreed (Megamind.avi: 176 in PyAV, 269 in decord).

Nothing here trusts the container's frame count: PyAV decodes packets until the file ends;
decord needs its count to ask for frames, so what it returns is checked and a count that lies
(decord #373: ``get_batch`` loops forever when a file reports more frames than it holds) is
caught by the caller's timeout, which is why decoding runs in a killable worker
(crispedit.video.worker). Frames come as lazy handles, so only the frames that are kept are
converted at full size; the boundary detectors get a small copy of every frame.

Sizes: research/video.md §4 measured PyAV at 584 fps and decord at 448 fps sequential decode
of 480p on one core of this project's CPU; both readers are in one process per worker.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from crispedit.video.timeline import Timeline, build_timeline, read_timeline


class VideoUnreadable(Exception):
    """The file is not a clip the reader can open or decode: a reject, with ``reason`` as 'category: detail'."""

    def __init__(self, category: str, detail: str) -> None:
        super().__init__(f"{category}: {detail}")
        self.category = category
        self.detail = detail


@dataclass(frozen=True)
class StreamInfo:
    """What the container says about the video stream: used for sizes and for checking, never to drive decoding."""

    width: int
    height: int
    fps: float | None
    declared_frames: int | None
    declared_seconds: float | None
    codec: str
    timeline: Timeline


class Frame(ABC):
    """One decoded frame: its position, its presentation time, and pixels on demand at any size."""

    index: int
    time: float

    @abstractmethod
    def rgb(self, size: tuple[int, int]) -> np.ndarray:
        """The frame as an RGB uint8 array of ``size`` = (width, height)."""

    @abstractmethod
    def small_bgr(self, step: int) -> np.ndarray:
        """Every ``step``-th pixel (``step`` even) as a BGR array: a cheap thumbnail for cut detection.

        Every frame of a clip goes through here, so it must cost far less than decoding it:
        point sampling of the decoded planes, no filtering (the cut detector compares whole-frame
        colour statistics, which sampling keeps).
        """

    @abstractmethod
    def luma(self) -> np.ndarray:
        """The frame in grey at its own size (uint8), from its RGB: where coding blocks sit on their 8-pixel grid.

        From RGB in both readers, not PyAV's Y plane, so both give the same number (vtest.avi's
        blockiness read 0.54 from PyAV's Y plane and 0.56 from decord; from RGB both read 0.561).
        """


def sample_step(width: int, target_width: int) -> int:
    """An even sampling step that brings ``width`` down to about ``target_width`` (at least 2: chroma is half size)."""
    step = max(1, round(width / max(1, target_width)))
    return max(2, step + (step % 2))


class Reader(ABC):
    """Decodes one file sequentially. ``open`` then iterate ``frames``; ``report`` after; ``close`` always."""

    name: ClassVar[str]

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads
        self.timeline: Timeline | None = None
        self.decoded = 0
        self.own_disagreements = 0
        self._own_start: float | None = None

    @abstractmethod
    def open(self, path: str) -> StreamInfo:
        """Open the first video stream; raise :class:`VideoUnreadable` when there is none."""

    @abstractmethod
    def frames(self) -> Iterator[Frame]:
        """Every frame in presentation order. A decoding error ends the iteration by raising
        :class:`VideoUnreadable` with category ``decode error``."""

    def close(self) -> None:
        """Release the file."""

    def _check_own(self, own: float | None, time: float) -> None:
        """Count a decoder's own stamp that is more than half a frame from the timeline's time for the frame."""
        if own is None or self.timeline is None:
            return
        if self._own_start is None:
            self._own_start = own
        if not abs((own - self._own_start) - time) <= 0.5 / self.timeline.fps:  # also counts NaN and garbage
            self.own_disagreements += 1

    def report(self) -> dict[str, Any]:
        """Where the frame times came from, for the pair's provenance (after ``frames`` is exhausted)."""
        t = self.timeline
        if t is None:
            return {}
        return {
            "time_source": t.source,
            "time_note": t.note,
            "own_time_disagreements": self.own_disagreements,
            "packets": t.packets,
            "repeat_entries": t.repeats,
            "frames_unmatched": self.decoded - t.packets,  # < 0: pictures the decoder did not give; > 0: more than packets
        }


READERS: dict[str, type[Reader]] = {}


def register_reader(cls: type[Reader]) -> type[Reader]:
    """Make a reader available to recipes under ``cls.name`` (a plugin module may add its own)."""
    READERS[cls.name] = cls
    return cls


def reader_ref(name: str) -> str:
    """``module:qualname`` of a registered reader: how a worker process finds the class again."""
    cls = READERS[name]
    return f"{cls.__module__}:{cls.__qualname__}"


def load_reader(ref: str) -> type[Reader]:
    import importlib

    module, _, qualname = ref.partition(":")
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


# --- PyAV ------------------------------------------------------------------------------------


class _AVFrame(Frame):
    def __init__(self, frame: Any, index: int, time: float) -> None:
        self.frame, self.index, self.time = frame, index, time

    def rgb(self, size: tuple[int, int]) -> np.ndarray:
        # swscale resizes while converting; area averaging is the right filter for shrinking.
        if (self.frame.width, self.frame.height) == size:
            return self.frame.to_ndarray(format="rgb24")
        return self.frame.reformat(width=size[0], height=size[1], format="rgb24", interpolation="AREA").to_ndarray()

    def small_bgr(self, step: int) -> np.ndarray:
        import cv2

        frame = self.frame
        if frame.format.name in ("yuv420p", "yuvj420p"):  # H.264's usual layout: sample the planes in place, no copy
            planes = [np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width] for p in frame.planes[:3]]
            half = step // 2
            luma = planes[0][::step, ::step]
            u, v = planes[1][::half, ::half], planes[2][::half, ::half]
            rows, cols = min(luma.shape[0], u.shape[0], v.shape[0]), min(luma.shape[1], u.shape[1], v.shape[1])
            yuv = cv2.merge([np.ascontiguousarray(luma[:rows, :cols]), np.ascontiguousarray(u[:rows, :cols]), np.ascontiguousarray(v[:rows, :cols])])
            return cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR)  # (full-range yuvj420p comes out a little flat: cuts do not care)
        width, height = max(2, -(-frame.width // step)), max(2, -(-frame.height // step))
        return frame.reformat(width=width, height=height, format="bgr24", interpolation="POINT").to_ndarray()

    def luma(self) -> np.ndarray:
        import cv2

        return cv2.cvtColor(self.frame.to_ndarray(format="rgb24"), cv2.COLOR_RGB2GRAY)


@register_reader
class PyAVReader(Reader):
    """FFmpeg through PyAV (BSD, maintained, bundles its FFmpeg): decodes packets until the file ends."""

    name = "pyav"

    def open(self, path: str) -> StreamInfo:
        import av

        try:
            self.container = av.open(path, metadata_errors="ignore")
        except (av.error.FFmpegError, OSError, UnicodeDecodeError) as error:
            raise VideoUnreadable("undecodable video", f"FFmpeg cannot open it ({type(error).__name__})") from None
        if not self.container.streams.video:
            self.container.close()
            raise VideoUnreadable("no video stream", f"the file has {len(self.container.streams)} streams, none of them video")
        try:
            self.timeline = read_timeline(path)  # a second, demux-only pass over the packets
        except (av.error.FFmpegError, OSError, UnicodeDecodeError, ValueError) as error:
            self.container.close()
            raise VideoUnreadable("undecodable video", f"FFmpeg cannot read its packets ({type(error).__name__})") from None
        stream = self.container.streams.video[0]
        if self.threads == 1:
            stream.thread_count = 1  # one core per worker: the stage declares one CPU
        else:
            stream.thread_type = "AUTO"  # frame and slice threads; 0 = as many as FFmpeg likes
            stream.thread_count = max(0, self.threads)
        self.stream = stream
        context = stream.codec_context
        return StreamInfo(
            width=int(context.width or 0), height=int(context.height or 0), fps=self.timeline.fps,
            declared_frames=int(stream.frames) or None, declared_seconds=self.timeline.declared_seconds,
            codec=str(context.name), timeline=self.timeline,
        )

    def frames(self) -> Iterator[Frame]:
        import av

        assert self.timeline is not None, "open() first"
        try:
            for frame in self.container.decode(self.stream):
                time = self.timeline.time(self.decoded)
                self._check_own(None if frame.time is None else float(frame.time), time)
                yield _AVFrame(frame, self.decoded, time)
                self.decoded += 1
        except av.error.FFmpegError as error:
            raise VideoUnreadable("decode error", f"FFmpeg stopped after {self.decoded} frames ({type(error).__name__}: {error})") from None

    def close(self) -> None:
        container = getattr(self, "container", None)
        if container is not None:
            container.close()
            self.container = None


# --- decord ----------------------------------------------------------------------------------


class _ArrayFrame(Frame):
    def __init__(self, pixels: np.ndarray, index: int, time: float) -> None:
        self.pixels, self.index, self.time = pixels, index, time

    def rgb(self, size: tuple[int, int]) -> np.ndarray:
        import cv2

        if (self.pixels.shape[1], self.pixels.shape[0]) == size:
            return self.pixels
        return cv2.resize(self.pixels, size, interpolation=cv2.INTER_AREA)

    def small_bgr(self, step: int) -> np.ndarray:
        return np.ascontiguousarray(self.pixels[::step, ::step, ::-1])

    def luma(self) -> np.ndarray:
        import cv2

        return cv2.cvtColor(self.pixels, cv2.COLOR_RGB2GRAY)


@register_reader
class DecordReader(Reader):
    """decord (the design card's reader; last release 2021): frames in chunks of ``CHUNK`` sequential indices.

    decord's own timestamps are only compared (garbage on AVI: see crispedit.video.timeline);
    frame k gets the timeline's k-th time, as PyAV's k-th decoded frame does. decord asks for
    frames by index up to the container's count, so a count that lies can make it loop
    forever (#373) or fail partway: the first shows up as the worker's timeout, the
    second ends the clip with a ``decode error``. Frames are decoded at their own size and
    resized here (decord's own resizing failed on some sizes, e.g. 48x36, in this project's
    tests).
    """

    name = "decord"
    #: Sequential frames per ``get_batch``: research/video.md §4 measured 448 fps in chunks of
    #: 32 at 480p, while one call for a whole clip was 163 fps and held the clip in memory.
    CHUNK = 32

    def open(self, path: str) -> StreamInfo:
        try:
            import decord
        except ImportError:
            raise RuntimeError("reader 'decord' needs the decord package (x86_64 wheels only); use reader: pyav") from None
        try:
            self.reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=max(0, self.threads))
        except (decord.DECORDError, RuntimeError) as error:
            raise VideoUnreadable("undecodable video", f"decord cannot open it ({type(error).__name__})") from None
        count = len(self.reader)
        try:
            first = self.reader[0].shape if count else (0, 0, 3)
            self.reader.seek(0)
        except (decord.DECORDError, RuntimeError) as error:
            raise VideoUnreadable("undecodable video", f"decord cannot decode its first frame ({type(error).__name__})") from None
        fps = float(self.reader.get_avg_fps()) or None
        try:
            self.timeline = read_timeline(path)
        except Exception:  # PyAV cannot demux what decord opened: derive every time from the index
            self.timeline = build_timeline([None] * count, None, fps)
        self.count = count
        return StreamInfo(
            width=int(first[1]), height=int(first[0]), fps=self.timeline.fps,
            declared_frames=self.timeline.declared_entries or count or None,  # the container's count, as PyAV's
            declared_seconds=self.timeline.declared_seconds, codec="decord", timeline=self.timeline,
        )

    def frames(self) -> Iterator[Frame]:
        import decord

        assert self.timeline is not None, "open() first"
        while self.decoded < self.count:
            chunk = list(range(self.decoded, min(self.decoded + self.CHUNK, self.count)))
            try:
                pixels = self.reader.get_batch(chunk).asnumpy()
                stamps = np.asarray(self.reader.get_frame_timestamp(chunk))
            except (decord.DECORDError, RuntimeError) as error:
                first_line = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
                raise VideoUnreadable("decode error", f"decord stopped after {self.decoded} frames ({type(error).__name__}: {first_line})") from None
            for k, position in enumerate(chunk):
                time = self.timeline.time(position)
                self._check_own(float(stamps[k][0]) if stamps.ndim == 2 else None, time)
                yield _ArrayFrame(pixels[k], position, time)
                self.decoded += 1

    def close(self) -> None:
        self.reader = None  # decord frees the file when the reader is collected
