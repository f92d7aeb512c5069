"""`control: reference` against an independent re-implementation of the released Prompt-to-Prompt controller.

tests/sdxl/p2p_reference.py was written from the paper and the released code
(google/prompt-to-prompt, diffusers' community pipeline), not from crispedit's: it materialises
every softmax map and edits the probabilities as the released ``AttentionControl`` does. Both
run on the same tiny SDXL UNet from the same noise; crispedit's fused processor must give the
same latents to float precision. 64 px: 8x8 latents, attention at 4x4 and 2x2 (image/32), so
the reference's self-attention rule (maps at most image/32) separates the two levels; 3 steps
with f = 0.5 and c = 0.7 separate int(f N) = 1 from ceil(f N) = 2 and int(c (N+1)) = 2 from
ceil(c N) = 3.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crispedit.models.spec import ModelSpec
from crispedit.sdxl.local_blend import LocalBlendSettings
from crispedit.sdxl.options import RunOptions, Sampler
from crispedit.sdxl.text2image import Controls, PairRequest, run_pairs
from tests.sdxl import p2p_reference as ref

SIDE, STEPS, GUIDANCE, SELF_F, CROSS_C, SEED = 64, 3, 5.0, 0.5, 0.7, 7
TOLERANCE = 1e-4  # SDPA vs materialised softmax over 3 steps; the rule differences below are >= 1e-2
SWAP = ("a cat on a tree", "a dog on a tree")
LONG_SWAP = ("a cat on a tree", "a xyzzyq on a tree")  # cat: 1 token, xyzzyq: several
REFINE = ("a cat on a tree", "a red cat on tree")  # equal token counts, an insertion and a deletion


@pytest.fixture(scope="module")
def pipe():
    from crispedit.sdxl.models import load_pipeline

    return load_pipeline("t2i", ModelSpec(id="tiny"), RunOptions(), seed=0)


def crispedit_latents(pipe, pair: tuple[str, str], **controls) -> tuple[torch.Tensor, object]:
    controls = {"attention_mix": None, "latent_blend": None, "control": "reference", **controls}
    result = run_pairs(pipe, [PairRequest(*pair, SEED, SELF_F, CROSS_C)], Sampler(STEPS, GUIDANCE), SIDE, SIDE, Controls(**controls))
    return result.latents, result


def reference_latents(pipe, pair: tuple[str, str], controller: ref.ReferenceController) -> torch.Tensor:
    final: dict[str, torch.Tensor] = {}

    def on_step_end(_pipe, _i, _t, tensors):
        final["latents"] = controller.end_step(tensors["latents"])
        return {"latents": final["latents"]}

    saved = ref.install(pipe.unet, controller)
    try:
        with torch.no_grad():
            pipe(prompt=list(pair), generator=[torch.Generator().manual_seed(SEED) for _ in range(2)], num_inference_steps=STEPS,
                 guidance_scale=GUIDANCE, height=SIDE, width=SIDE, output_type="latent",
                 callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=["latents"])
    finally:
        pipe.unet.set_attn_processor(saved)
    return final["latents"]


def published(pipe, pair: tuple[str, str], schedule=CROSS_C, reweight=None, blend=None) -> ref.ReferenceController:
    """The released controller for a pair: replace or refine by the issue's gap-free rule, P2P's step counts."""
    tok = pipe.tokenizer
    source, target = pair
    alpha = ref.cross_replace_alpha(tok, [target], STEPS, schedule)[:, 0]
    window = ref.self_replace_window(STEPS, SELF_F)
    kind = ref.choose_edit(tok, source, target)
    if kind == "replace":
        edit = ref.TargetEdit(0, 1, "replace", alpha, window, replace_matrix=ref.replacement_mapper(tok, source, target))
    else:
        edit = ref.TargetEdit(0, 1, "refine", alpha, window, refine=ref.refinement_mapper(tok, source, target))
    edit.reweight = ref.equalizer(tok, target, reweight) if reweight else None
    image32 = (SIDE // 32) ** 2  # the image/32 maps: P2P's 16x16 at 512 px
    return ref.ReferenceController([edit], 2, ref.Rules.published(self_max_queries=image32), blend)


def assert_equal_to_reference(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert (ours[0] - theirs[0]).abs().max() < TOLERANCE  # the source rows: the rig itself
    assert (ours[1] - theirs[1]).abs().max() < TOLERANCE, f"target differs by {(ours[1] - theirs[1]).abs().max():.2e}"


@pytest.mark.parametrize("pair", [SWAP, LONG_SWAP, REFINE], ids=["swap", "swap-different-token-count", "refine"])
def test_reference_mode_equals_the_released_controller(pipe, pair) -> None:
    ours, result = crispedit_latents(pipe, pair)
    assert result.mappings[0].mode == ref.choose_edit(pipe.tokenizer, *pair)
    assert_equal_to_reference(ours, reference_latents(pipe, pair, published(pipe, pair)))


def test_the_gap_free_rule_decides_replace_or_refine(pipe) -> None:
    tok = pipe.tokenizer
    assert len(ref.encode(tok, LONG_SWAP[0])) != len(ref.encode(tok, LONG_SWAP[1]))
    _, swapped = crispedit_latents(pipe, LONG_SWAP)
    _, refined = crispedit_latents(pipe, REFINE)
    assert len(ref.encode(tok, REFINE[0])) == len(ref.encode(tok, REFINE[1]))
    assert (swapped.mappings[0].mode, refined.mappings[0].mode) == ("replace", "refine")
    assert ref.choose_edit(tok, *LONG_SWAP) == "replace" and ref.choose_edit(tok, *REFINE) == "refine"


def test_the_rules_the_reference_mode_fixes_change_the_result(pipe) -> None:
    """Each published rule matters at this size, so the equalities above cannot pass by accident."""
    theirs = reference_latents(pipe, SWAP, published(pipe, SWAP))
    default, _ = crispedit_latents(pipe, SWAP, control="default")
    assert (default[1] - theirs[1]).abs().max() > 100 * TOLERANCE
    every_layer, _ = crispedit_latents(pipe, SWAP, self_map_max=SIDE // 8)  # reference steps, but self maps of every size
    assert (every_layer[1] - theirs[1]).abs().max() > 100 * TOLERANCE
    released_tail = reference_latents(pipe, LONG_SWAP, published(pipe, LONG_SWAP))
    shifted, _ = crispedit_latents(pipe, LONG_SWAP, control="default", self_map_max=SIDE // 32)
    assert (shifted[1] - released_tail[1]).abs().max() > 100 * TOLERANCE


def test_per_word_windows_and_reweighting_equal_the_released_controller(pipe) -> None:
    ours, _ = crispedit_latents(pipe, SWAP, cross_words={"dog": 0.3, "tree": [0.3, 1.0]}, reweight={"dog": 2.5, "on": -0.5})
    controller = published(pipe, SWAP, {"default_": CROSS_C, "dog": 0.3, "tree": (0.3, 1.0)}, reweight={"dog": 2.5, "on": -0.5})
    assert_equal_to_reference(ours, reference_latents(pipe, SWAP, controller))
    plain, _ = crispedit_latents(pipe, SWAP)
    assert (plain[1] - ours[1]).abs().max() > 100 * TOLERANCE


@pytest.mark.parametrize(("pair", "words"), [(SWAP, ("cat", "dog")), (REFINE, (3, "red"))], ids=["swap", "refine"])
def test_local_blend_equals_the_released_controller(pipe, pair, words) -> None:
    """The edited words: the swapped pair, or the removed second "a" (word 3) and the inserted "red"."""
    tok = pipe.tokenizer
    # from step int(0.34 * 3) = 1; 4x4 maps; random tiny weights give flat word maps, so a high threshold makes a real mask
    settings = LocalBlendSettings(threshold=0.97, dilation=1, start=0.34, map_side=SIDE // 16)
    ours, result = crispedit_latents(pipe, pair, local_blend=settings)
    positions = [ref.word_positions(tok, pair[0], words[0]), ref.word_positions(tok, pair[1], words[1])]
    blend = ref.LocalBlend(positions, [(0, 1)], (SIDE // 16, SIDE // 16), ("down", "up"), 0.97, 0.34, STEPS)
    assert_equal_to_reference(ours, reference_latents(pipe, pair, published(pipe, pair, blend=blend)))
    assert len(result.local_blend[0]) == len(blend.coverage) == 2
    np.testing.assert_allclose(result.local_blend[0], [c[0] for c in blend.coverage])
    assert 0 < result.local_blend[0][-1] < 1  # a real mask: outside it the target is the source's, bit for bit
    same = (ours[1] == ours[0]).all(dim=0).float().mean()
    assert same == pytest.approx(1 - result.local_blend[0][-1])
