"""crispedit's sampler beside the released EditMGT sampling loop (released_reference.py, rewritten
from weichow23/EditMGT @23a98af), on the same tiny weights and the same random draws.

Both consume one generator each, seeded alike, in the released order (a multinomial over every
position, then one uniform per position); the model's inputs are recorded by a forward pre-hook,
so "per-step input ids equal" is read off the transformer itself, not off either sampler. The
released conventions are used: timestep = step index, temperature (2, 0). Region-hold runs at
batch size 1 with guidance on, the only way the released code runs it, on the two grids it
supports: 32x32 tokens with a 32x32 transformer grid (no down block) and 64x64 tokens with the
2x down block, where the map is upsampled bicubically to 64x64.
"""

from __future__ import annotations

import pytest
import torch

from crispedit.core.presets import find_preset
from crispedit.mgt.config import MGTConfig
from crispedit.mgt.sampler import SampleTrace, maskgit_sample
from crispedit.mgt.text import TextEmbeddings
from crispedit.mgt.transformer import build_transformer
from tests.mgt.released_reference import released_sample

_MODELS: dict[bool, torch.nn.Module] = {}


def _model(downsample: bool) -> torch.nn.Module:
    if downsample not in _MODELS:
        t = MGTConfig.load(find_preset("mgt", "tiny")).model.transformer
        torch.manual_seed(0)
        _MODELS[downsample] = build_transformer(t.model_copy(update={"downsample": downsample, "upsample": downsample})).eval()
    return _MODELS[downsample]


def _inputs(model, side: int, batch: int, seed: int = 1):
    t = model.config
    g = torch.Generator().manual_seed(seed)
    ref = torch.randint(0, t.codebook_size, (batch, side, side), generator=g)
    n_text = 8
    cond = TextEmbeddings(torch.randn(batch, n_text, t.joint_attention_dim, generator=g), torch.randn(batch, t.pooled_projection_dim, generator=g))
    uncond = TextEmbeddings(torch.randn(1, n_text, t.joint_attention_dim, generator=g).expand(batch, -1, -1),
                            torch.randn(1, t.pooled_projection_dim, generator=g).expand(batch, -1))
    micro = torch.tensor([[16.0, 16.0, 0.0, 0.0, 6.0]])
    return ref, cond, uncond, micro


def _record_inputs(model, into: list[torch.Tensor]):
    return model.register_forward_pre_hook(lambda module, args: into.append(args[0].clone()))


def _both(side: int, downsample: bool, *, schedule: str, guidance: float, gamma: float, steps: int, batch: int = 1,
          tau: float | None = None, blocks: tuple[int, ...] = (), seed: int = 7):
    model = _model(downsample)
    ref, cond, uncond, micro = _inputs(model, side, batch)
    ours_in, theirs_in, theirs_holds = [], [], []
    trace = SampleTrace()
    hook = _record_inputs(model, ours_in)
    try:
        ours = maskgit_sample(model, ref, cond, uncond, micro.expand(batch, -1), steps=steps, guidance_scale=guidance,
                              generator=torch.Generator().manual_seed(seed), reference_strength=gamma, tau=tau,
                              capture_blocks=blocks, timestep_mode="step_index", masking_schedule=schedule, trace=trace)
    finally:
        hook.remove()
    hook = _record_inputs(model, theirs_in)
    try:
        theirs = released_sample(model, ref, cond.hidden, cond.pooled, uncond.hidden, uncond.pooled, micro,
                                 num_inference_steps=steps, guidance_scale=guidance, generator=torch.Generator().manual_seed(seed),
                                 reference_strength=gamma, masking_schedule=schedule,
                                 attention_enable_blocks=list(blocks) if tau is not None else None,
                                 local_guidance=tau or 0.0, on_hold=theirs_holds.append)
    finally:
        hook.remove()
    return ours, theirs, ours_in, theirs_in, trace.hold_maps, theirs_holds


