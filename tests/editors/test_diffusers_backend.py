"""edit_model's diffusers backend on each pipeline's tiny twin (the real diffusers classes from small configs)."""

from __future__ import annotations

import numpy as np
import pytest

from crispedit.core.stage import BuildContext
from crispedit.editors.diffusers_backend import bucket
from crispedit.editors.edit_model import EditModelParams, EditModelStage
from crispedit.engine.run import apply_stage
from tests.helpers.stage_cases import pairs, photo

#: The Qwen twins take ~5 s each (a VL text encoder per call): slow; pix2pix and Kontext run in every sweep.
PIPELINES = ["StableDiffusionInstructPix2PixPipeline", "FluxKontextPipeline",
             pytest.param("QwenImageEditPipeline", marks=pytest.mark.slow), pytest.param("QwenImageEditPlusPipeline", marks=pytest.mark.slow)]


def editor(pipeline: str, max_batch: int = 2) -> EditModelStage:
    params = EditModelParams.model_validate({"candidates": 2, "diffusers": {"pipeline": pipeline, "max_batch": max_batch}})
    made = EditModelStage(params, BuildContext("t", "t", 0, tiny=True))
    made.setup()
    return made


def wide(n: int) -> list:
    """Pairs whose sources are 48x32 (a 3:2 photo), so buckets must keep the ratio."""
    out = pairs(n)
    for s in out:
        s.source_image = np.concatenate([photo(s.index), photo(s.index + 7)[:, :16]], axis=1)
    return out


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_each_twin_makes_seeded_candidates_the_same_bytes_again_and_batch_equals_one_by_one(pipeline: str) -> None:
    stage = editor(pipeline)
    together = [s for s in apply_stage(stage, "edit_model", wide(2), batch_size=8) if s.alive]
    alone = [s for s in apply_stage(stage, "edit_model", wide(2), batch_size=1) if s.alive]
    again = [s for s in apply_stage(editor(pipeline), "edit_model", wide(2), batch_size=8) if s.alive]
    assert len(together) == 4
    assert [s.target_image.tobytes() for s in together] == [s.target_image.tobytes() for s in alone] == [s.target_image.tobytes() for s in again]
    assert all(s.target_image.shape == s.source_image.shape for s in together)
    seeds = [s.provenance["edit_model"]["seed"] for s in together]
    assert len(set(seeds)) == 4 and all(s.branch == "editor" for s in together)
    assert not np.array_equal(together[0].target_image, together[1].target_image)  # two seeds, two candidates
    made = together[0].provenance["edit_model"]
    # the nearest ratio the pipeline's size multiple allows at --tiny's area (Qwen: multiples of 32, so 64x32)
    assert made["pipeline"] == pipeline and made["width"] > made["height"]


def test_buckets_keep_the_aspect_ratio() -> None:
    assert bucket(1500, 1000, 1024 * 1024, 16) == (1248, 832)
    assert bucket(1000, 1000, 512 * 512, 8) == (512, 512)
    assert bucket(300, 1000, 1024 * 1024, 32, [(1024, 1024), (672, 1568), (1568, 672)]) == (672, 1568)


@pytest.mark.slow  # a Qwen twin (~5 s)
def test_a_one_source_pipeline_pads_its_calls_to_the_candidates_not_to_max_batch() -> None:
    """Qwen's calls hold one source: at candidates 1 and max_batch 4 each call has one row (padding copies would
    quadruple the work), and the bytes still do not depend on how the build batches its rows."""
    params = EditModelParams.model_validate({"diffusers": {"pipeline": "QwenImageEditPipeline", "max_batch": 4}})
    stage = EditModelStage(params, BuildContext("t", "t", 0, tiny=True))
    stage.setup()
    pipe = stage.editor.pipe
    rows_per_call: list[int] = []
    real_call = type(pipe).__call__

    def counting(self, *args, **kwargs):
        rows_per_call.append(kwargs.get("num_images_per_prompt") or 1)
        return real_call(self, *args, **kwargs)

    type(pipe).__call__ = counting
    try:
        together = apply_stage(stage, "edit_model", wide(3), batch_size=8)
        alone = apply_stage(stage, "edit_model", wide(3), batch_size=1)
    finally:
        type(pipe).__call__ = real_call
    assert rows_per_call == [1] * 6
    assert [s.target_image.tobytes() for s in together] == [s.target_image.tobytes() for s in alone]
