"""Muse cosine masking: the ratio follows the arccos density; masks are exact and per sample."""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats

from crispedit.mgt.masking import (
    arccos_cdf,
    mask_tokens,
    masked_cross_entropy,
    sample_mask_ratios,
)

N = 20000


def _cdf(x):
    return (2 / np.pi) * np.arcsin(np.clip(x, 0, 1))


def test_mask_ratios_follow_arccos_density():
    r = sample_mask_ratios(N, torch.Generator().manual_seed(0)).numpy()
    result = stats.kstest(r, _cdf)
    print(f"KS arccos: D={result.statistic:.4f} p={result.pvalue:.3f}")
    assert result.pvalue > 0.01
    assert abs(arccos_cdf(0.5) - _cdf(0.5)) < 1e-12


def test_ks_rejects_a_wrong_density():
    """The same test rejects uniform ratios (and r = t, the un-transformed variable)."""
    uniform = torch.rand(N, generator=torch.Generator().manual_seed(0)).numpy()
    result = stats.kstest(uniform, _cdf)
    assert result.pvalue < 1e-6, result


def test_min_masking_rate_clamps():
    r = sample_mask_ratios(1000, torch.Generator().manual_seed(0), min_rate=0.3)
    assert float(r.min()) >= 0.3 - 1e-7


def test_mask_tokens_masks_round_n_r_positions_per_sample():
    ids = torch.randint(0, 16, (3, 8, 8), generator=torch.Generator().manual_seed(0))
    ratios = torch.tensor([0.0, 0.5, 1.0])
    out, masked = mask_tokens(ids, ratios, mask_id=16, generator=torch.Generator().manual_seed(1))
    assert masked.flatten(1).sum(1).tolist() == [1, 32, 64]  # at least one masked
    assert torch.equal(out[masked], torch.full_like(out[masked], 16))
    assert torch.equal(out[~masked], ids[~masked])


def test_loss_ignores_unmasked_positions():
    targets = torch.randint(0, 4, (1, 2, 2))
    masked = torch.tensor([[[True, False], [False, False]]])
    logits = torch.zeros(1, 4, 2, 2)
    logits[0, :, 0, 1] = torch.tensor([100.0, -100, -100, -100])  # wild logits on an unmasked spot
    assert torch.allclose(masked_cross_entropy(logits, targets, masked), torch.log(torch.tensor(4.0)))
