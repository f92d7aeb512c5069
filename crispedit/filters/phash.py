"""Perceptual hashes, near-duplicate search, and the image sets they are searched in.

A pHash (imagehash: 32x32 grey, DCT, the 8x8 low frequencies against their median) is 64
bits that survive resizing and JPEG recompression: copies land a few bits apart, unrelated
photos about 32. Three uses, one representation (unsigned 64-bit ints, Hamming distance by
XOR and popcount):

* ``dedupe`` stage: the pair's hashes (kept in provenance, hex) and the distance to the
  nearest pair of earlier builds given by path (a scan over numpy arrays: the score is the
  exact nearest distance, however far);
* ``decontaminate`` stage: the distance from the source to the nearest image of declared
  benchmark sets (an image folder, Parquet files, or a Hugging Face dataset), the same scan;
* ``crispedit dedupe OUT --to NEW``: near-duplicate pairs *within* a build, across shards,
  which no per-shard stage can see (:func:`duplicates_of` over :func:`build_hashes`, run by
  crispedit.ops.dedupe). Only "what is within d" is asked there, so the search is the
  band index of crispedit.filters.mih, not all pairs.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

log = logging.getLogger("crispedit")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def phash(image: np.ndarray | Image.Image) -> int:
    """The 64-bit perceptual hash (imagehash.phash, hash_size 8) of an RGB array or a PIL image."""
    import imagehash

    picture = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    return int(str(imagehash.phash(picture.convert("RGB"))), 16)


def to_hex(value: int) -> str:
    return f"{value:016x}"


def from_hex(text: str) -> int:
    return int(text, 16)


def hamming(a: int, b: int) -> int:
    return int((a ^ b).bit_count())


def distances(query: int, hashes: np.ndarray) -> np.ndarray:
    """Hamming distance from one hash to every hash of a uint64 array."""
    return np.bitwise_count(hashes ^ np.uint64(query)).astype(np.int64)


@dataclass
class HashIndex:
    """Hashes of a set of images, each with a reference a person can find the image by."""

    name: str
    hashes: np.ndarray  # uint64
    refs: list[str]

    def __len__(self) -> int:
        return len(self.refs)

    def nearest(self, query: int) -> tuple[int, str] | None:
        """(distance, reference) of the closest image; ties go to the first in the set's order."""
        if len(self.refs) == 0:
            return None
        d = distances(query, self.hashes)
        best = int(np.argmin(d))
        return int(d[best]), self.refs[best]

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "hashes": [to_hex(int(h)) for h in self.hashes], "refs": self.refs})

    @classmethod
    def from_json(cls, text: str) -> HashIndex:
        data = json.loads(text)
        return cls(data["name"], np.array([from_hex(h) for h in data["hashes"]], dtype=np.uint64), list(data["refs"]))

    @classmethod
    def of(cls, name: str, items: Iterable[tuple[str, Image.Image | np.ndarray]]) -> HashIndex:
        refs, hashes = [], []
        for ref, image in items:
            refs.append(ref)
            hashes.append(phash(image))
        return cls(name, np.array(hashes, dtype=np.uint64), refs)


# --- image sets ------------------------------------------------------------------------------


def folder_images(folder: Path) -> Iterator[tuple[str, Image.Image]]:
    """Every image under a folder, in sorted path order, referenced by its relative path."""
    for path in sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        try:
            with Image.open(path) as image:
                image.load()
                yield path.relative_to(folder).as_posix(), image
        except OSError as error:
            log.warning("skipping %s: %s", path, error)


def _decode(cell: Any) -> Image.Image | None:
    """An image cell of Parquet or ``datasets``: a PIL image, {bytes, path}, or raw bytes."""
    if cell is None:
        return None
    if isinstance(cell, Image.Image):
        return cell
    if isinstance(cell, dict):
        cell = cell.get("bytes")
    if isinstance(cell, bytes | bytearray):
        with Image.open(io.BytesIO(cell)) as image:
            image.load()
            return image
    return None


