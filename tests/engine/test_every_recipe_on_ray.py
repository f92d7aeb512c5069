"""Every recipe in recipes/ builds with --tiny under the default Ray runner on 2 CPUs and gives the
same bytes as --runner local.

This is the test that would have caught the stall of issue 24 (style.yaml hung on 2 CPUs under Ray
while CI built it only in-process). It iterates over recipes/*.yaml, so a new recipe is covered the
day it lands. To keep CI time small each recipe builds one shard of two items (``shard_size`` 2,
``max_shards`` 1) on the session's one 2-CPU Ray instance, and the in-process build is then
refiltered with every bundled chain (tests/helpers/presets_on_builds.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from crispedit.engine import build
from crispedit.engine.plan import with_shard_size
from crispedit.recipe import load_plan
from tests.helpers.presets_on_builds import PAIRS, assert_bundled_chains, prepared
from tests.helpers.recipes import RECIPES

ITEMS = 2


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_the_recipe_builds_on_ray_with_the_bytes_of_the_local_runner(
    recipe: str, ray_local, tmp_path: Path,
) -> None:
    path = prepared(recipe.removesuffix(".yaml"), tmp_path)
    outs = {runner: tmp_path / runner for runner in ("ray", "local")}
    for runner, out in outs.items():
        result = build(with_shard_size(load_plan(path, tiny=True, out=out), ITEMS), runner=runner, max_shards=1, progress=False)
        assert result.shards_built == 1, runner
    files = {runner: {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.glob("*/*.parquet"))} for runner, out in outs.items()}
    assert files["ray"] and files["ray"] == files["local"]
    if recipe.removesuffix(".yaml") in PAIRS:  # the same build serves refilter with every bundled chain
        assert_bundled_chains(recipe.removesuffix(".yaml"), outs["local"], tmp_path)
