"""Prompt-to-Prompt on SDXL as one attention processor on fused attention, plus soft-mask output mixing.

The UNet batch holds pairs: rows [s1, t1, s2, t2, ...] (source, target), and with
classifier-free guidance that twice, [unconditional pairs | conditional pairs], so in both
layouts a target row's source is the row before it. For target rows the processor does
(which steps, halves and layers: crispedit.sdxl.p2p_rules, ``default`` or ``reference``):

* **self-attention injection**: the target's attention map becomes the source's,
  softmax(Q_s K_s^T) V_t, which is fused attention fed the SOURCE's queries and keys with
  the target's values. No 4096x4096 map is ever materialised. ``self_mode="kv"`` instead
  shares the source's keys and values (target queries attend to the source's tokens,
  MasaCtrl-style).
* **cross-attention control** (conditional half, as P2P): the target's map becomes
  ``P_s S' + P_t diag(o')`` for the pair's mapping S (crispedit.sdxl.alignment), with this
  step's per-token schedule a and re-weighting w folded in: S' = S diag(a w) and
  o' = a w own + (1 - a). On the target's values that is SDPA(Q_s, K_s, S' V_t) +
  SDPA(Q_t, K_t, o' V_t): two fused calls over 77 keys, one when o' = 0, and a plain
  SDPA(Q_s, K_s, V_t) for a word swap of equal token counts.
* **LocalBlend** (crispedit.sdxl.local_blend): at the layers it reads, the conditional
  rows' maps after the edit are materialised (77 keys) and summed over the edited words.
* **soft-mask output mixing** (configured steps and layer types): the attention output
  becomes lerp(out_source, out_target, M) with M at the layer's resolution, i.e.
  M * target + (1 - M) * source.

Source rows are computed exactly as diffusers' AttnProcessor2_0 computes them, so the source
of a pair is the image the plain pipeline draws from the same noise, and a target whose
prompt equals its source's is that image too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from crispedit.sdxl.alignment import TokenMapping
from crispedit.sdxl.blending import StepWindow, layer_grid, layer_mask
from crispedit.sdxl.local_blend import LocalBlend
from crispedit.sdxl.p2p_rules import ControlRules
from crispedit.sdxl.processors import attention_input, attention_output


@dataclass
class PairControl:
    """What one (source, target) pair asks of the attention layers."""

    mapping: TokenMapping
    self_steps: range
    cross_alpha: np.ndarray  # (N, 77) 0/1: which target tokens take the edited map at each step
    reweight: np.ndarray | None = None  # (77,) multipliers, or None

    def cross_at(self, step: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(S', o') of this step, or None when no token is edited."""
        alpha = self.cross_alpha[step] if step < len(self.cross_alpha) else np.zeros(self.mapping.length, np.float32)
        if not alpha.any():
            return None
        gain = alpha * (self.reweight if self.reweight is not None else 1.0)
        own = gain * self.mapping.own_weights() + (1.0 - alpha)
        return self.mapping.value_matrix() * gain[None, :], own.astype(np.float32)


@dataclass
class CrossEdit:
    """The cross-attention edits of one step: every active pair, and which of them need the value transform."""

    pairs: list[int]
    matrices: torch.Tensor  # (A, L, L) S'
    owns: torch.Tensor  # (A, L) o'
    plain: list[bool]  # S' = I and o' = 0: SDPA(Q_s, K_s, V_t) as it is


@dataclass
class P2PController:
    """Per-call state shared by every processor: the pairs, the rules, the step counter, the masks.

    ``step`` is advanced by the pipeline's step-end callback (see text2image.run_pairs).
    """

    pairs: Sequence[PairControl]
    total_steps: int
    latent_hw: tuple[int, int]
    rules: ControlRules = ControlRules()
    self_mode: Literal["map", "kv"] = "map"
    masks: torch.Tensor | None = None  # (P, 1, h, w) at latent resolution, or None: no mixing
    mix_window: StepWindow = StepWindow()
    mix_layers: Literal["self", "cross", "both"] = "both"
    blend: LocalBlend | None = None
    step: int = 0
    _mask_cache: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = field(default_factory=dict)
    _index_cache: dict[tuple[Any, ...], torch.Tensor] = field(default_factory=dict)
    _cross_cache: dict[tuple[int, torch.dtype, torch.device], CrossEdit] = field(default_factory=dict)

    # -- which pairs act now --------------------------------------------------------------
    def self_active(self, sequence_length: int) -> list[int]:
        if not self.rules.injects_at(layer_grid(self.latent_hw, sequence_length)):
            return []
        return [p for p, c in enumerate(self.pairs) if self.step in c.self_steps]

    def self_halves(self, halves: int) -> list[int]:
        return list(range(halves)) if self.rules.self_halves == "both" else [halves - 1]

    def cross_edit(self, like: torch.Tensor) -> CrossEdit:
        key = (self.step, like.dtype, like.device)
        if key not in self._cross_cache:
            chosen = [(p, edit) for p, c in enumerate(self.pairs) if (edit := c.cross_at(self.step)) is not None]
            length = self.pairs[0].mapping.length if self.pairs else 1
            matrices = np.stack([m for _, (m, _) in chosen]) if chosen else np.zeros((0, length, length), np.float32)
            owns = np.stack([o for _, (_, o) in chosen]) if chosen else np.zeros((0, length), np.float32)
            plain = [bool(not o.any() and np.array_equal(m, np.eye(length, dtype=np.float32))) for _, (m, o) in chosen]
            self._cross_cache.clear()  # one step at a time
            self._cross_cache[key] = CrossEdit(
                [p for p, _ in chosen], torch.from_numpy(matrices).to(like.device, like.dtype),
                torch.from_numpy(owns).to(like.device, like.dtype), plain,
            )
        return self._cross_cache[key]

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


