"""Every recipe in recipes/ builds with --tiny under the default Ray runner on 2 CPUs and gives the
same bytes as --runner local.

This is the test that would have caught the stall of issue 24 (style.yaml hung on 2 CPUs under Ray
while CI built it only in-process). It iterates over recipes/*.yaml, so a new recipe is covered the
day it lands. To keep CI time small each recipe builds one shard of two items (``shard_size`` 2,
``max_shards`` 1) on the session's one 2-CPU Ray instance.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from crispedit.engine import build
from crispedit.engine.plan import with_shard_size
from crispedit.recipe import load_plan
from tests.helpers.recipes import RECIPES
from tests.helpers.stage_cases import write_edit_dataset

ITEMS = 2


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_the_recipe_builds_on_ray_with_the_bytes_of_the_local_runner(
    recipe: str, ray_local, tmp_path: Path,
) -> None:
    path = RECIPES / recipe
    if recipe == "video.yaml":  # its source folder is made by the demo, as the recipe's header says
        from crispedit.video import demo

        videos = tmp_path / "videos"
        demo.write_demo(videos)
        # an absolute folder: Ray's workers do not share the test's working directory
        path = tmp_path / recipe
        path.write_text((RECIPES / recipe).read_text().replace("folder: out/video_demo/videos", f"folder: {videos}"))
    if recipe == "reedit.yaml":  # it re-edits an existing dataset: write a small one, named by an absolute path
        folder = tmp_path / "reedit"
        write_edit_dataset(folder, 2)
        path = tmp_path / recipe
        path.write_text((RECIPES / recipe).read_text().replace("files: [data/reedit]", f"files: [{folder}]"))
    outs = {runner: tmp_path / runner for runner in ("ray", "local")}
    for runner, out in outs.items():
        result = build(with_shard_size(load_plan(path, tiny=True, out=out), ITEMS), runner=runner, max_shards=1, progress=False)
        assert result.shards_built == 1, runner
    files = {runner: {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.glob("*/*.parquet"))} for runner, out in outs.items()}
    assert files["ray"] and files["ray"] == files["local"]
