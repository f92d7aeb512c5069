"""The ``parquet`` source: images stored in (or referenced from) Parquet files, local or remote.

LAION- and COCO-style collections and every Hugging Face dataset on the Hub are Parquet. The
item count is the sum of the footers' row counts (no data is read), and a shard reads only
the row groups that hold its rows, and only the image and caption columns, so a worker
never pulls a whole multi-gigabyte file to build 256 items.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator

from crispedit.core.source import SourceError, register_source
from crispedit.sources.records import (
    CellRules,
    EditColumnsParams,
    InputFile,
    Record,
    RecordSource,
    cell_record,
    expand_inputs,
    image_kind,
    layout_key,
    pair_record,
    with_license,
)


class ParquetParams(EditColumnsParams):
    files: list[str] = Field(
        min_length=1,
        description="Parquet files, directories (searched for *.parquet) or globs; local paths or fsspec URLs "
        "(s3://, gs://, hf://datasets/...). Files are read in the order given, each glob/directory sorted",
    )
    image_column: str = Field("image", description="the image column: HF Image structs {bytes, path}, raw bytes, or paths/URLs")
    caption_column: str | None = Field("caption", description="the caption column, or null for no captions")
    base: str | None = Field(
        None, description="directory or URL that relative paths in the image column are resolved against (they may not leave it)"
    )

    @field_validator("files", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


@dataclass(frozen=True)
class ParquetLayout:
    """Which rows live in which file and row group, from the footers alone."""

    files: list[InputFile]
    group_rows: list[list[int]]
    image_kind: str

    @property
    def file_rows(self) -> list[int]:
        return [sum(groups) for groups in self.group_rows]

    @property
    def total(self) -> int:
        return sum(self.file_rows)


_LAYOUTS: dict[str, ParquetLayout] = {}


class StaleLayout(RuntimeError):
    """A file's footer no longer matches the layout cached for it: the files changed since."""


def parquet_layout(
    specs: list[str], storage_options: dict[str, Any], image_column: str, caption_column: str | None, *, fresh: bool = False,
    extra_columns: tuple[str, ...] = (),
) -> ParquetLayout:
    """Footers of every file (read in parallel), checked for the named columns.

    Cached per process, so the shards a worker builds do not each re-read every footer;
    ``fresh`` reads them again (``count()`` always does, so a new build never counts from an old
    layout).
    """
    key = layout_key("parquet", specs, storage_options, image_column, caption_column, *extra_columns)
    if not fresh and key in _LAYOUTS:
        return _LAYOUTS[key]
    files = expand_inputs(specs, (".parquet", ".parq"), storage_options)

    def footer(file: InputFile) -> tuple[list[int], str]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            with file.open() as handle:
                parquet = pq.ParquetFile(handle)
                schema = parquet.schema_arrow
                groups = [parquet.metadata.row_group(i).num_rows for i in range(parquet.metadata.num_row_groups)]
        except (pa.ArrowException, OSError) as error:
            raise SourceError(f"{file.url}: not a readable Parquet file ({_first_line(error)})") from None
        missing = [c for c in (image_column, caption_column, *extra_columns) if c is not None and c not in schema.names]
        if missing:
            raise SourceError(f"{file.url} has no column {missing[0]!r} (columns: {', '.join(schema.names)})")
        try:
            return groups, image_kind(schema.field(image_column).type)
        except ValueError as error:
            raise SourceError(f"{file.url}: column {image_column!r}: {error}") from None

    with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:
        footers = list(pool.map(footer, files))
    kinds = {kind for _, kind in footers}
    if len(kinds) > 1:
        raise SourceError(f"the image column {image_column!r} is stored differently across files: {sorted(kinds)}")
    layout = ParquetLayout(files, [groups for groups, _ in footers], kinds.pop())
    _LAYOUTS.pop(key, None)
    if len(_LAYOUTS) >= 8:
        _LAYOUTS.pop(next(iter(_LAYOUTS)))
    _LAYOUTS[key] = layout
    return layout


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


