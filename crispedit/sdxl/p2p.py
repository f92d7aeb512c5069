"""Prompt-to-Prompt on SDXL as one attention processor on fused attention, plus soft-mask output mixing.

The UNet batch holds pairs: rows [s1, t1, s2, t2, ...] (source, target), and with
classifier-free guidance that twice, [unconditional pairs | conditional pairs], so in both
layouts a target row's source is the row before it. For target rows the processor does:

* **self-attention injection** (steps i < p*N of the pair, both halves, every resolution, as
  InstructPix2Pix): the target's attention map becomes the source's, softmax(Q_s K_s^T) V_t,
  which is fused attention fed the SOURCE's queries and keys with the target's values. No
  4096x4096 map is ever materialised. ``self_mode="kv"`` instead shares the source's keys
  and values (target queries attend to the source's tokens, MasaCtrl-style).
* **cross-attention control** (steps i < c*N, conditional half, as P2P): word replacement
  gives softmax(Q_s K_s^T) V_t again; refinement gives P_s (S V_t) + P_t ((1 - a) V_t) for
  the alignment S and the inserted-token weights 1 - a (crispedit.sdxl.alignment), two
  fused calls over 77 keys.
* **soft-mask output mixing** (configured steps and layer types): the attention output
  becomes lerp(out_source, out_target, M) with M at the layer's resolution, i.e.
  M * target + (1 - M) * source.

Source rows are computed exactly as diffusers' AttnProcessor2_0 computes them, so the source
of a pair is the image the plain pipeline draws from the same noise, and a target whose
prompt equals its source's is that image too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from crispedit.sdxl.alignment import TokenMapping
from crispedit.sdxl.blending import StepWindow, layer_mask
from crispedit.sdxl.processors import attention_input, attention_output


@dataclass
class PairControl:
    """What one (source, target) pair asks of the attention layers."""

    self_fraction: float
    cross_fraction: float
    mapping: TokenMapping


@dataclass
class P2PController:
    """Per-call state shared by every processor: the pairs, the step counter, the masks.

    ``step`` is advanced by the pipeline's step-end callback (see text2image.run_pairs).
    """

    pairs: Sequence[PairControl]
    total_steps: int
    self_mode: Literal["map", "kv"] = "map"
    masks: torch.Tensor | None = None  # (P, 1, h, w) at latent resolution, or None: no mixing
    mix_window: StepWindow = StepWindow()
    mix_layers: Literal["self", "cross", "both"] = "both"
    step: int = 0
    _mask_cache: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = field(default_factory=dict)
    _index_cache: dict[tuple[Any, ...], torch.Tensor] = field(default_factory=dict)
    _value_cache: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor, list[int]]] = field(default_factory=dict)

    # -- which pairs act now --------------------------------------------------------------
    def self_active(self) -> list[int]:
        return [p for p, c in enumerate(self.pairs) if self.step < c.self_fraction * self.total_steps - 1e-9]

    def cross_active(self) -> list[int]:
        return [p for p, c in enumerate(self.pairs) if self.step < c.cross_fraction * self.total_steps - 1e-9]

    def mixing(self, is_cross: bool) -> bool:
        if self.masks is None or not self.mix_window.active(self.step, self.total_steps):
            return False
        return self.mix_layers == "both" or self.mix_layers == ("cross" if is_cross else "self")

    # -- cached tensors -------------------------------------------------------------------
    def mask_at(self, sequence_length: int, like: torch.Tensor) -> torch.Tensor:
        key = (sequence_length, like.dtype, like.device)
        if key not in self._mask_cache:
            assert self.masks is not None
            self._mask_cache[key] = layer_mask(self.masks.float(), sequence_length).to(like.device, like.dtype)
        return self._mask_cache[key]

    def row_index(self, batch_size: int, active: tuple[int, ...], halves: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Batch index that points each active target row at its source row (cached: the same every layer)."""
        key = (batch_size, active, halves, device)
        if key not in self._index_cache:
            targets, sources = _rows(active, len(self.pairs), halves)
            index = torch.arange(batch_size, device=device)
            index[targets] = torch.tensor(sources, device=device)
            self._index_cache[key] = index
        return self._index_cache[key]

    def refine_values(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """(S stacked (R, L, L), own weights (R, L, 1), pair indices) for the pairs that refine."""
        key = (like.dtype, like.device)
        if key not in self._value_cache:
            import numpy as np

            chosen = [p for p, c in enumerate(self.pairs) if c.mapping.mode == "refine"]
            matrices = np.stack([self.pairs[p].mapping.value_matrix() for p in chosen]) if chosen else np.zeros((0, 1, 1), np.float32)
            owns = np.stack([self.pairs[p].mapping.own_weights() for p in chosen]) if chosen else np.zeros((0, 1), np.float32)
            self._value_cache[key] = (
                torch.from_numpy(matrices).to(like.device, like.dtype),
                torch.from_numpy(owns).to(like.device, like.dtype)[..., None],
                chosen,
            )
        return self._value_cache[key]


def _rows(pair_indices: Sequence[int], num_pairs: int, halves: Sequence[int]) -> tuple[list[int], list[int]]:
    """Batch rows (targets, their sources) of the given pairs in the given CFG halves."""
    targets = [h * 2 * num_pairs + 2 * p + 1 for h in halves for p in pair_indices]
    return targets, [t - 1 for t in targets]


class P2PAttnProcessor:
    """diffusers' fused attention (AttnProcessor2_0) with Prompt-to-Prompt control on target rows."""

    def __init__(self, controller: P2PController) -> None:
        self.controller = controller

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if isinstance(encoder_hidden_states, tuple):
            raise TypeError("the P2P processor does not combine with an IP-Adapter (its states arrive as a tuple)")
        hidden_states, residual, shape = attention_input(attn, hidden_states, temb)
        is_cross = encoder_hidden_states is not None
        batch_size, _, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        if attention_mask is not None:
            key_length = encoder_hidden_states.shape[1] if is_cross else hidden_states.shape[1]
            attention_mask = attn.prepare_attention_mask(attention_mask, key_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        context = encoder_hidden_states if is_cross else hidden_states
        if is_cross and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key = attn.to_k(context)
        value = attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        out = self._attend(query, key, value, attention_mask, is_cross)
        out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        return attention_output(attn, self._mix(out, is_cross), residual, shape)

    # -- the control ------------------------------------------------------------------------
    def _layout(self, batch_size: int) -> tuple[int, int]:
        pairs = len(self.controller.pairs)
        if batch_size % (2 * pairs):
            raise ValueError(f"a batch of {batch_size} rows is not [source, target] x {pairs} pairs (x CFG halves)")
        return pairs, batch_size // (2 * pairs)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, is_cross: bool) -> torch.Tensor:
        c = self.controller
        pairs, halves = self._layout(q.shape[0])
        if is_cross:
            active, halves_used = c.cross_active(), [halves - 1]  # the conditional half only (P2P)
        else:
            active, halves_used = c.self_active(), list(range(halves))  # every half (InstructPix2Pix)
        if not active:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
        index = c.row_index(q.shape[0], tuple(active), tuple(halves_used), q.device)
        if not is_cross and c.self_mode == "kv":
            q2, k2, v2 = q, k[index], v[index]
        else:
            q2, k2, v2 = q[index], k[index], v
        refine_rows: list[int] = []
        own_values: torch.Tensor | None = None
        if is_cross:
            matrices, owns, refining = c.refine_values(v)
            chosen = [i for i, p in enumerate(refining) if p in active]
            if chosen:
                pair_ids = [refining[i] for i in chosen]
                refine_rows, _ = _rows(pair_ids, pairs, halves_used)
                picked = torch.tensor(chosen, device=v.device)
                target_values = v[refine_rows]  # (R, heads, L, d)
                v2 = v.clone()
                v2[refine_rows] = matrices[picked][:, None] @ target_values  # S V_t
                own_values = owns[picked][:, None] * target_values  # (1 - a) V_t
        mask2 = mask[index] if mask is not None else None
        out = F.scaled_dot_product_attention(q2, k2, v2, attn_mask=mask2, dropout_p=0.0, is_causal=False)
        if refine_rows:
            own_mask = mask[refine_rows] if mask is not None else None
            out[refine_rows] = out[refine_rows] + F.scaled_dot_product_attention(
                q[refine_rows], k[refine_rows], own_values, attn_mask=own_mask, dropout_p=0.0, is_causal=False
            )
        return out

    def _mix(self, out: torch.Tensor, is_cross: bool) -> torch.Tensor:
        c = self.controller
        if not c.mixing(is_cross):
            return out
        pairs, halves = self._layout(out.shape[0])
        grouped = out.view(halves, pairs, 2, *out.shape[1:])
        weights = c.mask_at(out.shape[1], out)  # (P, L, 1)
        mixed = torch.lerp(grouped[:, :, 0], grouped[:, :, 1], weights[None])
        return torch.stack([grouped[:, :, 0], mixed], dim=2).view_as(out)


def install(unet: Any, controller: P2PController) -> dict[str, Any]:
    """Put the P2P processor on every attention layer; returns the processors to restore afterwards.

    Install AFTER any IP-Adapter is loaded (diffusers re-creates attn1 processors then).
    """
    saved = dict(unet.attn_processors)
    unet.set_attn_processor(P2PAttnProcessor(controller))
    return saved
