"""``crispedit refilter`` with every bundled chain on a real ``--tiny`` build of every bundled recipe that makes pairs.

tests/recipe/test_recipe_presets.py reads the plans; tests/engine/test_every_recipe_on_ray.py builds each recipe
(one shard of two items, on Ray and in-process) and hands the in-process build to :func:`assert_bundled_chains`,
which refilters it with each bundled chain (one build per recipe serves both checks). A chain is applied where the plans say the build scored what it decides
on, and refused, naming the missing columns, where they list a gap; an applied chain keeps only rows within its
bounds (its mask rule waived only on pairs without a mask, and counted), and loses no row.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from crispedit.core.presets import bundled, find_preset
from crispedit.core.stage import FilterStage
from crispedit.ops.refilter import RefilterError, _read_chain_file, refilter
from crispedit.recipe.catalog import STAGES
from tests.helpers.recipes import RECIPES
from tests.helpers.stage_cases import write_edit_dataset
from tests.recipe.test_recipe_presets import CONTEXT, GAPS, MAKES_MASKS

ITEMS = 2
#: instruct_llm makes edit specifications, no pairs: nothing to refilter.
PAIRS = sorted(p.stem for p in RECIPES.glob("*.yaml") if p.stem != "instruct_llm")
#: Only reedit judges with an LLM (the tiny judge under --tiny), so only its build has what mllm_judge decides on.
JUDGED = {"reedit"}


def prepared(recipe: str, folder: Path) -> Path:
    """The recipe, with what its header says to make first (video's clips, reedit's dataset) made in ``folder``."""
    path = RECIPES / f"{recipe}.yaml"
    text = path.read_text(encoding="utf-8")
    if recipe == "video":
        from crispedit.video import demo

        demo.write_demo(folder / "videos")
        text = text.replace("folder: out/video_demo/videos", f"folder: {folder / 'videos'}")
    elif recipe == "reedit":
        write_edit_dataset(folder / "edits", ITEMS)
        text = text.replace("files: [data/reedit]", f"files: [{folder / 'edits'}]")
    else:
        return path
    path = folder / f"{recipe}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def rows(out: Path, kind: str = "data") -> list[dict]:
    return [r for f in sorted((out / kind).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


def chain(preset: str) -> list[FilterStage]:
    out = []
    for raw in _read_chain_file(find_preset("filters", preset)):
        cls = STAGES[raw["kind"]]
        params = cls.Params.model_validate({k: v for k, v in raw.items() if k not in ("kind", "name")}, context={"recipe_dir": Path.cwd()})
        out.append(cls(params, CONTEXT, raw["kind"]))
    return out


def gap(recipe: str, preset: str) -> set[str]:
    if preset == "mllm_judge":
        return set() if recipe in JUDGED else {"judge_quality", "judge_semantics"}
    return GAPS.get(recipe, {}).get(preset, set())


def assert_bundled_chains(recipe: str, out: Path, tmp_path: Path) -> None:
    """Refilter the build ``out`` of ``recipe`` with every bundled chain: applied, or refused naming only listed gaps."""
    data, rejects = rows(out), rows(out, "rejects")
    assert data or rejects
    for preset in sorted(bundled("filters")):
        target = tmp_path / f"refilter-{preset}"
        missing = gap(recipe, preset)
        if missing:
            with pytest.raises(RefilterError, match="which the build did not score") as refused:
                refilter(out, preset, target, plots=False)
            named = str(refused.value).split(" decides on ")[1].split(", which")[0].split(", ")
            assert set(named) <= missing, (preset, named)
            continue
        report = refilter(out, preset, target, plots=False)
        kept, dropped = rows(target), rows(target, "rejects")
        assert len(kept) + len(dropped) == len(data) + len(rejects), preset  # nothing lost, nothing made up
        assert report["rows"] == len(kept)
        waived = 0
        for row in kept:
            stored = {c for c in ("source_image", "target_image", "mask") if row.get(c) is not None}
            for stage in chain(preset):
                if stage.not_applicable(stored) is not None:
                    waived += 1
                    continue
                for column, (low, high) in stage.thresholds().items():
                    value = row[column]
                    assert value is not None and (low is None or value >= low) and (high is None or value <= high), (preset, column, value)
        found = report.get("not_applicable", {})
        assert sum(n for reasons in found.values() for n in reasons.values()) >= waived
        summary = json.loads((target / "summary.json").read_text())
        if preset == "ultraedit" and recipe not in MAKES_MASKS:  # every pair that reached the mask rule was waived
            assert summary["stages"]["mask_filter"]["seen"] == sum(found.get("mask_filter", {}).values())
            assert summary["stages"]["mask_filter"]["rejected"] == {}
    # UltraEdit's mask rule alone (the tiny scorers' random CLIP scores leave few pairs for it in the whole chain)
    rule = [raw for raw in _read_chain_file(find_preset("filters", "ultraedit")) if raw["kind"] == "mask_filter"]
    (tmp_path / "mask_rule.yaml").write_text(yaml.safe_dump({"stages": rule}), encoding="utf-8")
    report = refilter(out, tmp_path / "mask_rule.yaml", tmp_path / "refilter-mask-rule", plots=False)
    kept = rows(tmp_path / "refilter-mask-rule")
    waived = sum(report.get("not_applicable", {}).get("mask_filter", {}).values())
    if recipe in MAKES_MASKS:
        for row in kept:
            assert row["mask"] is None or 0.01 <= row["mask_coverage"] <= 0.9 and row["mask_contours"] <= 500
        assert waived >= sum(row["mask"] is None for row in kept)  # (a waived pair may fail a later filter)
    else:  # the build's own filters keep its rows; every one reaches the rule, which does not apply to it
        assert len(kept) == len(data) == waived
