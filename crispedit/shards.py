"""The shard store: deterministic shard names, atomic writes, commit markers, rejects, summary.

Layout of an output directory::

    data/train-00000000-00000256.parquet      rows, HF-readable (images as images)
    rejects/rejects-00000000-00000256.parquet one row per refused item, with its reason
    _commits/commit-00000000-00000256.json    written LAST: the shard is done
    manifest.json                             what was built, so a rerun cannot mix builds
    summary.json                              counts, drops per reason, seconds per stage

A shard counts only when its marker exists and the files it names have the sizes it
records. Killed at any moment, a rerun rewrites exactly the shards that did not count.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from crispedit import __version__
from crispedit.images import encode_image
from crispedit.paths import contained, safe_name
from crispedit.sample import TEXT_COLUMNS, Sample, provenance_json
from crispedit.stages.base import StageStats

DATA_DIR = "data"
REJECTS_DIR = "rejects"
COMMITS_DIR = "_commits"
TMP_PREFIX = ".tmp-"
_EXTENSIONS = {"png": "png", "webp": "webp", "jpeg": "jpg"}


@dataclass(frozen=True)
class ShardRange:
    """Items [start, end) of the source. The name is a function of the range alone."""

    start: int
    end: int

    @property
    def name(self) -> str:
        return f"train-{self.start:08d}-{self.end:08d}"


def plan_shards(count: int, shard_size: int) -> list[ShardRange]:
    return [ShardRange(lo, min(lo + shard_size, count)) for lo in range(0, count, shard_size)]


def record_features(score_columns: Iterable[str]) -> Any:
    """The HF ``Features`` of a data shard; its Arrow schema carries the ``huggingface`` metadata."""
    from datasets import Features, Image, List, Value

    features: dict[str, Any] = {"id": Value("string")}
    for column in ("source_image", "target_image", "mask"):
        features[column] = Image()
    for column in TEXT_COLUMNS:
        features[column] = Value("string")
    features["edit_objects"] = List(Value("string"))
    features["branch"] = Value("string")
    for column in score_columns:
        features[column] = Value("float64")
    features["provenance"] = Value("string")
    features["width"] = Value("int32")
    features["height"] = Value("int32")
    return Features(features)


REJECT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("index", pa.int64()),
        ("source_ref", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("instruction", pa.string()),
    ]
)


class ShardStore:
    """Reads and writes one output directory."""

    def __init__(
        self,
        out_dir: Path,
        score_columns: list[str],
        image_format: str = "png",
        quality: int = 95,
        png_compression: int = 3,
        build_provenance: dict[str, Any] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.score_columns = list(score_columns)
        self.image_format = image_format
        self.quality = quality
        self.png_compression = png_compression
        self.build_provenance = build_provenance or {}
        self.schema = record_features(self.score_columns).arrow_schema

    # paths ---------------------------------------------------------------------------
    def _path(self, folder: str, name: str) -> Path:
        return contained(self.out_dir, Path(folder) / safe_name(name))

    def data_path(self, shard: ShardRange) -> Path:
        return self._path(DATA_DIR, f"{shard.name}.parquet")

    def rejects_path(self, shard: ShardRange) -> Path:
        return self._path(REJECTS_DIR, f"rejects-{shard.name.removeprefix('train-')}.parquet")

    def marker_path(self, shard: ShardRange) -> Path:
        return self._path(COMMITS_DIR, f"commit-{shard.name.removeprefix('train-')}.json")

    # commit protocol -----------------------------------------------------------------
    def is_committed(self, shard: ShardRange) -> bool:
        marker = read_marker(self.marker_path(shard))
        if marker is None:
            return False
        for key, path in (("data_bytes", self.data_path(shard)), ("rejects_bytes", self.rejects_path(shard))):
            if not path.is_file() or path.stat().st_size != marker.get(key):
                return False
        return True

    def remove_temporaries(self) -> int:
        """Delete what killed writers left behind. Returns how many files went."""
        removed = 0
        for folder in (DATA_DIR, REJECTS_DIR, COMMITS_DIR, "."):
            directory = self.out_dir / folder
            if directory.is_dir():
                for stray in directory.glob(f"{TMP_PREFIX}*"):
                    stray.unlink(missing_ok=True)
                    removed += 1
        return removed

    def write(self, shard: ShardRange, samples: list[Sample], stages: dict[str, StageStats]) -> dict[str, Any]:
        """Write a shard's rejects, then its rows, then its marker; each file atomically."""
        accepted = [s for s in samples if s.alive]
        refused = [s for s in samples if not s.alive]
        rejects_path = self.rejects_path(shard)
        data_path = self.data_path(shard)
        atomic_write_parquet(self.rejects_table(refused), rejects_path)
        atomic_write_parquet(self.data_table(accepted), data_path)
        marker = {
            "shard": shard.name,
            "start": shard.start,
            "end": shard.end,
            "rows": len(accepted),
            "rejects": len(refused),
            "data_bytes": data_path.stat().st_size,
            "rejects_bytes": rejects_path.stat().st_size,
            "stages": [{"name": name, **stats.to_dict()} for name, stats in stages.items()],
        }
        atomic_write_text(json.dumps(marker, indent=1, sort_keys=True), self.marker_path(shard))
        return marker

    # tables --------------------------------------------------------------------------
    def _image(self, image: Any, sample_id: str, role: str) -> dict[str, Any] | None:
        if image is None:
            return None
        ext = "png" if role == "mask" and self.image_format == "jpeg" else _EXTENSIONS[self.image_format]
        fmt = "png" if ext == "png" else self.image_format
        data = encode_image(image, fmt, self.quality, self.png_compression)
        return {"bytes": data, "path": f"{sample_id}_{role}.{ext}"}

    def data_table(self, samples: list[Sample]) -> pa.Table:
        columns: dict[str, list[Any]] = {name: [] for name in self.schema.names}
        for s in samples:
            width, height = s.size or (None, None)
            provenance = {**self.build_provenance, **s.provenance}
            row = {
                "id": s.id,
                "source_image": self._image(s.source_image, s.id, "source"),
                "target_image": self._image(s.target_image, s.id, "target"),
                "mask": self._image(s.mask, s.id, "mask"),
                "edit_objects": list(s.edit_objects),
                "branch": s.branch,
                "provenance": provenance_json(provenance),
                "width": width,
                "height": height,
            }
            for column in TEXT_COLUMNS:
                row[column] = getattr(s, column)
            for column in self.score_columns:
                value = s.scores.get(column)
                row[column] = None if value is None else float(value)
            for name in self.schema.names:
                columns[name].append(row[name])
        return pa.table(columns, schema=self.schema)

    def rejects_table(self, samples: list[Sample]) -> pa.Table:
        rows = [
            {
                "id": s.id,
                "index": s.index,
                "source_ref": s.source_ref,
                "stage": s.reject.stage if s.reject else None,
                "reason": s.reject.reason if s.reject else None,
                "instruction": s.instruction,
            }
            for s in samples
        ]
        return pa.Table.from_pylist(rows, schema=REJECT_SCHEMA)

    # reading back --------------------------------------------------------------------
    def markers(self) -> list[dict[str, Any]]:
        return read_markers(self.out_dir)