def parquet_images(path: Path, column: str, ref_column: str | None = None) -> Iterator[tuple[str, Image.Image]]:
    """Images of one column of a Parquet file (or of every ``*.parquet`` under a folder), batch by batch."""
    import pyarrow.parquet as pq

    files = sorted(Path(path).rglob("*.parquet")) if Path(path).is_dir() else [Path(path)]
    for file in files:
        handle = pq.ParquetFile(file)
        columns = [column] + ([ref_column] if ref_column else [])
        row = 0
        for batch in handle.iter_batches(columns=columns, batch_size=256):
            cells = batch.column(column).to_pylist()
            refs = batch.column(ref_column).to_pylist() if ref_column else [None] * len(cells)
            for cell, ref in zip(cells, refs, strict=True):
                image = _decode(cell)
                if image is not None:
                    yield str(ref) if ref is not None else f"{file.name}#{row}", image
                row += 1


def hf_images(name: str, split: str, column: str, revision: str | None = None,
              ref_column: str | None = None) -> Iterator[tuple[str, Image.Image]]:
    """Images of a Hugging Face dataset: a hub id (``load_dataset``) or a ``save_to_disk`` folder."""
    from datasets import load_dataset, load_from_disk

    if Path(name).is_dir() and (Path(name) / "dataset_info.json").exists() or (Path(name) / "dataset_dict.json").exists():
        loaded = load_from_disk(name)
        dataset = loaded[split] if hasattr(loaded, "keys") else loaded
    else:
        dataset = load_dataset(name, split=split, revision=revision)
    for i, record in enumerate(dataset):
        image = _decode(record[column])
        if image is not None:
            ref = record.get(ref_column) if ref_column else None
            yield f"{name}[{split}]#{ref if ref is not None else i}", image


# --- within a build --------------------------------------------------------------------------


@dataclass(frozen=True)
class PairHash:
    """The hashes of one row's source and target (either may be missing)."""

    source: int | None
    target: int | None


def pair_distance(a: PairHash, b: PairHash) -> int | None:
    """How far two pairs are: the larger of the source and target distances (both must exist)."""
    if None in (a.source, b.source, a.target, b.target):
        return None
    return max(hamming(a.source, b.source), hamming(a.target, b.target))  # type: ignore[arg-type]


