"""The SDXL generator stages on tiny twins: candidates and their seeds, noise reuse, routing by task,
inpainting's paste-back, the IP-Adapter loaded through diffusers' loader, style edits."""

from __future__ import annotations

import numpy as np
import pytest

from crispedit.core.sample import Sample, sample_id
from crispedit.core.stage import BuildContext, Stage
from crispedit.engine.run import apply_stage
from crispedit.recipe.catalog import STAGES

CONTEXT = BuildContext(recipe_name="gen", fingerprint="gen", seed=0, tiny=True)


def make(kind: str, **params) -> Stage:
    cls = STAGES[kind]
    stage = cls(cls.Params.model_validate(params), CONTEXT)
    stage.setup()
    return stage


def item(i: int, side: int = 32, **fields) -> Sample:
    rng = np.random.default_rng(i)
    sample = Sample(id=sample_id("gen", i), index=i, source_ref=f"item{i}", source_caption="a red cat on the tree",
                    target_caption="a blue cat on the tree", edit_objects=["cat"],
                    source_image=rng.integers(0, 255, (side, side, 3), dtype=np.uint8))
    for key, value in fields.items():
        setattr(sample, key, value)
    return sample


def square_mask(side: int = 32) -> np.ndarray:
    mask = np.zeros((side, side), np.uint8)
    mask[8:24, 8:24] = 255
    return mask


def test_sources_fan_out_into_candidates_with_distinct_recorded_seeds_and_keyword_masks() -> None:
    stage = make("sdxl_source", base_model="tiny", candidates=3, keyword_mask="optional", mask_dilate=2)
    out = apply_stage(stage, "sdxl_source", [item(0), item(1, edit_objects=["rocket"])], batch_size=8)
    assert [s.parent_id for s in out] == [item(0).id] * 3 + [item(1).id] * 3
    seeds = [s.provenance["sdxl_source"]["seed"] for s in out]
    assert len(set(seeds)) == 6 and seeds[0] == out[0].seed("noise")
    assert all(s.source_image.shape == (64, 64, 3) for s in out)  # --tiny: 1024 px becomes 64
    assert not np.array_equal(out[0].source_image, out[1].source_image)
    assert out[0].mask is not None and out[0].mask.dtype == np.uint8 and out[0].provenance["sdxl_source"]["keywords"] == {"cat": [3]}  # BOS a red cat
    assert out[3].mask is None  # "rocket" is not in the caption: no mask (optional)
    assert out[0].meta["sdxl_source"] == {"seed": seeds[0], "height": 64, "width": 64, "model": "tiny"}
    required = make("sdxl_source", base_model="tiny", keyword_mask="required")
    refused = apply_stage(required, "sdxl_source", [item(1, edit_objects=["rocket"])], batch_size=8)
    assert refused[0].reject.reason == "no keyword: the caption names none of ['rocket']"


def test_p2p_redraws_the_recorded_source_and_only_its_tasks() -> None:
    sources = apply_stage(make("sdxl_source", base_model="tiny", max_batch=2), "sdxl_source", [item(0), item(1, task="style")], 8)
    p2p = make("p2p", base_model="tiny", tasks=["color"], max_batch=1, self_fraction=[0.2, 0.8])
    for s in sources:
        s.task = s.task or "color"
    drawn = [s.source_image for s in sources]
    out = apply_stage(p2p, "p2p", sources, batch_size=8)
    colour, style = out
    assert colour.branch == "t2i-p2p" and colour.target_image is not None
    record = colour.provenance["p2p"]
    assert record["noise"] == "sdxl_source" and record["seed"] == sources[0].meta["sdxl_source"]["seed"]
    assert record["source_max_diff"] <= 1 and np.abs(colour.source_image.astype(int) - drawn[0]).mean() < 0.01
    assert 0.2 <= record["self_fraction"] <= 0.8 and record["alignment"] == "replace" and record["steps"] == 3
    assert style.target_image is None and "p2p" not in style.provenance  # not its task: untouched
    with pytest.raises(ValueError):
        STAGES["p2p"].Params.model_validate({"self_fraction": [0.9, 0.1]})


