"""Cross-attention keyword masks from the SDXL UNet, as Prompt-to-Prompt and EditWorld make them.

While the UNet denoises, every cross-attention layer computes, for each latent pixel, a
softmax over the prompt's tokens. The probability mass a keyword's tokens receive, averaged
over heads, layers and steps, is a coarse map of where the model draws that word. EditWorld
reads it at 16x16, thresholds it at 0.85 x its mean and uses it as the edit mask; P2P's
LocalBlend normalises it by its maximum and blends latents through it.

SDXL specifics this module handles:
* its two text encoders (CLIP ViT-L and OpenCLIP bigG) are concatenated along the FEATURE
  axis, so both share one token axis of 77 positions: a keyword's indices are positions in
  that axis, and both tokenizers (the same BPE, different pad tokens) must agree on them;
* position 0 is the BOS token, so the first word of a prompt is index 1;
* a word outside the vocabulary is several BPE tokens: all of them are the keyword;
* with classifier-free guidance the UNet batch is [unconditional, conditional]: only the
  conditional half carries the keyword.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

from crispedit.sdxl.processors import attention_input, attention_output

PLACES = ("down", "mid", "up")


class KeywordNotInPrompt(ValueError):
    """The keyword does not occur in the prompt (or was cut off by the 77-token limit)."""


def keyword_token_indices(tokenizer: Any, prompt: str, keyword: str, max_length: int | None = None) -> list[int]:
    """Positions of ``keyword``'s tokens in the tokenized ``prompt`` (BOS counted), every occurrence.

    Uses the tokenizer's character offsets rather than re-tokenizing the word alone: BPE
    merges depend on context ("cat" vs "cat,"), so a separately tokenized word need not
    appear as a sub-sequence of the prompt's tokens.
    """
    pattern = re.compile(r"(?<![\w])" + re.escape(keyword.strip()) + r"(?![\w])", re.IGNORECASE)
    spans = [m.span() for m in pattern.finditer(prompt)]
    if not keyword.strip() or not spans:
        raise KeywordNotInPrompt(f"{keyword!r} not in prompt {prompt!r}")
    limit = max_length or tokenizer.model_max_length
    encoded = tokenizer(prompt, truncation=True, max_length=limit, return_offsets_mapping=True)
    indices = [
        i for i, (a, b) in enumerate(encoded["offset_mapping"])
        if b > a and any(a < hi and b > lo for lo, hi in spans)
    ]
    if not indices:
        raise KeywordNotInPrompt(f"{keyword!r} lies past the {limit}-token limit of {prompt!r}")
    return indices


def sdxl_keyword_indices(
    tokenizer: Any, tokenizer_2: Any, prompt: str, keyword: str, prompt_2: str | None = None
) -> list[int]:
    """Keyword positions on SDXL's shared token axis, from both tokenizers.

    With one prompt both tokenizers must agree (they share the BPE); with a different
    ``prompt_2`` a position belongs to the keyword when it does in either encoder's prompt.
    """
    first = keyword_token_indices(tokenizer, prompt, keyword)
    if prompt_2 is None or prompt_2 == prompt:
        second = keyword_token_indices(tokenizer_2, prompt, keyword)
        if second != first:
            raise ValueError(f"SDXL tokenizers disagree on {keyword!r}: {first} vs {second}")
        return first
    try:
        second = keyword_token_indices(tokenizer_2, prompt_2, keyword)
    except KeywordNotInPrompt:
        second = []
    return sorted(set(first) | set(second))


@dataclass
class AttentionStore:
    """Sums keyword cross-attention maps over chosen layers and steps during UNet forwards.

    keywords: one {keyword: token indices} mapping per conditional batch row, or a single
        mapping shared by all rows.
    resolution: keep layers whose attention map's longer side is this many pixels
        (EditWorld: 16 at 512 px); None keeps every layer, each resized to the largest map.
    places: which UNet parts ("down", "mid", "up") contribute.
    steps: which UNet calls (0-based denoising steps) contribute; None = all.
    guidance: the batch is [uncond, cond] (classifier-free guidance); read the cond half.
    """

    keywords: Sequence[Mapping[str, Sequence[int]]] | Mapping[str, Sequence[int]]
    resolution: int | None = 16
    places: Sequence[str] = ("down", "mid", "up")
    steps: Sequence[int] | None = None
    guidance: bool = True
    step: int = -1
    _latent_hw: tuple[int, int] = (0, 0)
    _sums: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    _counts: dict[tuple[int, str], int] = field(default_factory=dict)
    _saved: dict[str, Any] | None = None
    _hook: Any = None

    def __post_init__(self) -> None:
        bad = set(self.places) - set(PLACES)
        if bad:
            raise ValueError(f"unknown UNet places {sorted(bad)}; use {PLACES}")

    # -- wiring into a diffusers UNet -------------------------------------------------
    def install(self, unet: torch.nn.Module) -> AttentionStore:
        """Put a storing processor on every cross-attention layer (others keep theirs) and count steps."""
        current = unet.attn_processors
        self._saved = dict(current)
        processors: dict[str, Any] = {}
        for name, processor in current.items():
            is_cross = name.endswith("attn2.processor")
            place = next((p for p in PLACES if name.startswith(f"{p}_block")), None)
            processors[name] = StoringCrossAttnProcessor(self, place) if is_cross and place else processor
        unet.set_attn_processor(processors)
        self._hook = unet.register_forward_pre_hook(self._on_unet_call, with_kwargs=True)
        return self

    def remove(self, unet: torch.nn.Module) -> None:
        """Restore the processors the UNet had before ``install``."""
        if self._saved is not None:
            unet.set_attn_processor(self._saved)
            self._saved = None
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _on_unet_call(self, module: Any, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        self._latent_hw = (int(sample.shape[-2]), int(sample.shape[-1]))
        self.step += 1

    # -- recording ----------------------------------------------------------------------
    def row_keywords(self, row: int) -> Mapping[str, Sequence[int]]:
        if isinstance(self.keywords, Mapping):
            return self.keywords
        return self.keywords[row]

    def map_shape(self, sequence_length: int) -> tuple[int, int]:
        """The (h, w) grid of a layer from its query count and the latent's shape."""
        from crispedit.sdxl.blending import layer_grid

        return layer_grid(self._latent_hw, sequence_length)

    def wants(self, place: str, sequence_length: int) -> bool:
        if place not in self.places or (self.steps is not None and self.step not in self.steps):
            return False
        if self.resolution is None:
            return True
        return max(self.map_shape(sequence_length)) == self.resolution

    def record(self, probs: torch.Tensor, heads: int) -> None:
        """probs: (batch*heads, queries, tokens) softmax of one cross-attention layer."""
        batch = probs.shape[0] // heads
        h, w = self.map_shape(probs.shape[1])
        per_head = probs.reshape(batch, heads, probs.shape[1], probs.shape[2]).float().mean(dim=1)
        rows = range(batch // 2, batch) if self.guidance else range(batch)
        for row_index, row in enumerate(rows):
            for keyword, tokens in self.row_keywords(row_index).items():
                grid = per_head[row][:, list(tokens)].mean(dim=-1).reshape(1, 1, h, w)
                key = (row_index, keyword)
                if key in self._sums and self._sums[key].shape[-2:] != (h, w):
                    # resolution=None: bring maps to the larger grid before summing
                    target = max(self._sums[key].shape[-2:], (h, w))
                    grid = torch.nn.functional.interpolate(grid, size=target, mode="bilinear", align_corners=False)
                    self._sums[key] = torch.nn.functional.interpolate(
                        self._sums[key], size=target, mode="bilinear", align_corners=False
                    )
                self._sums[key] = self._sums.get(key, 0) + grid.detach().cpu()
                self._counts[key] = self._counts.get(key, 0) + 1

    # -- reading ------------------------------------------------------------------------
    def maps(self) -> list[dict[str, np.ndarray]]:
        """Per conditional row, per keyword: the mean attention map (float32, map grid), unnormalised."""
        rows = self.row_maps()
        if not rows:
            raise RuntimeError("no attention was stored: check resolution, places and steps against the UNet")
        return [rows[i] for i in sorted(rows)]

    def row_maps(self) -> dict[int, dict[str, np.ndarray]]:
        """Like :meth:`maps`, keyed by conditional row, so rows without keywords keep their place (may be empty)."""
        rows: dict[int, dict[str, np.ndarray]] = {}
        for (row, keyword), total in self._sums.items():
            rows.setdefault(row, {})[keyword] = (total[0, 0] / self._counts[(row, keyword)]).numpy().astype(np.float32)
        return rows

    def reset(self) -> None:
        self._sums.clear()
        self._counts.clear()
        self.step = -1


class StoringCrossAttnProcessor:
    """diffusers' plain attention maths, with the softmax kept so the store can read it.

    Probabilities must be materialised to be stored, so this cannot use fused SDPA; it runs
    only on cross-attention layers, whose key length (77) keeps that cheap.
    """

    def __init__(self, store: AttentionStore, place: str) -> None:
        self.store = store
        self.place = place

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        hidden_states, residual, shape = attention_input(attn, hidden_states, temb)
        is_cross = encoder_hidden_states is not None
        context = encoder_hidden_states if is_cross else hidden_states
        batch_size, key_length, _ = context.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, key_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        if is_cross and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)
        if is_cross and self.store.wants(self.place, probs.shape[1]):
            self.store.record(probs, attn.heads)
        return attention_output(attn, attn.batch_to_head_dim(torch.bmm(probs, value)), residual, shape)


def keyword_mask(
    attention: np.ndarray, size: tuple[int, int], *, binarize: bool = False, threshold_factor: float = 0.85
) -> np.ndarray:
    """An attention map as an image mask (float32 HxW in [0, 1]).

    Upsampled bilinearly to ``size`` = (height, width), normalised by its maximum (P2P), and
    with ``binarize`` set to 1 where it exceeds ``threshold_factor`` x its mean (EditWorld:
    0.85), else 0. An all-zero map stays all zero.
    """
    height, width = size
    up = cv2.resize(attention.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    up = np.clip(up, 0.0, None)
    peak = float(up.max())
    soft = up / peak if peak > 0 else np.zeros_like(up)
    if not binarize:
        return soft.astype(np.float32)
    if peak == 0:
        return soft.astype(np.float32)
    return (soft > threshold_factor * float(soft.mean())).astype(np.float32)
