"""The tiny-twin kit: what every capability's random-init twins are built from.

A twin is a model of the SAME class as the real one, built from a small config with random
weights (the way diffusers and transformers test themselves), deterministic for a seed.
Shared here: seeding without touching the caller's RNG, the tiny word list, CLIP BPE
vocabularies and tokenizers, and the small AutoencoderKL the diffusion twins use. The
twins themselves live beside the models they stand in for (``clip.py``, ``masks/twins.py``,
``sdxl/models.py``, ``dit4edit/models.py``, ``mgt/tiny.py``) and register by name with
:func:`crispedit.models.spec.register_twin`.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Whole words the tiny tokenizers know, so common keywords are single tokens and the rest
#: fall back to several sub-word tokens (which the tests need: multi-token words).
TINY_WORDS = (
    "a", "the", "of", "and", "cat", "dog", "car", "red", "blue", "hat", "tree", "sky", "man",
    "woman", "house", "photo", "astronaut", "rocket", "coffee", "chelsea", "camera", "none",
)


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch for a block without disturbing the caller's global RNG state."""
    import torch  # imported here so registering twins costs nothing until one is built

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def write_tiny_clip_vocab(directory: str | Path, merges: list[tuple[str, str]] | None = None, *,
                          words: tuple[str, ...] = TINY_WORDS, symbols: str = "", size: int | None = None) -> Path:
    """Write vocab.json + merges.txt for a CLIPTokenizer that knows letters, ``words`` and </w> endings.

    ``words`` are single tokens (their merges are listed); any other lowercase word splits
    into letter tokens, so it is the multi-token case. ``symbols`` are extra characters (digits,
    punctuation), each with its </w> form: without them a character maps to ``<|endoftext|>``.
    (Byte-level BPE needs every byte symbol; a tiny vocab keeps the ASCII letters and </w> forms.)
    ``size`` pads the vocabulary with never-produced tokens to a real checkpoint's embedding count
    (49408 for CLIP), for full-size smoke runs of the real architectures.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab: list[str] = ["<|startoftext|>", "<|endoftext|>", "!", ",", "."]
    letters = list(string.ascii_lowercase)
    vocab += letters + [f"{c}</w>" for c in letters] + [".</w>", ",</w>", "!</w>"]
    merge_list: list[tuple[str, str]] = list(merges or [])
    for word in words:
        if len(word) == 1:
            continue
        # left-to-right merges: w o r d</w> -> wo r d</w> -> wor d</w> -> word</w>
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for nxt in pieces[1:]:
            pair = (current, nxt)
            if pair not in merge_list:
                merge_list.append(pair)
            current = current + nxt
            if current not in vocab:
                vocab.append(current)
    for symbol in symbols:
        for token in (symbol, f"{symbol}</w>"):
            if token not in vocab:
                vocab.append(token)
    vocab += unused_tokens(len(vocab), size)
    (directory / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merge_list]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def unused_tokens(have: int, size: int | None) -> list[str]:
    """Filler tokens that take a vocabulary of ``have`` entries to ``size`` (none when ``size`` is None)."""
    if size is not None and size < have:
        raise ValueError(f"a vocabulary of {size} tokens cannot hold the {have} the tokenizer needs")
    return [f"<unused{i}>" for i in range(have, size or have)]


def clip_tokenizer_from(directory: str | Path, max_length: int = 16) -> Any:
    """A CLIPTokenizer read from tiny vocab files (the kit's, written if missing)."""
    from transformers import CLIPTokenizer

    directory = Path(directory)
    if not (directory / "vocab.json").exists():
        write_tiny_clip_vocab(directory)
    return CLIPTokenizer(
        vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt"), model_max_length=max_length,
    )


def tiny_autoencoder(seed: int, block_out_channels: tuple[int, ...], norm_num_groups: int, sample_size: int,
                     scaling_factor: float, **config: Any) -> Any:
    """An AutoencoderKL with one encoder and decoder block per channel count (8x down for four), 4 latent channels."""
    from diffusers import AutoencoderKL

    blocks = len(block_out_channels)
    with seeded(seed):
        return AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=norm_num_groups,
            block_out_channels=tuple(block_out_channels), sample_size=sample_size, scaling_factor=scaling_factor,
            down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks, **config,
        ).eval()