def _rows(pair_indices: Sequence[int], num_pairs: int, halves: Sequence[int]) -> tuple[list[int], list[int]]:
    """Batch rows (targets, their sources) of the given pairs in the given CFG halves."""
    targets = [h * 2 * num_pairs + 2 * p + 1 for h in halves for p in pair_indices]
    return targets, [t - 1 for t in targets]


class P2PAttnProcessor:
    """diffusers' fused attention (AttnProcessor2_0) with Prompt-to-Prompt control on target rows.

    ``place`` ("down", "mid", "up") is the UNet part of the layer, which LocalBlend selects by.
    """

    def __init__(self, controller: P2PController, place: str | None = None) -> None:
        self.controller = controller
        self.place = place

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
        if is_cross:
            return self._cross(q, k, v, mask)
        c = self.controller
        pairs, halves = self._layout(q.shape[0])
        active = c.self_active(q.shape[2])
        if not active:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
        index = c.row_index(q.shape[0], tuple(active), tuple(c.self_halves(halves)), q.device)
        q2, k2, v2 = (q, k[index], v[index]) if c.self_mode == "kv" else (q[index], k[index], v)
        mask2 = mask[index] if mask is not None else None
        return F.scaled_dot_product_attention(q2, k2, v2, attn_mask=mask2, dropout_p=0.0, is_causal=False)

    def _cross(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Cross-attention control in the conditional half: SDPA(Q_s, K_s, S' V_t) + SDPA(Q_t, K_t, o' V_t)."""
        c = self.controller
        pairs, halves = self._layout(q.shape[0])
        edit = c.cross_edit(v)
        cond = [halves - 1]
        if not edit.pairs:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, is_causal=False)
        else:
            index = c.row_index(q.shape[0], tuple(edit.pairs), tuple(cond), q.device)
            changed = [i for i, plain in enumerate(edit.plain) if not plain]
            v2 = v
            rows: list[int] = []
            if changed:
                rows, _ = _rows([edit.pairs[i] for i in changed], pairs, cond)
                picked = torch.tensor(changed, device=v.device)
                v2 = v.clone()
                v2[rows] = edit.matrices[picked][:, None] @ v[rows]  # S' V_t
            out = F.scaled_dot_product_attention(q[index], k[index], v2, attn_mask=mask[index] if mask is not None else None)
            owning = [i for i in changed if bool(edit.owns[i].any())]
            if owning:
                own_rows, _ = _rows([edit.pairs[i] for i in owning], pairs, cond)
                weights = edit.owns[torch.tensor(owning, device=v.device)][:, None, :, None]
                out[own_rows] = out[own_rows] + F.scaled_dot_product_attention(
                    q[own_rows], k[own_rows], weights * v[own_rows], attn_mask=mask[own_rows] if mask is not None else None
                )
        blend = c.blend
        if blend is not None and blend.reads(self.place, layer_grid(c.latent_hw, q.shape[2])):
            blend.record(self._edited_maps(q, k, mask, edit, pairs, halves))
        return out

    def _edited_maps(self, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, edit: CrossEdit, pairs: int, halves: int) -> torch.Tensor:
        """The conditional rows' cross-attention probabilities after this step's edit, materialised (77 keys)."""
        first = (halves - 1) * 2 * pairs
        qc, kc = q[first:], k[first:]
        logits = qc @ kc.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if mask is not None:
            logits = logits + mask[first:]
        probs = logits.softmax(dim=-1)
        edited = probs.clone()
        for i, p in enumerate(edit.pairs):
            source, target = probs[2 * p], probs[2 * p + 1]
            edited[2 * p + 1] = source @ edit.matrices[i] + target * edit.owns[i]
        return edited

    def _mix(self, out: torch.Tensor, is_cross: bool) -> torch.Tensor:
        c = self.controller
        if not c.mixing(is_cross):
            return out
        pairs, halves = self._layout(out.shape[0])
        grouped = out.view(halves, pairs, 2, *out.shape[1:])
        weights = c.mask_at(out.shape[1], out)  # (P, L, 1)
        mixed = torch.lerp(grouped[:, :, 0], grouped[:, :, 1], weights[None])
        return torch.stack([grouped[:, :, 0], mixed], dim=2).view_as(out)


def place_of(name: str) -> str | None:
    """The UNet part of an attention processor's name."""
    return next((p for p in ("down", "mid", "up") if name.startswith(f"{p}_block")), None)


def install(unet: Any, controller: P2PController) -> dict[str, Any]:
    """Put the P2P processor on every attention layer; returns the processors to restore afterwards.

    Install AFTER any IP-Adapter is loaded (diffusers re-creates attn1 processors then).
    """
    saved = dict(unet.attn_processors)
    unet.set_attn_processor({name: P2PAttnProcessor(controller, place_of(name)) for name in saved})
    return saved
