"""What a finished (or partial) build says about itself, read back from its output directory.

``publish``, the dataset card and ``preview`` all need the same facts: which shards
count (a commit marker whose files have the sizes it records), the summary, the recipe's
stages with their parameters, score columns, thresholds and models, and the columns the
files really hold. They are read here once, from the files alone, so any build can be
described, including one made by an older crispedit with other columns.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from crispedit.recipe_yaml import RecipeError, load_located
from crispedit.shards import DATA_DIR, REJECTS_DIR, read_markers

log = logging.getLogger("crispedit")

Bounds = tuple[float | None, float | None]


@dataclass(frozen=True)
class Shard:
    """One committed shard: its marker and the two files it vouches for."""

    name: str
    start: int
    end: int
    rows: int
    rejects: int
    data: Path
    rejects_file: Path


@dataclass
class StageInfo:
    """One pipeline stage as the recipe configured it."""

    name: str
    kind: str
    params: dict[str, Any]
    columns: list[str] = field(default_factory=list)
    thresholds: dict[str, Bounds] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    cites: list[str] = field(default_factory=list)


@dataclass
class BuildInfo:
    out_dir: Path
    summary: dict[str, Any]
    manifest: dict[str, Any]
    recipe: dict[str, Any]
    shards: list[Shard]
    shards_total: int
    stages: list[StageInfo]

    @property
    def complete(self) -> bool:
        return bool(self.summary.get("complete", True)) and len(self.shards) >= self.shards_total

    @property
    def name(self) -> str:
        return str(self.recipe.get("name") or self.manifest.get("recipe") or self.summary.get("recipe") or self.out_dir.name)

    @property
    def score_columns(self) -> list[str]:
        columns = list(self.manifest.get("score_columns") or [])
        for stage in self.stages:
            columns += [c for c in stage.columns if c not in columns]
        return columns

    @property
    def thresholds(self) -> dict[str, Bounds]:
        out: dict[str, Bounds] = {}
        for stage in self.stages:
            out.update(stage.thresholds)
        return out

    def data_files(self) -> list[Path]:
        return [s.data for s in self.shards]

    def rejects_files(self) -> list[Path]:
        return [s.rejects_file for s in self.shards]

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def rejects(self) -> int:
        return sum(s.rejects for s in self.shards)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def committed_shards(out_dir: Path) -> list[Shard]:
    """Shards whose marker exists and whose files have the sizes the marker records."""
    shards = []
    for marker in read_markers(out_dir):
        name = str(marker.get("shard", ""))
        data = out_dir / DATA_DIR / f"{name}.parquet"
        rejects = out_dir / REJECTS_DIR / f"rejects-{name.removeprefix('train-')}.parquet"
        if not name or not _has_size(data, marker.get("data_bytes")) or not _has_size(rejects, marker.get("rejects_bytes")):
            log.warning("shard %s: files missing or of the wrong size; not counted", name or "?")
            continue
        shards.append(Shard(name, int(marker["start"]), int(marker["end"]), int(marker["rows"]), int(marker["rejects"]), data, rejects))
    return sorted(shards, key=lambda s: s.start)


def _has_size(path: Path, size: Any) -> bool:
    return path.is_file() and (size is None or path.stat().st_size == size)


def read_build(out_dir: str | Path) -> BuildInfo:
    """Everything publish, the card and preview need, from an output directory."""
    out = Path(out_dir)
    if not (out / "_commits").is_dir() and not (out / "summary.json").is_file():
        raise FileNotFoundError(f"{out} is not a crispedit output (no summary.json or _commits/)")
    summary = _read_json(out / "summary.json")
    manifest = _read_json(out / "manifest.json")
    recipe: dict[str, Any] = {}
    recipe_file = out / "recipe.yaml"
    if recipe_file.is_file():
        try:
            loaded = load_located(recipe_file).data  # bounded: a build from elsewhere may hold a hostile file
        except RecipeError as error:
            log.warning("%s: %s", recipe_file, error.problems[0] if error.problems else error)
            loaded = None
        recipe = loaded if isinstance(loaded, dict) else {}
    shards = committed_shards(out)
    total = summary.get("shards_total")
    if total is None and manifest.get("items") is not None and manifest.get("shard_size"):
        total = math.ceil(int(manifest["items"]) / int(manifest["shard_size"]))
    stages = pipeline_stages(recipe, out, manifest.get("tiny", False))
    return BuildInfo(out, summary, manifest, recipe, shards, int(total if total is not None else len(shards)), stages)


# --- the pipeline, from the recipe -------------------------------------------------------


def _filter_chain(name: str, out_dir: Path) -> list[dict[str, Any]] | None:
    """A filter chain's stages, looked up where ``crispedit build`` looks, plus the package's own."""
    import crispedit

    folders = [out_dir / "filters", out_dir.parent / "filters", Path.cwd() / "filters", Path(crispedit.__file__).resolve().parents[1] / "filters"]
    for folder in folders:
        file = folder / f"{name}.yaml"
        if file.is_file():
            try:
                chain = load_located(file).data
            except RecipeError:
                return None
            if isinstance(chain, dict) and isinstance(chain.get("stages"), list):
                return [s for s in chain["stages"] if isinstance(s, dict)]
    return None


def pipeline_stages(recipe: dict[str, Any], out_dir: Path, tiny: bool = False) -> list[StageInfo]:
    """The recipe's stages in order (filter chains expanded), with validated params where the kind is known."""
    entries = [s for s in recipe.get("stages") or [] if isinstance(s, dict)]
    for name in recipe.get("filters") or []:
        chain = _filter_chain(str(name), out_dir)
        if chain is None:
            log.warning("filter chain %r not found; the card lists it without its stages", name)
            entries.append({"kind": f"filters/{name}", "name": str(name)})
        else:
            entries += chain
    return [_stage_info(raw, recipe, tiny) for raw in entries]


