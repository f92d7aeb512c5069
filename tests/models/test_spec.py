"""--tiny swaps every model spec for a twin of the same class; real specs go to the loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from crispedit.models.loading import load_model
from crispedit.models.spec import TWINS, ModelSpec, register_twin, tiny_swap
from crispedit.recipe import load_plan
from tests.helpers.recipes import RECIPES, write_recipe


def test_tiny_swap_rewrites_every_model_spec_and_nothing_else() -> None:
    recipe = {
        "name": "x",
        "stages": [
            {"kind": "ground", "detector_model": {"id": "IDEA-Research/grounding-dino-base", "revision": "abc"}, "box_threshold": 0.3},
            {"kind": "judge", "model": "gpt-4o", "model_prompt": "keep"},
            {"kind": "gen", "unet_model": {"id": "stabilityai/sdxl", "revision": "main"}, "notes": {"model_card": "text"}},
        ],
    }
    swapped = tiny_swap(recipe)
    assert swapped["stages"][0]["detector_model"] == {"id": "tiny", "revision": None}
    assert swapped["stages"][0]["box_threshold"] == 0.3
    assert swapped["stages"][1]["model"] == "tiny"
    assert swapped["stages"][2]["unet_model"] == {"id": "tiny", "revision": None}
    assert swapped["stages"][2]["notes"] == {"model_card": "text"}
    assert recipe["stages"][0]["detector_model"]["id"] == "IDEA-Research/grounding-dino-base"  # input untouched


def test_load_model_builds_the_twin_or_calls_the_loader() -> None:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    @register_twin("test-clip-text")
    def _twin(seed: int) -> CLIPTextModel:
        torch.manual_seed(seed)
        return CLIPTextModel(CLIPTextConfig(vocab_size=64, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2))

    try:
        a = load_model(ModelSpec.model_validate("tiny"), "test-clip-text", load=pytest.fail, seed=1)
        b = load_model(ModelSpec(id="tiny"), "test-clip-text", load=pytest.fail, seed=1)
        assert type(a) is CLIPTextModel
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
        calls: list[tuple[str, dict]] = []
        load_model(ModelSpec(id="openai/clip-vit-large-patch14", revision="r1"), "test-clip-text", load=lambda i, **kw: calls.append((i, kw)))
        assert calls == [("openai/clip-vit-large-patch14", {"revision": "r1"})]
        with pytest.raises(KeyError, match="no tiny twin registered as 'nope'"):
            load_model(ModelSpec(id="tiny"), "nope", load=pytest.fail)
    finally:
        TWINS.pop("test-clip-text", None)


def test_tiny_changes_the_fingerprint_of_a_recipe_with_models(tmp_path: Path) -> None:
    text = (RECIPES / "ground.yaml").read_text()
    path = write_recipe(tmp_path, text)
    real, tiny = load_plan(path), load_plan(path, tiny=True)
    assert real.fingerprint != tiny.fingerprint
    dumped = str([s.params for s in tiny.stages])
    assert "grounding-dino-base" not in dumped and "id='tiny'" in dumped
