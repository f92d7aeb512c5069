"""The ``hf_dataset`` source: a Hugging Face ``datasets`` dataset, by id or from ``save_to_disk``.

Three routes, chosen by what the dataset is, so a cluster never downloads a whole dataset
onto every node just to read a few rows:

- a ``save_to_disk`` directory: the Arrow files are memory-mapped and a shard slices its rows;
- a Parquet-backed dataset (most of the Hub, and any local folder of Parquet files): its data
  files are read in place (``hf://...`` or local) by row group, exactly as the ``parquet``
  source reads them, and counted from their footers;
- anything else (JSON, image folders, scripts' own formats): streamed when ``streaming`` is on
  (a shard skips to its first row), counted from the dataset's recorded split sizes; or, with
  ``streaming: false``, prepared once into the local ``datasets`` cache and sliced like a
  ``save_to_disk`` directory.
"""

from __future__ import annotations

import dataclasses
import os
from itertools import islice
from typing import Any

from pydantic import Field

from crispedit.core.source import register_source
from crispedit.core.storage import is_url, split_url
from crispedit.sources.parquet import ParquetFiles
from crispedit.sources.records import CellRules, EditColumnsParams, Record, RecordSource, cell_record, pair_record, with_license


class HFDatasetParams(EditColumnsParams):
    path: str = Field(description="a dataset id on the Hub (user/name), a local dataset folder, or a save_to_disk directory")
    config: str | None = Field(None, description="the dataset configuration (the `name` argument of load_dataset)")
    split: str = Field("train", description="which split to read")
    revision: str | None = Field(None, description="a Hub revision (branch, tag or commit); pin one for reproducible builds")
    image_column: str = Field("image", description="the image column: an Image feature, raw bytes, or paths/URLs")
    caption_column: str | None = Field(None, description="the caption column, or null for no captions")
    base: str | None = Field(
        None, description="directory or URL that relative paths in the image column are resolved against (unset, for a local dataset "
        "folder that is streamed or prepared: that folder, which its image files must not leave)",
    )
    streaming: bool = Field(
        True, description="for datasets that are neither save_to_disk nor Parquet: stream them instead of downloading and preparing them"
    )


_DATASETS: dict[str, Any] = {}


