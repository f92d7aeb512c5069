"""The sample record round-trips through Hugging Face datasets, with images as images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from crispedit.core.paths import UnsafePathError
from crispedit.core.shards import ShardStore, plan_shards
from crispedit.engine import build
from crispedit.recipe import load_plan
from tests.helpers.recipes import QUICKSTART


def test_datasets_reads_images_as_images(quickstart_dataset: Path) -> None:
    ds = datasets.load_dataset("parquet", data_dir=str(quickstart_dataset), split="train")
    assert isinstance(ds.features["source_image"], datasets.Image)
    assert isinstance(ds.features["target_image"], datasets.Image)
    assert isinstance(ds.features["mask"], datasets.Image)
    assert ds.features["edit_objects"] == datasets.List(datasets.Value("string"))
    row = ds[0]
    assert isinstance(row["source_image"], Image.Image) and isinstance(row["target_image"], Image.Image)
    assert row["source_image"].size == (row["width"], row["height"]) == row["target_image"].size
    assert row["mask"] is None
    assert row["instruction"] and row["task"] and row["branch"] == "classical"
    provenance = json.loads(row["provenance"])
    assert provenance["recipe"] == "quickstart" and provenance["recipe_hash"]
    assert provenance["instruct"]["edit"] == provenance["generate"]["edit"]
    # every row is a real edit: target differs from source, and the score says by how much
    for r in ds:
        l1 = np.abs(np.asarray(r["source_image"], np.int16) - np.asarray(r["target_image"], np.int16)).mean() / 255
        assert abs(l1 - r["pixel_l1"]) < 1e-9 and l1 >= 0.01


def test_schema_carries_huggingface_metadata(quickstart_dataset: Path) -> None:
    schema = pq.read_schema(next((quickstart_dataset / "data").glob("*.parquet")))
    features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
    assert features["source_image"] == {"_type": "Image"}
    assert schema.field("pixel_l1").type == "double"
    assert schema.names[:3] == ["id", "source_image", "target_image"]


def test_ids_and_shards_are_deterministic(quickstart_dataset: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    build(load_plan(QUICKSTART, out=again), runner="local", progress=False)
    for folder in ("data", "rejects"):
        first = sorted(p.name for p in (quickstart_dataset / folder).iterdir())
        assert first == sorted(p.name for p in (again / folder).iterdir())
        for name in first:
            assert (quickstart_dataset / folder / name).read_bytes() == (again / folder / name).read_bytes()


def test_every_item_is_a_row_or_a_reject(quickstart_dataset: Path) -> None:
    rows = pq.read_table(quickstart_dataset / "data", columns=["id"]).column("id").to_pylist()
    rejects = pq.read_table(quickstart_dataset / "rejects").to_pylist()
    summary = json.loads((quickstart_dataset / "summary.json").read_text())
    assert len(rows) + len(rejects) == 24 == summary["stages"]["source"]["seen"]
    assert len(set(rows) | {r["id"] for r in rejects}) == 24
    assert all(r["reason"] and r["stage"] for r in rejects)
    assert summary["complete"] and summary["rows"] == len(rows)


def test_shard_names_come_from_ranges() -> None:
    shards = plan_shards(20, 8)
    assert [s.name for s in shards] == ["train-00000000-00000008", "train-00000008-00000016", "train-00000016-00000020"]


def test_store_refuses_names_that_escape(tmp_path: Path) -> None:
    store = ShardStore(tmp_path, [])
    for bad in ("../../x.parquet", "/etc/passwd", "a\\b"):
        with pytest.raises(UnsafePathError):
            store.output.join("data", bad)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "link").symlink_to(tmp_path.parent)
    with pytest.raises(UnsafePathError):
        store.output.write_text("data/link/escaped.txt", "x")
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_inspect_prints_summary(quickstart_dataset: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "crispedit.cli", "inspect", str(quickstart_dataset), "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    summary = json.loads(done.stdout)
    assert summary["shards"] == 3 and summary["stages"]["classical"]["seen"] == 24
    table = subprocess.run([sys.executable, "-m", "crispedit.cli", "inspect", str(quickstart_dataset)], capture_output=True, text=True, timeout=120)
    assert "pixel_change" in table.stdout and "too little change" in table.stdout
