"""Which bundled filter chains can ``crispedit refilter`` apply to which bundled recipe's build, read from the plans.

refilter computes no score: a chain is refused on a build that did not score what the chain decides on. This pins,
recipe by recipe, the columns each bundled chain needs and the build lacks, so a recipe change that loses a score
(or a preset that starts deciding on a new one) fails here, and every gap that remains is one listed with its reason.
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
DINO_MASK = {"dino_i", "mask_contours", "mask_coverage"}
#: The gaps that remain, and why. mllm_judge needs an LLM endpoint no bundled recipe can assume; instruct_llm makes
#: edit specifications only (no image pairs); editor and reedit decide by pixel change and the judge (no CLIP), and reedit
#: keeps an old target that may be the better one (no pixel_l1 floor); quickstart, crispedit, ground and dit4edit load no CLIP (quickstart and
#: ground are the model-light demos); style, world and quickstart make global edits without masks, so UltraEdit's mask
#: rule has nothing to decide on; multi_turn's turns are global classical edits (no masks) either.
GAPS: dict[str, dict[str, set[str]]] = {
    "crispedit": {"ip2p": CLIP, "ultraedit": {"clip_dir", "clip_i"} | DINO_MASK},
    "dit4edit": {"ip2p": CLIP, "ultraedit": {"clip_dir", "clip_i", "dino_i"}},
    "editor": {"ip2p": CLIP, "ultraedit": {"clip_dir", "clip_i"} | DINO_MASK},
    "ground": {"ip2p": CLIP, "ultraedit": {"clip_dir", "clip_i", "dino_i"}},
    "instruct_llm": {"basic": {"pixel_l1"}, "ip2p": CLIP, "ultraedit": {"clip_dir", "clip_i"} | DINO_MASK},
    "multi_turn": {"ultraedit": {"mask_contours", "mask_coverage"}},
    "quickstart": {"ip2p": CLIP, "ultraedit": {"clip_dir", "clip_i"} | DINO_MASK},
    "reedit": {"basic": {"pixel_l1"}, "ip2p": CLIP, "ultraedit": {"clip_dir", "clip_i"} | DINO_MASK},
    "style": {"ultraedit": {"mask_contours", "mask_coverage"}},
    "video": {"ultraedit": {"mask_contours", "mask_coverage"}},
    "world": {"ultraedit": {"mask_contours", "mask_coverage"}},
}


def needed(preset: str) -> set[str]:
    """The columns refilter requires of a build for this chain (as crispedit.ops.refilter.new_chain checks)."""
    out: set[str] = set()
    for raw in _read_chain_file(find_preset("filters", preset)):
        cls = STAGES[raw["kind"]]
        params = cls.Params.model_validate({k: v for k, v in raw.items() if k not in ("kind", "name")}, context={"recipe_dir": Path.cwd()})
        stage = cls(params, CONTEXT, raw["kind"])
        out |= set(stage.thresholds()) or set(stage.score_columns())
    return out


def scored(recipe: str, folder: Path) -> set[str]:
    """Every score column the recipe's filter stages write (video's clip folder made empty where the plan looks)."""
    text = (RECIPES / f"{recipe}.yaml").read_text(encoding="utf-8")
    if recipe == "video":
        (folder / "clips").mkdir()
        text = text.replace("folder: out/video_demo/videos", f"folder: {folder / 'clips'}")
    plan = load_plan(write_recipe(folder, text, f"{recipe}.yaml"), tiny=True, out=folder / "out")
    stages = [STAGES[e.kind](e.params, CONTEXT, e.name) for e in plan.stages]
    return {c for s in stages if isinstance(s, FilterStage) for c in s.score_columns()}


@pytest.mark.parametrize("recipe", sorted(p.stem for p in RECIPES.glob("*.yaml")))
def test_each_recipe_scores_what_each_bundled_chain_decides_on_but_the_listed_gaps(recipe: str, tmp_path: Path) -> None:
    have = scored(recipe, tmp_path)
    gaps = {preset: missing for preset in bundled("filters") if preset != "mllm_judge" and (missing := needed(preset) - have)}
    assert gaps == GAPS.get(recipe, {})
    if recipe != "reedit":  # reedit's point is judging old and new targets (GPT-Image-Edit's approach): it needs an endpoint
        assert not {"judge_semantics", "judge_quality"} & have  # no other recipe needs an LLM judge endpoint to build


def test_style_and_world_score_dino_i_for_ultraedit(tmp_path: Path) -> None:
    for recipe in ("style", "world"):
        (tmp_path / recipe).mkdir()
        assert {"dino_i", "clip_dir", "clip_i"} <= scored(recipe, tmp_path / recipe)
