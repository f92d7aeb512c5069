"""Region-hold: keep source tokens where the instruction's attention says "not edited".

From the consolidated text->target attention S (B, h, w) in [0, 1] (attention.py), the
adaptive filter of EditMGT smooths low-variance areas and keeps sharp peaks:

    G  = gaussian_filter(S, sigma=1.5, mode=reflect)
    V  = 5x5 local variance of S, min-max normalised
    w  = 1 - 0.7 V
    S' = w G + (1 - w) S;  where S > its 90th percentile: S' = 0.7 S + 0.3 S'
    S' rescaled to [min S, max S]

Everything is batched torch on the map's device: one map per image, no CPU round trip
(upstream ran scipy on a CPU copy of the full attention matrix, at batch size 1 only).
The hold set is {S' < tau} after bicubic upsampling to the token grid; tau = 0 holds nothing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _reflect_index(n: int, pad: int, device: torch.device) -> torch.Tensor:
    """Indices of scipy's 'reflect' (half-sample symmetric) padding, valid for any pad size."""
    idx = torch.arange(-pad, n + pad, device=device)
    period = 2 * n
    idx = torch.remainder(idx, period)
    return torch.where(idx >= n, period - 1 - idx, idx)


def _pad_reflect(x: torch.Tensor, pad: int) -> torch.Tensor:
    """x: (B, H, W) -> (B, H + 2 pad, W + 2 pad), symmetric about the edge like scipy."""
    rows = _reflect_index(x.shape[-2], pad, x.device)
    cols = _reflect_index(x.shape[-1], pad, x.device)
    return x[:, rows][:, :, cols]


def _separable(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Correlate (B, H, W) with a 1D kernel along both axes, reflect-padded."""
    pad = kernel.numel() // 2
    xp = _pad_reflect(x, pad).unsqueeze(1)
    k = kernel.to(x.dtype)
    xp = F.conv2d(xp, k.view(1, 1, 1, -1))
    xp = F.conv2d(xp, k.view(1, 1, -1, 1))
    return xp.squeeze(1)


def gaussian_filter(x: torch.Tensor, sigma: float = 1.5, truncate: float = 4.0) -> torch.Tensor:
    """Matches scipy.ndimage.gaussian_filter(mode='reflect') on each (H, W) map."""
    radius = int(truncate * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    return _separable(x, kernel / kernel.sum())


def local_variance(x: torch.Tensor, size: int = 5) -> torch.Tensor:
    box = torch.full((size,), 1.0 / size, device=x.device, dtype=torch.float64)
    mean = _separable(x, box)
    return (_separable(x * x, box) - mean * mean).clamp_min(0)


def _minmax(x: torch.Tensor) -> torch.Tensor:
    lo = x.flatten(1).amin(1)[:, None, None]
    hi = x.flatten(1).amax(1)[:, None, None]
    return (x - lo) / (hi - lo + 1e-8)


def adaptive_filter(s: torch.Tensor, sigma: float = 1.5, variance_weight: float = 0.7, peak_quantile: float = 0.9,
                    peak_keep: float = 0.7) -> torch.Tensor:
    """EditMGT's adaptive filtering of a batch of attention maps (B, h, w)."""
    g = gaussian_filter(s, sigma)
    v = _minmax(local_variance(s))
    w = 1 - variance_weight * v
    out = w * g + (1 - w) * s
    q = torch.quantile(s.flatten(1).float(), peak_quantile, dim=1).to(s.dtype)[:, None, None]
    out = torch.where(s > q, peak_keep * s + (1 - peak_keep) * out, out)
    s_lo = s.flatten(1).amin(1)[:, None, None]
    s_hi = s.flatten(1).amax(1)[:, None, None]
    return s_lo + _minmax(out) * (s_hi - s_lo)


def hold_mask(consolidated: torch.Tensor, grid: tuple[int, int], token_grid: tuple[int, int], tau: float) -> torch.Tensor:
    """(B, h*w) consolidated attention on the transformer grid -> (B, H, W) bool hold set."""
    b = consolidated.shape[0]
    s = consolidated.reshape(b, *grid)
    filtered = adaptive_filter(s)
    if tuple(grid) != tuple(token_grid):
        filtered = F.interpolate(filtered[:, None], size=token_grid, mode="bicubic", align_corners=False)[:, 0]
    if tau <= 0 or math.isnan(tau):
        return torch.zeros(b, *token_grid, dtype=torch.bool, device=consolidated.device)
    return filtered < tau
