"""The figure in docs/video.md: the cut and fade signals over one real clip, with what was found and what is there.

The clip is MoviePy's trailer_bbb.mp4 (tests/video/real_clips.py fetches it from MoviePy's
sdist; Big Buck Bunny footage, CC-BY 3.0 Blender Foundation; no frame of it is drawn). Every
decoded frame goes through :class:`crispedit.video.transitions.Boundaries` exactly as mining
does, and the per-frame signals it keeps are plotted: the HSV change to the previous frame (what
the cut detector scores), the mean grey (a fade's ramp), and the mix test's ratio (under
``blend_ratio`` inside a fade or dissolve). Red lines are the cuts found, shaded spans the
transitions found; the bars at the top of the last panel are the fades and the dissolve as seen
by eye (tests/video/test_video_real.py).

    python benchmarks/video_figure.py [--out docs/img/video_signals.png]   # from the repository root
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from crispedit.video.readers import PyAVReader, sample_step  # noqa: E402
from crispedit.video.scenes import CutDetector  # noqa: E402
from crispedit.video.settings import MiningSettings  # noqa: E402
from crispedit.video.transitions import Boundaries, TransitionSettings  # noqa: E402
from tests.video.real_clips import fetch  # noqa: E402
from tests.video.test_video_real import TRAILER_DISSOLVE, TRAILER_FADES  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "img" / "video_signals.png"))
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = MiningSettings()
    reader = PyAVReader()
    info = reader.open(str(fetch("trailer_bbb.mp4")))
    step = sample_step(info.width, settings.cut_width)
    boundaries = Boundaries(CutDetector(settings.cut_detector, info.fps or 25.0), info.fps or 25.0, TransitionSettings(
        blend_ratio=settings.blend_ratio, blend_change=settings.blend_change, glitch_change=settings.glitch_change))
    times = []
    for frame in reader.frames():
        times.append(frame.time)
        boundaries.add(frame.index, frame.small_bgr(step))
    reader.close()
    found = boundaries.finish()
    t = np.asarray(times)

    figure, axes = plt.subplots(3, 1, figsize=(10, 5.2), sharex=True)
    axes[0].plot(t, boundaries.changes, lw=0.7)
    axes[0].set_ylabel("HSV change\nto previous", fontsize=8)
    axes[1].plot(t, boundaries.means, lw=0.7)
    axes[1].set_ylabel("mean grey", fontsize=8)
    axes[2].plot(t, np.minimum(boundaries.ratios, 1.5), lw=0.7)
    axes[2].axhline(settings.blend_ratio, color="k", ls="--", lw=0.7)
    axes[2].set_ylabel("mix residual /\nnearer end", fontsize=8)
    for axis in axes:
        for cut in found.cuts:
            axis.axvline(t[cut], color="red", lw=0.9)
        for span in found.transitions:
            axis.axvspan(t[span.first], t[span.last], color="orange" if span.kind == "dissolve" else "grey", alpha=0.35, lw=0)
        axis.tick_params(labelsize=7)
    for lo, hi in TRAILER_FADES:
        axes[2].plot([lo, hi], [1.45, 1.45], color="grey", lw=3)
    axes[2].plot(list(TRAILER_DISSOLVE), [1.45, 1.45], color="orange", lw=3)
    axes[2].set_xlabel("seconds of MoviePy's trailer_bbb.mp4 (Big Buck Bunny, CC-BY 3.0 Blender Foundation). Red: cuts found; "
                       "shaded: fades (grey) and the dissolve (orange) found;\nbars at the top: the same seen by eye; dashed: blend_ratio",
                       fontsize=7)
    figure.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=90)
    size = Path(args.out).stat().st_size
    print(f"{args.out}: {size / 1024:.0f} KB; cuts at {[round(float(t[c]), 2) for c in found.cuts]}; "
          f"transitions {[(round(float(t[s.first]), 2), round(float(t[s.last]), 2), s.kind) for s in found.transitions]}")


if __name__ == "__main__":
    main()
