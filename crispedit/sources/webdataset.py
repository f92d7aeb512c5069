"""The ``webdataset`` source: tar shards in the img2dataset layout, local or remote.

A sample is the group of tar members sharing a key (``000123.jpg`` + ``000123.txt`` or
``000123.json``). Counting needs no image bytes: an index of each tar's member headers
(name, offset, size) is built once by seeking from header to header, cached in memory and
under the build's cache directory (keyed by the tar's size and modification stamp), and a
shard then fetches one contiguous byte range per tar it touches.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from crispedit.core.redact import scrub_url
from crispedit.core.source import register_source
from crispedit.core.storage import Output
from crispedit.sources.records import InputFile, Record, RecordSource, RemoteImageParams, expand_inputs, with_license

INDEX_VERSION = 1


class WebDatasetParams(RemoteImageParams):
    shards: list[str] = Field(
        min_length=1,
        description="tar files, directories (searched for *.tar), globs or brace ranges (shard-{0000..0099}.tar); "
        "local paths or fsspec URLs. Read in the order given, each glob/directory sorted",
    )
    image_extensions: list[str] = Field(
        default_factory=lambda: ["jpg", "jpeg", "png", "webp"],
        min_length=1,
        description="member extensions that hold the image, in order of preference when a key has several",
    )
    caption_key: str = Field("caption", description="field of KEY.json read as the caption when there is no KEY.txt")

    @field_validator("shards", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("image_extensions")
    @classmethod
    def _lower(cls, value: list[str]) -> list[str]:
        return [v.lower().lstrip(".") for v in value]


@dataclass(frozen=True)
class TarKey:
    """One sample of a tar: its key, the byte span of its members, and each member's (name, offset, size) by extension."""

    key: str
    begin: int
    end: int
    members: dict[str, tuple[str, int, int]]


def index_tar(handle: Any) -> list[TarKey]:
    """Walk a tar's headers (seeking over the data) and group members by key, in the order they appear."""
    groups: dict[str, dict[str, Any]] = {}
    with tarfile.open(fileobj=handle, mode="r:") as archive:
        for member in archive:
            if not member.isfile():
                continue
            folder, _, base = member.name.rpartition("/")
            if not base or base.startswith(".") or "." not in base:
                continue
            stem, ext = base.split(".", 1)
            key = f"{folder}/{stem}" if folder else stem
            group = groups.setdefault(key, {"begin": member.offset, "end": 0, "members": {}})
            group["begin"] = min(group["begin"], member.offset)
            group["end"] = max(group["end"], member.offset_data + member.size)
            group["members"][ext.lower()] = (member.name, member.offset_data, member.size)
    return [TarKey(key, g["begin"], g["end"], g["members"]) for key, g in groups.items()]


_INDEXES: dict[str, list[TarKey]] = {}
_STAMP = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:/")


class TarIndex:
    """Indexes of all tars, cached per process and on disk; maps a global sample position to (tar, key)."""

    def __init__(self, files: list[InputFile], cache_dir: Path | None) -> None:
        self.files = files
        self.cache = Output(cache_dir / "webdataset-index") if cache_dir is not None and not _STAMP.match(str(cache_dir)) else None
        self.keys = [self._index(f) for f in files]
        self.starts: list[int] = []
        total = 0
        for keys in self.keys:
            self.starts.append(total)
            total += len(keys)
        self.total = total

    def _index(self, file: InputFile) -> list[TarKey]:
        info = file.fs.info(file.path)
        stamp = {k: str(info.get(k)) for k in ("size", "mtime", "ETag", "LastModified", "last_modified") if info.get(k) is not None}
        name = hashlib.sha256(json.dumps([INDEX_VERSION, scrub_url(file.url), stamp], sort_keys=True).encode()).hexdigest()[:32] + ".json"
        if name in _INDEXES:
            return _INDEXES[name]
        keys = self._read_cached(name)
        if keys is None:
            with file.open() as handle:
                try:
                    keys = index_tar(handle)
                except tarfile.TarError as error:
                    raise ValueError(f"{file.url} is not a readable tar file: {error}") from None
            self._write_cached(name, keys)
        _INDEXES[name] = keys
        return keys

    def _read_cached(self, name: str) -> list[TarKey] | None:
        if self.cache is None:
            return None
        try:
            rows = json.loads(self.cache.read_bytes(name))
            return [TarKey(k, b, e, {x: tuple(m) for x, m in members.items()}) for k, b, e, members in rows]  # type: ignore[misc]
        except (OSError, ValueError, TypeError):
            return None

    def _write_cached(self, name: str, keys: list[TarKey]) -> None:
        if self.cache is None:
            return
        try:
            self.cache.write_text(name, json.dumps([[k.key, k.begin, k.end, k.members] for k in keys]))
        except OSError:
            pass  # a cache that cannot be written only costs time

    def locate(self, position: int) -> tuple[int, int]:
        tar = bisect_right(self.starts, position) - 1
        return tar, position - self.starts[tar]


