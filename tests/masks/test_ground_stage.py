"""The ``ground`` stage with tiny twins: soft masks in ``sample.mask``, rejects with reasons."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from crispedit.core.sample import Sample
from crispedit.core.stage import BuildContext
from crispedit.core.stats import stage_stats
from crispedit.engine.run import apply_stage
from crispedit.masks import soft
from crispedit.masks.stages.ground import GroundParams, GroundStage
from crispedit.models.pins import PINS

CONTEXT = BuildContext(recipe_name="ground-test", fingerprint="f" * 16, seed=7, tiny=True)


def make_stage(**overrides: object) -> GroundStage:
    params = GroundParams(detector_model="tiny", segmenter_model="tiny", **overrides)
    stage = GroundStage(params, CONTEXT)
    stage.setup()
    return stage


def make_sample(index: int, image: np.ndarray, objects: list[str]) -> Sample:
    return Sample(id=f"s{index}", index=index, source_ref=f"drawn:{index}", source_image=image, edit_objects=objects)


def test_defaults_are_the_upstream_values_and_unknown_keys_fail() -> None:
    params = GroundParams()
    assert (params.box_threshold, params.text_threshold) == (0.3, 0.25)
    assert params.detector_model.id == "IDEA-Research/grounding-dino-base"
    assert params.segmenter_model.id == "facebook/sam-vit-huge"
    with pytest.raises(ValidationError):
        GroundParams(box_treshold=0.2)
    with pytest.raises(ValidationError):
        GroundParams(box_threshold=1.5)


def test_stage_writes_the_soft_mask_and_is_deterministic(drawn_image: np.ndarray) -> None:
    overrides = dict(clip_masks_to_boxes=True, dilate_radius=3, blur_sigma=1.0, smooth_weight=1.0, box_weight=1.0)
    samples = [make_sample(0, drawn_image, ["cat"]), make_sample(1, drawn_image, ["NONE"])]
    out = make_stage(**overrides)(samples)
    assert out == samples and all(s.alive for s in out)
    cat, whole = out
    assert cat.mask.shape == (96, 128) and cat.mask.dtype == np.uint8
    precise = cat.meta["precise_mask"]
    boxes = [b for bs in cat.meta["boxes"].values() for b in bs]
    expected = soft.soft_mask(precise, boxes, dilate_radius=3, blur_sigma=1.0, weights=soft.SoftMaskWeights(0, 1, 1, 0))
    np.testing.assert_array_equal(cat.mask, soft.to_uint8(expected))
    assert set(cat.meta["boxes"]) == {"cat"} and 0.3 < cat.scores["ground_score"] <= 1.0
    assert np.all(whole.mask == 255) and whole.meta["whole_image"] is True
    # a fresh stage with the same recipe seed gives the same bytes
    again = make_stage(**overrides)([make_sample(0, drawn_image, ["cat"])])[0]
    np.testing.assert_array_equal(again.mask, cat.mask)
    assert again.meta["boxes"] == cat.meta["boxes"]


def test_missing_keyword_and_missing_image_are_rejects_not_crashes(drawn_image: np.ndarray) -> None:
    stage = make_stage(box_threshold=1.0)
    samples = [
        make_sample(0, drawn_image, ["cat", "red hat"]),
        Sample(id="s1", index=1, source_ref="x", edit_objects=["cat"]),
        make_sample(2, drawn_image, []),
    ]
    samples = apply_stage(stage, "ground", samples, batch_size=8)
    stats = stage_stats(samples)["ground"]
    assert samples[0].reject.reason == "no detection: 'cat', 'red hat'"
    assert samples[1].reject.reason.startswith("missing image:")
    assert samples[2].alive  # a global edit needs no detection
    assert stats.to_dict()["rejected"] == {"missing image": 1, "no detection": 1}
    assert stats.passed == 1


def test_model_ids_and_score_columns_are_declared() -> None:
    stage = GroundStage(GroundParams(detector_model={"id": "org/dino", "revision": "abc"}), CONTEXT)
    assert stage.model_ids() == {"detector_model": "org/dino@abc", "segmenter_model": f"facebook/sam-vit-huge@{PINS['facebook/sam-vit-huge']}"}
    assert stage.score_columns() == ["ground_score"]