def test_p2p_requires_a_mask_when_told_and_checks_its_size() -> None:
    stage = make("p2p", base_model="tiny", mask="required", noise="own")
    assert "mask" in stage.inputs()
    out = apply_stage(stage, "p2p", [item(0), item(1, mask=square_mask(32))], batch_size=8)
    assert out[0].reject.reason == "missing input: no mask"
    assert out[1].reject.reason.startswith("mask size:")  # a 32 px mask for a 64 px pair


def test_p2p_reference_mode_with_local_blend_per_word_windows_and_reweighting() -> None:
    stage = make("p2p", base_model="tiny", noise="own", control="reference", cross_words={"blue": 0.3}, reweight={"blue": 2.0},
                 local_blend=True, local_blend_threshold=0.97, local_blend_map_side=4)
    masked, free = apply_stage(stage, "p2p", [item(0, mask=square_mask(64)), item(1)], batch_size=8)
    assert masked.provenance["p2p"]["control"] == "reference" and "local_blend" not in masked.provenance["p2p"]  # a mask: no LocalBlend
    record = free.provenance["p2p"]
    assert record["alignment"] == "replace" and record["local_blend"]["steps"] == 3 and 0 < record["local_blend"]["coverage"] < 1
    with pytest.raises(ValueError, match="one word"):
        STAGES["p2p"].Params.model_validate({"cross_words": {"red cat": 0.5}})
    with pytest.raises(ValueError):
        STAGES["p2p"].Params.model_validate({"cross_words": {"cat": [0.8, 0.2]}})


def test_inpainting_pastes_back_the_source_outside_the_mask() -> None:
    mask = square_mask()
    out = apply_stage(make("inpaint", inpaint_model="tiny", paste_back=True), "inpaint", [item(0, mask=mask)], batch_size=4)[0]
    outside = mask == 0
    assert out.branch == "inpaint" and np.array_equal(out.target_image[outside], out.source_image[outside])
    assert not np.array_equal(out.target_image[~outside], out.source_image[~outside])
    assert out.provenance["inpaint"]["strength"] == 0.9999 and out.provenance["inpaint"]["models"] == {"inpaint_model": "tiny"}


def test_the_ip_adapter_loads_through_diffusers_and_changes_the_refinement() -> None:
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    stage = make("refine", base_model="tiny", controlnet_model="tiny", ip_adapter_model="tiny", candidates=2)
    processors = stage.masked.unet.attn_processors
    assert sum(isinstance(p, IPAdapterAttnProcessor2_0) for p in processors.values()) == len(processors) // 2
    assert stage.masked.image_encoder is not None and stage.whole.unet is stage.masked.unet
    source = item(0, target_image=item(5).source_image, mask=square_mask())
    first = apply_stage(stage, "refine", [source.clone()], batch_size=4)
    assert [s.provenance["refine"]["seed"] for s in first] == [first[0].seed("noise"), first[1].seed("noise")]
    assert first[0].provenance["refine"]["seed"] != first[1].provenance["refine"]["seed"]
    assert not np.array_equal(first[0].target_image, first[1].target_image)  # distinct seeds, distinct images
    stage.masked.set_ip_adapter_scale(0.0)
    try:
        without = apply_stage(stage, "refine", [source.clone()], batch_size=4)
    finally:
        stage.masked.set_ip_adapter_scale(1.0)
    assert np.abs(without[0].target_image.astype(int) - first[0].target_image).max() > 0
    # another source image changes the result too: the adapter reads the source
    other = apply_stage(stage, "refine", [item(0, source_image=item(7).source_image, target_image=item(5).source_image, mask=square_mask())], 4)
    assert np.abs(other[0].target_image.astype(int) - first[0].target_image).max() > 0
    whole = apply_stage(stage, "refine", [item(0, target_image=item(5).source_image)], batch_size=4)[0]
    assert whole.provenance["refine"]["region"] == "whole" and whole.target_image.shape == (32, 32, 3)


