"""``crispedit plan``: the resource plan on a stated shape, and the cost of N kept pairs from a finished build."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from crispedit.cli import main
from tests.helpers.recipes import QUICKSTART, RECIPES


def test_plan_prints_every_step_and_refuses_an_unfittable_cluster(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["plan", str(RECIPES / "world.yaml"), "--tiny", "--cpus", "2", "--gpus", "1", "--json"]) == 0
    steps = json.loads(capsys.readouterr().out)["resource_plan"]
    assert [s["step"] for s in steps if s["pool"]] == ["sdxl_source", "inpaint", "refine", "clip_filter"]
    assert sum(s["num_gpus"] for s in steps) <= 1.0 and sum(s["num_cpus"] for s in steps) <= 2.0
    recipe = tmp_path / "world.yaml"
    recipe.write_text((RECIPES / "world.yaml").read_text().replace("execution:\n", "execution:\n  share_gpus: false\n", 1))
    assert main(["plan", str(recipe), "--tiny", "--cpus", "2", "--gpus", "1"]) == 2
    assert "stage 'inpaint' needs 1 GPU(s)" in capsys.readouterr().err


def test_plan_scales_a_finished_build_to_n_kept_pairs(quickstart_dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(QUICKSTART), "--items", "1000", "--from", str(quickstart_dataset), "--cpus", "16", "--json"]) == 0
    cost = json.loads(capsys.readouterr().out)["estimate"]
    kept = pq.read_table(quickstart_dataset / "data").num_rows
    rejected = pq.read_table(quickstart_dataset / "rejects").num_rows
    summary = json.loads((quickstart_dataset / "summary.json").read_text())
    seen = summary["stages"]["source"]["seen"]
    assert kept == summary["rows"] and rejected == summary["rejects"]  # the summary agrees with the Parquet
    assert cost["inputs_needed"] == math.ceil(1000 * seen / kept)
    assert cost["wall_hours"] > 0 and [s["name"] for s in cost["stages"]] == list(summary["stages"])
