"""Score histograms of a build, one PNG per score column with its thresholds drawn, beside summary.json.

The drawing is crispedit.ops.plots' (kept pairs per task, rejects in grey, bounds dashed); this
module decides what to draw for a build: every score column the build holds, the bounds its
recipe's filter stages declare (``thresholds()``), kept rows from the data shards and the
filtered rows from the rejects. ``refilter`` and ``dedupe`` call it on what they write; a
build calls it through the engine (see docs/filters.md).
"""

from __future__ import annotations

from pathlib import Path

PREFIX = "hist-"


def write_histograms(out: str | Path, folder: str | Path | None = None) -> dict[str, Path]:
    """``OUT/hist-COLUMN.png`` for every score column with values; returns column -> file.

    Only local outputs: the PNGs are drawn to files (an object-store build can be drawn from
    a local copy, or by ``crispedit preview``/``publish``, which draw the same plots).
    """
    from crispedit.core.reader import read_columns
    from crispedit.core.storage import is_url
    from crispedit.ops.build_info import read_build
    from crispedit.ops.plots import score_histograms

    if is_url(str(out)):
        return {}
    build = read_build(out)
    columns = build.score_columns
    if not columns:
        return {}
    wanted = [*columns, "task"]
    kept = read_columns(build.data_files(), wanted)
    rejected = read_columns(build.rejects_files(), wanted)
    return score_histograms(kept, rejected, columns, build.thresholds, Path(folder or out), prefix=PREFIX)
