"""Region-hold: tau = 0 equals plain sampling; a full hold map returns the source exactly;
the on-device filter matches scipy."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from crispedit.mgt.region_hold import (
    adaptive_filter,
    gaussian_filter,
    hold_mask,
    local_variance,
)
from crispedit.mgt.sampler import SampleTrace, maskgit_sample


def _setup(tiny_components, b=2):
    cfg, vq, text, model = tiny_components
    torch.manual_seed(5)
    src = vq.encode(torch.rand(b, 3, 16, 16))
    prompts = ["make it gray", "invert the colors"][:b]
    cond, uncond = text.encode(prompts), text.empty()
    micro = torch.tensor([[16.0, 16.0, 0.0, 0.0, 6.0]] * b)
    return cfg, model, text, src, cond, uncond, micro, prompts


def _sample(model, src, cond, uncond, micro, seed=3, **kw):
    kw.setdefault("capture_blocks", (1, 2))
    return maskgit_sample(model, src, cond, uncond, micro, steps=8, guidance_scale=3.0,
                          generator=torch.Generator().manual_seed(seed), reference_strength=1.1, **kw)


def test_tau_zero_equals_plain_sampling(tiny_components):
    cfg, model, text, src, cond, uncond, micro, prompts = _setup(tiny_components)
    plain = _sample(model, src, cond, uncond, micro, tau=None)
    trace = SampleTrace()
    rows = text.keyword_rows(prompts, [["gray"], ["colors"]])
    held = _sample(model, src, cond, uncond, micro, tau=0.0, keyword_rows=rows, trace=trace)
    assert len(trace.hold_maps) == 8  # the capture and the map really ran at every step
    assert torch.equal(plain, held)
    assert not torch.equal(plain, _sample(model, src, cond, uncond, micro, seed=4, tau=None))  # seed matters


def test_hold_covering_everything_returns_source_tokens(tiny_components):
    cfg, model, text, src, cond, uncond, micro, _ = _setup(tiny_components)
    explicit = _sample(model, src, cond, uncond, micro, hold=torch.ones_like(src, dtype=torch.bool))
    assert torch.equal(explicit, src)
    # S' lies in [0, 1] on the transformer grid, but the bicubic upsampling to the token grid
    # overshoots (up to 1.1875^2 + 0.1875^2 < 1.45 for PyTorch's a = -0.75 kernel): 1.5 holds all
    by_tau = _sample(model, src, cond, uncond, micro, tau=1.5)
    assert torch.equal(by_tau, src)


def test_held_tokens_never_change(tiny_components):
    cfg, model, text, src, cond, uncond, micro, _ = _setup(tiny_components)
    hold = torch.zeros_like(src, dtype=torch.bool)
    hold[0, :4] = True
    hold[1, :, :3] = True
    out = _sample(model, src, cond, uncond, micro, hold=hold)
    assert torch.equal(out[hold], src[hold])
    assert not torch.equal(out[~hold], src[~hold])


def test_gaussian_and_variance_match_scipy_reflect():
    rng = np.random.default_rng(0)
    maps = rng.random((2, 32, 32))
    for size in (32, 4):  # 4x4: padding wider than the map, still scipy's reflect
        m = maps[:, :size, :size]
        got = gaussian_filter(torch.from_numpy(m), 1.5).numpy()
        want = np.stack([ndimage.gaussian_filter(x, 1.5, mode="reflect") for x in m])
        np.testing.assert_allclose(got, want, atol=1e-10)
        var = local_variance(torch.from_numpy(m)).numpy()
        mean = np.stack([ndimage.uniform_filter(x, 5, mode="reflect") for x in m])
        sq = np.stack([ndimage.uniform_filter(x * x, 5, mode="reflect") for x in m])
        np.testing.assert_allclose(var, np.clip(sq - mean**2, 0, None), atol=1e-10)


def test_adaptive_filter_keeps_range_and_hold_is_per_image():
    s = torch.rand(2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    s[1] *= 0.5
    f = adaptive_filter(s)
    for i in range(2):
        assert abs(float(f[i].min() - s[i].min())) < 1e-6 and abs(float(f[i].max() - s[i].max())) < 1e-6
    hold = hold_mask(s.flatten(1), (8, 8), (16, 16), tau=0.3)
    assert hold.shape == (2, 16, 16)
    assert hold[1].sum() > hold[0].sum()  # the fainter map holds more
