"""Which bundled filter chains can ``crispedit refilter`` apply to which bundled recipe's build, read from the plans.

refilter computes no score: a chain is refused on a build that did not score what the chain decides on, except where
the chain's rule does not apply to the build's pairs (UltraEdit's mask rule, ``unmasked: keep``, on a build that makes
no masks: every pair global). This pins, recipe by recipe, the columns each bundled chain needs and the build lacks, so
a recipe change that loses a score (or a preset that starts deciding on a new one) fails here, and every gap that remains
is one listed with its reason. tests/engine/test_every_recipe_on_ray.py runs the real builds and refilters them (tests/helpers/presets_on_builds.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from crispedit.core.presets import bundled, find_preset
from crispedit.core.stage import BuildContext, FilterStage
from crispedit.ops.refilter import _read_chain_file
from crispedit.recipe import load_plan
from crispedit.recipe.catalog import STAGES
from tests.helpers.recipes import RECIPES, write_recipe

CONTEXT = BuildContext("presets", "presets", 0)
CLIP = {"clip_dir", "clip_i", "clip_t_source", "clip_t_target"}
ULTRAEDIT_CLIP = {"clip_dir", "clip_i", "dino_i"}
#: A pair as a build without masks stores it.
UNMASKED = {"source_image", "target_image"}
#: The recipes with a stage that writes masks: there UltraEdit's mask rule applies, so they score the masks.
MAKES_MASKS = {"crispedit", "dit4edit", "ground", "world"}
#: The gaps that remain, and why. mllm_judge needs an LLM endpoint no bundled recipe can assume (not checked here);
#: instruct_llm makes edit specifications only (no image pairs, nothing to score); quickstart is the model-free demo
#: (`make quickstart` builds it offline on a CPU without --tiny, so it cannot load CLIP or DINOv2); reedit's pairs come
#: from a dataset without captions, which CLIP's text and directional scores need. UltraEdit's mask rule is no gap
#: where the recipe makes no masks: it applies to region edits only.
GAPS: dict[str, dict[str, set[str]]] = {
    "instruct_llm": {"basic": {"pixel_l1"}, "ip2p": CLIP, "ultraedit": ULTRAEDIT_CLIP},
    "quickstart": {"ip2p": CLIP, "ultraedit": ULTRAEDIT_CLIP},
    "reedit": {"ip2p": CLIP, "ultraedit": ULTRAEDIT_CLIP},
}


def needed(preset: str, masks: bool) -> set[str]:
    """The columns refilter requires of a build for this chain (as crispedit.ops.refilter checks them): none of a
    stage whose rule does not apply to an unmasked pair when the build makes no masks."""
    out: set[str] = set()
    for raw in _read_chain_file(find_preset("filters", preset)):
        cls = STAGES[raw["kind"]]
        params = cls.Params.model_validate({k: v for k, v in raw.items() if k not in ("kind", "name")}, context={"recipe_dir": Path.cwd()})
        stage = cls(params, CONTEXT, raw["kind"])
        if not masks and stage.not_applicable(UNMASKED) is not None:
            continue
        out |= set(stage.thresholds()) or set(stage.score_columns())
    return out


def scored(recipe: str, folder: Path) -> tuple[set[str], bool]:
    """Every score column the recipe's filter stages write, and whether any stage writes a mask (video's clip folder
    made empty where the plan looks)."""
    text = (RECIPES / f"{recipe}.yaml").read_text(encoding="utf-8")
    if recipe == "video":
        (folder / "clips").mkdir()
        text = text.replace("folder: out/video_demo/videos", f"folder: {folder / 'clips'}")
    plan = load_plan(write_recipe(folder, text, f"{recipe}.yaml"), tiny=True, out=folder / "out")
    stages = [STAGES[e.kind](e.params, CONTEXT, e.name) for e in plan.stages]
    return {c for s in stages if isinstance(s, FilterStage) for c in s.score_columns()}, any("mask" in s.outputs() for s in stages)


@pytest.mark.parametrize("recipe", sorted(p.stem for p in RECIPES.glob("*.yaml")))
def test_each_recipe_scores_what_each_bundled_chain_decides_on_but_the_listed_gaps(recipe: str, tmp_path: Path) -> None:
    have, masks = scored(recipe, tmp_path)
    gaps = {preset: missing for preset in bundled("filters") if preset != "mllm_judge" and (missing := needed(preset, masks) - have)}
    assert gaps == GAPS.get(recipe, {})
    if recipe != "reedit":  # reedit's point is judging old and new targets (GPT-Image-Edit's approach): it needs an endpoint
        assert not {"judge_semantics", "judge_quality"} & have  # no other recipe needs an LLM judge endpoint to build


def test_style_and_world_score_dino_i_for_ultraedit(tmp_path: Path) -> None:
    for recipe in ("style", "world"):
        (tmp_path / recipe).mkdir()
        assert {"dino_i", "clip_dir", "clip_i"} <= scored(recipe, tmp_path / recipe)[0]


def test_only_the_recipes_that_make_masks_escape_no_mask_rule(tmp_path: Path) -> None:
    """UltraEdit's mask rule is waived only where no stage writes a mask; where one does, the build scores the masks."""
    makes = set()
    for path in sorted(RECIPES.glob("*.yaml")):
        (tmp_path / path.stem).mkdir()
        have, masks = scored(path.stem, tmp_path / path.stem)
        if masks:
            makes.add(path.stem)
            assert {"mask_coverage", "mask_contours"} <= have, path.stem
    assert makes == MAKES_MASKS
