"""Fixtures for the EditMGT trainer tests: tiny config and small crispedit-format shards."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from crispedit.core.presets import BUNDLED

REPO = Path(__file__).resolve().parents[2]

_EDITS = {
    "make it grayscale": lambda a: np.repeat(a.mean(axis=2, keepdims=True), 3, axis=2),
    "invert the colors": lambda a: 255 - a,
    "flip it upside down": lambda a: a[::-1],
}


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def draw_photo(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth gradient with a bright rectangle: structure the tiny VQ can tokenise."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = rng.uniform(40, 200, size=3)
    img = base + 60 * np.stack([x, y, 1 - x], axis=2)
    x0, y0 = rng.integers(0, width // 2), rng.integers(0, height // 2)
    img[y0 : y0 + height // 3, x0 : x0 + width // 3] = rng.uniform(0, 255, size=3)
    return img.clip(0, 255)


def write_crispedit_shard(out_dir: Path, n: int, size: tuple[int, int] = (24, 16), seed: int = 0,
                          upstream_names: bool = False, row_group_size: int | None = None,
                          tasks: tuple[str, ...] = ("global",), name: str = "train-00000.parquet") -> Path:
    """Write OUT/data/<name> in the crispedit sample schema (or upstream names); row i has task
    tasks[i % len(tasks)] and instruction i % 3 of the three edits below."""
    rng = np.random.default_rng(seed)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    rows = {k: [] for k in ["id", "source_image", "target_image", "instruction", "task", "branch", "width", "height", "provenance"]}
    edits = list(_EDITS.items())
    for i in range(n):
        w, h = size
        src = draw_photo(rng, w, h)
        instruction, fn = edits[i % len(edits)]
        tgt = fn(src)
        rows["id"].append(f"pair-{seed}-{i}")
        rows["source_image"].append({"bytes": _png(src), "path": None})
        rows["target_image"].append({"bytes": _png(tgt), "path": None})
        rows["instruction"].append(instruction)
        rows["task"].append(tasks[i % len(tasks)])
        rows["branch"].append("classical")
        rows["width"].append(w)
        rows["height"].append(h)
        rows["provenance"].append(json.dumps({"recipe": "test", "seed": seed}))
    if upstream_names:
        table = pa.table({
            "edit_instruction": rows["instruction"],
            "input_img": [r["bytes"] for r in rows["source_image"]],  # raw bytes, as some upstream sets
            "output_img": pa.array(rows["target_image"], type=image_type),
        })
    else:
        table = pa.table({
            "id": rows["id"],
            "source_image": pa.array(rows["source_image"], type=image_type),
            "target_image": pa.array(rows["target_image"], type=image_type),
            "mask": pa.array([None] * n, type=image_type),
            "instruction": rows["instruction"],
            "inverse_instruction": pa.array([None] * n, type=pa.string()),
            "task": rows["task"],
            "branch": rows["branch"],
            "edit_objects": pa.array([[] for _ in range(n)], type=pa.list_(pa.string())),
            "clip_t_target": pa.array([None] * n, type=pa.float32()),
            "provenance": rows["provenance"],
            "width": rows["width"],
            "height": rows["height"],
        })
    data = out_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    path = data / name
    pq.write_table(table, path, row_group_size=row_group_size or max(1, n // 2))
    return out_dir


@pytest.fixture(scope="session")
def tiny_config_path() -> Path:
    return BUNDLED / "mgt" / "tiny.yaml"


@pytest.fixture()
def tiny_config(tiny_config_path):
    from crispedit.mgt.config import MGTConfig

    return MGTConfig.load(tiny_config_path)


@pytest.fixture(scope="session")
def pairs_dir(tmp_path_factory) -> Path:
    return write_crispedit_shard(tmp_path_factory.mktemp("pairs"), n=6, seed=0)


@pytest.fixture(scope="session")
def tiny_components():
    """VQ, text conditioner and transformer of the tiny config, built once per session."""
    import torch

    from crispedit.mgt.components import build_text, build_vq
    from crispedit.mgt.config import MGTConfig
    from crispedit.mgt.transformer import build_transformer

    cfg = MGTConfig.load(BUNDLED / "mgt" / "tiny.yaml")
    torch.manual_seed(0)
    return cfg, build_vq(cfg.model), build_text(cfg.model), build_transformer(cfg.model.transformer).eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(pairs_dir, tmp_path_factory) -> Path:
    """A tiny-config training output dir after one step (read-only for the tests that use it)."""
    from crispedit.mgt.config import MGTConfig
    from crispedit.mgt.train import Trainer

    out = tmp_path_factory.mktemp("tiny-ckpt")
    Trainer(MGTConfig.load(BUNDLED / "mgt" / "tiny.yaml"), [pairs_dir], out).train(max_steps=1)
    return out


def image_struct(arr: np.ndarray) -> dict:
    return {"bytes": _png(arr), "path": None}


IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