@register_source
class WebDatasetSource(RecordSource[WebDatasetParams]):
    """Samples of WebDataset tars, in tar order then member order; each key with an image becomes an item."""

    kind = "webdataset"

    def _index(self) -> TarIndex:
        if not hasattr(self, "_tar_index"):
            files = expand_inputs(self.params.shards, (".tar",), self.params.storage_options)
            self._tar_index = TarIndex(files, self.context.cache_dir)
        return self._tar_index

    def record_count(self) -> int:
        return self._index().total

    def read_records(self, start: int, end: int) -> list[Record]:
        index = self._index()
        records: list[Record] = []
        position = start
        while position < end:
            tar, first = index.locate(position)
            keys = index.keys[tar][first : first + (end - position)]
            file = index.files[tar]
            limit = self.params.max_bytes
            if all(k.end - k.begin <= limit for k in keys):  # the usual case: one read for the whole run of keys
                records += self._read(file, keys)
            else:  # a member over max_bytes is a reject, and its bytes are never read
                for key in keys:
                    if key.end - key.begin > limit:
                        name = next((key.members[e][0] for e in self.params.image_extensions if e in key.members), key.key)
                        records.append(Record(f"{file.ref}:{name}", None, problem=f"file too large: key {key.key} holds "
                                              f"{key.end - key.begin} bytes, more than max_bytes ({limit})"))
                    else:
                        records += self._read(file, [key])
            position += len(keys)
        return records

    def _read(self, file: InputFile, keys: list[TarKey]) -> list[Record]:
        begin, stop = min(k.begin for k in keys), max(k.end for k in keys)
        try:
            blob = file.fs.cat_file(file.path, start=begin, end=stop)
        except OSError as error:
            blob, problem = b"", f"unreadable file: {file.url}: {type(error).__name__}"
        else:
            problem = None
        return [self._record(file, key, blob, begin, problem) for key in keys]

    def _record(self, file: InputFile, key: TarKey, blob: bytes, begin: int, problem: str | None) -> Record:
        def member(ext: str) -> bytes:
            _, offset, size = key.members[ext]
            return blob[offset - begin : offset - begin + size]

        image_ext = next((ext for ext in self.params.image_extensions if ext in key.members), None)
        ref = f"{file.ref}:{key.members[image_ext][0] if image_ext else key.key}"
        caption = license_cell = None
        fields: dict[str, Any] = {}
        if "json" in key.members and problem is None:
            try:
                loaded = json.loads(member("json"))
                fields = loaded if isinstance(loaded, dict) else {}
            except ValueError:
                fields = {}
        if "txt" in key.members:
            caption = member("txt").decode("utf-8", errors="replace").strip()
        elif fields.get(self.params.caption_key) is not None:
            caption = str(fields[self.params.caption_key])
        if self.params.license_column:
            license_cell = fields.get(self.params.license_column)
        if problem is not None:
            record = Record(ref, caption, problem=problem)
        elif image_ext is None:
            record = Record(ref, caption, problem=f"missing image: key {key.key} has no {'/'.join(self.params.image_extensions)} member")
        else:
            record = Record(ref, caption, data=member(image_ext))
        return with_license(record, license_cell)
