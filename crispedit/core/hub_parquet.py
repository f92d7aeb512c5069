"""Parquet the way the Hugging Face Hub's dataset viewer wants it.

The viewer scans whole row groups and refuses one over about 286 MiB (300,000,000 B), so a
row group is bounded in bytes, not rows: a 1024 px pair with its mask is a few MB, a text
row a few hundred bytes, and a fixed row count is wrong for one or the other. The bound
is ``datasets``' own (``datasets.config.MAX_ROW_GROUP_SIZE``, "100MB" of uncompressed
data), which ``push_to_hub`` uses as a target; here it is a hard ceiling per row group,
checked against the written file's metadata.

The rest also follows what ``datasets`` 5.x writes (``arrow_writer.get_parquet_column_options``
and ``ParquetWriter``): a page index (so a reader fetches one page, not a row group),
content-defined chunking where pyarrow has it (unchanged rows give unchanged pages, which
Xet deduplicates on re-upload), and media columns (images) stored uncompressed,
PLAIN-encoded, without a dictionary, since PNG/JPEG/WebP bytes do not compress. Other
columns are zstd with a dictionary.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import fs as pafs

log = logging.getLogger("crispedit")

#: ``datasets.config.MAX_ROW_GROUP_SIZE`` ("100MB") in bytes, used when ``datasets`` is absent.
DEFAULT_MAX_ROW_GROUP_BYTES = 100 * 10**6
#: The viewer's scan limit (dataset-viewer ``ROWS_INDEX_MAX_ARROW_DATA_IN_MEMORY``); never exceed it.
VIEWER_MAX_ROW_GROUP_BYTES = 300_000_000
#: pyarrow's default cap on rows per row group.
MAX_ROWS_PER_GROUP = 1024 * 1024
#: ``datasets.config.DEFAULT_CDC_OPTIONS``.
CDC_OPTIONS = {"min_chunk_size": 256 * 1024, "max_chunk_size": 1024 * 1024, "norm_level": 0}


def max_row_group_bytes() -> int:
    """The byte bound ``datasets`` aims its row groups at (read from its config when installed)."""
    try:
        from datasets import config
        from datasets.utils.py_utils import convert_file_size_to_int

        return int(convert_file_size_to_int(config.MAX_ROW_GROUP_SIZE))
    except (ImportError, AttributeError, ValueError):
        return DEFAULT_MAX_ROW_GROUP_BYTES


def row_bytes(table: pa.Table) -> np.ndarray:
    """Estimated uncompressed Parquet bytes of each row: value bytes plus length prefixes."""
    total = np.zeros(table.num_rows, dtype=np.float64)
    for column in table.columns:
        total += np.concatenate([_array_bytes(chunk) for chunk in column.chunks]) if column.num_chunks else 0
    return total


def _array_bytes(array: pa.Array) -> np.ndarray:
    n = len(array)
    kind = array.type
    if isinstance(kind, pa.ExtensionType):
        return _array_bytes(array.storage)
    validity = 0.125 if array.null_count else 0.0
    if pa.types.is_struct(kind):
        out = np.full(n, validity)
        for i in range(kind.num_fields):
            out += _array_bytes(array.field(i))  # children come back sliced like their parent
        return out
    if pa.types.is_binary(kind) or pa.types.is_string(kind) or pa.types.is_large_binary(kind) or pa.types.is_large_string(kind):
        lengths = pc.binary_length(array).fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64)
        return lengths + 4 + validity
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        counts = pc.list_value_length(array).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        child = _array_bytes(array.flatten())
        cumulative = np.concatenate([[0.0], np.cumsum(child)])
        ends = np.cumsum(counts)
        return cumulative[ends] - cumulative[ends - counts] + 4 + validity
    if pa.types.is_null(kind):
        return np.zeros(n)
    try:
        return np.full(n, kind.bit_width / 8 + validity)
    except ValueError:  # not fixed-width (dictionary, map, union): spread the whole evenly
        return np.full(n, array.nbytes / max(1, n))


def row_group_sizes(table: pa.Table, max_bytes: int | None = None) -> list[int]:
    """Rows per row group so that each group's estimated bytes stay within ``max_bytes``.

    Greedy in row order; a single row larger than the bound gets a group of its own (it
    cannot be split). An empty table gets no groups.
    """
    limit = max_bytes or max_row_group_bytes()
    sizes: list[int] = []
    rows = 0
    used = 0.0
    for size in row_bytes(table):
        if rows and (used + size > limit or rows >= MAX_ROWS_PER_GROUP):
            sizes.append(rows)
            rows, used = 0, 0.0
        rows += 1
        used += size
    if rows:
        sizes.append(rows)
    return sizes


def media_columns(schema: pa.Schema) -> list[str]:
    """Top-level columns whose ``huggingface`` feature embeds media bytes (Image, Audio, Video...)."""
    metadata = schema.metadata or {}
    if b"huggingface" not in metadata:
        return []
    try:
        from datasets import Features
        from datasets.features.features import require_storage_embed

        features = Features.from_arrow_schema(schema)
    except (ImportError, ValueError, TypeError, KeyError) as error:
        log.debug("no media columns found from the huggingface metadata: %s", error)
        return []
    return [name for name, feature in features.items() if require_storage_embed(feature)]


def _leaf_paths(path: str, kind: pa.DataType) -> list[str]:
    """Parquet leaf column paths (``image.bytes``, ``tags.list.element``), which writer options match."""
    if isinstance(kind, pa.ExtensionType):
        kind = kind.storage_type
    if pa.types.is_struct(kind):
        return [leaf for field in kind for leaf in _leaf_paths(f"{path}.{field.name}", field.type)]
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _leaf_paths(f"{path}.list.element", kind.value_type)
    return [path]


def column_options(schema: pa.Schema) -> dict[str, Any]:
    """Per-leaf ``compression``, ``use_dictionary`` and ``column_encoding`` for ``pq.ParquetWriter``."""
    media = set(media_columns(schema))
    compression: dict[str, str] = {}
    dictionary: list[str] = []
    encoding: dict[str, str] = {}
    for field in schema:
        for leaf in _leaf_paths(field.name, field.type):
            if field.name in media:
                compression[leaf] = "none"
                encoding[leaf] = "PLAIN"
            else:
                compression[leaf] = "zstd"
                dictionary.append(leaf)
    return {"compression": compression, "use_dictionary": dictionary, "column_encoding": encoding or None}


def _supports_cdc() -> bool:
    major = int(pa.__version__.split(".")[0])
    return major >= 21  # pyarrow 21 added use_content_defined_chunking


def write_hub_parquet(table: pa.Table, where: Any, *, filesystem: Any = None, max_bytes: int | None = None) -> None:
    """Write ``table`` to ``where`` (a path, or a path on ``filesystem``) as Hub-ready Parquet.

    ``filesystem`` may be a ``pyarrow.fs.FileSystem`` or an fsspec filesystem. The schema
    (with its ``huggingface`` metadata) is kept as is. Every row group's uncompressed size
    is checked after writing; a group over ``max_bytes`` (estimates can miss Parquet's own
    overhead) makes it rewrite with a tighter budget.
    """
    limit = max_bytes or max_row_group_bytes()
    budget = float(limit)
    for _attempt in range(4):
        sizes = row_group_sizes(table, int(budget))
        _write(table, where, filesystem, sizes)
        worst = _largest_multi_row_group(where, filesystem, sizes)
        if worst <= limit:
            return
        budget *= 0.95 * limit / worst
        log.debug("row group of %d B over %d B; rewriting with a %d B budget", worst, limit, budget)
    raise RuntimeError(f"could not keep row groups of {where} within {limit} bytes")


def _write(table: pa.Table, where: Any, filesystem: Any, sizes: list[int]) -> None:
    options = column_options(table.schema)
    extra: dict[str, Any] = {"write_page_index": True, "filesystem": filesystem}
    if _supports_cdc():
        extra["use_content_defined_chunking"] = CDC_OPTIONS
    with pq.ParquetWriter(where, table.schema, **options, **extra) as writer:
        offset = 0
        for rows in sizes:
            writer.write_table(table.slice(offset, rows), row_group_size=rows)
            offset += rows
        if _supports_cdc():
            writer.add_key_value_metadata({"content_defined_chunking": json.dumps(CDC_OPTIONS)})


def _largest_multi_row_group(where: Any, filesystem: Any, sizes: list[int]) -> int:
    """Bytes of the largest row group that holds more than one row (single rows cannot shrink)."""
    metadata = pq.read_metadata(where, filesystem=_arrow_filesystem(filesystem))
    worst = 0
    for i in range(metadata.num_row_groups):
        group = metadata.row_group(i)
        if group.num_rows > 1:
            worst = max(worst, group.total_byte_size)
    return worst


def _arrow_filesystem(filesystem: Any) -> Any:
    if filesystem is None or isinstance(filesystem, pafs.FileSystem):
        return filesystem
    return pafs.PyFileSystem(pafs.FSSpecHandler(filesystem))


def hub_shape_problems(metadata: pq.FileMetaData, max_bytes: int | None = None) -> list[str]:
    """Why a written file is not Hub-shaped (empty when it is): oversized row groups, no page index."""
    limit = max_bytes or max_row_group_bytes()
    problems = []
    for i in range(metadata.num_row_groups):
        group = metadata.row_group(i)
        if group.num_rows > 1 and group.total_byte_size > limit:
            problems.append(f"row group {i} holds {group.total_byte_size} B (> {limit} B)")
            break
    if metadata.num_row_groups and metadata.num_columns and not metadata.row_group(0).column(0).has_offset_index:
        problems.append("no page index")
    return problems


def hub_parquet_bytes(table: pa.Table, *, max_bytes: int | None = None) -> pa.Buffer:
    """The bytes :func:`write_hub_parquet` would write, built in memory.

    The shard store publishes a file in one piece (an object-store PUT, or a local temporary
    and a rename), so it needs the whole file before anything is visible.
    """
    limit = max_bytes or max_row_group_bytes()
    budget = float(limit)
    for _attempt in range(4):
        sizes = row_group_sizes(table, int(budget))
        sink = pa.BufferOutputStream()
        _write(table, sink, None, sizes)
        data = sink.getvalue()
        metadata = pq.read_metadata(pa.BufferReader(data))
        worst = max((metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups)
                     if metadata.row_group(i).num_rows > 1), default=0)
        if worst <= limit:
            return data
        budget *= 0.95 * limit / worst
    raise RuntimeError(f"could not keep row groups within {limit} bytes")
