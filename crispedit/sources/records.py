"""What the collection sources (parquet, hf_dataset, webdataset) share.

Each of them reads *records* (encoded image bytes plus a caption) by position from files
that may be local or remote. This module turns item ranges into record ranges (an item is
one edit of one image, ``edits_per_image`` items per record), decodes each record once
with the folder source's rules and limits, and expands the file lists a recipe names:
files, directories, globs and ``{000..009}`` brace ranges, local or fsspec URLs.
"""

from __future__ import annotations

import json
import os
import re
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from pydantic import Field

from crispedit.core.images import ImageRejected, decode_image, fit_within
from crispedit.core.paths import UnsafePathError
from crispedit.core.sample import Sample
from crispedit.core.source import Source
from crispedit.core.storage import is_url, relative_key, split_url
from crispedit.sources.images import ImageSourceParams, item_sample


class RemoteImageParams(ImageSourceParams):
    """Image-source parameters plus how remote files are reached."""

    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        exclude=True,
        description="fsspec options for remote files, e.g. {endpoint_url: ...}; never secrets (those come from the "
        "environment); not part of the fingerprint, since they say how to reach the data, not what it is",
    )


@dataclass(frozen=True)
class Record:
    """One image of a collection, not yet decoded. ``problem`` ("category: detail") replaces missing bytes."""

    ref: str
    caption: str | None
    data: bytes | None = None
    problem: str | None = None


RP = TypeVar("RP", bound=RemoteImageParams)


