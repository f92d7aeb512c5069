"""recipes/editor.yaml builds with --tiny under the default (Ray) runner and loads with `datasets`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crispedit.cli import main
from tests.helpers.recipes import RECIPES


@pytest.mark.slow
def test_the_editor_recipe_builds_tiny_on_ray_and_loads_with_datasets(tmp_path: Path) -> None:
    import datasets

    out = tmp_path / "editor"
    assert main(["build", str(RECIPES / "editor.yaml"), "--tiny", "--out", str(out), "--no-progress"]) == 0
    rows = datasets.load_dataset("parquet", data_dir=str(out / "data"), split="train")
    assert len(rows) == 3  # one survivor of two candidates per photo
    for row in rows:
        made = json.loads(row["provenance"])["edit_model"]
        assert row["branch"] == "editor" and made["pipeline"] == "FluxKontextPipeline" and "seed" in made
        assert row["target_image"] is not None and row["instruction"]


@pytest.mark.slow
def test_the_reedit_recipe_rejudges_an_existing_dataset_on_ray_and_loads_with_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    from tests.helpers.stage_cases import write_edit_dataset

    write_edit_dataset(tmp_path / "data" / "reedit", 2)
    monkeypatch.chdir(tmp_path)  # the recipe reads data/reedit relative to the working directory
    assert main(["build", str(RECIPES / "reedit.yaml"), "--tiny", "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    kept = datasets.load_dataset("parquet", data_dir=str(tmp_path / "out" / "data"), split="train")
    assert len(kept) == 2  # old or new, one per pair
    assert sorted(kept["instruction_original"]) == ["make picture 0 brighter", "make picture 1 brighter"]
    assert set(kept["branch"]) <= {"editor", "original"} and all(r["judge_overall"] is not None for r in kept)
