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
