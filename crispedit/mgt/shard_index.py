"""The row groups of one training dataset: where they are, how many rows, which columns to read.

The loader reads a whole row group at a time and uses every row it reads (see epochs.py), so
a dataset is indexed as a flat list of row groups across its files. Opening the index reads
only Parquet footers; `read` fetches the four columns a pair needs from one row group.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .data import INSTRUCTION_COLUMNS, SOURCE_COLUMNS, TARGET_COLUMNS, TASK, discover_shards, pick_column


@dataclass(frozen=True)
class PairColumns:
    instruction: str
    source: str
    target: str
    task: str | None  # upstream datasets have no task column

    def names(self) -> list[str]:
        return [c for c in (self.instruction, self.source, self.target, self.task) if c]


@dataclass(frozen=True)
class RowGroupRef:
    file: Path
    index: int  # row group index inside the file
    rows: int
    columns: PairColumns


class DatasetIndex:
    """Every row group of one dataset (a dir of shards, or one .parquet), in file order."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.groups: list[RowGroupRef] = []
        for f in discover_shards(path):
            meta = pq.ParquetFile(f)
            names = meta.schema_arrow.names
            columns = PairColumns(
                pick_column(names, INSTRUCTION_COLUMNS, "instruction", f),
                pick_column(names, SOURCE_COLUMNS, "source image", f),
                pick_column(names, TARGET_COLUMNS, "target image", f),
                TASK if TASK in names else None,
            )
            for i in range(meta.num_row_groups):
                rows = meta.metadata.row_group(i).num_rows
                if rows:
                    self.groups.append(RowGroupRef(f, i, rows, columns))
        self.group_rows = np.asarray([g.rows for g in self.groups], dtype=np.int64)
        if not self.groups:
            raise ValueError(f"dataset {path}: the Parquet files hold no rows")

    def __len__(self) -> int:
        return int(self.group_rows.sum())

    def read(self, group: int) -> pa.Table:
        """The pair columns of one row group, renamed to instruction/source/target[/task]."""
        ref = self.groups[group]
        table = pq.ParquetFile(ref.file).read_row_group(ref.index, columns=ref.columns.names())
        names = ["instruction", "source", "target"] + (["task"] if ref.columns.task else [])
        return table.rename_columns(names)

    def task_values(self) -> set[str]:
        """Distinct non-empty values of the `task` column (reads that column only)."""
        found: set[str] = set()
        for f in sorted({g.file for g in self.groups if g.columns.task}):
            column = pq.read_table(f, columns=[TASK]).column(TASK)
            found.update(v for v in column.unique().to_pylist() if v)
        return found
