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
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np
from pydantic import Field

from crispedit.core.images import ImageRejected, decode_image, fit_within
from crispedit.core.locations import resolve_location
from crispedit.core.paths import UnsafePathError
from crispedit.core.sample import Sample
from crispedit.core.source import Source
from crispedit.core.storage import DEFAULT_MAX_BYTES, InputRefused, read_input, split_url
from crispedit.models.terms import UNKNOWN
from crispedit.sources.images import ImageSourceParams, item_sample


class RemoteImageParams(ImageSourceParams):
    """Image-source parameters plus how remote files are reached."""

    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        exclude=True,
        description="fsspec options for remote files, e.g. {endpoint_url: ...}; never secrets (those come from the "
        "environment); not part of the fingerprint, since they say how to reach the data, not what it is",
    )
    absolute_paths: bool = Field(
        False, description="without `base`: let path cells name any local file (absolute, or outside the working directory)",
    )

    license: str | None = Field(
        None, description="the licence of the collection's images (an id such as `cc-by-4.0`): each row's `source_license` where "
        "`license_column` gives none; the dataset card counts it into the effective terms",
    )
    license_column: str | None = Field(
        None, description="the column (webdataset: the field of KEY.json) holding each image's licence, carried into `source_license`; "
        "a row with none gets `license`, else `unknown`",
    )

    def cell_rules(self, base: str | None) -> CellRules:
        return CellRules(base, self.absolute_paths, self.max_bytes, dict(self.storage_options))


class EditColumnsParams(RemoteImageParams):
    """A collection that may already be an editing dataset: its instruction and its (old) target per row."""

    instruction_column: str | None = Field(
        None, description="the instruction column of an existing editing dataset (re-editing it), or null",
    )
    target_column: str | None = Field(
        None, description="the target image column of an existing editing dataset (its old edit), stored as the image column is; or null",
    )

    def pair_columns(self) -> dict[str, str]:
        """Role -> column of what the rows carry beyond the image and its caption."""
        return {k: v for k, v in (("instruction", self.instruction_column), ("target", self.target_column)) if v}


@dataclass(frozen=True)
class Record:
    """One image of a collection, not yet decoded. ``problem`` ("category: detail") replaces missing bytes.

    An editing dataset's row also carries its ``instruction`` and its ``target`` (a Record of its own).
    """

    ref: str
    caption: str | None
    data: bytes | None = None
    problem: str | None = None
    instruction: str | None = None
    target: Record | None = None
    license: str | None = None  # the row's own licence cell, where the source has a licence column


def with_license(record: Record, cell: Any) -> Record:
    """``record`` with the licence a row's cell names (an empty cell names none)."""
    text = "" if cell is None else " ".join(str(cell).split())
    return replace(record, license=text) if text else record


RP = TypeVar("RP", bound=RemoteImageParams)


class RecordSource(Source[RP]):
    """A source whose images are records read by position; items are ``edits_per_image`` per record."""

    def outputs(self) -> set[str]:
        """No ``source_caption`` when the recipe names no caption column."""
        found = {"source_image", "source_caption", "meta.image_index", "meta.variant"}
        if getattr(self.params, "caption_column", "") is None:
            found.discard("source_caption")
        if getattr(self.params, "instruction_column", None):
            found.add("instruction")
        if getattr(self.params, "target_column", None):
            found.add("target_image")
        if self._licensed():
            found.add("source_license")
        return found

    def _licensed(self) -> bool:
        return bool(self.params.license or self.params.license_column)

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
        targets = [self._decode(record.target) if record.target is not None else None for record in records]
        samples = []
        licensed = self._licensed()
        for index in range(start, end):
            record = records[index // per - first]
            sample = item_sample(self, index, per, record.ref, record.caption, decoded[index // per - first])
            sample.instruction = record.instruction
            if licensed:
                sample.source_license = record.license or self.params.license or UNKNOWN
            target = targets[index // per - first]
            if isinstance(target, str):
                sample.fail(self.name, f"target image: {target}")
            elif target is not None:
                sample.target_image = target[0]
            samples.append(sample)
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


@dataclass(frozen=True)
class CellRules:
    """What a data cell that names a file may make a build read, and how much of it.

    With ``base``, a cell is a path or URL inside ``base``, whatever its spelling (relative,
    absolute, ``..``, symlinks, ``file://``, ``local://``). Without it, remote URLs are read as
    they are, and local paths are relative to ``folder`` (default: the working directory)
    and must stay inside it unless the recipe sets ``absolute_paths``. An fsspec chain
    (``a::b``) is never a cell. Every read stops at ``max_bytes``, and a cell naming a
    device, a FIFO or a directory is a reject.
    """

    base: str | None = None
    absolute_paths: bool = False
    max_bytes: int = DEFAULT_MAX_BYTES
    storage_options: dict[str, Any] = field(default_factory=dict)
    folder: str | None = None

    def locate(self, value: str) -> str:
        """The resolved location a cell names; UnsafePathError when the rules refuse it."""
        if "::" in value:
            raise UnsafePathError(f"{value!r} is an fsspec chain; a cell names one file (a path or a plain URL)")
        if self.base is not None:
            root = resolve_location(self.base)
            where = resolve_location(value, base=root)
            if not where.inside(root):
                raise UnsafePathError(f"{value!r} is outside base {self.base}")
            return where.url
        root = resolve_location(self.folder or ".")
        where = resolve_location(value, base=root)
        if where.is_local and not self.absolute_paths and not where.inside(root):
            raise UnsafePathError(f"{value!r} is outside {root.url}; set base, or absolute_paths: true")
        return where.url


def pair_record(record: Record, rules: CellRules, instruction: Any = None, target: Any = None, *, has_target: bool = False) -> Record:
    """``record`` with an editing dataset's instruction and target cell (read within ``rules``) attached."""
    text = None if instruction is None else str(instruction)
    old = cell_record(target, f"{record.ref} (target)", None, rules) if has_target else None
    return replace(record, instruction=text, target=old) if (text is not None or old is not None) else record


def cell_record(cell: Any, ref: str, caption: Any, rules: CellRules) -> Record:
    """A Record from one image cell: an HF Image dict, raw bytes, or a path/URL read now (within ``rules``)."""
    text = None if caption is None else str(caption)
    if isinstance(cell, dict):
        if cell.get("bytes"):
            cell = cell["bytes"]
        else:
            cell = cell.get("path")
    if isinstance(cell, (bytes, bytearray, memoryview)):
        data = bytes(cell)
        if len(data) > rules.max_bytes:
            return Record(ref, text, problem=f"file too large: {len(data)} bytes in the cell, more than max_bytes ({rules.max_bytes})")
        return Record(ref, text, data=data)
    if not cell:
        return Record(ref, text, problem="missing image: the image cell is empty")
    try:
        location = rules.locate(str(cell))
    except UnsafePathError as error:
        return Record(ref, text, problem=f"unsafe path: {error}")
    try:
        return Record(ref, text, data=read_input(location, rules.max_bytes, rules.storage_options))
    except InputRefused as refused:
        return Record(ref, text, problem=str(refused))
    except (OSError, ValueError) as error:
        return Record(ref, text, problem=f"unreadable file: {location}: {type(error).__name__}")


def _local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def _protocol(fs: Any) -> str:
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