@dataclass(frozen=True)
class ParquetFiles:
    """Reads records by position from a list of Parquet files (shared by ``parquet`` and ``hf_dataset``)."""

    specs: list[str]
    image_column: str
    caption_column: str | None
    rules: CellRules
    #: Role (``instruction``, ``target``) -> column, for an existing editing dataset.
    pair_columns: dict[str, str] | None = None
    #: The column with each row's licence, or None.
    license_column: str | None = None

    @property
    def storage_options(self) -> dict[str, Any]:
        return self.rules.storage_options

    def layout(self, fresh: bool = False) -> ParquetLayout:
        extra = (*(self.pair_columns or {}).values(), *([self.license_column] if self.license_column else []))
        return parquet_layout(self.specs, self.storage_options, self.image_column, self.caption_column, fresh=fresh, extra_columns=extra)

    def read(self, start: int, end: int) -> list[Record]:
        """Records [start, end); a cached layout the files no longer match is read again, once."""
        layout = self.layout()
        if end > layout.total:
            layout = self.layout(fresh=True)
        try:
            return self._read(layout, start, end)
        except StaleLayout:
            return self._read(self.layout(fresh=True), start, end)

    def _read(self, layout: ParquetLayout, start: int, end: int) -> list[Record]:
        """Rows [start, end) across the files, reading only the row groups and columns they need."""
        import pyarrow.parquet as pq

        records: list[Record] = []
        first_row = 0
        image, caption_column = self.image_column, self.caption_column
        pairs = self.pair_columns or {}
        licenses_column = self.license_column
        columns = list(dict.fromkeys([image, *([caption_column] if caption_column else []), *pairs.values(),
                                      *([licenses_column] if licenses_column else [])]))
        for file, groups in zip(layout.files, layout.group_rows):
            rows = sum(groups)
            lo, hi = max(start, first_row) - first_row, min(end, first_row + rows) - first_row
            first_row += rows
            if lo >= hi:
                continue
            wanted, group_start, offset = [], 0, 0
            for index, count in enumerate(groups):
                if group_start < hi and group_start + count > lo:
                    offset = group_start if not wanted else offset
                    wanted.append(index)
                group_start += count
            with file.open() as handle:
                parquet = pq.ParquetFile(handle)
                metadata = parquet.metadata
                if [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] != groups:
                    raise StaleLayout(file.url)
                table = parquet.read_row_groups(wanted, columns=columns).slice(lo - offset, hi - lo)
            images = table.column(image).to_pylist()
            captions = table.column(caption_column).to_pylist() if caption_column else [None] * len(images)
            instructions = table.column(pairs["instruction"]).to_pylist() if "instruction" in pairs else [None] * len(images)
            targets = table.column(pairs["target"]).to_pylist() if "target" in pairs else [None] * len(images)
            licenses = table.column(licenses_column).to_pylist() if licenses_column else [None] * len(images)
            for row, (cell, caption, instruction, target, license_cell) in enumerate(
                zip(images, captions, instructions, targets, licenses), start=lo,
            ):
                record = cell_record(cell, f"{file.ref}:row {row}", caption, self.rules)
                paired = pair_record(record, self.rules, instruction, target, has_target="target" in pairs)
                records.append(with_license(paired, license_cell))
        return records


@register_source
class ParquetSource(RecordSource[ParquetParams]):
    """Rows of Parquet files, in file order then row order; each row's image becomes an item."""

    kind = "parquet"

    def _files(self) -> ParquetFiles:
        p = self.params
        return ParquetFiles(p.files, p.image_column, p.caption_column, p.cell_rules(p.base), p.pair_columns(), p.license_column)

    def record_count(self) -> int:
        return self._files().layout(fresh=True).total

    def read_records(self, start: int, end: int) -> list[Record]:
        return self._files().read(start, end)