@register_source
class HFDatasetSource(RecordSource[HFDatasetParams]):
    """Rows of one split of a ``datasets`` dataset, in the dataset's own order."""

    kind = "hf_dataset"

    # which route --------------------------------------------------------------------------
    def _route(self) -> tuple[str, Any]:
        """('arrow', Dataset) from save_to_disk | ('prepared', Dataset) that datasets built | ('parquet', ParquetFiles)
        | ('stream', (builder, rows))."""
        if hasattr(self, "_resolved"):
            return self._resolved
        p = self.params
        marker = self._saved_marker()
        if marker is not None:
            self._resolved = ("arrow", self._saved(marker))
            return self._resolved
        import datasets

        builder = datasets.load_dataset_builder(p.path, p.config, revision=p.revision, storage_options=p.storage_options or None)
        files = self._parquet_files(builder)
        if files is not None:
            reader = ParquetFiles(files, p.image_column, p.caption_column, p.cell_rules(p.base), p.pair_columns(), p.license_column)
            reader.layout(fresh=True)  # checks the columns now, where the error is clearest
            self._resolved = ("parquet", reader)
        elif p.streaming:
            splits = builder.info.splits or {}
            info = splits.get(p.split)
            if info is None or not info.num_examples:
                raise ValueError(
                    f"{p.path} does not record how many rows its {p.split!r} split has, so it cannot be counted without "
                    "reading it all; set streaming: false (prepares it once), or convert it with save_to_disk or to Parquet"
                )
            self._resolved = ("stream", (builder, int(info.num_examples)))
        else:
            builder.download_and_prepare()
            self._resolved = ("prepared", self._columns(builder.as_dataset(split=p.split)))
        return self._resolved

    def _saved_marker(self) -> str | None:
        """For a save_to_disk directory, a stamp of its state file (a re-saved dataset gets a new one); else None."""
        fs, root = split_url(self.params.path, self.params.storage_options)
        for name in ("state.json", "dataset_dict.json"):
            try:
                info = fs.info(f"{root.rstrip('/')}/{name}")
            except (FileNotFoundError, NotADirectoryError):
                continue
            if info.get("type") == "file":
                return f"{name}:{info.get('size')}:{info.get('mtime') or info.get('LastModified') or info.get('ETag')}"
        return None

    def _saved(self, marker: str) -> Any:
        import datasets

        p = self.params
        key = f"{p.path}\x1f{p.split}\x1f{marker}"
        if key not in _DATASETS:
            loaded = datasets.load_from_disk(p.path, storage_options=p.storage_options or None)
            if isinstance(loaded, datasets.DatasetDict):
                if p.split not in loaded:
                    raise ValueError(f"{p.path} has no split {p.split!r} (splits: {', '.join(loaded)})")
                loaded = loaded[p.split]
            _DATASETS.clear()  # memory-mapped, but keep one open dataset per process at most
            _DATASETS[key] = self._columns(loaded)
        return _DATASETS[key]

    def _columns(self, dataset: Any) -> Any:
        """Only the image and caption columns, images left undecoded (bytes and path)."""
        import datasets

        p = self.params
        wanted = [c for c in (p.image_column, p.caption_column, *p.pair_columns().values(), p.license_column) if c]
        missing = [c for c in wanted if c not in dataset.column_names]
        if missing:
            raise ValueError(f"{p.path} has no column {missing[0]!r} (columns: {', '.join(dataset.column_names)})")
        dataset = dataset.select_columns(list(dict.fromkeys(wanted)))
        for column in (p.image_column, p.target_column):
            if column and isinstance(dataset.features[column], datasets.Image):
                dataset = dataset.cast_column(column, datasets.Image(decode=False))
        return dataset

    def _parquet_files(self, builder: Any) -> list[str] | None:
        """The split's data files when they are all Parquet, else None."""
        data_files = getattr(builder.config, "data_files", None) or {}
        files = next((list(v) for k, v in data_files.items() if str(k) == self.params.split), None)
        if files is None:
            if data_files:
                raise ValueError(f"{self.params.path} has no split {self.params.split!r} (splits: {', '.join(map(str, data_files))})")
            return None
        return files if files and all(str(f).lower().endswith(".parquet") for f in files) else None

    # the Source interface ---------------------------------------------------------------
    def record_count(self) -> int:
        route, value = self._route()
        if route in ("arrow", "prepared"):
            return len(value)
        if route == "parquet":
            return value.layout(fresh=True).total
        return value[1]

    def read_records(self, start: int, end: int) -> list[Record]:
        p = self.params
        route, value = self._route()
        if route == "parquet":
            return value.read(start, end)
        roles = {"image": p.image_column, "caption": p.caption_column, **p.pair_columns(), "license": p.license_column}
        if route in ("arrow", "prepared"):
            rows = value[start:end]
            columns = {role: rows[c] if c else [None] * (end - start) for role, c in roles.items()}
        else:
            builder, _ = value
            stream = self._stream(builder)
            chosen = list(islice(stream, start, end))
            columns = {role: [row[c] if c else None for row in chosen] for role, c in roles.items()}
            if len(chosen) < end - start:
                raise RuntimeError(f"{p.path}[{p.split}] ended at row {start + len(chosen)}, before its recorded size")
        name = self._display_name()
        rules = self._cell_rules(route)
        out = []
        for i, row in enumerate(range(start, end)):
            record = cell_record(columns["image"][i], f"{name}:row {row}", columns["caption"][i], rules)
            extra = {role: columns[role][i] for role in ("instruction", "target") if role in columns}
            paired = pair_record(record, rules, extra.get("instruction"), extra.get("target"), has_target="target" in columns)
            out.append(with_license(paired, columns["license"][i]))
        return out

    def _cell_rules(self, route: str) -> CellRules:
        """What an image cell may name. A local dataset folder that ``datasets`` streams or prepares (an image
        folder, JSON with image files) gives its Image cells as paths to its own files, with no bytes: without
        ``base``, those cells may name files inside that folder (which the recipe named), and nothing outside it.
        Parquet files and save_to_disk folders hold their cells as written, so they keep the general rule."""
        p = self.params
        rules = p.cell_rules(p.base)
        if route in ("stream", "prepared") and p.base is None and not is_url(p.path) and os.path.isdir(p.path):
            rules = dataclasses.replace(rules, folder=os.path.abspath(p.path))
        return rules

    def _stream(self, builder: Any) -> Any:
        import datasets

        p = self.params
        stream = builder.as_streaming_dataset(split=p.split)
        for column in (p.image_column, p.target_column):
            if column and isinstance(stream.features and stream.features.get(column), datasets.Image):
                stream = stream.cast_column(column, datasets.Image(decode=False))
        return iter(stream)

    def _display_name(self) -> str:
        p = self.params
        path = p.path.rstrip("/")
        name = path.rsplit("/", 1)[-1] if (is_url(path) or path.startswith((".", "/"))) else path
        return f"{name}[{p.split}]"
