"""Cross-attention keyword maps on a tiny SDXL-shaped UNet, and keyword token indices on a local CLIP vocabulary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor

from crispedit.models.twins import clip_tokenizer_from, write_tiny_clip_vocab
from crispedit.sdxl.attention_store import (
    AttentionStore,
    KeywordNotInPrompt,
    keyword_mask,
    keyword_token_indices,
    sdxl_keyword_indices,
)
from crispedit.sdxl.models import tiny_sdxl_unet

TOKENS = 10  # text length of the fake encoder states


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    return tiny_sdxl_unet(0)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory):
    from transformers import CLIPTokenizer

    directory = write_tiny_clip_vocab(tmp_path_factory.mktemp("clip-vocab"))
    first = clip_tokenizer_from(directory, max_length=77)
    # SDXL's second tokenizer: same BPE files, '!' as the pad token
    second = CLIPTokenizer(
        vocab=str(Path(directory) / "vocab.json"), merges=str(Path(directory) / "merges.txt"),
        pad_token="!", model_max_length=77,
    )
    return first, second


def run_unet(unet: torch.nn.Module, batch: int, calls: int, height: int = 16, width: int = 16, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, height, width, generator=generator)
    states = torch.randn(batch, TOKENS, 32, generator=generator)
    added = {"text_embeds": torch.randn(batch, 32, generator=generator), "time_ids": torch.randn(batch, 6, generator=generator)}
    outs = []
    with torch.no_grad():
        for step in range(calls):
            outs.append(unet(latents, 999 - 100 * step, encoder_hidden_states=states, added_cond_kwargs=added).sample)
    return outs


def test_storing_processor_leaves_the_unet_output_unchanged(unet: torch.nn.Module) -> None:
    unet.set_attn_processor(AttnProcessor())
    reference = run_unet(unet, batch=2, calls=2)
    store = AttentionStore({"cat": [1]}, resolution=None).install(unet)
    try:
        stored = run_unet(unet, batch=2, calls=2)
    finally:
        store.remove(unet)
    for ref, out in zip(reference, stored):
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert store.step == 1  # two UNet calls: steps 0 and 1
    # removal restores the original processors
    assert all(type(p).__name__ == "AttnProcessor" for p in unet.attn_processors.values())


def test_maps_have_the_layer_grid_and_token_probabilities_partition_one(unet: torch.nn.Module) -> None:
    keywords = {f"t{i}": [i] for i in range(TOKENS)}
    keywords["all"] = list(range(TOKENS))
    store = AttentionStore(keywords, resolution=8, places=("down", "up"), guidance=False).install(unet)
    try:
        run_unet(unet, batch=2, calls=2)
    finally:
        store.remove(unet)
    maps = store.maps()
    assert len(maps) == 2 and set(maps[0]) == set(keywords)
    for row in maps:
        assert all(m.shape == (8, 8) and m.dtype == np.float32 for m in row.values())
        # a softmax over tokens: the single-token maps sum to exactly 1 everywhere ...
        total = sum(row[f"t{i}"] for i in range(TOKENS))
        np.testing.assert_allclose(total, 1.0, atol=1e-5)
        # ... and the mean over all tokens is 1/T everywhere
        np.testing.assert_allclose(row["all"], 1.0 / TOKENS, atol=1e-6)
    # 16x16 latents: down_blocks.1 (2 layers) and up_blocks.0 (2 x 2 layers) are at 8x8; 2 steps
    assert store._counts[(0, "t0")] == (2 + 4) * 2


def test_resolution_steps_and_guidance_select_what_is_stored(unet: torch.nn.Module) -> None:
    store = AttentionStore(
        [{"cat": [1]}, {"dog": [2, 3]}], resolution=8, places=("mid",), steps=[1, 2], guidance=True,
    ).install(unet)
    try:
        run_unet(unet, batch=4, calls=3, height=16, width=8)  # 16x8 latents: the mid block (after the one downsample) sees 8x4
    finally:
        store.remove(unet)
    maps = store.maps()
    assert [list(m) for m in maps] == [["cat"], ["dog"]]  # cond rows 2 and 3 only
    assert maps[0]["cat"].shape == (8, 4)
    assert store._counts[(0, "cat")] == 2 * 2  # 2 mid layers x steps 1 and 2
    with pytest.raises(RuntimeError):
        empty = AttentionStore({"cat": [1]}, resolution=5).install(unet)
        try:
            run_unet(unet, batch=2, calls=1)
        finally:
            empty.remove(unet)
        empty.maps()
    with pytest.raises(ValueError):
        AttentionStore({"cat": [1]}, places=("middle",))


def test_keyword_mask_normalises_upsamples_and_binarises_at_a_fraction_of_the_mean() -> None:
    attention = np.array([[0.0, 0.1], [0.2, 0.4]], np.float32)
    soft = keyword_mask(attention, (2, 2))
    np.testing.assert_allclose(soft, [[0.0, 0.25], [0.5, 1.0]])
    # mean of the normalised map is 0.4375; 0.85 x mean = 0.371875: only 0.5 and 1.0 pass
    np.testing.assert_array_equal(keyword_mask(attention, (2, 2), binarize=True), [[0, 0], [1, 1]])
    np.testing.assert_array_equal(keyword_mask(attention, (2, 2), binarize=True, threshold_factor=0.6), [[0, 0], [1, 1]])
    np.testing.assert_array_equal(keyword_mask(attention, (2, 2), binarize=True, threshold_factor=0.2), [[0, 1], [1, 1]])
    big = keyword_mask(attention, (32, 48))
    assert big.shape == (32, 48) and big.max() == pytest.approx(1.0) and big.min() >= 0.0
    assert not keyword_mask(np.zeros((4, 4), np.float32), (8, 8), binarize=True).any()


def test_keyword_token_indices_count_the_bos_and_every_bpe_piece(tokenizers) -> None:
    first, second = tokenizers
    prompt = "a cat wearing a red hat"
    ids = first(prompt)["input_ids"]
    assert first.convert_ids_to_tokens(ids[0]) == "<|startoftext|>"
    assert keyword_token_indices(first, prompt, "cat") == [2]  # BOS, a, cat
    red_hat = keyword_token_indices(first, prompt, "red hat")
    assert first.convert_ids_to_tokens([ids[i] for i in red_hat]) == ["red</w>", "hat</w>"]
    # "wearing" is not in the tiny vocabulary: several tokens, all of them the keyword
    wearing = keyword_token_indices(first, prompt, "wearing")
    assert len(wearing) > 1 and wearing == list(range(wearing[0], wearing[0] + len(wearing)))
    assert "".join(first.convert_ids_to_tokens([ids[i] for i in wearing])).replace("</w>", "") == "wearing"
    # both SDXL tokenizers put the keyword on the same positions of the shared token axis
    assert sdxl_keyword_indices(first, second, prompt, "wearing") == wearing
    assert second("a cat", padding="max_length", max_length=6)["input_ids"][-1] == second.convert_tokens_to_ids("!")
    # every occurrence, case-insensitively, whole words only
    assert keyword_token_indices(first, "A cat and a Cat", "cat") == [2, 5]
    with pytest.raises(KeywordNotInPrompt):
        keyword_token_indices(first, "a catalogue", "cat")
    with pytest.raises(KeywordNotInPrompt):
        keyword_token_indices(first, "a dog " * 10 + "cat", "cat", max_length=8)


def test_sdxl_indices_with_a_second_prompt_take_the_union(tokenizers) -> None:
    first, second = tokenizers
    assert sdxl_keyword_indices(first, second, "a cat", "cat", prompt_2="the photo of a cat") == sorted({2} | set(
        keyword_token_indices(second, "the photo of a cat", "cat")
    ))
