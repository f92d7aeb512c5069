"""Full-size smoke runs: each model stage's own code on the released architecture (random weights), 2 steps.

Opt-in (minutes and several GiB each; CI never runs them): ``CRISPEDIT_FULLSIZE=1 python -m pytest -m fullsize
tests/test_full_size.py -k NAME``, one at a time on a small machine. The builders are tests/helpers/full_size.py's;
benchmarks/full_size.py times the same runs.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.helpers import full_size

pytestmark = [
    pytest.mark.fullsize,
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("CRISPEDIT_FULLSIZE") != "1", reason="full-size smoke runs: set CRISPEDIT_FULLSIZE=1"),
]

SIDE, STEPS = 128, 2  # what benchmarks/full_size.py runs by default


def generated(smoke: full_size.Smoke, side: int = SIDE) -> np.ndarray:
    (sample,) = smoke.outputs
    assert sample.alive, sample.reject
    assert sample.target_image.shape == (side, side, 3) and sample.target_image.dtype == np.uint8
    return sample.target_image


def test_sdxl_p2p_runs_with_time_ids_and_pooled_embeddings() -> None:
    smoke = full_size.sdxl_p2p(SIDE, STEPS)
    generated(smoke)
    assert smoke.outputs[0].provenance["p2p"]["steps"] == STEPS
    assert smoke.parameters > 3.4e9  # UNet 2.57B + CLIP-L 123M + bigG 695M + VAE 84M


def test_sdxl_inpainting_runs_on_the_nine_channel_unet() -> None:
    smoke = full_size.sdxl_inpaint(SIDE, STEPS)
    generated(smoke)
    assert smoke.parameters > 3.4e9


def test_refine_runs_controlnet_and_the_bigg_ip_adapter_encoder() -> None:
    smoke = full_size.refine(SIDE, STEPS)
    generated(smoke)
    assert smoke.outputs[0].provenance["refine"]["region"] == "mask"
    assert smoke.parameters > 6.5e9  # + ControlNet 1.25B + ViT-bigG/14 1.84B + the adapter


def test_dit4edit_runs_pixart_with_t5_xxl() -> None:
    smoke = full_size.dit4edit(SIDE, STEPS)
    generated(smoke)
    assert smoke.parameters > 5.2e9  # PixArt-XL-2 0.61B + T5-XXL encoder 4.76B


def test_editmgt_runs_the_960m_transformer_with_gemma() -> None:
    smoke = full_size.editmgt(SIDE, STEPS)
    (image,) = smoke.outputs
    assert image.shape == (SIDE, SIDE, 3)
    assert smoke.parameters > 3.9e9  # transformer ~0.96B + Gemma-2-2B 2.6B + CLIP-H text 0.35B


def test_grounding_dino_base_and_sam_vit_h_make_a_mask() -> None:
    smoke = full_size.ground(SIDE, STEPS)
    (sample,) = smoke.outputs
    assert sample.mask is not None and sample.mask.shape == (SIDE, SIDE)
    assert smoke.parameters > 0.8e9  # GroundingDINO-base ~0.23B + SAM-ViT-H 0.64B


def test_clip_vit_l_and_dinov2_score_a_pair() -> None:
    smoke = full_size.clip_dino(SIDE, STEPS)
    (sample,) = smoke.outputs
    assert {"clip_t_source", "clip_dir", "clip_i", "dino_i"} <= set(sample.scores)
    assert smoke.parameters > 0.7e9  # CLIP ViT-L/14 0.43B + DINOv2-L 0.30B
