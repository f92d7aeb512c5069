"""Reading a finished (or partial) build back: the one reader every post-build command uses.

A build is a local directory or an object-store prefix (anything :class:`~crispedit.core.storage.Output`
opens). What it holds is read from the files alone, so a build made by an older crispedit
(other columns, no ``manifest.json``) can still be read:

* ``manifest.json``: what was built, including ``stages``, the stages as they ran (filter
  chains expanded, ``--tiny`` applied), which is what the card, the preview, the histograms
  and ``refilter`` describe; ``recipe.yaml`` only for builds written before the manifest
  had them;
* the commit markers: :meth:`BuildReader.shards` lists every marker, :meth:`BuildReader.committed`
  only shards whose files have the sizes their marker records (what may be published);
* tables: a shard's data and rejects, or some columns of many files at once
  (:func:`read_columns`), or a few rows of a large file (:func:`read_rows`).
"""

from __future__ import annotations

import bisect
import json
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from crispedit.core.sample import child_id, sample_id
from crispedit.core.shards import COMMITS_DIR, DATA_DIR, REJECTS_DIR, ShardRange, read_markers
from crispedit.core.storage import Output, is_url, open_input

log = logging.getLogger("crispedit")

#: How many child positions of one parent are tried when tracing a child's id back.
MAX_CHILDREN = 4096

#: A file of a build: a local path, or a URL on an object store.
BuildFile = Path | str


class NotABuildError(FileNotFoundError):
    """The location holds no crispedit output."""


@dataclass(frozen=True)
class Shard:
    """One committed shard: its marker and the two files it vouches for."""

    name: str
    start: int
    end: int
    rows: int
    rejects: int
    data: BuildFile
    rejects_file: BuildFile


