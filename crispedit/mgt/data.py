"""What a training pair is: its columns in a shard, its decoded pixels, its crop window, a batch.

* crispedit shards: OUT/data/train-*.parquet in the sample schema (crispedit.core.sample): source
  and target as HF Image structs {bytes, path}, `instruction`, `task`.
* upstream column names (EditMGT src/dataset_utils.py): instruction in `edit_instruction`;
  target in `output`/`output_img`/`edited_file`/`generated_image`; source in
  `input`/`input_img`/`image_file`; images as {bytes} structs or raw bytes.

Images are decoded with crispedit.core.images.decode_pil, the same checks a build applies to a
source file (pixel limit read from the header before decoding, EXIF rotation, alpha put on
white), so a hostile or huge image in a shard is an error with a reason, not a hang.

Source and target are cropped with ONE window (upstream cropped them independently, which
misaligns non-square pairs); a target of a different size is first resized to the source's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from crispedit.core.images import DEFAULT_MAX_PIXELS, decode_pil
from crispedit.core.sample import IMAGE_COLUMNS, TEXT_COLUMNS


def _declared(name: str, columns: tuple[str, ...]) -> str:
    """A column name of the sample schema; fails at import if crispedit.core.sample renames it."""
    if name not in columns:
        raise ImportError(f"crispedit.core.sample no longer declares the column {name!r} ({columns})")
    return name


SOURCE = _declared("source_image", IMAGE_COLUMNS)
TARGET = _declared("target_image", IMAGE_COLUMNS)
INSTRUCTION = _declared("instruction", TEXT_COLUMNS)
TASK = _declared("task", TEXT_COLUMNS)
SOURCE_CAPTION = _declared("source_caption", TEXT_COLUMNS)
TARGET_CAPTION = _declared("target_caption", TEXT_COLUMNS)

# crispedit's own name first, then upstream EditMGT's alternatives.
INSTRUCTION_COLUMNS = (INSTRUCTION, "edit_instruction")
TARGET_COLUMNS = (TARGET, "output", "output_img", "edited_file", "generated_image")
SOURCE_COLUMNS = (SOURCE, "input", "input_img", "image_file")
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


def pick_column(names: list[str], candidates: tuple[str, ...], what: str, where: object) -> str:
    """The first candidate present; the error names the file and what was looked for."""
    for c in candidates:
        if c in names:
            return c
    raise ValueError(f"{where}: no {what} column; looked for {', '.join(candidates)}; found {', '.join(names)}")


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


def decode_rgb(value: object, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A shard cell (struct or bytes) -> an RGB PIL image, through crispedit.core.images' checked decoder
    (kept in PIL: the crop that follows works on PIL images)."""
    image, _notes = decode_pil(image_bytes(value), max_pixels=max_pixels)
    return image


def _as_pil(image: Image.Image | np.ndarray) -> Image.Image:
    image = image if isinstance(image, Image.Image) else Image.fromarray(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def crop_pair(source: Image.Image | np.ndarray, target: Image.Image | np.ndarray, resolution: int,
              rng: np.random.Generator | None) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Scale the short side to `resolution`, then cut BOTH images with the same R x R window.

    rng=None takes the centre window. Returns two (3, R, R) uint8 tensors (see `to_unit`) and
    the micro-conditions [orig_w, orig_h, crop_top, crop_left, aesthetic], crop offsets in the
    scaled image as upstream. Only the window is resampled (PIL's resize with a source box), so
    the cost is R x R output pixels whatever the input size.
    """
    source, target = _as_pil(source), _as_pil(target)
    orig_w, orig_h = source.size
    if target.size != source.size:
        target = target.resize(source.size, Image.BICUBIC)
    scale = resolution / min(orig_w, orig_h)
    new_w, new_h = max(resolution, round(orig_w * scale)), max(resolution, round(orig_h * scale))
    if rng is None:
        top, left = (new_h - resolution) // 2, (new_w - resolution) // 2
    else:
        top = int(rng.integers(0, new_h - resolution + 1))
        left = int(rng.integers(0, new_w - resolution + 1))
    sx, sy = orig_w / new_w, orig_h / new_h
    box = (left * sx, top * sy, (left + resolution) * sx, (top + resolution) * sy)

    def window(img: Image.Image) -> torch.Tensor:
        arr = np.array(img.resize((resolution, resolution), Image.BICUBIC, box=box))  # one writable copy
        return torch.from_numpy(arr).permute(2, 0, 1).contiguous()

    return window(source), window(target), [float(orig_w), float(orig_h), float(top), float(left), AESTHETIC_SCORE]


def to_unit(pixels: torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 pixels -> float in [0, 1] (no normalisation, as the VQ tokenizer expects), on `device`.
    Batches travel between processes as uint8 (a quarter of the bytes) and become floats here."""
    if device is not None:
        pixels = pixels.to(device, non_blocking=True)
    return pixels.float().div_(255.0)


@dataclass
class PairBatch:
    """One micro-batch. Pixels are uint8 (B, 3, R, R); `to_unit` makes them model inputs."""

    source: torch.Tensor
    target: torch.Tensor
    instructions: list[str]
    tasks: list[str | None]
    micro_conds: torch.Tensor  # (B, 5)
    positions: list[int]  # global sample positions: batch index * batch size + i
    index: int = 0  # global batch index in the run's stream
    epoch: int = 0  # epoch of the batch's first sample
    # (dataset, row group, row) of each sample and the worker that decoded it: for tests and debugging.
    rows: list[tuple[int, int, int]] | None = None
    worker: int = -1

    def __len__(self) -> int:
        return len(self.instructions)
