"""Recipe errors name file, line and key, and come before anything heavy starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from crispedit.recipe import RecipeError, load_plan
from tests.helpers.recipes import QUICKSTART, write_recipe

GOOD = """\
name: t
seed: 3
output:
  dir: out/t
  shard_size: 4
source:
  kind: skimage
  photos: [astronaut, coffee]
stages:
  - kind: instruct
    backend: template
  - kind: classical
"""


def problems(tmp_path: Path, text: str) -> list[str]:
    path = write_recipe(tmp_path, text)
    with pytest.raises(RecipeError) as caught:
        load_plan(path)
    return [str(p) for p in caught.value.problems]


def test_good_recipe_resolves(tmp_path: Path) -> None:
    plan = load_plan(write_recipe(tmp_path, GOOD))
    assert [s.kind for s in plan.stages] == ["instruct", "classical"]
    assert plan.recipe.output.shard_size == 4


def test_unknown_top_level_key_names_line(tmp_path: Path) -> None:
    found = problems(tmp_path, GOOD.replace("seed: 3", "seed: 3\nsede: 4"))
    assert found == [f"{tmp_path / 'recipe.yaml'}:3: sede: unknown key"]


def test_unknown_stage_key_names_line_and_path(tmp_path: Path) -> None:
    found = problems(tmp_path, GOOD.replace("    backend: template", "    backend: template\n    temprature: 0.7"))
    assert found == [f"{tmp_path / 'recipe.yaml'}:12: stages[0].temprature: unknown key"]


def test_wrong_type_names_line_and_value(tmp_path: Path) -> None:
    found = problems(tmp_path, GOOD.replace("shard_size: 4", "shard_size: many"))
    assert len(found) == 1
    assert found[0].startswith(f"{tmp_path / 'recipe.yaml'}:5: output.shard_size: ")
    assert "'many'" in found[0]


def test_wrong_source_param_type(tmp_path: Path) -> None:
    found = problems(tmp_path, GOOD.replace("photos: [astronaut, coffee]", "photos: [astronaut, coffee]\n  edits_per_image: zero"))
    assert len(found) == 1 and found[0].startswith(f"{tmp_path / 'recipe.yaml'}:9: source.edits_per_image:")


def test_missing_folder_is_named(tmp_path: Path) -> None:
    text = GOOD.replace("  kind: skimage\n  photos: [astronaut, coffee]", "  kind: folder\n  folder: no/such/dir")
    found = problems(tmp_path, text)
    assert len(found) == 1
    assert found[0].startswith(f"{tmp_path / 'recipe.yaml'}:8: source.folder:") and "no such folder" in found[0]


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="file not found"):
        load_plan(tmp_path / "absent.yaml")


def test_bad_yaml_names_line(tmp_path: Path) -> None:
    found = problems(tmp_path, GOOD.replace("  - kind: classical", "  - kind: classical\n   bad: [unclosed"))
    assert len(found) == 1
    assert "not valid YAML" in found[0]
    assert found[0].startswith(f"{tmp_path / 'recipe.yaml'}:13: not valid YAML")


def test_unknown_kind_lists_known(tmp_path: Path) -> None:
    found = problems(tmp_path, GOOD.replace("  - kind: classical", "  - kind: clasical"))
    assert found[0].startswith(f"{tmp_path / 'recipe.yaml'}:12: stages[1].kind: unknown kind 'clasical'")
    assert "classical" in found[0]


def test_all_problems_reported_together(tmp_path: Path) -> None:
    text = GOOD.replace("    backend: template", "    backend: templat") + "  - kind: nope\n"
    found = problems(tmp_path, text)
    assert len(found) == 2 and ":11: stages[0].backend" in found[0] and ":13: stages[2].kind" in found[1]


def test_missing_filter_chain(tmp_path: Path) -> None:
    found = problems(tmp_path, GOOD + "filters: [nonexistent]\n")
    assert found[0].startswith(f"{tmp_path / 'recipe.yaml'}:13: filters[0]: no filter chain 'nonexistent'")


def test_filter_chain_errors_name_the_chain_file(tmp_path: Path) -> None:
    (tmp_path / "filters").mkdir()
    (tmp_path / "filters" / "mine.yaml").write_text("stages:\n  - kind: pixel_change\n    min_l1: lots\n")
    found = problems(tmp_path, GOOD + "filters: [mine]\n")
    assert found[0].startswith(f"{tmp_path / 'filters' / 'mine.yaml'}:3: stages[0].min_l1:")


def test_resources_must_name_a_stage(tmp_path: Path) -> None:
    text = GOOD.replace("source:", "execution:\n  stages:\n    clasical: {batch_size: 2}\nsource:")
    found = problems(tmp_path, text)
    assert found[0].startswith(f"{tmp_path / 'recipe.yaml'}:8: execution.stages.clasical: no stage is named 'clasical'")


def test_output_escaping_root_is_refused(tmp_path: Path) -> None:
    found = problems(tmp_path, GOOD.replace("dir: out/t", "dir: ../../../etc/crispedit"))
    assert found[0].startswith(f"{tmp_path / 'recipe.yaml'}:4: output.dir: refused:")
    found = problems(tmp_path, GOOD.replace("dir: out/t", "dir: /etc/crispedit"))
    assert "refused" in found[0]


def test_fingerprint_ignores_placement_but_not_content(tmp_path: Path) -> None:
    base = load_plan(write_recipe(tmp_path, GOOD)).fingerprint
    moved = GOOD.replace("dir: out/t", "dir: out/elsewhere").replace("shard_size: 4", "shard_size: 9")
    assert load_plan(write_recipe(tmp_path, moved)).fingerprint == base
    assert load_plan(write_recipe(tmp_path, GOOD.replace("seed: 3", "seed: 4"))).fingerprint != base
    assert load_plan(write_recipe(tmp_path, GOOD), tiny=True).fingerprint == base  # no models in this recipe


def test_validate_cli_reports_without_loading_heavy_modules(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, GOOD.replace("seed: 3", "seed: 3\nsede: 4"))
    code = "import sys; from crispedit.cli import main; rc = main(['validate', sys.argv[1]]); " \
           "heavy = [m for m in ('torch', 'ray', 'diffusers', 'transformers') if m in sys.modules]; print('HEAVY', heavy); sys.exit(rc)"
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"{path}:3: sede: unknown key" in done.stderr
    assert "HEAVY []" in done.stdout
    ok = subprocess.run([sys.executable, "-m", "crispedit.cli", "validate", str(QUICKSTART)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "ok: quickstart" in ok.stdout
