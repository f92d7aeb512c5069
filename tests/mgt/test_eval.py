"""`crispedit eval` on the Emu Edit and MagicBrush test layouts and on mapped columns."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crispedit.mgt.bench_formats import detect_layout, parse_columns
from crispedit.mgt.evaluate import evaluate
from tests.mgt.conftest import IMAGE_TYPE, draw_photo, image_struct


def _photos(n, seed=0, size=(16, 16)):
    rng = np.random.default_rng(seed)
    return [draw_photo(rng, *size).astype(np.uint8) for _ in range(n)]


def test_emu_edit_layout(tiny_checkpoint, tmp_path):
    """facebook/emu_edit_test_set columns: a source image and captions, no target image."""
    split = tmp_path / "emu" / "data"
    split.mkdir(parents=True)
    photos = _photos(3)
    pq.write_table(pa.table({
        "instruction": ["make it gray", "add a hat", "invert the colors"],
        "image": pa.array([image_struct(p) for p in photos], type=IMAGE_TYPE),
        "task": ["global", "add", "global"],
        "split": ["test"] * 3,
        "idx": [10, 11, 12],
        "hash": ["a", "b", "c"],
        "input_caption": ["a photo", "a photo", "a photo"],
        "output_caption": ["a gray photo", "a photo with a hat", "an inverted photo"],
    }), split / "test-00000-of-00001.parquet")
    pq.write_table(pa.table({"instruction": ["x"], "image": pa.array([image_struct(photos[0])], type=IMAGE_TYPE),
                             "task": ["global"], "split": ["validation"], "idx": [1], "hash": ["z"],
                             "input_caption": ["a"], "output_caption": ["b"]}), split / "validation-00000-of-00001.parquet")
    report = evaluate(tiny_checkpoint, tmp_path / "emu", tmp_path / "out", split="test", steps=2)
    assert report.layout == "emu_edit" and report.n == 3
    rows = pq.read_table(report.samples_path).to_pylist()
    assert [r["id"] for r in rows] == ["10", "11", "12"] and rows[1]["task"] == "add"
    for r in rows:
        assert r["l1"] is None and r["clip_i"] is None  # no target in Emu Edit
        assert 0 < r["l1_source"] < 1 and -1 <= r["clip_dir"] <= 1 and r["clip_t"] is not None
    summary = json.loads(report.summary_path.read_text())["summary"]
    assert summary["all"]["n"] == 3 and summary["task:global"]["n"] == 2 and summary["task:add"]["n"] == 1
    assert summary["task:add"]["clip_dir"] == pytest.approx(rows[1]["clip_dir"])
    assert "l1" not in summary["all"]


def test_magicbrush_layout(tiny_checkpoint, tmp_path):
    """osunlp/MagicBrush columns: source, mask and target images; the id joins img_id and turn."""
    photos = _photos(4, seed=1, size=(24, 16))
    bench = tmp_path / "mb.parquet"
    pq.write_table(pa.table({
        "img_id": ["327726", "327726"],
        "turn_index": pa.array([1, 2], type=pa.int32()),
        "source_img": pa.array([image_struct(photos[0]), image_struct(photos[1])], type=IMAGE_TYPE),
        "mask_img": pa.array([image_struct(photos[2]), image_struct(photos[2])], type=IMAGE_TYPE),
        "instruction": ["make it gray", "flip it upside down"],
        "target_img": pa.array([image_struct(photos[1]), image_struct(photos[3])], type=IMAGE_TYPE),
    }), bench)
    report = evaluate(tiny_checkpoint, bench, tmp_path / "out", steps=2, save_images=True)
    assert report.layout == "magicbrush"
    rows = pq.read_table(report.samples_path).to_pylist()
    assert [r["id"] for r in rows] == ["327726-1", "327726-2"]
    for r in rows:
        assert 0 < r["l1"] < 1 and r["clip_i"] is not None and r["dino"] is not None
        assert r["clip_t"] is None  # MagicBrush's HF columns carry no captions
        assert r["edited_image"][:4] == b"\x89PNG"


def test_other_layouts_need_a_column_map(tiny_checkpoint, tmp_path):
    bench = tmp_path / "odd.parquet"
    photos = _photos(2, seed=2)
    pq.write_table(pa.table({"before": pa.array([image_struct(p) for p in photos], type=IMAGE_TYPE),
                             "prompt": ["make it gray", "invert the colors"]}), bench)
    with pytest.raises(ValueError, match="--columns"):
        evaluate(tiny_checkpoint, bench, tmp_path / "out")
    report = evaluate(tiny_checkpoint, bench, tmp_path / "out", columns=parse_columns("source=before,instruction=prompt"),
                      steps=2, limit=1)
    assert report.n == 1
    with pytest.raises(ValueError, match="no such column"):
        detect_layout(["before", "prompt"], overrides={"source": "after"})


SCORED = """\
name: scored
seed: 0
output: {dir: out, shard_size: 4}
source: {kind: skimage, photos: [astronaut, chelsea, coffee], max_side: 64}
stages:
  - kind: instruct
  - kind: classical
  - kind: clip_filter
    clip_model: tiny
    dino_model: tiny
"""


def test_a_build_and_eval_score_a_pair_alike(tmp_path):
    """The eval metrics are the build's scorer: the same pair gets the same CLIP and DINOv2 scores."""
    import io

    from PIL import Image

    from crispedit.engine import build
    from crispedit.mgt.metrics import MetricModels, edit_metrics
    from crispedit.recipe import load_plan

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(SCORED)
    out = tmp_path / "out"
    build(load_plan(recipe, out=out), runner="local", progress=False)
    rows = pq.read_table(next((out / "data").glob("*.parquet"))).to_pylist()
    assert rows
    models = MetricModels(tiny=True, seed=0)  # the recipe's seed
    for row in rows:
        source = Image.open(io.BytesIO(row["source_image"]["bytes"]))
        target = Image.open(io.BytesIO(row["target_image"]["bytes"]))
        # the "edit" is the build's target: eval's metrics of (source -> edit) are the build's of the pair
        scores = edit_metrics(models, target, source, None, row["source_caption"], row["target_caption"])
        assert scores["clip_i_source"] == pytest.approx(row["clip_i"], abs=1e-9)
        assert scores["clip_t"] == pytest.approx(row["clip_t_target"], abs=1e-9)
        assert scores["clip_dir"] == pytest.approx(row["clip_dir"], abs=1e-9)
        assert scores["dino_source"] == pytest.approx(row["dino_i"], abs=1e-9)
