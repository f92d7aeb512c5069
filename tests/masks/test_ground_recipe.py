"""recipes/ground.yaml builds with --tiny, and its rows carry soft masks in the mask column."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from crispedit.cli import main

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "ground.yaml"


def test_ground_recipe_builds_tiny_with_soft_masks(tmp_path: Path) -> None:
    out = tmp_path / "ground"
    assert main(["build", str(RECIPE), "--tiny", "--runner", "local", "--out", str(out), "--no-progress"]) == 0
    table = pq.read_table(sorted((out / "data").glob("*.parquet")))
    assert table.num_rows > 0
    for row in table.to_pylist():
        mask = np.array(Image.open(io.BytesIO(row["mask"]["bytes"])))
        assert mask.dtype == np.uint8 and mask.shape == (row["height"], row["width"])
        assert len(np.unique(mask)) > 2  # soft: blurred and box-weighted, not a binary cut-out
        assert 0.01 <= row["mask_coverage"] <= 0.90
        assert row["mask_coverage"] == (mask > 127).mean()
        assert 0.3 < row["ground_score"] <= 1.0
    rejects = pq.read_table(sorted((out / "rejects").glob("*.parquet"))).to_pylist()
    assert all(r["stage"] in {"mask_filter", "pixel_change"} for r in rejects)
