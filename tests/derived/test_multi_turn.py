"""Multi-turn chains: each turn made by real stages, thresholded, checked against turn 0, stopped at the first failure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from crispedit.cli import main
from crispedit.core.located import RecipeError
from crispedit.core.sample import child_id, sample_id
from crispedit.engine import build
from crispedit.recipe import load_plan
from tests.helpers.recipes import RECIPES, write_recipe

DAMAGE = """
name: chain-damage
seed: 0
output: {dir: out, shard_size: 4}
execution: {runner: local}
plugins: [tests.derived.turn_edits]
source: {kind: skimage, photos: [astronaut, coffee], max_side: 48, edits_per_image: 1}
stages:
  - kind: multi_turn
    turns: 3
    stages:
      - kind: turn_edit      # turn 1 brightens a little, turn 2 inverts the whole picture, turn 3 would brighten
        edits: [{name: brighten, params: {gain: 1.1}}, {name: invert}, {name: brighten, params: {gain: 1.2}}]
      - kind: classical
    clip_model: tiny
    dino_model: tiny
    max_chain_l1_outside: 0.2
"""


def rows(out: Path, kind: str) -> list[dict]:
    return [r for f in sorted((out / kind).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def decoded(cell: dict) -> np.ndarray:
    import io

    return np.asarray(Image.open(io.BytesIO(cell["bytes"])).convert("RGB"))


@pytest.mark.slow  # ~5 s: two chains of real stages and the tiny CLIP/DINOv2 twins
def test_a_three_turn_chain_whose_second_turn_damages_the_background_stops_there(tmp_path: Path) -> None:
    plan = load_plan(write_recipe(tmp_path, DAMAGE), out=tmp_path / "out")
    build(plan, runner="local", progress=False)
    data, rejects = rows(tmp_path / "out", "data"), rows(tmp_path / "out", "rejects")
    assert [r["turn"] for r in data] == [1, 1] and [r["turn"] for r in rejects] == [2, 2]  # no turn 3 was made
    sources = {r["source_ref"]: r for r in rejects}
    for index, name in enumerate(["astronaut", "coffee"]):
        item = sample_id(plan.fingerprint, index)
        first = next(r for r in data if r["parent_id"] == item)
        second = sources[f"skimage:{name}"]
        assert (first["id"], first["lineage"]) == (child_id(item, 1), [1])
        assert (second["id"], second["lineage"], second["parent_id"]) == (child_id(item, 2), [2], item)
        assert json.loads(second["provenance"])["multi_turn"]["previous"] == first["id"]
        assert second["stage"] == "multi_turn" and second["reason"].startswith("chain broken: chain_l1_outside")
        assert "at turn 2" in second["reason"]
        # the turn's own source is turn 1's result, and what it is measured against is the original (turn 1's source)
        assert second["source_image"]["bytes"] == first["target_image"]["bytes"]
        original, damaged = decoded(first["source_image"]), decoded(second["target_image"])
        expected = np.abs(original.astype(float) - damaged.astype(float)).mean() / 255.0  # no masks: the whole image
        assert second["chain_l1_outside"] == pytest.approx(expected, abs=1e-12) and expected > 0.2
        assert first["chain_l1_outside"] < 0.2 and first["instruction"] == "Make the photo slightly brighter"
        assert all(r[c] is not None for r in (first, second) for c in ("chain_clip_i", "chain_dino_i", "chain_reverted"))


def test_a_turn_stage_is_checked_where_the_recipe_names_it(tmp_path: Path) -> None:
    bad = DAMAGE.replace("kind: classical", "kind: classicall")
    with pytest.raises(RecipeError) as error:
        load_plan(write_recipe(tmp_path, bad), out=tmp_path / "out")
    assert "stages[1]: unknown kind 'classicall'" in str(error.value)
    nested = DAMAGE.replace("kind: classical", "kind: compose")
    with pytest.raises(RecipeError, match="a compose stage cannot run inside a turn"):
        load_plan(write_recipe(tmp_path, nested), out=tmp_path / "out")


@pytest.mark.slow
def test_the_multi_turn_recipe_builds_tiny_under_ray_and_exports_magicbrush(ray_local, tmp_path: Path) -> None:
    import datasets

    out = tmp_path / "multi_turn"
    plan = load_plan(RECIPES / "multi_turn.yaml", tiny=True, out=out)
    assert plan.recipe.execution.runner == "ray"
    build(plan, progress=False)  # the recipe's runner: Ray
    pairs = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    kinds = [(json.loads(p).get("derived") or {}).get("kind") for p in pairs["provenance"]]
    assert {"inverse", "compose", None} <= set(kinds)
    assert all(r["pixel_l1"] is not None and r["clip_i"] is not None for r in pairs)  # the derived rows were judged again
    turns = [r for r in pairs if r["turn"] is not None]
    assert turns and all(k is None for r, k in zip(pairs, kinds, strict=True) if r["turn"] is not None)
    assert main(["export", str(out), "--magicbrush", "--to", str(tmp_path / "mb")]) == 0
    brush = datasets.load_dataset("parquet", data_dir=str(tmp_path / "mb" / "data"), split="train")
    assert list(brush.features) == ["img_id", "turn_index", "source_img", "mask_img", "instruction", "target_img"]
    assert len(brush) == len(turns)
    for chain in set(brush["img_id"]):
        assert sorted(r["turn_index"] for r in brush if r["img_id"] == chain) == list(range(1, 1 + sum(1 for r in brush if r["img_id"] == chain)))
    assert brush[0]["source_img"].size == brush[0]["target_img"].size == brush[0]["mask_img"].size