def _stage_info(raw: dict[str, Any], recipe: dict[str, Any], tiny: bool) -> StageInfo:
    kind = str(raw.get("kind"))
    name = str(raw.get("name", kind))
    params = {k: v for k, v in raw.items() if k not in ("kind", "name")}
    info = StageInfo(name=name, kind=kind, params=params)
    try:
        from crispedit.models import tiny_swap
        from crispedit.stages import STAGES
        from crispedit.stages.base import BuildContext

        cls = STAGES.get(kind)
        if cls is None:
            return info
        validated = cls.Params.model_validate(tiny_swap(params) if tiny else params)
        info.params = validated.model_dump(mode="json")
        context = BuildContext(recipe_name=str(recipe.get("name", "")), fingerprint="", seed=int(recipe.get("seed", 0) or 0), tiny=tiny)
        stage = cls(validated, context, name)
        info.cites = [str(c) for c in getattr(cls, "cites", ())]
        info.columns = list(stage.score_columns())
        info.models = {k: str(v) for k, v in stage.model_ids().items()}
        explicit = getattr(stage, "thresholds", None)
        info.thresholds = dict(explicit()) if callable(explicit) else infer_thresholds(info.params, info.columns)
    except Exception as error:  # a plugin kind or a changed schema: describe what the recipe says
        log.debug("stage %s (%s): %s", name, kind, error)
    return info


_BOUND = re.compile(r"^(?:(min|max)_(.+)|(.+)_(min|max))$")


def infer_thresholds(params: dict[str, Any], columns: list[str]) -> dict[str, Bounds]:
    """``min_X``/``max_X`` (or ``X_min``/``X_max``) parameters matched to the one score column named like X."""
    found: dict[str, list[float | None]] = {}
    for key, value in params.items():
        match = _BOUND.match(key)
        if not match or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        side = match.group(1) or match.group(4)
        stem = match.group(2) or match.group(3)
        candidates = [c for c in columns if c == stem or c.endswith(f"_{stem}") or c.startswith(f"{stem}_")]
        if len(candidates) == 1:
            bounds = found.setdefault(candidates[0], [None, None])
            bounds[0 if side == "min" else 1] = float(value)
    return {column: (lo, hi) for column, (lo, hi) in found.items()}


# --- reading columns back -------------------------------------------------------------------


def file_schema(paths: list[Path]) -> pa.Schema | None:
    """The Arrow schema (with its ``huggingface`` metadata) of the first readable file."""
    for path in paths:
        try:
            return pq.read_schema(path)
        except (OSError, pa.ArrowInvalid):
            continue
    return None


def read_columns(paths: list[Path], columns: list[str]) -> pa.Table:
    """The named columns (those present) of every file, concatenated, plus ``_file`` and ``_row``."""
    tables = []
    for number, path in enumerate(paths):
        schema = pq.read_schema(path)
        present = [c for c in columns if c in schema.names]
        table = pq.read_table(path, columns=present)
        table = table.append_column("_file", pa.array([number] * table.num_rows, pa.int32()))
        table = table.append_column("_row", pa.array(range(table.num_rows), pa.int64()))
        tables.append(table)
    if not tables:
        return pa.table({"_file": pa.array([], pa.int32()), "_row": pa.array([], pa.int64())})
    return pa.concat_tables(tables, promote_options="default")


def read_rows(path: Path, rows: list[int], columns: list[str] | None = None) -> pa.Table:
    """Only the row groups holding ``rows`` are read: a sample of a large file stays cheap."""
    handle = pq.ParquetFile(path)
    starts = []
    position = 0
    for i in range(handle.metadata.num_row_groups):
        starts.append(position)
        position += handle.metadata.row_group(i).num_rows
    group_of = {r: bisect.bisect_right(starts, r) - 1 for r in rows}
    groups = sorted(set(group_of.values()))
    present = None if columns is None else [c for c in columns if c in handle.schema_arrow.names]
    table = handle.read_row_groups(groups, columns=present)
    offsets: dict[int, int] = {}
    position = 0
    for g in groups:
        offsets[g] = position
        position += handle.metadata.row_group(g).num_rows
    local = [offsets[group_of[r]] + r - starts[group_of[r]] for r in rows]
    return table.take(pa.array(local, pa.int64()))
