"""What a build says about itself comes from manifest["stages"]: an ``include:`` in the middle of
the stages is expanded there, so the card, the preview and the histograms list its stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crispedit.cli import main
from crispedit.engine import build
from crispedit.ops.build_info import read_build
from crispedit.recipe import load_plan
from tests.helpers.recipes import RECIPES, write_recipe

INCLUDED = """\
name: included
seed: 1
output: {dir: out, shard_size: 4}
source: {kind: skimage, photos: [astronaut, chelsea, coffee, rocket], max_side: 64}
stages:
  - kind: instruct
  - kind: classical
  - include: basic
"""


def describes_pixel_change(out: Path) -> None:
    """The card, the preview and the histograms of ``out`` all name pixel_change with basic.yaml's bounds."""
    from crispedit.publish.card import render_card
    from crispedit.publish.preview import write_preview

    info = read_build(out)
    assert "None" not in [s.name for s in info.stages]
    stage = next(s for s in info.stages if s.name == "pixel_change")
    assert stage.thresholds == {"pixel_l1": (0.01, 0.9)}
    assert info.thresholds["pixel_l1"] == (0.01, 0.9)
    card = render_card(info, [], out / "card-assets")
    row = next(line for line in card.splitlines() if line.startswith("| pixel\\_change |"))  # the card escapes Markdown
    assert "pixel_l1 in [0.01, 0.9]" in row
    page = write_preview(out, pairs=2, folder=out.parent / "preview-test").folder / "data.js"  # a folder outside the build
    data = json.loads(page.read_text().removeprefix("window.CRISPEDIT_PREVIEW = ").rstrip().rstrip(";"))
    pipeline = {s["name"]: s for s in data["pipeline"]}
    assert pipeline["pixel_change"]["thresholds"] == {"pixel_l1": [0.01, 0.9]}
    assert (out / "hist-pixel_l1.png").is_file()  # drawn by the build, with the bounds above


def test_an_include_between_stages_is_described_as_it_ran(tmp_path: Path) -> None:
    out = tmp_path / "out"
    build(load_plan(write_recipe(tmp_path, INCLUDED), out=out), runner="local", progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["name"] for s in manifest["stages"]] == ["instruct", "classical", "pixel_change"]
    describes_pixel_change(out)


def test_a_build_without_manifest_stages_falls_back_to_its_recipe(tmp_path: Path) -> None:
    """Builds made before the manifest listed the stages: the recipe, chains expanded by name."""
    out = tmp_path / "out"
    build(load_plan(write_recipe(tmp_path, INCLUDED), out=out), runner="local", progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["stages"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    describes_pixel_change(out)


@pytest.mark.slow
def test_the_style_recipe_is_described_with_its_pixel_filter(tmp_path: Path) -> None:
    """recipes/style.yaml includes `basic` between its stages (the phantom stage `None` was its symptom)."""
    out = tmp_path / "style"
    assert main(["build", str(RECIPES / "style.yaml"), "--tiny", "--runner", "local", "--out", str(out), "--no-progress"]) == 0
    describes_pixel_change(out)
