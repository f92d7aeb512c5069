"""Joint attention over [text; target; reference] with the log-gamma bias and on-device capture.

The reference (source image) stream shares every weight with the target stream and meets
the other tokens only here. Two fixes against the released EditMGT processor:

* gamma is an argument of each call, never state stored on the module, so a call with
  gamma = 1 after one with gamma = 1.1 really has no bias (upstream kept the stale value);
* gamma = 1 passes no mask at all to SDPA, so it is bit-identical to plain attention.

Region-hold needs the text-query -> target-key attention of a few blocks. SDPA does not
return weights, so `AttentionCapture` recomputes only those rows (T x (T+N) per head, a
small fraction of the full (T+2N)^2 attention) and accumulates a (B, N) sum on the device:
nothing is copied to the CPU during sampling.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb

if TYPE_CHECKING:
    from diffusers.models.attention_processor import Attention

Rotary = tuple[torch.Tensor, torch.Tensor]


def reference_bias(n_main: int, n_ref: int, gamma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """Additive mask: log(gamma) between reference tokens and all other tokens, 0 elsewhere.

    softmax(s + log gamma) scales the unnormalised weight exp(s) by gamma, so this is the same
    as multiplying attention to and from the reference by gamma before normalising.
    Returns None for gamma == 1 so that SDPA takes exactly the unbiased path.
    """
    if n_ref == 0 or float(gamma) == 1.0:
        return None
    if gamma <= 0:
        raise ValueError(f"reference_strength (gamma) must be > 0, got {gamma}")
    log_gamma = math.log(gamma)
    length = n_main + n_ref
    bias = torch.zeros(length, length, dtype=dtype, device=device)
    bias[n_main:, :n_main] = log_gamma
    bias[:n_main, n_main:] = log_gamma
    return bias


class AttentionCapture:
    """Accumulates text->target attention probabilities over chosen blocks and all heads.

    `row_weights` (B, T) selects and weights the text rows (keyword tokens); None means the
    mean over all T rows, as upstream. `batch_slice` picks the conditional half of a
    classifier-free-guidance batch, so the map is batch-aware: one (N,) map per image.
    The probabilities are a softmax over [text; target] keys only (the reference stream
    is left out, as upstream), and the reference bias is 0 between text and target.
    """

    def __init__(self, blocks: set[int] | frozenset[int], row_weights: torch.Tensor | None = None, batch_slice: slice = slice(None)) -> None:
        self.blocks = frozenset(blocks)
        self.row_weights = row_weights
        self.batch_slice = batch_slice
        self.total: torch.Tensor | None = None
        self.count = 0

    def reset(self) -> None:
        self.total = None
        self.count = 0

    def wants(self, block_index: int) -> bool:
        return block_index in self.blocks

    @torch.no_grad()
    def add(self, q_text: torch.Tensor, k_main: torch.Tensor, n_text: int) -> None:
        """q_text: (B, H, T, d) rotated text queries; k_main: (B, H, T+N, d) rotated keys."""
        q = q_text[self.batch_slice].float()
        k = k_main[self.batch_slice].float()
        scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
        probs = scores.softmax(dim=-1)[..., n_text:]  # (b, H, T, N)
        if self.row_weights is None:
            per_image = probs.mean(dim=2).sum(dim=1)
        else:
            weights = self.row_weights.to(probs.device, probs.dtype)
            weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-12)
            per_image = torch.einsum("bhtn,bt->bn", probs, weights)
        self.total = per_image if self.total is None else self.total + per_image
        self.count += q.shape[1]

    def consolidated(self) -> torch.Tensor:
        """Mean over layers and heads (and rows), min-max normalised per image: (B, N) in [0, 1]."""
        if self.total is None:
            raise RuntimeError("no attention was captured: check capture_blocks against the model depth")
        s = self.total / self.count
        lo = s.amin(dim=1, keepdim=True)
        hi = s.amax(dim=1, keepdim=True)
        return (s - lo) / (hi - lo + 1e-8)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


class EditMGTAttnProcessor:
    """Attention of one block over [main; reference] with shared projections.

    Double blocks: main = [text (add_* projections); target (to_* projections)].
    Single blocks: main = the already-joined [text; target] (to_* projections).
    The reference goes through the target's to_* projections and QK norms.
    """

    def _project(self, attn: Attention, x: torch.Tensor, context: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if context:
            q, k, v = attn.add_q_proj(x), attn.add_k_proj(x), attn.add_v_proj(x)
            q, k, v = _heads(q, attn.heads), _heads(k, attn.heads), _heads(v, attn.heads)
            return attn.norm_added_q(q), attn.norm_added_k(k), v
        q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        q, k, v = _heads(q, attn.heads), _heads(k, attn.heads), _heads(v, attn.heads)
        return attn.norm_q(q), attn.norm_k(k), v

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        rotary: Rotary,
        encoder_hidden_states: torch.Tensor | None = None,
        reference_hidden_states: torch.Tensor | None = None,
        gamma: float = 1.0,
        capture: AttentionCapture | None = None,
        block_index: int = -1,
        n_text: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Returns (target or joined output, text output or None, reference output or None)."""
        parts = []
        if encoder_hidden_states is not None:
            parts.append(self._project(attn, encoder_hidden_states, context=True))
        parts.append(self._project(attn, hidden_states, context=False))
        if reference_hidden_states is not None:
            parts.append(self._project(attn, reference_hidden_states, context=False))
        q = torch.cat([p[0] for p in parts], dim=2)
        k = torch.cat([p[1] for p in parts], dim=2)
        v = torch.cat([p[2] for p in parts], dim=2)
        q = apply_rotary_emb(q, rotary)
        k = apply_rotary_emb(k, rotary)

        n_ref = 0 if reference_hidden_states is None else reference_hidden_states.shape[1]
        n_main = q.shape[2] - n_ref
        if capture is not None and capture.wants(block_index):
            capture.add(q[:, :, :n_text], k[:, :, :n_main], n_text)

        bias = reference_bias(n_main, n_ref, gamma, q.dtype, q.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.transpose(1, 2).flatten(2).to(q.dtype)

        main, ref = out[:, :n_main], (out[:, n_main:] if n_ref else None)
        if encoder_hidden_states is None:  # single block: output projection lives in the block
            return main, None, ref
        n_ctx = encoder_hidden_states.shape[1]
        context_out, target_out = main[:, :n_ctx], main[:, n_ctx:]
        target_out = attn.to_out[1](attn.to_out[0](target_out))
        context_out = attn.to_add_out(context_out)
        if ref is not None:
            ref = attn.to_out[1](attn.to_out[0](ref))
        return target_out, context_out, ref
