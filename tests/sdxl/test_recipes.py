"""recipes/style.yaml, crispedit.yaml and world.yaml build with --tiny and load with `datasets`."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest

from crispedit.cli import main
from crispedit.models.pins import PINS
from crispedit.recipe import load_plan
from tests.helpers.recipes import RECIPES

REAL_IDS = {f"{model_id}@{commit}" for model_id, commit in PINS.items()}  # every real model at its verified pin


@pytest.mark.parametrize("name", ["style", "crispedit", "world"])
def test_recipes_pin_real_models_with_revisions(name: str) -> None:
    from crispedit.engine import context_for, make_stage

    plan = load_plan(RECIPES / f"{name}.yaml")
    context = context_for(plan)
    ids = {v.split(":")[0] for entry in plan.stages for v in make_stage(entry, context).model_ids().values() if "@" in v}
    assert ids and ids <= REAL_IDS


@pytest.mark.slow
@pytest.mark.parametrize(("name", "branches"), [("style", {"style"}), ("crispedit", {"t2i-p2p", "inpaint", "style"}), ("world", {"refine"})])
def test_recipe_builds_tiny_and_loads_with_datasets(name: str, branches: set[str], tmp_path: Path) -> None:
    import datasets
    import pyarrow.parquet as pq

    out = tmp_path / name
    assert main(["build", str(RECIPES / f"{name}.yaml"), "--tiny", "--runner", "local", "--out", str(out), "--no-progress"]) == 0
    rows = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    assert len(rows) > 0
    rejects = pq.read_table(glob.glob(str(out / "rejects" / "*.parquet"))).to_pylist()
    # tiny random weights make small edits, which the pixel filter may drop: count the branches of both
    assert branches <= {r["branch"] for r in rows} | {r["branch"] for r in rejects}
    for row in rows:
        assert row["source_image"] is not None and row["target_image"] is not None
        provenance = json.loads(row["provenance"])
        generators = [k for k in ("sdxl_source", "p2p", "inpaint", "refine", "style") if k in provenance]
        assert generators and all("seed" in provenance[k] and "steps" in provenance[k] for k in generators)
    if name in ("style", "world"):  # best-of-N: one survivor per item, the rest rejected with their rank
        assert any(r["stage"] == "select" and "rank" in r["reason"] for r in rejects)