def _assert_same_run(ours, theirs, ours_in, theirs_in, mask_id: int, batch: int, guided: bool):
    assert len(ours_in) == len(theirs_in)
    assert all(x.shape[0] == (2 * batch if guided else batch) for x in ours_in)  # guidance on iff scale > 1
    for k, (a, b) in enumerate(zip(ours_in, theirs_in)):
        assert torch.equal(a, b), f"step {k}: {(a != b).sum().item()} input ids differ"
    assert torch.equal(ours, theirs)
    assert not (ours == mask_id).any()
    assert len(torch.unique(ours)) > 4  # a real sample, not a constant map


PLAIN_FAST = [  # 32x32 tokens (16x16 transformer grid), pairwise over schedule x guidance x gamma
    ("cosine", 3.0, 1.1, 2),
    ("cosine", 1.0, 1.0, 2),
    ("linear", 3.0, 1.0, 1),
    ("linear", 0.5, 1.1, 1),  # below 1: the released pipeline samples the conditional branch alone
]


@pytest.mark.parametrize(("schedule", "guidance", "gamma", "batch"), PLAIN_FAST)
def test_plain_sampling_equals_released_at_32x32_tokens(schedule, guidance, gamma, batch):
    ours, theirs, ours_in, theirs_in, _, _ = _both(32, True, schedule=schedule, guidance=guidance, gamma=gamma, steps=9, batch=batch)
    _assert_same_run(ours, theirs, ours_in, theirs_in, _model(True).config.vocab_size - 1, batch, guidance > 1)


@pytest.mark.slow
@pytest.mark.parametrize(("schedule", "guidance", "gamma"), [("cosine", 3.0, 1.0), ("linear", 1.0, 1.1)])
def test_plain_sampling_equals_released_at_64x64_tokens(schedule, guidance, gamma):
    ours, theirs, ours_in, theirs_in, _, _ = _both(64, True, schedule=schedule, guidance=guidance, gamma=gamma, steps=6)
    _assert_same_run(ours, theirs, ours_in, theirs_in, _model(True).config.vocab_size - 1, 1, guidance > 1)


REGION_HOLD = [  # (tokens, transformer down block, schedule, gamma, capture blocks, tau)
    pytest.param(32, False, "cosine", 1.1, (1, 2), 0.3, id="32-cosine-1.1-single"),
    pytest.param(32, False, "linear", 1.0, (0, 1, 2), 0.3, id="32-linear-1-all", marks=pytest.mark.slow),
    pytest.param(64, True, "cosine", 1.0, (0, 1, 2), 0.3, id="64-cosine-1-all", marks=pytest.mark.slow),
    pytest.param(64, True, "linear", 1.1, (1, 2), 0.25, id="64-linear-1.1-single", marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("side", "downsample", "schedule", "gamma", "blocks", "tau"), REGION_HOLD)
def test_region_hold_equals_released(side, downsample, schedule, gamma, blocks, tau):
    ours, theirs, ours_in, theirs_in, ours_holds, theirs_holds = _both(
        side, downsample, schedule=schedule, guidance=3.0, gamma=gamma, steps=4 if side == 32 else 6, tau=tau, blocks=blocks)
    assert len(ours_holds) == len(theirs_holds) == len(ours_in)
    for k, (a, b) in enumerate(zip(ours_holds, theirs_holds)):
        assert a.shape == b.shape == (1, side * side)
        assert torch.equal(a, b), f"step {k}: hold sets differ at {(a != b).sum().item()} positions"
    fractions = [float(h.float().mean()) for h in ours_holds]
    assert all(0 < f < 1 for f in fractions), fractions  # the hold set really splits the image
    _assert_same_run(ours, theirs, ours_in, theirs_in, _model(downsample).config.vocab_size - 1, 1, True)

    mask_id = _model(downsample).config.vocab_size - 1
    source = _inputs(_model(downsample), side, 1)[0].reshape(1, -1)
    held_last = ours_holds[-1] & (ours_in[-1][1:].reshape(1, -1) == mask_id)  # conditional half's input
    assert held_last.any() and (ours.reshape(1, -1) == source)[held_last].all()  # they took the source tokens