def pair_distances(source: int, target: int, sources: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """How far one pair is from each pair of two aligned uint64 arrays (the larger of the two distances)."""
    return np.maximum(distances(source, sources), distances(target, targets))


@dataclass
class PairIndex:
    """The pairs of one earlier build that have both hashes, searched by :func:`pair_distances`."""

    name: str
    sources: np.ndarray  # uint64
    targets: np.ndarray  # uint64
    ids: list[str]

    @classmethod
    def of_build(cls, out: str | Path) -> PairIndex:
        found = build_hashes(out)
        rows = np.flatnonzero(found.complete)
        return cls(str(out), found.sources[rows], found.targets[rows], found.ids.take(pa.array(rows)).to_pylist())

    def nearest(self, source: int, target: int) -> tuple[int, str] | None:
        """(distance, row id) of the closest pair; ties go to the first in build order."""
        if not self.ids:
            return None
        both = pair_distances(source, target, self.sources, self.targets)
        best = int(np.argmin(both))
        return int(both[best]), self.ids[best]


@dataclass
class BuildHashes:
    """The pair hashes of a build's data rows in build order, as arrays: what a whole-build pass holds.

    ``complete`` marks rows with both hashes (only those are compared); a row without one
    keeps 0 in its place. Ids stay an Arrow string array (about 40 bytes a row at a million
    rows, where Python strings would take twice that).
    """

    ids: pa.Array  # string
    sources: np.ndarray  # uint64
    targets: np.ndarray  # uint64
    complete: np.ndarray  # bool

    @classmethod
    def ordered(cls, keys: pa.Array, ids: pa.Array, sources: np.ndarray, targets: np.ndarray, complete: np.ndarray) -> BuildHashes:
        """Rows in any order, sorted into build order: by order key, then id; untraceable (null) keys last."""
        import pyarrow.compute as pc

        table = pa.table({"untraced": pc.is_null(keys), "key": pc.fill_null(keys, ""), "id": ids})
        order = pc.sort_indices(table, sort_keys=[("untraced", "ascending"), ("key", "ascending"), ("id", "ascending")])
        index = order.to_numpy()
        return cls(ids.take(order), sources[index], targets[index], complete[index])

    @classmethod
    def of_rows(cls, rows: list[tuple[str | None, str, PairHash]]) -> BuildHashes:
        """From (order key, id, hashes) rows in any order."""
        return cls.ordered(pa.array([r[0] for r in rows], pa.string()), pa.array([r[1] for r in rows], pa.string()),
                           np.array([r[2].source or 0 for r in rows], dtype=np.uint64),
                           np.array([r[2].target or 0 for r in rows], dtype=np.uint64),
                           np.array([r[2].source is not None and r[2].target is not None for r in rows], dtype=bool))


def duplicates_of(hashes: BuildHashes, max_distance: int) -> dict[str, tuple[str, int]]:
    """Which rows to drop: row id -> (id of the row it copies, distance), in build order.

    Rows are taken in build order (item index, then child position: the order key, then
    the id), and a row is dropped when a row kept before it is within ``max_distance`` on
    both its source and its target hash; it names the earliest such row. So the first copy
    survives, whichever shard or runner produced it, and no two survivors are
    near-duplicates. The search is crispedit.filters.mih's band index, not all pairs.
    """
    from crispedit.filters.mih import first_copies

    rows = np.flatnonzero(hashes.complete)
    found = first_copies(np.stack([hashes.sources[rows], hashes.targets[rows]], axis=1), max_distance)
    dropped = np.flatnonzero(found.match >= 0)
    copies = hashes.ids.take(pa.array(rows[dropped])).to_pylist()
    firsts = hashes.ids.take(pa.array(rows[found.match[dropped]])).to_pylist()
    return {copy: (first, int(d)) for copy, first, d in zip(copies, firsts, found.distance[dropped].tolist(), strict=True)}


def near_duplicates(rows: list[tuple[str, str, PairHash]], max_distance: int) -> dict[str, tuple[str, int]]:
    """:func:`duplicates_of` for (order key, id, hashes) rows given in any order."""
    return duplicates_of(BuildHashes.of_rows(rows), max_distance)


def row_hashes(provenance: str | None, source_cell: Any, target_cell: Any) -> PairHash:
    """A data row's pair hashes: from ``provenance.phash`` when the dedupe stage ran, else from the image bytes."""
    recorded = {}
    if provenance:
        try:
            recorded = json.loads(provenance).get("phash") or {}
        except ValueError:
            recorded = {}
    values = []
    for role, cell in (("source", source_cell), ("target", target_cell)):
        if recorded.get(role):
            values.append(from_hex(recorded[role]))
        else:
            image = _decode(cell)
            values.append(phash(image) if image is not None else None)
    return PairHash(*values)


def build_hashes(out: str | Path) -> BuildHashes:
    """The pair hashes of every data row of a committed build, read one shard at a time.

    Only the id, lineage and provenance columns are read (Parquet column projection); a
    shard's image columns are read, and only its rows without ``provenance.phash`` decoded,
    when the build did not run the ``dedupe`` stage. Memory: one shard's columns plus the
    arrays of the whole build (16 bytes of hashes and an id per row).
    """
    from crispedit.core.reader import BuildReader, read_columns

    reader = BuildReader(out)
    keys: list[pa.Array] = []
    ids: list[pa.Array] = []
    sources: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    complete: list[np.ndarray] = []
    for shard in reader.shards():
        where = reader.location(reader.data_key(shard))
        table = read_columns([where], ["id", "parent_id", "lineage", "provenance"])
        shard_ids = table.column("id").to_pylist()
        lineages = table.column("lineage").to_pylist() if "lineage" in table.column_names else None
        keys.append(pa.array(reader.order_keys(shard, shard_ids, table.column("parent_id").to_pylist(), lineages), pa.string()))
        ids.append(table.column("id").combine_chunks().cast(pa.string()))
        found = [row_hashes(p, None, None) for p in table.column("provenance").to_pylist()]
        missing = [i for i, h in enumerate(found) if h.source is None or h.target is None]
        if missing:  # no dedupe stage in the build: hash the images of this shard's rows that lack them
            images = read_columns([where], ["source_image", "target_image"]).take(missing)
            for i, src, tgt in zip(missing, images.column("source_image").to_pylist(), images.column("target_image").to_pylist(), strict=True):
                found[i] = row_hashes(table.column("provenance")[i].as_py(), src, tgt)
        sources.append(np.array([h.source or 0 for h in found], dtype=np.uint64))
        targets.append(np.array([h.target or 0 for h in found], dtype=np.uint64))
        complete.append(np.array([h.source is not None and h.target is not None for h in found], dtype=bool))

    def joined(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    return BuildHashes.ordered(pa.concat_arrays(keys) if keys else pa.array([], pa.string()),
                               pa.concat_arrays(ids) if ids else pa.array([], pa.string()),
                               joined(sources, np.uint64), joined(targets, np.uint64), joined(complete, bool))