class BuildReader:
    """The manifest, summary, recipe and shards of one output (a local directory or a URL)."""

    def __init__(self, location: str | Path | Output, storage_options: dict[str, Any] | None = None) -> None:
        self.output = location if isinstance(location, Output) else Output(location, storage_options)
        if not (self.output.exists("manifest.json") or self.output.exists("summary.json") or self.output.list(COMMITS_DIR, "commit-*.json")):
            raise NotABuildError(f"{self.output.url} is not a crispedit output (no manifest.json, summary.json or _commits/)")
        #: Files of the build that could not be read as they should (see :meth:`_yaml`).
        self.problems: list[str] = []
        self.manifest: dict[str, Any] = self._json("manifest.json")
        self.summary: dict[str, Any] = self._json("summary.json")
        self.recipe: dict[str, Any] = self._yaml("recipe.yaml")
        self.markers: list[dict[str, Any]] = sorted(read_markers(self.output), key=lambda m: m["start"])
        self.score_columns: list[str] = list(self.manifest.get("score_columns") or [])
        self.fingerprint: str = str(self.manifest.get("fingerprint", ""))

    def _json(self, key: str) -> dict[str, Any]:
        try:
            data = json.loads(self.output.read_bytes(key))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _yaml(self, key: str) -> dict[str, Any]:
        """A YAML file of the build, read with the recipe's bounds: a build from elsewhere may hold a hostile file.

        One that is refused reads as empty, with the reason in :attr:`problems` (a rewrite refuses such a build).
        """
        from crispedit.core.located import MAX_RECIPE_BYTES, LocatedError, parse_located
        from crispedit.core.storage import InputRefused, read_input

        if not self.output.exists(key):
            return {}
        try:
            text = read_input(self.location(key), MAX_RECIPE_BYTES, self.output.storage_options).decode("utf-8")
            data = parse_located(text, self.output.url_of(key)).data
        except (OSError, UnicodeDecodeError, InputRefused, LocatedError) as error:
            located = isinstance(error, LocatedError) and error.problems
            problem = str(error.problems[0]) if located else f"{self.output.url_of(key)}: {error}"
            log.warning("%s", problem)
            self.problems.append(problem)
            return {}
        return data if isinstance(data, dict) else {}

    # shards ------------------------------------------------------------------------------
    @property
    def shards_total(self) -> int:
        """How many shards the whole build has (committed or not)."""
        total = self.summary.get("shards_total")
        if total is None and self.manifest.get("items") is not None and self.manifest.get("shard_size"):
            total = math.ceil(int(self.manifest["items"]) / int(self.manifest["shard_size"]))
        return int(total if total is not None else len(self.committed()))

    def shards(self) -> list[ShardRange]:
        """Every shard with a readable commit marker, in order."""
        return [ShardRange(int(m["start"]), int(m["end"])) for m in self.markers]

    def marker(self, shard: ShardRange) -> dict[str, Any]:
        return next(m for m in self.markers if m["start"] == shard.start and m["end"] == shard.end)

    def data_key(self, shard: ShardRange) -> str:
        return self.output.join(DATA_DIR, f"{shard.name}.parquet")

    def rejects_key(self, shard: ShardRange) -> str:
        return self.output.join(REJECTS_DIR, f"rejects-{shard.suffix}.parquet")

    def location(self, key: str) -> BuildFile:
        """A key as something :func:`read_columns` and ``pyarrow`` open: a Path on a local disk, else its URL."""
        return Path(self.output.full_path(key)) if self.output.is_local else self.output.url_of(key)

    def committed(self) -> list[Shard]:
        """Shards whose marker exists and whose files have the sizes the marker records."""
        shards = []
        for marker in self.markers:
            name = str(marker.get("shard", ""))
            if not name:
                continue
            shard = ShardRange(int(marker["start"]), int(marker["end"]))
            data, rejects = self.data_key(shard), self.rejects_key(shard)
            if not _has_size(self.output, data, marker.get("data_bytes")) or not _has_size(self.output, rejects, marker.get("rejects_bytes")):
                log.warning("shard %s: files missing or of the wrong size; not counted", name)
                continue
            shards.append(Shard(name, shard.start, shard.end, int(marker["rows"]), int(marker["rejects"]),
                                self.location(data), self.location(rejects)))
        return shards

    # tables ------------------------------------------------------------------------------
    def _table(self, key: str) -> pa.Table:
        return pq.read_table(pa.BufferReader(self.output.read_bytes(key)))

    def data_table(self, shard: ShardRange) -> pa.Table:
        return self._table(self.data_key(shard))

    def rejects_table(self, shard: ShardRange) -> pa.Table:
        return self._table(self.rejects_key(shard))

    def table_order_keys(self, shard: ShardRange, table: pa.Table) -> list[str | None]:
        """:meth:`order_keys` of a shard's data or rejects table (its ``lineage`` column used where it has one)."""
        lineages = table.column("lineage").to_pylist() if "lineage" in table.column_names else None
        return self.order_keys(shard, table.column("id").to_pylist(), table.column("parent_id").to_pylist(), lineages)

    def order_keys(self, shard: ShardRange, ids: list[str], parent_ids: list[str | None],
                   lineages: list[list[int] | None] | None = None) -> list[str | None]:
        """Each row's build order key (``Sample.order_key``), traced back from its id; None when untraceable.

        A child of a source item is found from its parent's id; a deeper descendant (a pair derived
        from a candidate, an inverse of a turn) from its ``lineage``: the id its item's root reaches
        by following the lineage's positions must be its own.
        """
        roots = {sample_id(self.fingerprint, i): i for i in range(shard.start, shard.end)}
        children: dict[str, dict[str, int]] = {}
        below: dict[tuple[int, ...], dict[str, int]] = {(): roots}

        def descendants(prefix: tuple[int, ...]) -> dict[str, int]:
            """The ids at ``prefix`` under every root of the shard -> the root's item index."""
            if prefix not in below:
                below[prefix] = {child_id(node, prefix[-1]): index for node, index in descendants(prefix[:-1]).items()}
            return below[prefix]

        def position(parent: str, child: str) -> int | None:
            known = children.setdefault(parent, {})
            if child in known:
                return known[child]
            for p in range(len(known), MAX_CHILDREN):
                known[child_id(parent, p)] = p
                if child in known:
                    return known[child]
            return None

        keys: list[str | None] = []
        for n, (row_id, parent) in enumerate(zip(ids, parent_ids, strict=True)):
            lineage = tuple(lineages[n] or ()) if lineages is not None else ()
            if row_id in roots:
                keys.append(f"{roots[row_id]:012d}")
            elif len(lineage) > 1 and row_id in (found := descendants(lineage)):
                keys.append(f"{found[row_id]:012d}" + "".join(f".{p:06d}" for p in lineage))
            elif parent is not None and parent in roots and (p := position(parent, row_id)) is not None:
                keys.append(f"{roots[parent]:012d}.{p:06d}")
            else:
                keys.append(None)
        return keys


def _has_size(output: Output, key: str, size: Any) -> bool:
    found = output.size(key)
    return found is not None and (size is None or found == size)


# --- columns of many files ------------------------------------------------------------------------


@contextmanager
def _opened(location: BuildFile) -> Any:
    """A local path as it is, a URL opened through fsspec (with the environment's credentials)."""
    if isinstance(location, str) and is_url(location):
        with open_input(location) as handle:
            yield handle
    else:
        yield location


def read_columns(paths: list[BuildFile], columns: list[str]) -> pa.Table:
    """The named columns (those present) of every file, concatenated, plus ``_file`` and ``_row``."""
    tables = []
    for number, path in enumerate(paths):
        with _opened(path) as source:
            handle = pq.ParquetFile(source)
            present = [c for c in columns if c in handle.schema_arrow.names]
            table = handle.read(columns=present)
        table = table.append_column("_file", pa.array([number] * table.num_rows, pa.int32()))
        table = table.append_column("_row", pa.array(range(table.num_rows), pa.int64()))
        tables.append(table)
    if not tables:
        return pa.table({"_file": pa.array([], pa.int32()), "_row": pa.array([], pa.int64())})
    return pa.concat_tables(tables, promote_options="default")


def read_rows(path: BuildFile, rows: list[int], columns: list[str] | None = None) -> pa.Table:
    """Only the row groups holding ``rows`` are read: a sample of a large file stays cheap."""
    with _opened(path) as source:
        handle = pq.ParquetFile(source)
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
