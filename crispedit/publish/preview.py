"""``crispedit preview OUT``: static pages to browse any build, even a partial one.

OUT/preview/ holds plain HTML, CSS and JS plus the sample's data as a script
(``data.js``, since browsers refuse ``fetch`` on file:// pages), so it opens from disk
with no server and no network. Only a sample is shown: at most N pairs, drawn at random
with a fixed seed and stratified by (task, branch) so rare tasks appear; thumbnails are
separate small JPEG files, so the preview of a million-row build stays a few MB.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import webbrowser
from collections import defaultdict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from crispedit.core.locations import Location, resolve_location
from crispedit.core.outputs import claim, marker_for, replace_folder
from crispedit.core.reader import read_columns, read_rows
from crispedit.core.redact import scrub_data
from crispedit.ops.build_info import BuildInfo, read_build
from crispedit.ops.plots import score_histograms

log = logging.getLogger("crispedit")

PREVIEW_DIR = "preview"
THUMB_SIDE = 320
IMAGE_ROLES = {"source_image": "source", "target_image": "target", "mask": "mask"}
TEXT_FIELDS = ("instruction", "inverse_instruction", "source_caption", "target_caption", "task", "branch", "parent_id")


# --- sampling ------------------------------------------------------------------------------


def stratified_sample(table: pa.Table, n: int, seed: int, by: tuple[str, ...] = ("task", "branch")) -> list[int]:
    """Row positions of a seeded random sample of at most ``n`` rows, spread evenly over strata.

    Strata take turns (round robin) so a task with few rows still shows; within a stratum
    the order is a seeded shuffle. The result is grouped by stratum, in stratum order.
    """
    if table.num_rows == 0 or n <= 0:
        return []
    values = [table.column(c).to_pylist() if c in table.column_names else [None] * table.num_rows for c in by]
    keys = list(zip(*values, strict=True))
    strata: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for position, key in enumerate(keys):
        strata[key].append(position)
    rng = np.random.default_rng(seed)
    order = sorted(strata, key=lambda k: tuple("" if v is None else str(v) for v in k))
    shuffled = {k: list(rng.permutation(strata[k])) for k in order}
    chosen: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    remaining = min(n, table.num_rows)
    while remaining:
        for key in order:
            if remaining and shuffled[key]:
                chosen[key].append(int(shuffled[key].pop()))
                remaining -= 1
    return [p for key in order for p in sorted(chosen[key])]


def read_sample(paths: list[Path], positions: list[int], index: pa.Table, columns: list[str] | None = None) -> list[dict[str, Any]]:
    """Full rows for sample positions of ``index`` (a ``read_columns`` table), in sample order."""
    files = index.column("_file").to_pylist()
    rows = index.column("_row").to_pylist()
    wanted: dict[int, list[int]] = defaultdict(list)
    for p in positions:
        wanted[files[p]].append(rows[p])
    found: dict[tuple[int, int], dict[str, Any]] = {}
    for file_number, file_rows in wanted.items():
        table = read_rows(paths[file_number], file_rows, columns)
        for r, record in zip(file_rows, table.to_pylist(), strict=True):
            found[(file_number, r)] = record
    return [found[(files[p], rows[p])] for p in positions]


# --- thumbnails ------------------------------------------------------------------------------


def _decode(cell: Any) -> Any:
    from PIL import Image

    if not isinstance(cell, dict) or not cell.get("bytes"):
        return None
    try:
        image = Image.open(io.BytesIO(cell["bytes"]))
        image.load()
        return image
    except Exception as error:  # a corrupt cell should not stop a preview
        log.warning("undecodable image (%s): %s", cell.get("path"), error)
        return None


def _thumb(image: Any, side: int = THUMB_SIDE) -> Any:
    thumb = image.convert("RGB")
    thumb.thumbnail((side, side))
    return thumb


def _overlay(source: Any, mask: Any) -> Any:
    """The source with the edit region tinted red in proportion to the (soft) mask."""
    from PIL import Image

    base = source.convert("RGB")
    alpha = mask.convert("L").resize(base.size)
    red = Image.new("RGB", base.size, (230, 30, 60))
    weight = alpha.point(lambda v: int(v * 0.6))
    return Image.composite(red, base, weight)


def save_jpeg(image: Any, path: Path, quality: int = 82) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=quality, optimize=True)


def _file_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)[:64] or "row"


def row_thumbnails(record: dict[str, Any], folder: Path, prefix: str, relative_to: Path) -> dict[str, str]:
    """Write source/target/mask-overlay thumbnails of one row; returns role -> relative path."""
    images = {role: _decode(record.get(column)) for column, role in IMAGE_ROLES.items()}
    out: dict[str, str] = {}
    stem = _file_id(str(record.get("id", "row")))
    for role in ("source", "target"):
        if images[role] is not None:
            path = folder / f"{prefix}{stem}-{role}.jpg"
            save_jpeg(_thumb(images[role]), path)
            out[role] = path.relative_to(relative_to).as_posix()
    if images["mask"] is not None and images["source"] is not None:
        path = folder / f"{prefix}{stem}-mask.jpg"
        save_jpeg(_thumb(_overlay(images["source"], images["mask"])), path)
        out["mask"] = path.relative_to(relative_to).as_posix()
    return out


# --- the page data -------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _entry(record: dict[str, Any], score_columns: list[str], images: dict[str, str]) -> dict[str, Any]:
    provenance = record.get("provenance")
    if isinstance(provenance, str):
        try:
            provenance = json.loads(provenance)
        except ValueError:
            pass
    entry: dict[str, Any] = {"id": record.get("id"), "images": images, "provenance": provenance}
    for name in (*TEXT_FIELDS, "stage", "reason", "source_ref", "index", "width", "height"):
        if record.get(name) is not None:
            entry[name] = record[name]
    entry["edit_objects"] = list(record.get("edit_objects") or [])
    entry["scores"] = {c: _number(record.get(c)) for c in score_columns if c in record}
    return entry


@dataclass
class PreviewResult:
    folder: Path
    pairs: int
    reject_examples: int
    files: int
    bytes: int


def reject_groups(build: BuildInfo, per_group: int, seed: int) -> tuple[list[dict[str, Any]], pa.Table, list[list[int]]]:
    """Rejects grouped by (stage, reason category): counts, and a seeded sample of positions per group."""
    index = read_columns(build.rejects_files(), ["id", "stage", "reason"])
    if index.num_rows == 0 or "reason" not in index.column_names:
        return [], index, []
    stages = index.column("stage").to_pylist() if "stage" in index.column_names else [None] * index.num_rows
    reasons = index.column("reason").to_pylist()
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for position, (stage, reason) in enumerate(zip(stages, reasons, strict=True)):
        category = (reason or "").split(":", 1)[0].strip() or "(no reason)"
        groups[(stage or "(unknown)", category)].append(position)
    rng = np.random.default_rng(seed)
    ordered = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))
    meta = [{"stage": stage, "category": category, "count": len(members)} for (stage, category), members in ordered]
    picks = [sorted(int(p) for p in rng.permutation(members)[:per_group]) for _, members in ordered]
    return meta, index, picks


def summary_rows(summary: dict[str, Any]) -> dict[str, Any]:
    """The per-stage table: counts, drops by reason, seconds, and usage counters where present."""
    stages = []
    usage_keys: list[str] = []
    for name, stats in (summary.get("stages") or {}).items():
        usage = stats.get("usage") or {}
        usage_keys += [k for k in usage if k not in usage_keys]
        stages.append({
            "stage": name,
            "seen": stats.get("seen"),
            "passed": stats.get("passed"),
            "rejected": stats.get("rejected") or {},
            "seconds": stats.get("seconds"),
            "usage": usage,
        })
    totals = {k: summary.get(k) for k in ("rows", "rejects", "shards", "shards_total", "complete", "recipe", "fingerprint", "crispedit_version")}
    gpu_seconds = sum(float((s["usage"] or {}).get("gpu_seconds", 0) or 0) for s in stages)
    if gpu_seconds:
        totals["gpu_hours"] = round(gpu_seconds / 3600, 4)
    for key in ("tokens_in", "tokens_out", "cost_usd"):
        total = sum(float((s["usage"] or {}).get(key, 0) or 0) for s in stages)
        if total:
            totals[key] = round(total, 6)
    return {"stages": stages, "usage_keys": usage_keys, "totals": totals}


def write_preview(
    out_dir: str | Path,
    *,
    pairs: int = 120,
    rejects_per_group: int = 6,
    seed: int = 0,
    folder: str | Path | None = None,
    overwrite: bool = False,
) -> PreviewResult:
    """Write the preview pages for a build into ``folder`` (default OUT/preview/).

    The folder is claimed as a crispedit ``preview`` (:mod:`crispedit.core.outputs`): it must be new,
    empty or an earlier preview, and may not be, hold or lie inside the build (OUT/preview/ aside).
    The build's own OUT/preview/ is replaced on every run; another earlier preview only with
    ``overwrite``. The pages are written beside the folder and swapped in. Raises OutputRefused.
    """
    build = read_build(out_dir)
    default = build.out_dir / PREVIEW_DIR
    chosen = claim(folder if folder is not None else default, "preview", reads=[build.out_dir], allow_inside=[default],
                   legacy=_legacy_preview)
    chosen.check_replace(overwrite or chosen.location.same(resolve_location(default)))
    with replace_folder(chosen, marker_for("preview")) as where:
        result = _write_pages(build, Path(where), pairs, rejects_per_group, seed)
    assert chosen.location.path is not None
    return PreviewResult(chosen.location.path, result.pairs, result.reject_examples, result.files, result.bytes)


def _legacy_preview(where: Location) -> dict[str, Any] | None:
    """A preview written before markers existed: its data.js says so; it owns the files a preview writes."""
    if where.path is None:
        return None
    try:
        with open(where.path / "data.js", "rb") as handle:
            head = handle.read(64)
    except OSError:
        return None
    if not head.startswith(b"window.CRISPEDIT_PREVIEW"):
        return None
    return marker_for("preview", files=[*PAGES, "data.js", "app.js", "style.css"], patterns=["img/*", "plots/*"])


def _write_pages(build: BuildInfo, target: Path, pairs: int, rejects_per_group: int, seed: int) -> PreviewResult:
    (target / "img").mkdir(parents=True, exist_ok=True)
    score_columns = build.score_columns

    data_paths = build.data_files()
    index = read_columns(data_paths, ["id", "task", "branch"])
    positions = stratified_sample(index, pairs, seed)
    entries = []
    for record in read_sample(data_paths, positions, index):
        images = row_thumbnails(record, target / "img", "", target)
        entries.append(_entry(record, score_columns, images))

    groups, reject_index, picks = reject_groups(build, rejects_per_group, seed)
    reject_paths = build.rejects_files()
    examples = 0
    for group, members in zip(groups, picks, strict=True):
        group["examples"] = []
        for record in read_sample(reject_paths, members, reject_index):
            images = row_thumbnails(record, target / "img" / "rejects", "", target)
            group["examples"].append(_entry(record, score_columns, images))
            examples += 1

    kept = read_columns(data_paths, [*score_columns, "task"])
    rejected = read_columns(reject_paths, [*score_columns, "task"]) if reject_paths else None
    plots = score_histograms(kept, rejected, score_columns, build.thresholds, target / "plots")
    plots.update({f"survival of {c}": p for c, p in _survival_plots(kept, rejected, score_columns, build.thresholds, target).items()})

    page_data = {
        "name": build.name,
        "description": build.recipe.get("description", ""),
        "complete": build.complete,
        "rows": build.rows,
        "rejects": build.rejects,
        "shards": len(build.shards),
        "shards_total": build.shards_total,
        "sample_seed": seed,
        "score_columns": score_columns,
        "thresholds": {c: list(b) for c, b in build.thresholds.items()},
        "pairs": entries,
        "reject_groups": groups,
        "summary": summary_rows(build.summary),
        "pipeline": [{"name": s.name, "kind": s.kind, "params": s.params, "models": s.models,
                      "thresholds": {c: list(b) for c, b in s.thresholds.items()}} for s in build.stages],
        "plots": [{"column": c, "file": p.relative_to(target).as_posix()} for c, p in plots.items()],
    }
    script = "window.CRISPEDIT_PREVIEW = " + json.dumps(scrub_data(page_data), default=str, allow_nan=False).replace("</", "<\\/") + ";\n"
    (target / "data.js").write_text(script, encoding="utf-8")
    _copy_static(target, build.name)
    files = [p for p in target.rglob("*") if p.is_file()]
    return PreviewResult(target, len(entries), examples, len(files), sum(p.stat().st_size for p in files))


def _survival_plots(kept: Any, rejected: Any, columns: list[str], thresholds: dict[str, Any], target: Path) -> dict[str, Path]:
    """``crispedit report``'s survival curves (kept fraction vs threshold, with the knee) beside the histograms."""
    from crispedit.ops.plots import survival_plots

    values = {}
    for column in columns:
        parts = [t.column(column).to_numpy(zero_copy_only=False).astype(np.float64) for t in (kept, rejected)
                 if t is not None and column in t.column_names]
        values[column] = np.concatenate(parts) if parts else np.array([])
    lower = {c: b[0] for c, b in thresholds.items() if b[0] is not None}
    return survival_plots(values, lower, target / "plots")


PAGES = {"index.html": ("pairs", "Pairs"), "rejects.html": ("rejects", "Rejects"), "summary.html": ("summary", "Summary")}


def _copy_static(target: Path, title: str) -> None:
    static = resources.files("crispedit").joinpath("publish", "static")
    for name in ("app.js", "style.css"):
        (target / name).write_text(static.joinpath(name).read_text(encoding="utf-8"), encoding="utf-8")
    template = static.joinpath("page.html").read_text(encoding="utf-8")
    safe_title = title.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for file, (page, _label) in PAGES.items():
        here = ' class="here"'
        nav = "".join(f'<a href="{f}"{here if f == file else ""}>{label}</a>' for f, (_p, label) in PAGES.items())
        html = template.replace("{{TITLE}}", safe_title).replace("{{PAGE}}", page).replace("{{NAV}}", nav)
        (target / file).write_text(html, encoding="utf-8")


def open_preview(result: PreviewResult) -> None:
    webbrowser.open((result.folder / "index.html").resolve().as_uri())
