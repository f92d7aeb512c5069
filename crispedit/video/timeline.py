"""When each decoded frame is shown: one table per clip, read from the container's packets, used by every reader.

A decoder hands frames out in presentation order, but the timestamps it attaches to them are
not always in that order. On real clips (tests/video/real_clips.py): an AVI holding MPEG-4
with packed B-frames (OpenCV's Megamind.avi) makes FFmpeg stamp frames with their
neighbours' times (88 of 270 steps run backwards in PyAV); an MP4 whose index has no
composition offsets although the stream has B-frames (OpenCV's box.mp4, pts == dts) gives a
permutation (231 of 455 steps backwards); decord's ``get_frame_timestamp`` gives -3.8e17 for
the first 89 frames of Megamind.avi and values up to 2 s off after that. The pictures
themselves agree: decord's frame k and PyAV's k-th decoded frame are the same image on all
eleven real clips.

So a frame's time comes from one table built before decoding by demuxing the video stream's
packets (no decoding; 0.03 s for a 55 s 720p clip, about 1 % of decoding it): the k-th
decoded frame is shown at the k-th smallest packet time. That is what the container says,
made independent of the order the decoder reports it in, and both readers use it, so they
agree by construction. Where packets lack timestamps, or two claim the same one, the table
cannot be trusted and every time is index / stated frame rate for the whole clip: never a
mix of the two within a clip. ``source`` says which rule a clip got and ``note`` why.

An AVI's "repeat the previous frame" index entries are empty packets, which FFmpeg's demuxer
drops; their time stays in the neighbours' stamps, so such a clip's frames get their real,
uneven times (OpenCV's tree.avi: 444 entries, 68 pictures over 29.6 s). A decoder that drops
a picture in the middle would make the frames after it one entry early; the reader's report
counts decoded frames against table entries (``frames_unmatched``) so that shows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The frame rate assumed when a stream states none.
DEFAULT_FPS = 25.0


@dataclass(frozen=True)
class Timeline:
    """Presentation times (seconds from the first picture) of the pictures a container holds, in display order."""

    times: np.ndarray  # float64, increasing, times[0] == 0
    source: str  # "container" (packet timestamps, sorted) or "index/fps" (derived for the whole clip)
    note: str | None  # why the container's timestamps were not used
    fps: float  # the stream's stated rate: the spacing past the table's end, and the rule of index/fps
    last_duration: float  # seconds the last picture is shown
    declared_seconds: float | None  # what the container says the stream lasts
    declared_entries: int | None  # the stream's stated frame count: index entries, repeats included
    packets: int  # pictures (non-empty packets) the container holds

    def time(self, index: int) -> float:
        """The time of the ``index``-th decoded frame (past the table: one frame interval per frame)."""
        if index < len(self.times):
            return float(self.times[index])
        last = float(self.times[-1]) if len(self.times) else -1.0 / self.fps
        return last + (index - len(self.times) + 1) / self.fps

    def seconds(self, decoded: int) -> float:
        """The footage ``decoded`` frames cover: up to the next picture's time, or the last one's end."""
        if decoded <= 0:
            return 0.0
        if decoded < len(self.times):
            return float(self.times[decoded])
        return self.time(decoded - 1) + self.last_duration

    @property
    def repeats(self) -> int:
        """Index entries that hold no picture (an AVI's "repeat the previous frame"): not missing frames."""
        return max(0, (self.declared_entries or 0) - self.packets)


def read_timeline(path: str) -> Timeline:
    """Demux the first video stream's packets (no decoding) into its :class:`Timeline`.

    Raises what PyAV raises when the file cannot be opened, ``ValueError`` when it has no video
    stream; a demuxing error part way keeps the packets read so far (decoding stops there too).
    """
    import av

    with av.open(path, metadata_errors="ignore") as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        base = float(stream.time_base) if stream.time_base else None
        rate = stream.average_rate or stream.guessed_rate
        stamps: list[int | None] = []
        durations: dict[int, int] = {}
        try:
            for packet in container.demux(stream):
                if not packet.size or packet.is_discard:  # the flush packet; an edit list's skipped lead-in
                    continue
                stamp = packet.pts if packet.pts is not None else packet.dts
                stamps.append(stamp)
                if stamp is not None and packet.duration:
                    durations[stamp] = int(packet.duration)
        except (av.error.FFmpegError, OSError):
            pass
        declared = None
        if stream.duration is not None and base:
            declared = float(stream.duration) * base
        elif container.duration is not None:
            declared = container.duration / 1_000_000
        entries = int(stream.frames) or None
        if entries and base and "avi" in container.format.name.split(","):
            # An AVI's stream header states its length in index entries of one time-base tick each (repeats
            # included); FFmpeg shrinks the stream duration to what it found when the index is missing, which is
            # exactly a file cut short (OpenCV's vtest.avi cut in half: "39.8 s", header 795 entries = 79.5 s).
            declared = max(declared or 0.0, entries * base)
    return build_timeline(stamps, base, float(rate) if rate else None, durations, declared, entries)


def build_timeline(
    stamps: list[int | None],
    base: float | None,
    fps: float | None,
    durations: dict[int, int] | None = None,
    declared_seconds: float | None = None,
    declared_entries: int | None = None,
) -> Timeline:
    """The rule apart from the demuxing: sorted packet stamps when all are there and distinct, else index / fps."""
    rate = fps if fps and fps > 0 else DEFAULT_FPS
    present = [s for s in stamps if s is not None]
    missing = len(stamps) - len(present)
    repeated = len(present) - len(set(present))
    if stamps and base and not missing and not repeated:
        ordered = sorted(present)
        times = (np.asarray(ordered, np.float64) - ordered[0]) * base
        last = (durations or {}).get(ordered[-1])
        source, note, last_duration = "container", None, last * base if last else 1.0 / rate
    else:
        times = np.arange(len(stamps), dtype=np.float64) / rate
        why = [] if stamps else ["the container lists no packets"]
        if not base:
            why.append("the stream has no time base")
        if missing:
            why.append(f"{missing} of {len(stamps)} packets have no timestamp")
        if repeated:
            why.append(f"{repeated} packets repeat another's timestamp")
        if not fps:
            why.append(f"the stream states no frame rate ({rate:g} assumed)")
        source, last_duration = "index/fps", 1.0 / rate
        note = "; ".join(why) + f": every time is frame index / {rate:g} fps"
    return Timeline(
        times=times, source=source, note=note, fps=rate, last_duration=float(last_duration),
        declared_seconds=declared_seconds, declared_entries=declared_entries, packets=len(stamps),
    )