class RecordSource(Source[RP]):
    """A source whose images are records read by position; items are ``edits_per_image`` per record."""

    def outputs(self) -> set[str]:
        """No ``source_caption`` when the recipe names no caption column."""
        found = {"source_image", "source_caption", "meta.image_index", "meta.variant"}
        if getattr(self.params, "caption_column", "") is None:
            found.discard("source_caption")
        return found

    @abstractmethod
    def record_count(self) -> int:
        """How many records (images) the collection holds, from metadata only."""

    @abstractmethod
    def read_records(self, start: int, end: int) -> list[Record]:
        """Records [start, end), in order, one per position."""

    def __getstate__(self) -> dict[str, Any]:
        """Ray ships sources to workers: send the parameters, not open datasets or file indexes."""
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def records(self) -> int:
        if not hasattr(self, "_records"):
            total = self.record_count()
            self._records = min(total, self.params.limit) if self.params.limit else total
        return self._records

    def count(self) -> int:
        return self.records() * self.params.edits_per_image

    def load(self, start: int, end: int) -> list[Sample]:
        if end <= start:
            return []
        per = self.params.edits_per_image
        first, last = start // per, (end - 1) // per + 1
        records = self.read_records(first, last)
        if len(records) != last - first:
            raise RuntimeError(f"{self.kind}: asked for records {first}..{last}, got {len(records)}")
        decoded = [self._decode(record) for record in records]
        samples = []
        for index in range(start, end):
            record = records[index // per - first]
            samples.append(item_sample(self, index, per, record.ref, record.caption, decoded[index // per - first]))
        return samples

    def _decode(self, record: Record) -> tuple[np.ndarray, list[str]] | str:
        """Pixels and conversion notes, or the reject reason."""
        if record.problem is not None or record.data is None:
            return record.problem or "missing image: no image bytes"
        try:
            pixels, notes = decode_image(record.data, self.params.max_pixels, self.params.background)
        except ImageRejected as rejected:
            return str(rejected)
        return fit_within(pixels, self.params.max_side, self.params.size_multiple), notes


# --- finding the files a recipe names --------------------------------------------------


@dataclass(frozen=True)
class InputFile:
    """One input file: its filesystem, its path there, and the short name rejects cite."""

    fs: Any
    path: str
    ref: str

    @property
    def url(self) -> str:
        return self.path if _local(self.fs) else self.fs.unstrip_protocol(self.path)

    def open(self, **kwargs: Any) -> Any:
        """Binary reader. Remote reads use small blocks: sources read row groups or members, not whole files."""
        if not _local(self.fs):
            kwargs.setdefault("block_size", 1 << 22)
        return self.fs.open(self.path, "rb", **kwargs)


_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_braces(pattern: str) -> list[str]:
    """``shard-{0000..0003}.tar`` -> four names, zero padding kept (the img2dataset/webdataset habit)."""
    match = _BRACES.search(pattern)
    if match is None:
        return [pattern]
    lo, hi = match.group(1), match.group(2)
    width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [name for n in range(int(lo), int(hi) + 1) for name in expand_braces(f"{head}{n:0{width}d}{tail}")]


def expand_inputs(specs: list[str], suffixes: tuple[str, ...], storage_options: dict[str, Any]) -> list[InputFile]:
    """The files named by ``specs`` (files, directories, globs, brace ranges), in a fixed order.

    Each spec expands in sorted order and specs keep the order they were given; a file named
    twice counts once. Directories are searched recursively for ``suffixes``, skipping hidden
    names. A spec that matches nothing is an error, not an empty source.
    """
    found: list[tuple[Any, str]] = []
    for spec in specs:
        for name in expand_braces(spec):
            fs, path = split_url(name, storage_options)
            if any(ch in path for ch in "*?["):
                matches = sorted(p for p in fs.glob(path) if fs.isfile(p))
            elif fs.isdir(path):
                matches = sorted(
                    p for p in fs.find(path)
                    if p.lower().endswith(suffixes) and not any(part.startswith(".") for part in p[len(path) :].split("/"))
                )
            elif fs.isfile(path):
                matches = [path]
            else:
                raise FileNotFoundError(f"no such file or directory: {name}")
            if not matches:
                raise FileNotFoundError(f"{name} matches no {'/'.join(suffixes)} file")
            found += [(fs, p) for p in matches]
    unique: dict[tuple[str, str], tuple[Any, str]] = {}
    for fs, path in found:
        unique.setdefault((_protocol(fs), path), (fs, path))
    files = list(unique.values())
    common = os.path.commonpath([p for _, p in files]) if len({_protocol(fs) for fs, _ in files}) == 1 else ""
    if len(files) == 1:
        common = files[0][1].rsplit("/", 1)[0]
    return [InputFile(fs, path, path[len(common) :].lstrip("/") if common else path) for fs, path in files]


def layout_key(kind: str, specs: list[str], storage_options: dict[str, Any], *extra: object) -> str:
    """A key for per-process caches of file layouts (lists and row counts), which do not change during a build."""
    return json.dumps([kind, specs, storage_options, *extra], sort_keys=True, default=str)


# --- image cells -----------------------------------------------------------------------


def image_kind(arrow_type: Any) -> str:
    """How an image column stores images: 'struct' (HF Image), 'bytes', or 'path' (a path or URL)."""
    import pyarrow as pa

    if pa.types.is_struct(arrow_type) and arrow_type.get_field_index("bytes") >= 0:
        return "struct"
    if pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type) or pa.types.is_fixed_size_binary(arrow_type):
        return "bytes"
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return "path"
    raise ValueError(f"an image column holds HF Image structs, bytes or paths, not {arrow_type}")


def cell_record(cell: Any, ref: str, caption: Any, base: str | None, storage_options: dict[str, Any]) -> Record:
    """A Record from one image cell: an HF Image dict, raw bytes, or a path/URL read now."""
    text = None if caption is None else str(caption)
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return Record(ref, text, data=bytes(cell["bytes"]))
        cell = cell.get("path")
    if isinstance(cell, (bytes, bytearray, memoryview)):
        return Record(ref, text, data=bytes(cell))
    if not cell:
        return Record(ref, text, problem="missing image: the image cell is empty")
    try:
        location = resolve_against(str(cell), base)
    except UnsafePathError as error:
        return Record(ref, text, problem=f"unsafe path: {error}")
    try:
        fs, path = split_url(location, storage_options)
        return Record(ref, text, data=fs.cat_file(path))
    except (OSError, ValueError) as error:
        return Record(ref, text, problem=f"unreadable file: {location}: {type(error).__name__}")


def resolve_against(value: str, base: str | None) -> str:
    """Where a path or URL cell points: URLs as they are, local paths under ``base``.

    With a ``base``, a local cell must be relative and may not climb out of it (a data file must
    not make the build read arbitrary files of the machine it runs on); without one, cells are
    taken as they are.
    """
    if is_url(value) or base is None:
        return value
    return f"{base.rstrip('/')}/{relative_key(value)}"


def _local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def _protocol(fs: Any) -> str:
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
