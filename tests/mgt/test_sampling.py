"""MaskGIT sampling invariants, read off the per-step trace: decoded tokens are never re-masked,
every masked position's confidence is finite, at temperature 0 the tokens kept are the most
confident, and the number kept masked follows the schedule; plus the Gumbel noise against
scipy's Gumbel distribution, the non-finite guard and the guidance threshold."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from crispedit.mgt import sampler
from crispedit.mgt.sampler import SampleTrace, gumbel_noise, maskgit_sample, scheduled_mask_count


def _setup(tiny_components, b=2):
    cfg, vq, text, model = tiny_components
    torch.manual_seed(5)
    src = vq.encode(torch.rand(b, 3, 16, 16))  # (b, 8, 8) tokens
    cond, uncond = text.encode(["make it gray", "invert the colors"][:b]), text.empty()
    micro = torch.tensor([[16.0, 16.0, 0.0, 0.0, 6.0]] * b)
    return model, src, cond, uncond, micro


def _run(tiny_components, steps=6, seed=3, b=2, **kw):
    model, src, cond, uncond, micro = _setup(tiny_components, b)
    kw.setdefault("guidance_scale", 3.0)
    trace = SampleTrace()
    out = maskgit_sample(model, src, cond, uncond, micro, steps=steps, generator=torch.Generator().manual_seed(seed),
                         reference_strength=1.1, trace=trace, **kw)
    return model, src, out, trace


VARIANTS = [
    pytest.param({}, id="guided"),
    pytest.param({"guidance_scale": 1.0}, id="unguided"),
    pytest.param({"tau": 0.4, "capture_blocks": (1, 2)}, id="region-hold"),
    pytest.param({"masking_schedule": "linear", "timestep_mode": "step_index"}, id="linear-step-index"),
    pytest.param({"temperature": (6.0, 4.0)}, id="hot"),  # above upstream's float-max margin: +inf still holds
]


@pytest.mark.parametrize("kw", VARIANTS)
def test_decoded_tokens_are_never_remasked_and_confidences_are_finite(tiny_components, kw):
    model, _, out, trace = _run(tiny_components, **kw)
    mask_id = model.config.vocab_size - 1
    steps = trace.inputs + [out.reshape(out.shape[0], -1)]
    assert len(trace.inputs) == 6 and len(trace.confidences) == 5
    for k, conf in enumerate(trace.confidences):
        masked = steps[k] == mask_id
        assert torch.isfinite(conf[masked]).all(), f"step {k}: non-finite confidence at a masked position"
        assert torch.isposinf(conf[~masked]).all(), f"step {k}: a decoded token can be re-masked"
        decoded = ~masked
        assert torch.equal(steps[k + 1][decoded], steps[k][decoded]), f"step {k}: decoded tokens changed or were re-masked"
    assert not (out == mask_id).any()
    if "tau" in kw:
        assert any(h.any() for h in trace.hold_maps)  # region-hold really held something


def test_temperature_zero_keeps_the_most_confident_tokens(tiny_components):
    model, _, out, trace = _run(tiny_components, steps=8, temperature=(0.0, 0.0))
    mask_id = model.config.vocab_size - 1
    after = trace.inputs[1:]
    for k, conf in enumerate(trace.confidences):
        was_masked = trace.inputs[k] == mask_id
        remasked, kept = was_masked & (after[k] == mask_id), was_masked & (after[k] != mask_id)
        assert remasked.any(1).all() and kept.any(1).all()
        for i in range(conf.shape[0]):
            assert conf[i][remasked[i]].max() <= conf[i][kept[i]].min(), f"step {k}: a less confident token was kept"
            assert (conf[i][was_masked[i]] <= 0).all()  # log-probabilities: no noise at T = 0


def test_gumbel_noise_is_finite_and_gumbel_distributed():
    g = gumbel_noise((200_000,), torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.isfinite(g).all()
    ks = stats.kstest(g.double().numpy(), stats.gumbel_r.cdf)
    assert ks.pvalue > 1e-3, ks
    assert abs(float(g.double().mean()) - np.euler_gamma) < 0.01 and abs(float(g.double().var()) - math.pi**2 / 6) < 0.03


def test_nonfinite_confidence_stops_sampling(tiny_components, monkeypatch):
    monkeypatch.setattr(sampler, "gumbel_noise", lambda shape, generator, device: torch.full(shape, float("nan")))
    with pytest.raises(FloatingPointError, match="non-finite confidence"):
        _run(tiny_components)


# Expected counts written from the formula floor(64 m), m = cos(pi/2 (k+1)/6) or 1 - (k+1)/6,
# evaluated in float32 as the released scheduler does: at (k+1)/6 = 2/3, cos(pi/3) is 0.49999997
# in float32 (31 of 64 tokens); float64 gives 0.5000000000000001 (32).
SCHEDULES = {"cosine": [64, 61, 55, 45, 31, 16], "linear": [64, 53, 42, 32, 21, 10]}


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("tau", [None, 0.4])
def test_mask_count_follows_the_schedule(tiny_components, schedule, tau):
    model, _, out, trace = _run(tiny_components, masking_schedule=schedule, tau=tau, capture_blocks=(1, 2))
    mask_id = model.config.vocab_size - 1
    counts = [(x == mask_id).sum(1).tolist() for x in trace.inputs]
    assert counts == [[n, n] for n in SCHEDULES[schedule]]
    assert [int(c[0]) for c in trace.mask_counts] == SCHEDULES[schedule][1:]
    assert [scheduled_mask_count(schedule, k, 6, 64) for k in range(5)] == SCHEDULES[schedule][1:]


@pytest.mark.parametrize(("schedule", "bound"), [("cosine", "upper"), ("linear", "lower")])
def test_mask_count_bounds_when_steps_outnumber_tokens(tiny_components, schedule, bound):
    """20 steps over 4x4 tokens: the cosine schedule asks early for more than n_masked - 1 and the
    linear one late for 0; each step keeps at least one token masked and decodes at least one
    while more than one is masked (a single masked token waits for the last step, as upstream)."""
    model, _, cond, uncond, micro = _setup(tiny_components, 1)
    src = torch.randint(0, model.config.codebook_size, (1, 4, 4), generator=torch.Generator().manual_seed(0))
    trace = SampleTrace()
    out = maskgit_sample(model, src, cond, uncond, micro, steps=20, guidance_scale=3.0, masking_schedule=schedule,
                         generator=torch.Generator().manual_seed(0), trace=trace)
    mask_id = model.config.vocab_size - 1
    n_masked = [int((x == mask_id).sum()) for x in trace.inputs]
    hits = set()
    for k in range(19):
        asked = scheduled_mask_count(schedule, k, 20, 16)
        hits |= {"upper"} if asked > n_masked[k] - 1 else set()
        hits |= {"lower"} if asked < 1 else set()
        assert n_masked[k + 1] == max(1, min(asked, n_masked[k] - 1))
    assert bound in hits and not (out == mask_id).any()


def test_guidance_runs_only_above_one(tiny_components):
    """As the released pipeline: scale <= 1 samples the conditional branch alone (batch B, not 2B)."""
    model, src, cond, uncond, micro = _setup(tiny_components)
    batches = []
    hook = model.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
    try:
        outs = [maskgit_sample(model, src, cond, uncond, micro, steps=4, guidance_scale=s,
                               generator=torch.Generator().manual_seed(1)) for s in (0.5, 1.0, 1.5)]
    finally:
        hook.remove()
    assert batches == [2] * 8 + [4] * 4
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[1], outs[2])
