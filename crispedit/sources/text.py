"""Sources of items without images, for edits an LLM invents or writes from a caption.

* ``empty``: N items with nothing in them, for ``instruct`` in scratch mode (InstructPix2Pix,
  EditWorld): the LLM invents the input caption too. Each item may be seeded with a topic or
  a caption, from an inline list or a file, cycled over the items.
* ``captions``: one item per row of a JSONL, CSV, Parquet or plain-text file of captions (or
  topics), for ``instruct`` in caption mode; a later stage draws the images.

Items are numbered by their row (blank lines of a ``.txt`` file skipped), so ids, seeds and
shards stay put as long as the file does.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from crispedit.core.limits import MAX_ITEMS
from crispedit.core.sample import Sample, sample_id
from crispedit.core.source import Source, register_source
from crispedit.core.stage import StageParams
from crispedit.core.storage import DEFAULT_MAX_BYTES, InputRefused, is_url, read_input

SeedAs = Literal["topic", "caption"]


def read_texts(location: str, column: str, max_bytes: int = DEFAULT_MAX_BYTES) -> list[str | None]:
    """The texts of a file, one per row: ``.txt`` (non-blank lines), ``.jsonl``, ``.csv`` or ``.parquet``.

    A missing or empty cell is None, so that row can become a reject instead of vanishing.
    A file over ``max_bytes``, a device or a FIFO is refused before it is read (ValueError).
    """
    suffix = Path(location.split("?")[0]).suffix.lower()
    try:
        data = read_input(location, max_bytes)
    except InputRefused as refused:
        raise ValueError(f"{location}: {refused}") from None
    if suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(io.BytesIO(data))
        except pa.ArrowException as error:
            raise ValueError(f"{location}: not a readable Parquet file: {error}") from None
        if column not in table.column_names:
            raise ValueError(f"{location} has no column {column!r} (columns: {', '.join(table.column_names)})")
        return [_text(v) for v in table.column(column).to_pylist()]
    text = data.decode("utf-8-sig")
    if suffix == ".txt":
        return [line.strip() for line in text.splitlines() if line.strip()]
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise ValueError(f"{location} has no column {column!r} (columns: {', '.join(reader.fieldnames or [])})")
        return [_text(row.get(column)) for row in reader]
    if suffix in (".jsonl", ".ndjson"):
        out: list[str | None] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                raise ValueError(f"{location}: line {number} is not JSON") from None
            out.append(_text(row.get(column) if isinstance(row, dict) else None))
        return out
    raise ValueError(f"{location}: a captions file is .txt, .jsonl, .csv or .parquet")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text or None


def _check_file(location: str) -> None:
    if not is_url(location) and not Path(location).is_file():
        raise ValueError(f"no such file: {location} (relative paths are relative to the working directory)")


class EmptyParams(StageParams):
    count: int = Field(ge=1, le=MAX_ITEMS, description="how many items")
    texts: list[str] | None = Field(None, description="topics or captions to seed the items with, cycled over them")
    file: str | None = Field(None, description="a .txt, .jsonl, .csv or .parquet file of topics or captions, cycled over the items")
    column: str = Field("text", description="the file's column holding the texts (not used for .txt)")
    seed_as: SeedAs = Field("topic", description="'topic': what the image shows (meta.topic); 'caption': the full source caption")
    max_bytes: int = Field(DEFAULT_MAX_BYTES, ge=1, description="a larger `file` (or a device, a FIFO) is refused before it is read")

    @model_validator(mode="after")
    def _one_origin(self) -> EmptyParams:
        if self.texts is not None and self.file is not None:
            raise ValueError("give texts or file, not both")
        if self.texts is not None and not [t for t in self.texts if t.strip()]:
            raise ValueError("texts is empty")
        if self.file is not None:
            _check_file(self.file)
        return self


@register_source
class EmptySource(Source[EmptyParams]):
    """N items with no image and no caption, optionally seeded with a topic or caption each."""

    kind = "empty"

    def outputs(self) -> set[str]:
        if self.params.texts is None and self.params.file is None:
            return set()
        return {"source_caption"} if self.params.seed_as == "caption" else {"meta.topic"}

    def _texts(self) -> list[str | None]:
        if not hasattr(self, "_cached"):
            p = self.params
            self._cached = [t.strip() for t in p.texts if t.strip()] if p.texts is not None else read_texts(p.file, p.column, p.max_bytes) if p.file else []
            if p.file and not self._cached:
                raise ValueError(f"{p.file} holds no texts")
        return self._cached

    def count(self) -> int:
        return self.params.count

    def load(self, start: int, end: int) -> list[Sample]:
        texts = self._texts()
        samples = []
        for index in range(start, end):
            sample = Sample(id=sample_id(self.context.fingerprint, index), index=index, source_ref=f"empty:{index}")
            if texts:
                _seed(sample, texts[index % len(texts)], self.params.seed_as, self.name, f"text {index % len(texts)}")
            sample.provenance["source"] = {"ref": sample.source_ref}
            samples.append(sample)
        return samples


class CaptionsParams(StageParams):
    file: str = Field(description="a .jsonl, .csv, .parquet or .txt file with one caption or topic per row (a path or fsspec URL)")
    column: str = Field("caption", description="the column holding the text (not used for .txt)")
    seed_as: SeedAs = Field("caption", description="'caption': the source caption; 'topic': what the image should show (meta.topic)")
    limit: int | None = Field(None, ge=1, le=MAX_ITEMS, description="use at most this many rows")
    max_bytes: int = Field(DEFAULT_MAX_BYTES, ge=1, description="a larger `file` (or a device, a FIFO) is refused before it is read")

    @model_validator(mode="after")
    def _exists(self) -> CaptionsParams:
        _check_file(self.file)
        return self


@register_source
class CaptionsSource(Source[CaptionsParams]):
    """One item per row of a captions file, no images: for instruct's caption mode."""

    kind = "captions"

    def outputs(self) -> set[str]:
        return {"source_caption"} if self.params.seed_as == "caption" else {"meta.topic"}

    def _rows(self) -> list[str | None]:
        if not hasattr(self, "_cached"):
            rows = read_texts(self.params.file, self.params.column, self.params.max_bytes)
            self._cached = rows[: self.params.limit] if self.params.limit else rows
        return self._cached

    def count(self) -> int:
        return len(self._rows())

    def load(self, start: int, end: int) -> list[Sample]:
        rows = self._rows()
        name = Path(self.params.file.split("?")[0]).name
        samples = []
        for index in range(start, end):
            ref = f"{name}:row {index}"
            sample = Sample(id=sample_id(self.context.fingerprint, index), index=index, source_ref=ref)
            _seed(sample, rows[index], self.params.seed_as, self.name, f"row {index} of {name} in column {self.params.column!r}")
            sample.provenance["source"] = {"ref": ref}
            samples.append(sample)
        return samples


def _seed(sample: Sample, text: str | None, seed_as: SeedAs, stage: str, where: str) -> None:
    if text is None:
        sample.fail(stage, f"empty-caption: {where} has no text")
    elif seed_as == "caption":
        sample.source_caption = text
    else:
        sample.meta["topic"] = text
