"""``crispedit export``: a finished build in the shapes other trainers read, no model, no image re-encoded.

**Preference pairs** (``--preference``). A build keeps every candidate and every score,
rejects included, which is exactly what preference training needs (Pico-Banana ships 56K
such pairs). Siblings are the children of one parent (the N candidates of one item) with
the same source image and instruction. Each kept sibling is *chosen* against each sibling
that a decision of the build refused while keeping its images: a ``select`` loser (``not
selected: rank 2 of 3``) or a sibling a filter or the judge rejected. The margin is the
difference of one named score (``--score``; by default the build's ``select`` score, in its
direction); a pair whose margin is below ``--min-margin``, or not positive, or that lacks the
score, is left out and counted. Layouts (docs/filters.md, *Preference export*):

* ``trl``: ``images`` (a list holding the source image), ``prompt`` (the instruction),
  ``chosen``, ``rejected`` (the two edited images), TRL's vision DPO column names;
* ``diffusion-dpo``: ``caption``, ``jpg_0`` (chosen), ``jpg_1`` (rejected), ``label_0`` (1.0),
  Pick-a-Pic's columns as Diffusion-DPO's ``train.py`` reads them (raw image bytes), plus
  ``source_image``, the image an edit model is conditioned on.

Both add ``chosen_score``, ``rejected_score``, ``margin``, ``score``, the two ids, ``parent_id``,
``origin`` (``best_of_n`` or ``filter_reject``) and the rejected row's ``rejected_stage`` and
``rejected_reason``.

**MagicBrush** (``--magicbrush``). The kept turns of every multi-turn chain in MagicBrush's
released columns: ``img_id`` (the chain: the item's id), ``turn_index`` (1 = the edit of the
original), ``source_img``, ``mask_img`` (the turn's mask; all white when the turn edited the
whole image), ``instruction``, ``target_img``.

The target folder is claimed like every output (crispedit.core.outputs): a new or empty
folder, or an earlier export that ``--overwrite`` (or the same request) replaces. It holds
``data/train-SHARD.parquet`` (one per committed shard of the build, Hub-shaped, with the
``huggingface`` schema metadata, so ``datasets.load_dataset("parquet", data_dir=DIR)`` shows
the images as images) and ``export.json`` (what was asked, what came out).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from crispedit.core.hub_parquet import hub_parquet_bytes
from crispedit.core.images import encode_image
from crispedit.core.outputs import OutputRefused, claim, marker_for, replace_folder
from crispedit.core.reader import BuildReader, Shard
from crispedit.core.redact import scrub_data
from crispedit.core.shards import DATA_DIR, legacy_marker
from crispedit.core.storage import Output
from crispedit.ops.build_info import StageInfo, build_stages
from crispedit.ops.rewrite import RefilterError, open_build

Layout = Literal["trl", "diffusion-dpo"]
LAYOUTS: tuple[str, ...] = ("trl", "diffusion-dpo")
KIND = "export"
EXPORT_FILE = "export.json"


class ExportError(RefilterError):
    """The export cannot be made as asked (no score to rank by, a target folder refused...)."""


# --- preference pairs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Ranking:
    """The score pairs are ranked by, and its direction."""

    score: str
    higher_is_better: bool

    def margin(self, chosen: float | None, rejected: float | None) -> float | None:
        if chosen is None or rejected is None:
            return None
        return chosen - rejected if self.higher_is_better else rejected - chosen


def ranking_of(stages: list[StageInfo], score: str | None, lower_is_better: bool | None, columns: list[str]) -> Ranking:
    """``score`` (default: the last ``select`` stage's) and its direction (default: that stage's, else higher is better)."""
    selects = [s for s in stages if s.kind == "select"]
    chosen = score or (str(selects[-1].params.get("score")) if selects else None)
    if chosen is None:
        raise ExportError("the build has no select stage to rank candidates by; name a score with --score (one of: "
                          f"{', '.join(columns) or 'none'})")
    if chosen not in columns:
        raise ExportError(f"the build has no score {chosen!r} (it has {', '.join(columns) or 'no scores'})")
    if lower_is_better is None:
        same = [s for s in selects if s.params.get("score") == chosen]
        higher = bool(same[-1].params.get("higher_is_better", True)) if same else True
    else:
        higher = not lower_is_better
    return Ranking(chosen, higher)


def _image_bytes(cell: Any) -> bytes | None:
    return cell.get("bytes") if isinstance(cell, dict) else None


def preference_rows(data: list[dict[str, Any]], rejects: list[dict[str, Any]], decided_by: set[str], ranking: Ranking,
                    min_margin: float, skipped: Counter[str]) -> Iterator[dict[str, Any]]:
    """(chosen, rejected) rows of one shard, families in build order; ``skipped`` counts what was left out and why."""
    families: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: {"kept": [], "lost": []})
    for row in data:
        if row.get("parent_id") is not None and row.get("turn") is None:
            families[row["parent_id"]]["kept"].append(row)
    for row in rejects:
        if row.get("parent_id") is None or row.get("turn") is not None or row["parent_id"] not in families:
            continue
        if row.get("stage") not in decided_by:
            continue  # a generation failure, or a stage that decides on something else than the pair's quality
        if _image_bytes(row.get("target_image")) is None or _image_bytes(row.get("source_image")) is None:
            skipped["rejected sibling kept no images (output.reject_images: false)"] += 1
            continue
        families[row["parent_id"]]["lost"].append(row)
    for parent in sorted(families, key=lambda p: min(r["_order"] for r in families[p]["kept"])):
        family = families[parent]
        for chosen in sorted(family["kept"], key=lambda r: r["_order"]):
            for lost in sorted(family["lost"], key=lambda r: r["_order"]):
                if _image_bytes(lost["source_image"]) != _image_bytes(chosen["source_image"]) or lost.get("instruction") != chosen.get("instruction"):
                    continue  # not a candidate of the same edit: children of a parent that differ in what they ask
                margin = ranking.margin(chosen.get(ranking.score), lost.get(ranking.score))
                if margin is None:
                    skipped[f"no {ranking.score} score"] += 1
                elif margin <= 0:
                    skipped[f"rejected sibling not worse by {ranking.score}"] += 1
                elif margin < min_margin:
                    skipped[f"margin below {min_margin:g}"] += 1
                else:
                    yield {
                        "source_image": chosen["source_image"], "instruction": chosen.get("instruction"),
                        "chosen": chosen["target_image"], "rejected": lost["target_image"],
                        "chosen_score": chosen.get(ranking.score), "rejected_score": lost.get(ranking.score), "margin": margin,
                        "score": ranking.score, "chosen_id": chosen["id"], "rejected_id": lost["id"], "parent_id": parent,
                        "origin": "best_of_n" if str(lost.get("reason") or "").startswith("not selected") else "filter_reject",
                        "rejected_stage": lost.get("stage"), "rejected_reason": lost.get("reason"),
                    }


_EXTRA = ("chosen_score", "rejected_score", "margin", "score", "chosen_id", "rejected_id", "parent_id", "origin",
          "rejected_stage", "rejected_reason")


def preference_features(layout: Layout) -> Any:
    from datasets import Features, Image, List, Value

    if layout == "trl":
        head: dict[str, Any] = {"images": List(Image()), "prompt": Value("string"), "chosen": Image(), "rejected": Image()}
    else:
        head = {"caption": Value("string"), "jpg_0": Value("binary"), "jpg_1": Value("binary"), "label_0": Value("float64"),
                "source_image": Image()}
    kinds = {"chosen_score": "float64", "rejected_score": "float64", "margin": "float64"}
    return Features({**head, **{name: Value(kinds.get(name, "string")) for name in _EXTRA}})


def in_layout(row: dict[str, Any], layout: Layout) -> dict[str, Any]:
    extra = {name: row[name] for name in _EXTRA}
    if layout == "trl":
        return {"images": [row["source_image"]], "prompt": row["instruction"], "chosen": row["chosen"], "rejected": row["rejected"], **extra}
    return {"caption": row["instruction"], "jpg_0": _image_bytes(row["chosen"]), "jpg_1": _image_bytes(row["rejected"]),
            "label_0": 1.0, "source_image": row["source_image"], **extra}


def export_preference(src: str | Path, dst: str | Path, *, layout: Layout = "trl", score: str | None = None,
                      min_margin: float = 0.0, lower_is_better: bool | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Write ``dst``: the (chosen, rejected) pairs of the build at ``src`` (see the module docstring)."""
    if layout not in LAYOUTS:
        raise ExportError(f"unknown layout {layout!r}; layouts: {', '.join(LAYOUTS)}")
    reader = open_build(src)
    _check_target(reader, dst)
    stages = build_stages(reader)
    ranking = ranking_of(stages, score, lower_is_better, reader.score_columns)
    decided_by = {s.name for s in stages if s.is_filter or s.kind == "select"}
    request = {"what": "preference", "from": reader.output.url, "layout": layout, "score": ranking.score,
               "higher_is_better": ranking.higher_is_better, "min_margin": min_margin}
    skipped: Counter[str] = Counter()
    origins: Counter[str] = Counter()

    def rows(shard: Shard) -> list[dict[str, Any]]:
        data, rejects = _rows(reader, shard, data=True), _rows(reader, shard, data=False)
        made = [in_layout(r, layout) for r in preference_rows(data, rejects, decided_by, ranking, min_margin, skipped)]
        origins.update(r["origin"] for r in made)
        return made

    def details() -> dict[str, Any]:
        return {"pairs": dict(sorted(origins.items())), "skipped": dict(sorted(skipped.items()))}

    return _write(reader, dst, request, preference_features(layout), rows, overwrite, details)


