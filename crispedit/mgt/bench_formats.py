"""Benchmark tables `crispedit eval` reads: crispedit shards, Emu Edit, MagicBrush, or any Parquet.

Column names as published on the Hugging Face Hub (dataset cards, checked for this module):

* facebook/emu_edit_test_set (splits validation, test): instruction, image (the source),
  task, split, idx, hash, input_caption, output_caption. There is no target image: Emu Edit
  scores an edit against the source and the captions.
* osunlp/MagicBrush (splits train, dev): img_id, turn_index, source_img, mask_img,
  instruction, target_img.
* crispedit shards: source_image, target_image, instruction, task, source_caption,
  target_caption, id (plus upstream EditMGT's names for the images and the instruction).

Any other layout works with `--columns role=column,...` over the roles below. Rows are read
a few at a time (pyarrow batches), so a multi-GB test set is never loaded whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from .data import (
    INSTRUCTION_COLUMNS,
    SOURCE_CAPTION,
    SOURCE_COLUMNS,
    TARGET_CAPTION,
    TARGET_COLUMNS,
    TASK,
    discover_shards,
)

ROLES = ("source", "target", "instruction", "task", "input_caption", "output_caption", "id")
REQUIRED = ("source", "instruction")

# role -> candidate column names, first match wins; "id" may join several columns with "-".
LAYOUTS: dict[str, dict[str, tuple[str, ...]]] = {
    "emu_edit": {"source": ("image",), "instruction": ("instruction",), "task": ("task",),
                 "input_caption": ("input_caption",), "output_caption": ("output_caption",), "id": ("idx",)},
    "magicbrush": {"source": ("source_img",), "target": ("target_img",), "instruction": ("instruction",),
                   "id": ("img_id", "turn_index")},
    "crispedit": {"source": SOURCE_COLUMNS, "target": TARGET_COLUMNS, "instruction": INSTRUCTION_COLUMNS,
                  "task": (TASK,), "input_caption": (SOURCE_CAPTION,), "output_caption": (TARGET_CAPTION,), "id": ("id",)},
}
_SIGNATURES = {"emu_edit": {"image", "instruction", "output_caption"}, "magicbrush": {"source_img", "target_img", "instruction"}}


@dataclass(frozen=True)
class BenchmarkLayout:
    name: str
    columns: dict[str, tuple[str, ...]]  # role -> column(s) present in the files

    def needed(self) -> list[str]:
        return sorted({c for cols in self.columns.values() for c in cols})


def parse_columns(text: str | None) -> dict[str, str]:
    """`source=image,instruction=prompt` -> {role: column}."""
    mapping: dict[str, str] = {}
    for item in filter(None, (text or "").split(",")):
        role, sep, column = item.strip().partition("=")
        if not sep or role not in ROLES or not column:
            raise ValueError(f"--columns {item!r}: expected ROLE=COLUMN with ROLE one of {', '.join(ROLES)}")
        mapping[role] = column
    return mapping


def benchmark_files(path: str | Path, split: str | None = None) -> list[Path]:
    """The Parquet files of a benchmark: a file, or a dir (HF layout data/<split>-*.parquet)."""
    files = discover_shards(path)
    if split:
        files = [f for f in files if f.name.startswith(split)]
        if not files:
            raise FileNotFoundError(f"{path}: no Parquet file of split {split!r}")
    return files


def detect_layout(names: list[str], fmt: str = "auto", overrides: dict[str, str] | None = None) -> BenchmarkLayout:
    overrides = overrides or {}
    if fmt == "auto":
        fmt = next((n for n, sig in _SIGNATURES.items() if sig <= set(names)), "crispedit")
    if fmt not in LAYOUTS:
        raise ValueError(f"unknown benchmark format {fmt!r}; known: auto, {', '.join(LAYOUTS)}")
    columns: dict[str, tuple[str, ...]] = {}
    for role, candidates in LAYOUTS[fmt].items():
        if role == "id":
            if all(c in names for c in candidates):
                columns[role] = candidates
            elif candidates[0] in names:
                columns[role] = candidates[:1]
            continue
        found = next((c for c in candidates if c in names), None)
        if found:
            columns[role] = (found,)
    for role, column in overrides.items():
        if column not in names:
            raise ValueError(f"--columns {role}={column}: no such column; found {', '.join(names)}")
        columns[role] = (column,)
    missing = [r for r in REQUIRED if r not in columns]
    if missing:
        raise ValueError(f"benchmark ({fmt} layout) has no {' or '.join(missing)} column; found {', '.join(names)}; "
                         "map one with --columns, e.g. --columns source=input_image,instruction=prompt")
    return BenchmarkLayout(fmt, columns)


def iter_rows(files: list[Path], layout: BenchmarkLayout, limit: int | None = None, batch_rows: int = 8
              ) -> Iterator[dict[str, object]]:
    """Rows as {role: value} (id joined to text), `limit` rows at most, in file order."""
    seen = 0
    for f in files:
        parquet = pq.ParquetFile(f)
        missing = [c for c in layout.needed() if c not in parquet.schema_arrow.names]
        if missing:
            raise ValueError(f"{f}: missing column(s) {', '.join(missing)} that the first file has")
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=layout.needed()):
            for record in batch.to_pylist():
                if limit is not None and seen >= limit:
                    return
                row: dict[str, object] = {role: record[cols[0]] for role, cols in layout.columns.items() if role != "id"}
                ids = layout.columns.get("id")
                row["id"] = "-".join(str(record[c]) for c in ids) if ids else str(seen)
                seen += 1
                yield row
