"""The ``videos`` source: one item per video, from a folder, a list file, Parquet files or WebDataset tars.

Local paths or fsspec URLs throughout. The source decodes nothing; it checks what the bytes
say (crispedit.video.containers): an empty file, a file that is not a video container (text,
random bytes), a file whose container sizes run past its end (cut short) and a file above
``max_bytes`` become rejects with a reason and the file's reference, never silent skips, so
item numbers (ids, seeds, shards) follow the collection. What only decoding shows (no frame
decodes, fewer frames than declared, too short, a decoder that hangs) is the ``video_pairs``
stage's to reject.

A local file is handed on by path; a remote file, a Parquet cell and a tar member are handed
on as bytes (``meta.video``), so keep ``output.shard_size`` small for large videos: a shard's
videos are in memory together while it is built.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from crispedit.core.limits import MAX_ITEMS
from crispedit.core.paths import UnsafePathError
from crispedit.core.sample import Sample, sample_id
from crispedit.core.source import Source, register_source
from crispedit.core.stage import StageParams
from crispedit.core.storage import is_url, read_input, split_url
from crispedit.sources.records import CellRules, Record
from crispedit.video.containers import HEAD_BYTES, describe_head, sniff, truncation

#: File name endings of videos, for WebDataset members and (with ``only_extensions``) folders.
VIDEO_EXTENSIONS = ["mp4", "mov", "m4v", "mkv", "webm", "avi", "mpg", "mpeg", "ts", "flv", "ogv", "3gp", "wmv"]

#: A list file is text: this many bytes is far more than any real one.
LIST_MAX_BYTES = 64 * 1024**2

DEMO_HINT = "make the demo clips with `python -m crispedit.video.demo out/video_demo/videos` (or `make video-demo`)"


class VideosParams(StageParams):
    folder: str | None = Field(
        None, description="a folder of videos, local or an fsspec URL (s3://bucket/clips/); every file is an item, sorted by path"
    )
    list_file: str | None = Field(
        None,
        description="a text file with one video path or URL a line (`#` comments, blank lines skipped); relative paths are "
        "relative to the list file's folder",
    )
    parquet: list[str] | None = Field(None, description="Parquet files, directories or globs whose `video_column` holds video bytes or paths/URLs")
    webdataset: list[str] | None = Field(
        None, description="WebDataset tars (files, directories, globs, brace ranges); the member whose extension is in `extensions` is the video"
    )
    recursive: bool = Field(True, description="folder: look in subfolders too")
    only_extensions: bool = Field(
        False, description="folder: skip files whose extension is not in `extensions` (default: every file is an item, and a non-video becomes a reject)"
    )
    extensions: list[str] = Field(
        default_factory=lambda: list(VIDEO_EXTENSIONS), min_length=1, description="extensions that mark a video (WebDataset members; folders with only_extensions)"
    )
    video_column: str = Field("video", description="parquet: the column with video bytes (or HF-style {bytes, path} structs) or paths/URLs")
    caption_column: str | None = Field("caption", description="parquet: the caption column (becomes source_caption), or null")
    caption_key: str = Field("caption", description="webdataset: field of KEY.json read as the caption when there is no KEY.txt")
    base: str | None = Field(None, description="parquet: directory or URL that relative paths in `video_column` are resolved against")
    max_bytes: int = Field(2 * 1024**3, ge=1, description="larger files become rejects (`video too large`) before anything is read")
    absolute_paths: bool = Field(
        False, description="list_file and parquet without `base`: let entries name any local file (absolute, or outside the list's folder)",
    )
    limit: int | None = Field(None, ge=1, le=MAX_ITEMS, description="use at most this many videos")
    storage_options: dict[str, Any] = Field(
        default_factory=dict, exclude=True,
        description="fsspec options for remote files, e.g. {endpoint_url: ...}; never secrets (those come from the environment)",
    )

    @field_validator("parquet", "webdataset", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("extensions")
    @classmethod
    def _lower(cls, value: list[str]) -> list[str]:
        return [v.lower().lstrip(".") for v in value]

    @model_validator(mode="after")
    def _one_origin(self) -> VideosParams:
        given = [name for name in ("folder", "list_file", "parquet", "webdataset") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of folder, list_file, parquet, webdataset (got {', '.join(given) or 'none'})")
        if self.folder is not None and not is_url(self.folder) and not Path(self.folder).is_dir():
            raise ValueError(f"no such folder: {self.folder} (relative paths are relative to the working directory); {DEMO_HINT}")
        if self.list_file is not None and not is_url(self.list_file) and not Path(self.list_file).is_file():
            raise ValueError(f"no such file: {self.list_file} (relative paths are relative to the working directory)")
        return self


@dataclass(frozen=True)
class VideoFile:
    """A video named by a folder or a list: where it is and the short reference rejects cite."""

    ref: str
    url: str
    #: Why the entry is not read (an unsafe path), instead of a location.
    problem: str | None = None


@register_source
class VideosSource(Source[VideosParams]):
    """One item per video; unreadable, empty, non-video, cut-short and oversized files become rejects."""

    kind = "videos"

    def outputs(self) -> set[str]:
        return {"meta.video"}

    def __getstate__(self) -> dict[str, Any]:
        """Ray ships sources to workers: send the parameters, not file lists or indexes."""
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    # -- counting -------------------------------------------------------------------------
    def count(self) -> int:
        if not hasattr(self, "_count"):
            p = self.params
            if p.folder is not None or p.list_file is not None:
                total = len(self._files())
            else:
                total = self._collection().record_count()
            self._count = min(total, p.limit) if p.limit else total
        return self._count

    def _files(self) -> list[VideoFile]:
        if not hasattr(self, "_file_list"):
            self._file_list = self._folder_files() if self.params.folder is not None else self._listed_files()
        return self._file_list

    def _folder_files(self) -> list[VideoFile]:
        p = self.params
        assert p.folder is not None
        fs, root = split_url(p.folder, p.storage_options)
        root = root.rstrip("/")
        paths = fs.find(root) if p.recursive else [q for q in fs.ls(root, detail=False) if fs.isfile(q)]
        out = []
        for path in sorted(paths):
            relative = path[len(root) :].lstrip("/")
            if not relative or any(part.startswith(".") for part in relative.split("/")):
                continue
            if p.only_extensions and relative.rsplit(".", 1)[-1].lower() not in p.extensions:
                continue
            out.append(VideoFile(relative, path if _local(fs) else fs.unstrip_protocol(path)))
        return out

    def _listed_files(self) -> list[VideoFile]:
        p = self.params
        assert p.list_file is not None
        text = read_input(p.list_file, LIST_MAX_BYTES, p.storage_options).decode("utf-8-sig")
        fs, path = split_url(p.list_file, p.storage_options)
        folder = path.rsplit("/", 1)[0] if "/" in path else "."
        rules = CellRules(absolute_paths=p.absolute_paths, max_bytes=p.max_bytes, storage_options=dict(p.storage_options),
                          folder=folder if _local(fs) else fs.unstrip_protocol(folder))
        out = []
        for line in text.splitlines():
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            try:
                out.append(VideoFile(entry, rules.locate(entry)))
            except UnsafePathError as error:
                out.append(VideoFile(entry, "", f"unsafe path: {error}"))
        return out

    def _collection(self) -> Any:
        """The image sources' reading of Parquet files or tars, reused as is: records of bytes plus a caption.

        Their images are our videos: the video column (or member extension) stands for the image one.
        """
        if not hasattr(self, "_records_source"):
            p = self.params
            if p.parquet is not None:
                from crispedit.sources.parquet import ParquetParams, ParquetSource

                params: Any = ParquetParams(files=p.parquet, image_column=p.video_column, caption_column=p.caption_column,
                                            base=p.base, storage_options=p.storage_options, max_bytes=p.max_bytes,
                                            absolute_paths=p.absolute_paths)
                self._records_source = ParquetSource(params, self.context)
            else:
                from crispedit.sources.webdataset import WebDatasetParams, WebDatasetSource

                assert p.webdataset is not None
                params = WebDatasetParams(shards=p.webdataset, image_extensions=p.extensions, caption_key=p.caption_key,
                                          storage_options=p.storage_options)
                self._records_source = WebDatasetSource(params, self.context)
        return self._records_source

    # -- loading --------------------------------------------------------------------------
    def load(self, start: int, end: int) -> list[Sample]:
        end = min(end, self.count())
        if end <= start:
            return []
        p = self.params
        if p.folder is not None or p.list_file is not None:
            files = self._files()[start:end]
            return [self._from_file(index, f) for index, f in zip(range(start, end), files)]
        records = self._collection().read_records(start, end)
        return [self._from_record(index, r) for index, r in zip(range(start, end), records)]

    def _sample(self, index: int, ref: str, caption: str | None = None) -> Sample:
        return Sample(id=sample_id(self.context.fingerprint, index), index=index, source_ref=ref, source_caption=caption)

    def _from_file(self, index: int, file: VideoFile) -> Sample:
        sample = self._sample(index, file.ref)
        if file.problem is not None:
            sample.fail(self.name, file.problem)
            return sample
        try:
            fs, path = split_url(file.url, self.params.storage_options)
            if _local(fs):
                mode = os.stat(path).st_mode
                if not stat.S_ISREG(mode):
                    sample.fail(self.name, f"unreadable file: {file.url} is not a regular file")
                    return sample
            size = int(fs.size(path))
            if _local(fs):
                with open(path, "rb") as handle:
                    problem, kind = self._check(size, _file_reader(handle))
                video: dict[str, Any] = {"path": path, "suffix": Path(path).suffix.lower()}
            else:
                if size > self.params.max_bytes:
                    problem, kind, video = self._too_large(size), None, {}
                else:
                    data = fs.cat_file(path)
                    problem, kind = self._check(len(data), _bytes_reader(data))
                    video = {"data": data, "suffix": Path(path).suffix.lower()}
        except (OSError, ValueError) as error:
            sample.fail(self.name, f"unreadable file: {file.url}: {type(error).__name__}")
            return sample
        return self._finish(sample, problem, kind, size, video)

    def _from_record(self, index: int, record: Record) -> Sample:
        sample = self._sample(index, record.ref, record.caption)
        if record.problem is not None or record.data is None:
            sample.fail(self.name, (record.problem or "missing video: no bytes").replace("missing image", "missing video"))
            return sample
        data = record.data
        problem, kind = self._check(len(data), _bytes_reader(data))
        suffix = "." + record.ref.rsplit(".", 1)[-1].lower() if "." in record.ref.rsplit("/", 1)[-1] else ".mp4"
        return self._finish(sample, problem, kind, len(data), {"data": data, "suffix": suffix})

    def _finish(self, sample: Sample, problem: str | None, kind: str | None, size: int, video: dict[str, Any]) -> Sample:
        if problem is not None:
            sample.fail(self.name, problem)
            return sample
        sample.meta["video"] = video
        sample.provenance["source"] = {"ref": sample.source_ref, "container": kind, "bytes": size}
        return sample

    def _too_large(self, size: int) -> str:
        return f"video too large: {size} bytes, max_bytes is {self.params.max_bytes}"

    def _check(self, size: int, read_at: Callable[[int, int], bytes]) -> tuple[str | None, str | None]:
        """(reject reason or None, container name) from the size and a few header reads."""
        if size == 0:
            return "empty file: 0 bytes", None
        if size > self.params.max_bytes:
            return self._too_large(size), None
        head = read_at(0, HEAD_BYTES)
        kind = sniff(head)
        if kind is None:
            return f"not a video: {describe_head(head)}", None
        cut = truncation(kind, size, read_at)
        if cut is not None:
            return f"truncated video: {cut}", kind
        return None, kind


def _file_reader(handle: Any) -> Callable[[int, int], bytes]:
    def read_at(offset: int, length: int) -> bytes:
        handle.seek(offset)
        return handle.read(length)

    return read_at


def _bytes_reader(data: bytes) -> Callable[[int, int], bytes]:
    return lambda offset, length: data[offset : offset + length]


def _local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol

