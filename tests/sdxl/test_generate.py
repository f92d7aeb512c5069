"""SDXL pair generation on the tiny pipeline: P2P alignment and attention maths, masks and latent blending,
and per-sample randomness (crispedit/generate)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crispedit.models.spec import ModelSpec
from crispedit.sdxl.alignment import (
    AlignmentError,
    TokenMapping,
    global_alignment,
    is_gap_free,
    prompt_mapping,
    sdxl_mapping,
    word_spans,
)
from crispedit.sdxl.batching import generators, run_in_calls
from crispedit.sdxl.blending import StepWindow, blend_pairs, latent_mask, layer_mask
from crispedit.sdxl.options import RunOptions, Sampler
from crispedit.sdxl.p2p import P2PAttnProcessor, P2PController, PairControl
from crispedit.sdxl.text2image import Controls, PairRequest, generate, run_pairs

SAMPLER = Sampler(steps=3, guidance_scale=5.0)
SIDE = 64  # 8x8 latents; attention at 4x4 and 2x2


@pytest.fixture(scope="module")
def pipe():
    from crispedit.sdxl.models import load_pipeline

    return load_pipeline("t2i", ModelSpec(id="tiny"), RunOptions(), seed=0)


def box_mask(top: int, left: int, bottom: int, right: int) -> np.ndarray:
    """A hard mask on whole latent pixels (multiples of 8 image pixels)."""
    mask = np.zeros((SIDE, SIDE), np.uint8)
    mask[top:bottom, left:right] = 255
    return mask


# --- alignment -------------------------------------------------------------------------------


def test_gap_free_swaps_replace_and_insertions_or_deletions_refine(pipe) -> None:
    swap = sdxl_mapping(pipe.tokenizer, pipe.tokenizer_2, "a cat on the tree", "a dog on the tree")
    assert swap.mode == "replace" and swap.is_identity and swap.length == 77
    grown = sdxl_mapping(pipe.tokenizer, pipe.tokenizer_2, "a cat", "a red cat")
    assert grown.mode == "refine"
    ids = pipe.tokenizer("a red cat")["input_ids"]  # BOS a red cat EOS
    assert ids.index(pipe.tokenizer.convert_tokens_to_ids("red</w>")) == 2
    assert [grown.sources_of(k) for k in range(5)] == [[0], [1], [], [2], [3]]  # red is inserted: its own attention
    assert grown.own_weights()[2] == 1.0 and grown.own_weights()[3] == 0.0
    # padding after the target's EOS takes the source's column at the same position (P2P's refine)
    assert grown.sources_of(5) == [5] and grown.sources_of(76) == [76]
    shrunk = sdxl_mapping(pipe.tokenizer, pipe.tokenizer_2, "a red cat", "a cat")
    assert [shrunk.sources_of(k) for k in range(5)] == [[0], [1], [3], [4], [4]]
    s = grown.value_matrix()
    assert s.shape == (77, 77) and s[2].sum() == 1.0 and s[:, 2].sum() == 0.0
    # equal token counts, but an insertion and a deletion: refine (positional replace would draw "red" from "cat")
    moved = sdxl_mapping(pipe.tokenizer, pipe.tokenizer_2, "a cat on a tree", "a red cat on tree")
    assert moved.mode == "refine" and moved.sources_of(2) == [] and moved.sources_of(3) == [2]


def test_a_swap_to_a_word_of_another_token_count_replaces_word_for_word(pipe) -> None:
    tok = pipe.tokenizer
    source, target = "a cat on a tree", "a xyzzyq on a tree"  # cat is one token, xyzzyq several
    spans_s, spans_t = word_spans(tok, source), word_spans(tok, target)
    assert len(spans_s[1]) == 1 and len(spans_t[1]) > 1
    mapping = sdxl_mapping(tok, pipe.tokenizer_2, source, target)
    assert mapping.mode == "replace" and not any(mapping.own)
    s = mapping.value_matrix()
    for k in spans_t[1]:  # every token of the new word takes cat's map, 1 / len(word) each
        assert mapping.sources_of(k) == spans_s[1] and s[spans_s[1][0], k] == pytest.approx(1 / len(spans_t[1]))
    for w in (2, 3, 4):  # the words after it keep their own source word (shifted)
        assert [mapping.sources_of(k) for k in spans_t[w]] == [[j] for j in spans_s[w]]
    # the released code maps by target position after the last swapped word (control: reference)
    released = sdxl_mapping(tok, pipe.tokenizer_2, source, target, tail="released")
    first = spans_t[2][0]
    assert released.sources_of(first) == [first] != mapping.sources_of(first)
    # different word counts never replace
    assert sdxl_mapping(tok, pipe.tokenizer_2, "a cat on a tree", "a fat cat on the tree").mode == "refine"


def test_global_alignment_maps_matches_and_leaves_insertions_unmapped() -> None:
    assert global_alignment([0, 5, 6, 1], [0, 5, 9, 6, 1]) == [0, 1, -1, 2, 3]
    assert global_alignment([0, 5, 6, 7, 1], [0, 5, 7, 1]) == [0, 1, 3, 4]  # a deleted token is skipped
    assert global_alignment([0, 1], [0, 1]) == [0, 1]
    # P2P's tie-breaks: a repeated token aligns to its earlier occurrence
    assert global_alignment([0, 5, 6, 1], [0, 5, 6, 5, 6, 1]) == [0, 1, 2, -1, -1, 3]
    assert is_gap_free([0, 5, 6, 1], [0, 7, 8, 6, 1]) and not is_gap_free([0, 5, 6, 1], [0, 5, 7, 6, 1])
    assert not is_gap_free([0, 5, 6, 7, 1], [0, 5, 7, 1])


def test_the_mismatch_rules_of_sdxl_and_dit4edit_agree_under_p2p_scores() -> None:
    """DiT4Edit's refinement calls the same alignment with mismatch="own"; with gap 0 a mismatch never wins."""
    import random

    rng = random.Random(0)
    for _ in range(2000):
        a = [rng.randrange(4) for _ in range(rng.randrange(0, 9))]
        b = [rng.randrange(4) for _ in range(rng.randrange(0, 9))]
        mapped = global_alignment(a, b, mismatch="map")
        assert mapped == global_alignment(a, b, mismatch="own")
        assert all(j < 0 or a[j] == b[k] for k, j in enumerate(mapped))  # only equal tokens map


def test_the_two_tokenizers_must_agree(pipe) -> None:
    from transformers import CLIPTokenizer

    class Shifted:
        """A tokenizer that inserts one extra token: it aligns differently from SDXL's first."""

        def __init__(self, inner: CLIPTokenizer) -> None:
            self.inner, self.model_max_length, self.eos_token_id = inner, inner.model_max_length, inner.eos_token_id

        def __call__(self, text: str, **kwargs):
            return self.inner("a " + text if "red" in text else text, **kwargs)

    assert prompt_mapping(pipe.tokenizer, "a cat", "a red cat").mode == "refine"
    with pytest.raises(AlignmentError):
        sdxl_mapping(pipe.tokenizer, Shifted(pipe.tokenizer_2), "a cat is here", "a red dog is here")


# --- the attention processor against materialised Prompt-to-Prompt maths ------------------------


def reference_attention(q, k, v, pairs: list[tuple[int, int]], mapping: TokenMapping | None) -> torch.Tensor:
    """P2P written out with explicit softmax maps, for (target row, source row) pairs: what the fused version must equal.

    mapping None: self-attention injection (the source's map on the target's values); else
    cross-attention control, P_s S + P_t diag(own) on the target's values.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    probs = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)
    out = probs @ v
    for target, source in pairs:
        if mapping is None:
            out[target] = probs[source] @ v[target]
        else:
            edited = probs[source] @ torch.from_numpy(mapping.value_matrix()) + probs[target] * torch.from_numpy(mapping.own_weights())
            out[target] = edited @ v[target]
    return out


@pytest.mark.parametrize("mode", ["replace", "refine"])
def test_fused_cross_attention_control_equals_the_materialised_maps(pipe, mode: str) -> None:
    prompts = ("a cat on the tree", "a dog on the tree") if mode == "replace" else ("a cat on the tree", "a red cat on a tree")
    mapping = sdxl_mapping(pipe.tokenizer, pipe.tokenizer_2, *prompts)
    assert mapping.mode == mode
    controller = P2PController([PairControl(mapping, range(4), np.ones((4, 77), np.float32))], total_steps=4, latent_hw=(4, 4))
    processor = P2PAttnProcessor(controller)
    g = torch.Generator().manual_seed(0)
    # CFG layout: [uncond s, uncond t, cond s, cond t]; 2 heads, 16 queries, 77 keys, head dim 8
    q, k, v = (torch.randn(4, 2, n, 8, generator=g) for n in (16, 77, 77))
    fused = processor._attend(q, k, v, None, is_cross=True)
    expected = reference_attention(q, k, v, [(3, 2)], mapping)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
    # the unconditional half is left alone (P2P edits the conditional half only)
    torch.testing.assert_close(fused[:2], torch.softmax(q[:2] @ k[:2].transpose(-1, -2) / math.sqrt(8), -1) @ v[:2], rtol=1e-5, atol=1e-5)


def test_fused_self_attention_injection_uses_the_source_map_in_both_halves() -> None:
    mapping = TokenMapping("replace", tuple((k, k, 1.0) for k in range(77)), (0.0,) * 77)
    controller = P2PController([PairControl(mapping, range(2), np.zeros((4, 77), np.float32))], total_steps=4, latent_hw=(4, 4))
    processor = P2PAttnProcessor(controller)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(4, 2, 16, 8, generator=g) for _ in range(3))
    fused = processor._attend(q, k, v, None, is_cross=False)
    expected = reference_attention(q, k, v, [(1, 0), (3, 2)], None)
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)
    processor.controller.step = 2  # 2 >= 0.5 * 4: injection is over
    torch.testing.assert_close(processor._attend(q, k, v, None, is_cross=False), reference_attention(q, k, v, [], None))


# --- masks and blending ------------------------------------------------------------------------


def test_masks_reach_the_latent_grid_and_every_layer_grid() -> None:
    mask = box_mask(0, 0, 32, 64)  # top half
    grid = latent_mask(mask, (8, 8))
    assert grid.shape == (8, 8) and grid[:4].min() == 1.0 and grid[4:].max() == 0.0
    assert latent_mask(None, (8, 8)).min() == 1.0
    soft = np.zeros((SIDE, SIDE), np.uint8)
    soft[:, :4] = 255  # half of the first latent column
    assert latent_mask(soft, (8, 8))[0, 0] == pytest.approx(0.5) and latent_mask(soft, (8, 8), binarize=True)[0, 0] == 0.0
    masks = torch.from_numpy(np.stack([grid, 1 - grid]))[:, None]
    at_4x4 = layer_mask(masks, 16)
    assert at_4x4.shape == (2, 16, 1) and at_4x4[0, :8].min() == 1 and at_4x4[0, 8:].max() == 0
    wide = torch.ones(1, 1, 8, 16)
    assert layer_mask(wide, 32).shape == (1, 32, 1)  # a 4x8 layer of an 8x16 latent
    with pytest.raises(ValueError):
        layer_mask(masks, 15)


def test_blending_is_exact_where_the_mask_is_zero_or_one() -> None:
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(4, 4, 8, 8, generator=g)
    masks = torch.zeros(2, 1, 8, 8)
    masks[:, :, :4] = 1.0
    masks[1, :, 6:] = 0.3
    out = blend_pairs(latents, masks)
    assert torch.equal(out[0::2], latents[0::2])  # sources untouched
    assert torch.equal(out[1, :, 4:], latents[0, :, 4:]) and torch.equal(out[1, :, :4], latents[1, :, :4])
    torch.testing.assert_close(out[3, :, 6:], 0.3 * latents[3, :, 6:] + 0.7 * latents[2, :, 6:])


def test_step_windows() -> None:
    assert StepWindow().steps(5) == [0, 1, 2, 3, 4]
    assert StepWindow(0.2, 0.8).steps(10) == [2, 3, 4, 5, 6, 7]
    assert StepWindow(0.0, 1.0, every=2).steps(6) == [0, 2, 4]
    assert StepWindow(0.5, 0.5).steps(4) == []


# --- the tiny pipeline ---------------------------------------------------------------------------


def test_identical_prompts_reproduce_the_source_exactly(pipe) -> None:
    pairs = [
        PairRequest("a cat on the tree", "a cat on the tree", seed=11, self_fraction=0.7, cross_fraction=0.8, mask=box_mask(8, 8, 40, 40)),
        PairRequest("a dog", "a dog", seed=12, self_fraction=1.0, cross_fraction=1.0),
    ]
    result = run_pairs(pipe, pairs, SAMPLER, SIDE, SIDE, Controls())
    for source, target in zip(result.sources, result.targets, strict=True):
        assert np.array_equal(source, target)
    assert torch.equal(result.latents[0::2], result.latents[1::2])


def test_a_hard_mask_at_every_step_keeps_the_latents_outside_it_bit_for_bit(pipe) -> None:
    mask = box_mask(16, 8, 48, 40)  # latent rows 2..5, columns 1..4
    pairs = [
        PairRequest("a cat on the tree", "a dog on the tree", seed=3, self_fraction=0.3, cross_fraction=0.8, mask=mask),
        PairRequest("a cat", "a red hat on a blue car", seed=4, self_fraction=0.0, cross_fraction=0.0, mask=mask),
    ]
    result = run_pairs(pipe, pairs, SAMPLER, SIDE, SIDE, Controls(binarize_mask=True, latent_blend=StepWindow()))
    assert result.blend_steps == [0, 1, 2]
    outside = torch.from_numpy(latent_mask(mask, (8, 8)) == 0)
    latents = result.latents
    for source, target in ((0, 1), (2, 3)):
        assert torch.equal(latents[target][:, outside], latents[source][:, outside])
        assert not torch.equal(latents[target][:, ~outside], latents[source][:, ~outside])
    # without blending the same pairs differ outside the mask too
    free = run_pairs(pipe, pairs, SAMPLER, SIDE, SIDE, Controls(latent_blend=None, attention_mix=None))
    assert not torch.equal(free.latents[1][:, outside], free.latents[0][:, outside])


def test_attention_control_is_not_a_silent_no_op(pipe) -> None:
    """Injection, cross control and mixing each change the target (P2P ports have broken quietly)."""

    def target(self_fraction: float, cross_fraction: float, controls: Controls = Controls(), mask=None) -> np.ndarray:
        pair = PairRequest("a cat on the tree", "a dog on the tree", 5, self_fraction, cross_fraction, mask)
        return run_pairs(pipe, [pair], SAMPLER, SIDE, SIDE, controls).targets[0].astype(int)

    plain = target(0.0, 0.0)
    assert np.abs(target(1.0, 0.0) - plain).max() > 0
    assert np.abs(target(0.0, 1.0) - plain).max() > 0
    assert np.abs(target(1.0, 0.0, Controls(self_mode="kv")) - target(1.0, 0.0)).max() > 0
    mixed = target(0.0, 0.0, Controls(latent_blend=None), mask=box_mask(0, 0, 32, 64))
    assert np.abs(mixed - plain).max() > 0


def test_a_batch_gives_its_images_one_by_one_and_seeds_decide_the_noise(pipe) -> None:
    prompts, seeds = ["a cat", "a dog on the tree", "a red hat"], [1, 2, 3]
    jobs = list(zip(prompts, seeds, strict=True))

    def call(chunk):
        return generate(pipe, [p for p, _ in chunk], [s for _, s in chunk], SAMPLER, SIDE, SIDE)[0]

    together = run_in_calls(jobs, 4, True, call)
    alone = [run_in_calls([job], 4, True, call)[0] for job in jobs]
    for a, b in zip(together, alone, strict=True):
        assert np.array_equal(a, b)
    again = run_in_calls(jobs, 4, True, call)
    assert all(np.array_equal(a, b) for a, b in zip(together, again, strict=True))
    other_seed = run_in_calls([("a cat", 99)], 4, True, call)[0]
    assert np.abs(other_seed.astype(int) - together[0]).mean() > 1
    # diffusers draws row i's noise from generator i: the noise is the seed's, wherever the row is
    noise = [torch.randn(4, generator=g) for g in generators([5, 5, 6])]
    assert torch.equal(noise[0], noise[1]) and not torch.equal(noise[0], noise[2])
