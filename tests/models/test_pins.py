"""Every model a built-in recipe (or a stage's default, or the trainer's default) can load is pinned to a commit."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from crispedit.mgt.config import ModelConfig
from crispedit.models.pins import PINS
from crispedit.models.spec import ModelSpec
from crispedit.recipe import load_plan

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
COMMIT = re.compile(r"[0-9a-f]{40}")


def _specs(value: object) -> list[ModelSpec]:
    """Every ModelSpec inside a parsed params object (fields, lists, dicts)."""
    if isinstance(value, ModelSpec):
        return [value]
    if isinstance(value, BaseModel):
        return [s for name in type(value).model_fields for s in _specs(getattr(value, name))]
    if isinstance(value, list | tuple):
        return [s for item in value for s in _specs(item)]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _specs(item)]
    return []


@pytest.mark.parametrize("recipe", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_every_model_of_a_recipe_loads_at_a_commit(recipe: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out" / "video_demo" / "videos").mkdir(parents=True)  # the video recipe's source folder (made by its demo)
    plan = load_plan(RECIPES / recipe)
    for stage in plan.stages:
        for spec in _specs(stage.params):
            assert spec.revision is not None and COMMIT.fullmatch(spec.revision), f"{recipe}: {stage.name}: {spec.id} is not pinned"
            if spec.id in PINS:
                assert spec.revision == PINS[spec.id], f"{recipe}: {stage.name}: {spec.id} at {spec.revision}, the verified pin is {PINS[spec.id]}"


def test_a_known_id_gets_its_pin_and_an_explicit_revision_wins() -> None:
    assert ModelSpec.model_validate("IDEA-Research/grounding-dino-base").revision == PINS["IDEA-Research/grounding-dino-base"]
    assert ModelSpec(id="facebook/sam-vit-huge", revision="main").revision == "main"
    assert ModelSpec(id="/data/my-checkpoint").revision is None  # a local folder has no Hub revision
    assert ModelSpec(id="tiny").revision is None


def test_the_trainers_default_components_are_pinned() -> None:
    config = ModelConfig()
    for component in (config.vq, config.clip, config.llm):
        assert component.revision == PINS[component.id]
