"""Training pairs read straight from Parquet shards: crispedit's and upstream EditMGT's.

* crispedit shards: OUT/data/train-*.parquet with source_image/target_image as HF Image
  structs {bytes, path} and `instruction`.
* upstream column names (EditMGT src/dataset_utils.py): instruction in `edit_instruction`;
  target in `output`/`output_img`/`edited_file`/`generated_image`; source in
  `input`/`input_img`/`image_file`; images as {bytes} structs or raw bytes.

Several datasets are mixed with per-dataset ratios. The order of samples is a pure
function of (seed, position), so a resumed run sees exactly the samples an uninterrupted
run would, and the crop window of each sample is drawn from the same function.

Source and target are cropped with ONE window (upstream cropped them independently, which
misaligns non-square pairs); a target of a different size is first resized to the source's.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image, ImageOps

INSTRUCTION_COLUMNS = ("instruction", "edit_instruction")
TARGET_COLUMNS = ("target_image", "output", "output_img", "edited_file", "generated_image")
SOURCE_COLUMNS = ("source_image", "input", "input_img", "image_file")
# Fixed fifth micro-condition (aesthetic score) used by Meissonic/EditMGT.
AESTHETIC_SCORE = 6.0


def discover_shards(path: str | Path) -> list[Path]:
    """Parquet files of one dataset: a file, OUT/data/*.parquet, or any *.parquet below a dir."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"dataset {path}: no such file or directory")
    files = sorted((path / "data").glob("*.parquet")) if (path / "data").is_dir() else []
    files = files or sorted(p for p in path.rglob("*.parquet") if "reject" not in p.name)
    if not files:
        raise FileNotFoundError(f"dataset {path}: no .parquet files (expected {path}/data/train-*.parquet)")
    return files


def _pick(names: list[str], candidates: tuple[str, ...], what: str, file: Path) -> str:
    for c in candidates:
        if c in names:
            return c
    raise ValueError(f"{file}: no {what} column; looked for {', '.join(candidates)}; found {', '.join(names)}")


def image_bytes(value: object) -> bytes:
    """HF Image struct {bytes, path}, {'bytes': ...} or raw bytes -> encoded image bytes."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path"):
            return Path(value["path"]).read_bytes()
    raise ValueError(f"cannot read an image from a value of type {type(value).__name__}")


def decode_image(data: bytes) -> Image.Image:
    return ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")


@dataclass(frozen=True)
class _File:
    path: Path
    row_group_starts: tuple[int, ...]
    num_rows: int
    columns: tuple[str, str, str]  # instruction, source, target


class ShardDataset:
    """Random access to the rows of one dataset's Parquet files, one row group at a time."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.files: list[_File] = []
        starts = [0]
        for f in discover_shards(path):
            meta = pq.ParquetFile(f)
            names = meta.schema_arrow.names
            cols = (
                _pick(names, INSTRUCTION_COLUMNS, "instruction", f),
                _pick(names, SOURCE_COLUMNS, "source image", f),
                _pick(names, TARGET_COLUMNS, "target image", f),
            )
            rg = [meta.metadata.row_group(i).num_rows for i in range(meta.num_row_groups)]
            self.files.append(_File(f, tuple(np.cumsum([0] + rg[:-1]).tolist()), sum(rg), cols))
            starts.append(starts[-1] + sum(rg))
        self._starts = np.asarray(starts)
        if len(self) == 0:
            raise ValueError(f"dataset {path}: the Parquet files hold no rows")

    def __len__(self) -> int:
        return int(self._starts[-1])

    @staticmethod
    @lru_cache(maxsize=4)
    def _row_group(path: Path, index: int, columns: tuple[str, str, str]) -> pa.Table:
        return pq.ParquetFile(path).read_row_group(index, columns=list(columns))

    def __getitem__(self, index: int) -> tuple[str, bytes, bytes]:
        """(instruction, source image bytes, target image bytes)."""
        fi = int(np.searchsorted(self._starts, index, side="right") - 1)
        f = self.files[fi]
        local = index - int(self._starts[fi])
        gi = int(np.searchsorted(f.row_group_starts, local, side="right") - 1)
        table = self._row_group(f.path, gi, f.columns)
        row = local - f.row_group_starts[gi]
        instr, src, tgt = (table.column(c)[row].as_py() for c in f.columns)
        return str(instr or ""), image_bytes(src), image_bytes(tgt)


class MixtureOrder:
    """Deterministic stream of (dataset, row) pairs from (seed, position).

    Each draw picks a dataset with probability proportional to its ratio; each dataset is
    walked through a fresh permutation per epoch. Blocks of draws are generated from
    seeds derived from (seed, block), so jumping to any position costs only index arithmetic.
    """

    BLOCK = 1024

    def __init__(self, sizes: list[int], ratios: list[float], seed: int) -> None:
        if len(sizes) != len(ratios) or not sizes:
            raise ValueError("need one ratio per dataset")
        if any(r < 0 for r in ratios) or sum(ratios) <= 0:
            raise ValueError(f"dataset ratios must be >= 0 and not all 0, got {ratios}")
        self.sizes = sizes
        self.probs = np.asarray(ratios, dtype=np.float64) / float(sum(ratios))
        self.seed = seed

    def _choices(self, block: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 0, block])
        return rng.choice(len(self.sizes), size=self.BLOCK, p=self.probs)

    def _row(self, dataset: int, k: int) -> int:
        n = self.sizes[dataset]
        epoch, offset = divmod(k, n)
        return int(np.random.default_rng([self.seed, 1, dataset, epoch]).permutation(n)[offset])

    def iterate(self, start: int = 0) -> Iterator[tuple[int, int, int]]:
        """Yield (position, dataset, row) from `start` on."""
        counts = np.zeros(len(self.sizes), dtype=np.int64)
        first_block = start // self.BLOCK
        for b in range(first_block):
            counts += np.bincount(self._choices(b), minlength=len(self.sizes))
        block, position = first_block, first_block * self.BLOCK
        while True:
            for d in self._choices(block):
                if position >= start:
                    yield position, int(d), self._row(int(d), int(counts[d]))
                counts[d] += 1
                position += 1
            block += 1


def crop_pair(source: Image.Image, target: Image.Image, resolution: int, rng: np.random.Generator | None
              ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Resize the short side to `resolution`, then crop BOTH images with the same window.

    rng=None takes the centre window. Returns two (3, R, R) tensors in [0, 1] and the
    micro-conditions [orig_w, orig_h, crop_top, crop_left, aesthetic].
    """
    orig_w, orig_h = source.size
    if target.size != source.size:
        target = target.resize(source.size, Image.BICUBIC)
    scale = resolution / min(orig_w, orig_h)
    new_w, new_h = max(resolution, round(orig_w * scale)), max(resolution, round(orig_h * scale))
    source = source.resize((new_w, new_h), Image.BICUBIC)
    target = target.resize((new_w, new_h), Image.BICUBIC)
    if rng is None:
        top, left = (new_h - resolution) // 2, (new_w - resolution) // 2
    else:
        top = int(rng.integers(0, new_h - resolution + 1))
        left = int(rng.integers(0, new_w - resolution + 1))
    box = (left, top, left + resolution, top + resolution)

    def to_tensor(img: Image.Image) -> torch.Tensor:
        arr = np.asarray(img.crop(box), dtype=np.float32) / 255.0
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()

    return to_tensor(source), to_tensor(target), [float(orig_w), float(orig_h), float(top), float(left), AESTHETIC_SCORE]


@dataclass
class PairBatch:
    source: torch.Tensor  # (B, 3, R, R) in [0, 1]
    target: torch.Tensor
    instructions: list[str]
    micro_conds: torch.Tensor  # (B, 5)
    positions: list[int]


class PairStream:
    """Batches of aligned (source, target, instruction) from one or more datasets."""

    def __init__(self, paths: list[str | Path], ratios: list[float] | None, resolution: int, seed: int,
                 random_crop: bool = True) -> None:
        self.datasets = [ShardDataset(p) for p in paths]
        self.order = MixtureOrder([len(d) for d in self.datasets], ratios or [1.0] * len(self.datasets), seed)
        self.resolution = resolution
        self.seed = seed
        self.random_crop = random_crop

    def load(self, position: int, dataset: int, row: int) -> tuple[torch.Tensor, torch.Tensor, str, list[float]]:
        instruction, src, tgt = self.datasets[dataset][row]
        rng = np.random.default_rng([self.seed, 2, position]) if self.random_crop else None
        s, t, micro = crop_pair(decode_image(src), decode_image(tgt), self.resolution, rng)
        return s, t, instruction, micro

    def batches(self, batch_size: int, start: int = 0) -> Iterator[PairBatch]:
        items = []
        for position, dataset, row in self.order.iterate(start):
            items.append((position, *self.load(position, dataset, row)))
            if len(items) == batch_size:
                yield PairBatch(
                    source=torch.stack([i[1] for i in items]),
                    target=torch.stack([i[2] for i in items]),
                    instructions=[i[3] for i in items],
                    micro_conds=torch.tensor([i[4] for i in items]),
                    positions=[i[0] for i in items],
                )
                items = []