# --- MagicBrush ---------------------------------------------------------------------------------


def magicbrush_features() -> Any:
    from datasets import Features, Image, Value

    return Features({"img_id": Value("string"), "turn_index": Value("int32"), "source_img": Image(), "mask_img": Image(),
                     "instruction": Value("string"), "target_img": Image()})


def _whole_mask(row: dict[str, Any]) -> dict[str, Any]:
    """An all-white mask of the pair's size: MagicBrush's way to say the turn may change every pixel."""
    mask = np.full((int(row["height"]), int(row["width"])), 255, np.uint8)
    return {"bytes": encode_image(mask, "png"), "path": f"{row['id']}_mask.png"}


def magicbrush_rows(data: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The kept turns of one shard's chains, chain by chain in build order, turn by turn."""
    turns = sorted((r for r in data if r.get("turn") is not None and r.get("parent_id") is not None), key=lambda r: r["_order"])
    return [{"img_id": r["parent_id"], "turn_index": int(r["turn"]), "source_img": r["source_image"],
             "mask_img": r["mask"] if r.get("mask") is not None else _whole_mask(r), "instruction": r.get("instruction"),
             "target_img": r["target_image"]} for r in turns]


def export_magicbrush(src: str | Path, dst: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Write ``dst``: the build's multi-turn chains in MagicBrush's layout (see the module docstring)."""
    reader = open_build(src)
    _check_target(reader, dst)
    request = {"what": "magicbrush", "from": reader.output.url}
    report = _write(reader, dst, request, magicbrush_features(), lambda shard: magicbrush_rows(_rows(reader, shard, data=True)), overwrite)
    if not report["rows"]:
        report["note"] = "the build has no multi-turn chains (rows with a turn): build with a multi_turn stage"
    return report


# --- shared: reading a shard, claiming and writing the folder -------------------------------------


def _rows(reader: BuildReader, shard: Shard, *, data: bool) -> list[dict[str, Any]]:
    """A shard's data (or rejects) rows as dicts, image cells as they are stored, with the build's order key."""
    from crispedit.core.shards import ShardRange

    where = ShardRange(shard.start, shard.end)
    table = reader.data_table(where) if data else reader.rejects_table(where)
    keys = reader.table_order_keys(where, table)
    rows = table.to_pylist()
    for n, (row, key) in enumerate(zip(rows, keys, strict=True)):
        row["_order"] = key if key is not None else f"~{n:09d}"  # untraceable rows keep their file order, last
    return rows


def _check_target(reader: BuildReader, dst: str | Path) -> None:
    """Refuse at once a target no export may take (the build itself, a user's folder, a file), before reading the build."""
    try:
        claim(dst, KIND, reads=[reader.output.location], legacy=legacy_marker)
    except OutputRefused as error:
        raise ExportError(str(error)) from None


def _write(reader: BuildReader, dst: str | Path, request: dict[str, Any], features: Any,
           rows: Callable[[Shard], list[dict[str, Any]]], overwrite: bool,
           details: Callable[[], dict[str, Any]] = dict) -> dict[str, Any]:
    """Claim ``dst`` for an export, write one Parquet file per committed shard of the build, then ``export.json``."""
    request = scrub_data(request)
    try:
        target = claim(dst, KIND, reads=[reader.output.location], legacy=legacy_marker)
        target.check_replace(overwrite, same=target.previous is not None and target.previous.get("request") == request)
    except OutputRefused as error:
        raise ExportError(str(error)) from None
    schema = features.arrow_schema
    counts: dict[str, int] = {}
    total = 0
    with replace_folder(target, marker_for(KIND, request=request)) as where:
        out = Output(where)
        for shard in reader.committed():
            made = rows(shard)
            table = pa.Table.from_pylist(made, schema=schema)
            out.write_bytes(out.join(DATA_DIR, f"train-{shard.start:08d}-{shard.end:08d}.parquet"), hub_parquet_bytes(table))
            counts[shard.name] = len(made)
            total += len(made)
        summary = {**request, "rows": total, "shards": counts, **details()}
        out.write_text(EXPORT_FILE, json.dumps(summary, indent=1, sort_keys=True))
    return {"out": target.url, "rows": total, "shards": len(counts), **{k: v for k, v in summary.items() if k not in ("shards", "from")}}