def read_markers(out_dir: Path) -> list[dict[str, Any]]:
    """Every readable commit marker of an output directory, in shard order."""
    folder = Path(out_dir) / COMMITS_DIR
    found = [read_marker(p) for p in sorted(folder.glob("commit-*.json"))] if folder.is_dir() else []
    return [m for m in found if m is not None]


def read_marker(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _temporary(path: Path) -> Path:
    return path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")


def _commit(tmp: Path, path: Path) -> None:
    """fsync, then rename over the final name: readers see the old file or the whole new one."""
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def atomic_write_parquet(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        pq.write_table(table, tmp, compression="zstd", row_group_size=64)
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def summarize(markers: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over committed shards: rows, rejects, and per stage seen/passed/drops/seconds."""
    stages: dict[str, StageStats] = {}
    order: list[str] = []
    for marker in markers:
        for data in marker.get("stages", []):
            name = data["name"]
            if name not in stages:
                stages[name] = StageStats()
                order.append(name)
            stages[name].add(StageStats.from_dict(data))
    return {
        "shards": len(markers),
        "rows": sum(m["rows"] for m in markers),
        "rejects": sum(m["rejects"] for m in markers),
        "stages": {name: stages[name].to_dict() for name in order},
        "crispedit_version": __version__,
    }
