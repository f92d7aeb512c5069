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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crispedit.core.faults import fault_point
from crispedit.core.hub_parquet import hub_parquet_bytes
from crispedit.core.images import encode_image
from crispedit.core.limits import MAX_ITEMS, MAX_SHARDS
from crispedit.core.redact import scrub_text
from crispedit.core.sample import IMAGE_COLUMNS, TEXT_COLUMNS, Sample, digest, provenance_json
from crispedit.core.stats import StageStats
from crispedit.core.storage import Output

DATA_DIR = "data"
REJECTS_DIR = "rejects"
COMMITS_DIR = "_commits"
#: Pieces of a shard written by different Ray workers, merged into the shard at commit.
PARTS_DIR = "_parts"
_EXTENSIONS = {"png": "png", "webp": "webp", "jpeg": "jpg"}


@dataclass(frozen=True)
class ShardRange:
    """Items [start, end) of the source. The name is a function of the range alone."""

    start: int
    end: int

    @property
    def suffix(self) -> str:
        return f"{self.start:08d}-{self.end:08d}"

    @property
    def name(self) -> str:
        return f"train-{self.suffix}"


class PlanTooLarge(ValueError):
    """More items or shards than a build may have (crispedit.core.limits)."""


def plan_shards(count: int, shard_size: int) -> list[ShardRange]:
    """The shards of ``count`` items; refused before any is made when the plan would pass the limits."""
    if count > MAX_ITEMS:
        raise PlanTooLarge(f"the source has {count:,} items, more than a build may have ({MAX_ITEMS:,}); set a `limit`")
    shards = -(-count // shard_size)
    if shards > MAX_SHARDS:
        raise PlanTooLarge(f"{count:,} items in shards of {shard_size} make {shards:,} shards, more than {MAX_SHARDS:,}; "
                           "raise output.shard_size")
    return [ShardRange(lo, min(lo + shard_size, count)) for lo in range(0, count, shard_size)]


def record_features(score_columns: Iterable[str]) -> Any:
    """The HF ``Features`` of a data shard; its Arrow schema carries the ``huggingface`` metadata."""
    from datasets import Features, Image, List, Value

    features: dict[str, Any] = {"id": Value("string")}
    for column in IMAGE_COLUMNS:
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
    features["parent_id"] = Value("string")
    features["turn"] = Value("int32")
    features["lineage"] = List(Value("int32"))
    return Features(features)


#: What a reject row has beyond a data row: where it came from and why it left.
REJECT_EXTRA = ("index", "source_ref", "stage", "reason")


def reject_features(score_columns: Iterable[str]) -> Any:
    """Rejects carry the data columns too (images unless turned off, every score), so
    ``datasets`` reads them as a config of their own and ``refilter`` can restore them."""
    from datasets import Value

    features = record_features(score_columns)
    features["index"] = Value("int64")
    for column in REJECT_EXTRA[1:]:
        features[column] = Value("string")
    return features


ORDER_COLUMN = "_order"

#: What a build's folder may hold, as glob patterns (its ``.crispedit-output.json`` names them):
#: what ``--overwrite`` may delete, and nothing else.
BUILD_PATTERNS = (
    "manifest.json", "summary.json", "recipe.yaml", "hist-*.png", ".tmp-*",
    f"{DATA_DIR}/*", f"{REJECTS_DIR}/*", f"{COMMITS_DIR}/*", f"{PARTS_DIR}/*", "logs/*", ".cache/*", "until/*", "preview/*",
)


def legacy_marker(where: Any) -> dict[str, Any] | None:
    """The marker a shard-layout output written before markers existed would have: a build, or a
    ``refilter`` / ``dedupe`` result (whose manifest says ``derived_from``). None for anything else."""
    from crispedit.core.outputs import marker_for

    output = Output(where.url)
    try:
        manifest = json.loads(output.read_bytes("manifest.json"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or "fingerprint" not in manifest or "shard_size" not in manifest:
        return None
    derived = manifest.get("derived_from")
    kind = "build" if not isinstance(derived, dict) else "dedupe" if "dedupe" in derived else "refilter"
    return marker_for(kind, patterns=BUILD_PATTERNS)


class ShardStore:
    """Reads and writes one output location: a local directory or an object-store prefix."""

    def __init__(
        self,
        location: str | os.PathLike[str],
        score_columns: list[str],
        image_format: str = "png",
        quality: int = 95,
        png_compression: int = 3,
        build_provenance: dict[str, Any] | None = None,
        reject_images: bool = True,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.output = Output(location, storage_options)
        self.score_columns = list(score_columns)
        self.image_format = image_format
        self.quality = quality
        self.png_compression = png_compression
        self.build_provenance = build_provenance or {}
        self.reject_images = reject_images
        self.schema = record_features(self.score_columns).arrow_schema
        self.reject_schema = reject_features(self.score_columns).arrow_schema
        self.part_schema = self.reject_schema.append(pa.field(ORDER_COLUMN, pa.string()))

    # keys ------------------------------------------------------------------------------
    def data_key(self, shard: ShardRange) -> str:
        return self.output.join(DATA_DIR, f"{shard.name}.parquet")

    def rejects_key(self, shard: ShardRange) -> str:
        return self.output.join(REJECTS_DIR, f"rejects-{shard.suffix}.parquet")

    def marker_key(self, shard: ShardRange) -> str:
        return self.output.join(COMMITS_DIR, f"commit-{shard.suffix}.json")

    # commit protocol -----------------------------------------------------------------
    def is_committed(self, shard: ShardRange) -> bool:
        """A marker counts only if the files it names exist with the sizes it records."""
        marker = read_marker(self.output, self.marker_key(shard))
        if marker is None:
            return False
        return all(
            self.output.size(key) == marker.get(field)
            for field, key in (("data_bytes", self.data_key(shard)), ("rejects_bytes", self.rejects_key(shard)))
        )

    def remove_temporaries(self) -> int:
        """Delete what killed writers left behind: local temporaries, and parts of uncommitted shards.

        Data files of uncommitted shards are left: the rebuild overwrites them under the same name.
        """
        removed = self.output.remove_temporaries(DATA_DIR, REJECTS_DIR, COMMITS_DIR, "")
        parts = self.output.full_path(PARTS_DIR)
        if self.output.fs.exists(parts):
            removed += len(self.output.fs.find(parts))
            self.output.fs.rm(parts, recursive=True)
        return removed

    def write(self, shard: ShardRange, samples: list[Sample], stages: dict[str, StageStats]) -> dict[str, Any]:
        """Write a whole shard from its samples: the in-process path (and Ray's when nothing splits a shard)."""
        return self.commit(shard, [self.part_table(samples)], stages)

    def write_part(self, shard: ShardRange, samples: list[Sample]) -> str:
        """Write some of a shard's samples as a part, named by the items it holds; returns its key."""
        items = sorted({s.index for s in samples})
        key = self.output.join(PARTS_DIR, shard.name, f"{items[0]:012d}-{digest(*items)[:12]}.parquet")
        sink = pa.BufferOutputStream()
        pq.write_table(self.part_table(samples), sink, compression="none")
        self.output.write_bytes(key, sink.getvalue())
        return key

    def commit(self, shard: ShardRange, parts: list[pa.Table], stages: dict[str, StageStats]) -> dict[str, Any]:
        """Sort the shard's rows by item and child position, write rejects, then rows, then the marker.

        The sort makes the bytes independent of how the runner grouped the samples.
        """
        table = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        table = scrubbed(table.sort_by(ORDER_COLUMN).combine_chunks())
        refused = table.filter(pc.is_valid(table.column("reason")))
        accepted = table.filter(pc.is_null(table.column("reason")))
        fault_point("before-rejects")
        rejects_bytes = self.output.write_bytes(self.rejects_key(shard), hub_parquet_bytes(refused.select(self.reject_schema.names).cast(self.reject_schema)))
        fault_point("after-rejects")
        data_bytes = self.output.write_bytes(self.data_key(shard), hub_parquet_bytes(accepted.select(self.schema.names).cast(self.schema)))
        fault_point("after-data")
        marker = {
            "shard": shard.name,
            "start": shard.start,
            "end": shard.end,
            "rows": accepted.num_rows,
            "rejects": refused.num_rows,
            "data_bytes": data_bytes,
            "rejects_bytes": rejects_bytes,
            "stages": [{"name": name, **stats.to_dict()} for name, stats in stages.items()],
        }
        self.output.write_text(self.marker_key(shard), json.dumps(marker, indent=1, sort_keys=True))
        fault_point("after-marker")
        return marker

    def commit_parts(self, shard: ShardRange, part_keys: list[str], stages: dict[str, StageStats]) -> dict[str, Any]:
        """Commit a shard whose samples were written as parts by several workers, then drop the parts."""
        parts = [pq.read_table(pa.BufferReader(self.output.read_bytes(k)), schema=self.part_schema) for k in sorted(set(part_keys))]
        marker = self.commit(shard, parts, stages)
        folder = self.output.full_path(self.output.join(PARTS_DIR, shard.name))
        if self.output.fs.exists(folder):  # every part of this shard is in it now; strays of a dead task too
            self.output.fs.rm(folder, recursive=True)
        return marker

    # tables --------------------------------------------------------------------------
    def _image(self, image: Any, sample_id: str, role: str) -> dict[str, Any] | None:
        if image is None:
            return None
        ext = "png" if role == "mask" and self.image_format == "jpeg" else _EXTENSIONS[self.image_format]
        fmt = "png" if ext == "png" else self.image_format
        data = encode_image(image, fmt, self.quality, self.png_compression)
        return {"bytes": data, "path": f"{sample_id}_{role}.{ext}"}

    def part_table(self, samples: list[Sample]) -> pa.Table:
        """Rows for data and rejects alike (rejects keep their scores and, by default, their images)."""
        columns: dict[str, list[Any]] = {name: [] for name in self.part_schema.names}
        for s in samples:
            width, height = s.size or (None, None)
            keep_images = s.alive or self.reject_images
            row = {
                "id": s.id,
                "edit_objects": list(s.edit_objects),
                "branch": s.branch,
                "provenance": provenance_json({**self.build_provenance, **s.provenance}),
                "width": width,
                "height": height,
                "parent_id": s.parent_id,
                "turn": s.turn,
                "lineage": list(s.lineage),
                "index": s.index,
                "source_ref": s.source_ref,
                "stage": s.reject.stage if s.reject else None,
                "reason": s.reject.reason if s.reject else None,
                ORDER_COLUMN: s.order_key,
            }
            for column in IMAGE_COLUMNS:
                row[column] = self._image(getattr(s, column), s.id, column.removesuffix("_image")) if keep_images else None
            for column in TEXT_COLUMNS:
                row[column] = getattr(s, column)
            for column in self.score_columns:
                value = s.scores.get(column)
                row[column] = None if value is None else float(value)
            for name in self.part_schema.names:
                columns[name].append(row[name])
        return pa.table(columns, schema=self.part_schema)

    # reading back --------------------------------------------------------------------
    def markers(self) -> list[dict[str, Any]]:
        return read_markers(self.output)


#: Text columns that may quote an endpoint or a source URL, hence a credential: scrubbed as they are written.
SCRUBBED_COLUMNS = ("provenance", "reason", "source_ref")


def scrubbed(table: pa.Table) -> pa.Table:
    """``table`` with :func:`crispedit.core.redact.scrub_text` applied to its :data:`SCRUBBED_COLUMNS`."""
    for name in SCRUBBED_COLUMNS:
        if name not in table.column_names:
            continue
        values = table.column(name).to_pylist()
        clean = [scrub_text(v) if isinstance(v, str) else v for v in values]
        if clean != values:
            index = table.schema.get_field_index(name)
            table = table.set_column(index, table.schema.field(index), pa.array(clean, table.schema.field(index).type))
    return table


def as_output(location: str | os.PathLike[str] | Output) -> Output:
    return location if isinstance(location, Output) else Output(location)


def read_markers(location: str | os.PathLike[str] | Output) -> list[dict[str, Any]]:
    """Every readable commit marker of an output (a directory or a URL), in shard order."""
    output = as_output(location)
    found = [read_marker(output, key) for key in output.list(COMMITS_DIR, "commit-*.json")]
    return [m for m in found if m is not None]


def read_marker(output: Output, key: str) -> dict[str, Any] | None:
    try:
        return json.loads(output.read_bytes(key).decode("utf-8"))
    except (OSError, ValueError):
        return None