def test_the_derived_pipelines_keep_the_recipes_half_precision() -> None:
    """diffusers' from_pipe casts the modules it shares to float32 unless told otherwise; the refine stage's
    whole-image and realistic pipelines share the masked one's modules, so all three stay in the recipe's dtype."""
    import torch

    stage = make("refine", base_model="tiny", controlnet_model="tiny", ip_adapter_model="tiny", dtype="bfloat16",
                 realistic={"strength": 0.6})
    for pipe in (stage.masked, stage.whole, stage.realistic):
        dtypes = {name: module.dtype for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}
        assert set(dtypes.values()) == {torch.bfloat16}, dtypes


@pytest.mark.slow  # ~7 s: three refine stages on the tiny twins
def test_the_realistic_pass_changes_the_target_reproducibly_and_off_leaves_it_alone() -> None:
    """EditWorld's final img2img pass: the target changes, the recorded seed gives the same bytes again, and
    with the pass off the refine output is what it was (the IP-Adapter is back after the pass)."""
    models = {"base_model": "tiny", "controlnet_model": "tiny", "ip_adapter_model": "tiny"}
    plain, realistic = make("refine", **models), make("refine", **models, realistic={"strength": 0.6})
    source = item(0, target_image=item(5).source_image, mask=square_mask())
    before = apply_stage(plain, "refine", [source.clone()], batch_size=4)[0]
    first = apply_stage(realistic, "refine", [source.clone()], batch_size=4)[0]
    again = apply_stage(realistic, "refine", [source.clone()], batch_size=4)[0]
    assert np.abs(first.target_image.astype(int) - before.target_image).max() > 0
    assert np.array_equal(first.target_image, again.target_image)
    record = first.provenance["refine"]["realistic"]
    assert record == {"strength": 0.6, "steps": 3, "guidance_scale": 5.0, "prompt": "a blue cat on the tree, realistic",
                      "seed": first.provenance["refine"]["seed"]}
    assert "realistic" not in before.provenance["refine"] and plain.params.realistic is None
    # the pass switches the IP-Adapter off for its call only: the refinement alone still gives its bytes
    realistic.params = realistic.params.model_copy(update={"realistic": None})
    after = apply_stage(realistic, "refine", [source.clone()], batch_size=4)[0]
    assert np.array_equal(after.target_image, before.target_image)
    other = apply_stage(make("refine", **models, realistic={"strength": 0.6, "suffix": ", a painting"}), "refine", [source.clone()], 4)[0]
    assert np.abs(other.target_image.astype(int) - first.target_image).max() > 0  # the suffix reaches the prompt


@pytest.mark.parametrize("method", ["controlnet", "img2img"])
def test_style_edits_keep_the_source_size_and_record_the_method(method: str) -> None:
    stage = make("style", base_model="tiny", controlnet_model="tiny", method=method, strength=0.7)
    out = apply_stage(stage, "style", [item(0, side=40)], batch_size=4)[0]
    assert out.branch == "style" and out.target_image.shape == (40, 40, 3)
    record = out.provenance["style"]
    assert record["method"] == method and ("strength" in record) == (method == "img2img")
    assert ("controlnet_model" in stage.model_ids()) == (method == "controlnet")


def test_model_dtype_belongs_on_the_stage_and_missing_inputs_reject() -> None:
    with pytest.raises(ValueError, match="dtype"):
        STAGES["style"].Params.model_validate({"base_model": {"id": "x", "dtype": "float16"}})
    out = apply_stage(make("style", base_model="tiny", controlnet_model="tiny"), "style", [item(0, target_caption=None)], 4)
    assert out[0].reject.reason == "missing input: no target_caption"
