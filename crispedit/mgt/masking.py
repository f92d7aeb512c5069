"""Muse cosine masking for training.

t ~ U(0, 1), r = cos(pi t / 2): the mask ratio has the truncated arccos density
p(r) = (2/pi) (1 - r^2)^(-1/2) on [0, 1] (CDF (2/pi) arcsin r), which puts more weight on
high mask ratios, the hard early steps of sampling. Per sample, n = max(1, round(N r))
random positions are replaced by the mask id; the loss is taken on those positions only.
"""

from __future__ import annotations

import math

import torch


def sample_mask_ratios(batch_size: int, generator: torch.Generator | None = None, min_rate: float = 0.0,
                       device: torch.device | str = "cpu") -> torch.Tensor:
    t = torch.rand(batch_size, generator=generator, device=device)
    return torch.cos(math.pi * t / 2).clamp(min=min_rate)


def arccos_cdf(r: float | torch.Tensor):
    """CDF of the mask-ratio density, for goodness-of-fit checks."""
    if isinstance(r, torch.Tensor):
        return (2 / math.pi) * torch.asin(r.clamp(0, 1))
    return (2 / math.pi) * math.asin(min(max(r, 0.0), 1.0))


def mask_tokens(ids: torch.Tensor, ratios: torch.Tensor, mask_id: int, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask round(N r) (at least 1) uniformly chosen positions per sample.

    ids: (B, H, W) token ids; ratios: (B,). Returns (masked ids, bool mask of masked positions).
    Uses the rank of i.i.d. uniform noise so the count is exact per sample, not Bernoulli.
    """
    b = ids.shape[0]
    flat = ids.reshape(b, -1)
    n_tokens = flat.shape[1]
    n_mask = (ratios * n_tokens).round().clamp(min=1, max=n_tokens).long()
    noise = torch.rand(flat.shape, generator=generator, device=ids.device)
    ranks = noise.argsort(dim=1).argsort(dim=1)
    masked = ranks < n_mask.to(ids.device)[:, None]
    out = torch.where(masked, torch.full_like(flat, mask_id), flat)
    return out.reshape(ids.shape), masked.reshape(ids.shape)


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over masked positions only. logits (B, V, H, W); targets/masked (B, H, W)."""
    labels = torch.where(masked, targets, torch.full_like(targets, -100))
    return torch.nn.functional.cross_entropy(logits.float(), labels, ignore_index=-100)
