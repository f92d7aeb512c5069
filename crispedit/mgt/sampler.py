"""MaskGIT sampling with classifier-free guidance and region-hold.

Step k of N (as aMUSEd/EditMGT's scheduler): sample every masked token from
softmax(l_u + s (l_c - l_u)); apply region-hold (masked tokens in the hold set take the
source token); on the last step return; otherwise keep L = max(1, min(floor(N_tok m),
n_masked - 1)) tokens masked, m = cos(pi/2 (k+1)/N) (or 1 - (k+1)/N), choosing the L lowest
confidences c = log p(x) + T_k g, g = -log(-log u) Gumbel noise, T_k = linspace(T0, T1, N)[k].
Tokens already decoded before step k get c = +inf, so they are never re-masked; a masked
position whose confidence is not finite stops the run (`FloatingPointError`).

The released code's arithmetic is kept where it decides a token: m and floor(N_tok m) in
float32 (float64 keeps one more token masked where (k+1)/N = 2/3, e.g. at 36 steps), guidance
only for s > 1 (s <= 1 samples the conditional branch alone), one multinomial draw over every
position and then one uniform per position, in that order, from the caller's generator.
tests/mgt/test_released_equivalence.py runs this beside a re-implementation of the released
loop on the same weights and noise; docs/trainer.md lists what differs on purpose.

The unconditional branch is the negative prompt with the SAME reference image, as upstream.
Region-hold only reads attention (attention.py) and draws no random numbers, so with
tau = 0 the token sequence is identical to plain sampling for the same seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .attention import AttentionCapture
from .region_hold import hold_mask
from .text import TextEmbeddings


@dataclass
class SampleTrace:
    """Optional per-step record for tests and debugging (kept on device).

    inputs[k]       (B, N) ids the model saw at step k (mask id where masked);
    confidences[k]  (B, N) confidence used to choose what stays masked after step k
                    (+inf at positions decoded before step k); none for the last step;
    mask_counts[k]  (B,) tokens kept masked after step k (the schedule's L);
    hold_maps[k]    (B, N) the attention hold set at step k, when region-hold runs.
    """

    inputs: list[torch.Tensor] = field(default_factory=list)
    confidences: list[torch.Tensor] = field(default_factory=list)
    mask_counts: list[torch.Tensor] = field(default_factory=list)
    hold_maps: list[torch.Tensor] = field(default_factory=list)


def _batched(x: torch.Tensor, b: int) -> torch.Tensor:
    return x.expand(b, *x.shape[1:]) if x.shape[0] == 1 and b != 1 else x


MASKING_SCHEDULES = ("cosine", "linear")


def mask_ratio(schedule: str, step: int, steps: int) -> torch.Tensor:
    """Fraction of tokens still masked after `step` of `steps`, a float32 scalar as upstream's
    scheduler computes it (its ratio is (step + 1) / N of an integer tensor, cos in float32)."""
    progress = torch.tensor(step + 1, dtype=torch.float32) / steps
    if schedule == "cosine":
        return torch.cos(progress * math.pi / 2)
    if schedule == "linear":
        return 1 - progress
    raise ValueError(f"masking_schedule must be 'cosine' or 'linear', got {schedule!r}")


def scheduled_mask_count(schedule: str, step: int, steps: int, n_tokens: int) -> int:
    """floor(N_tok m) in float32, before the bounds [1, n_masked - 1] of the sampling step."""
    return int((n_tokens * mask_ratio(schedule, step, steps)).floor())


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Standard Gumbel noise -log(-log u), u ~ U[0, 1), always finite: u is clamped away from 0
    and -log u away from 0 (a u of exactly 1, which some backends' uniform can return, gives 0)."""
    u = torch.rand(shape, generator=generator, device=device)
    return -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))


def step_timestep(mode: str, masked: torch.Tensor, step: int, steps: int) -> torch.Tensor:
    """What the model is given as its timestep at `step` (it multiplies by 1000 itself).

    ratio        the fraction of tokens still masked (what `train.timestep_mode: ratio` trains with);
    ratio_x1000  that fraction times 1000 (upstream EditMGT training, `train.timestep_mode: ratio_x1000`);
    step_index   N-1-k, upstream EditMGT inference: how the released weights are sampled.
    """
    if mode == "ratio":
        return masked.float().mean(dim=1)
    if mode == "ratio_x1000":
        return masked.float().mean(dim=1) * 1000
    if mode == "step_index":
        return torch.full((masked.shape[0],), float(steps - 1 - step), device=masked.device)
    raise ValueError(f"timestep_mode must be 'ratio', 'ratio_x1000' or 'step_index', got {mode!r}")


@torch.no_grad()
def maskgit_sample(
    model: torch.nn.Module,
    reference_ids: torch.Tensor,
    cond: TextEmbeddings,
    uncond: TextEmbeddings,
    micro_conds: torch.Tensor,
    *,
    steps: int,
    guidance_scale: float,
    generator: torch.Generator,
    reference_strength: float = 1.0,
    tau: float | None = None,
    capture_blocks: tuple[int, ...] = (),
    keyword_rows: torch.Tensor | None = None,
    hold: torch.Tensor | None = None,
    temperature: tuple[float, float] = (2.0, 0.0),
    timestep_mode: str = "ratio",
    masking_schedule: str = "cosine",
    task_ids: torch.Tensor | None = None,
    trace: SampleTrace | None = None,
) -> torch.Tensor:
    """Token ids (B, H, W) of the edited image.

    reference_ids: (B, H, W) source tokens. tau=None disables region-hold (no capture);
    a float enables capture in `capture_blocks` and holds {S' < tau}. `hold` (B, H, W) bool
    is an explicit hold set (e.g. from a dataset mask), applied in addition. `task_ids` (B,)
    selects task vectors (the same task in both guidance branches). `timestep_mode`: see
    `step_timestep` and docs/trainer.md. Guidance runs only for `guidance_scale` > 1, as the
    released pipeline (and crispedit's other generators); at or below 1 the conditional
    branch is sampled alone.
    """
    cfg = model.config
    if masking_schedule not in MASKING_SCHEDULES:
        raise ValueError(f"masking_schedule must be 'cosine' or 'linear', got {masking_schedule!r}")
    mask_id = cfg.vocab_size - 1
    device = reference_ids.device
    b, h, w = reference_ids.shape
    n_tok = h * w
    use_cfg = guidance_scale > 1.0
    cond_h, cond_p = _batched(cond.hidden, b), _batched(cond.pooled, b)
    if use_cfg:
        text_h = torch.cat([_batched(uncond.hidden, b), cond_h]).to(device)
        text_p = torch.cat([_batched(uncond.pooled, b), cond_p]).to(device)
        ref = torch.cat([reference_ids, reference_ids])
        micro = torch.cat([micro_conds, micro_conds]).to(device)
    else:
        text_h, text_p, ref, micro = cond_h.to(device), cond_p.to(device), reference_ids, micro_conds.to(device)
    if tau is not None:
        blocks = set(capture_blocks)
        if not blocks or max(blocks) >= model.num_blocks:
            raise ValueError(f"capture_blocks {sorted(blocks)} must be non-empty and < {model.num_blocks} blocks")
    # Transformer grid (after the optional 2x down block) vs token grid.
    grid = (h // 2, w // 2) if cfg.downsample else (h, w)
    src_flat = reference_ids.reshape(b, -1)
    hold_flat = hold.reshape(b, -1).to(device) if hold is not None else None
    temps = torch.linspace(temperature[0], temperature[1], steps).tolist()

    ids = torch.full((b, n_tok), mask_id, dtype=torch.long, device=device)
    for k in range(steps):
        masked = ids == mask_id
        if trace is not None:
            trace.inputs.append(ids.clone())
        timestep = step_timestep(timestep_mode, masked, k, steps)
        capture = None
        if tau is not None:
            capture = AttentionCapture(blocks, keyword_rows, slice(b, 2 * b) if use_cfg else slice(None))
        model_in = ids.reshape(b, h, w)
        tasks = None if task_ids is None else _batched(task_ids.reshape(-1, 1), b).reshape(b).to(device)
        if use_cfg:
            model_in, timestep = torch.cat([model_in, model_in]), torch.cat([timestep, timestep])
            tasks = None if tasks is None else torch.cat([tasks, tasks])
        logits = model(model_in, text_h, text_p, micro, timestep, reference_ids=ref,
                       reference_strength=reference_strength, capture=capture, task_ids=tasks)
        if use_cfg:
            l_u, l_c = logits.float().chunk(2)
            logits = l_u + guidance_scale * (l_c - l_u)
        logits = logits.float().permute(0, 2, 3, 1).reshape(b, n_tok, -1)
        probs = logits.softmax(dim=-1)
        sampled = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).reshape(b, n_tok)
        sampled = torch.where(masked, sampled, ids)

        held = hold_flat
        if capture is not None:
            attn_hold = hold_mask(capture.consolidated(), grid, (h, w), tau).reshape(b, -1)
            held = attn_hold if held is None else held | attn_hold
            if trace is not None:
                trace.hold_maps.append(attn_hold)
        if held is not None:
            sampled = torch.where(held & masked, src_flat, sampled)

        if k == steps - 1:
            ids = sampled
            break
        chosen_p = probs.gather(-1, sampled.unsqueeze(-1)).squeeze(-1)
        confidence = torch.log(chosen_p.clamp_min(1e-20)) + temps[k] * gumbel_noise(chosen_p.shape, generator, device)
        if not bool(torch.isfinite(confidence).logical_or(~masked).all()):
            bad = int((~torch.isfinite(confidence) & masked).sum())
            raise FloatingPointError(f"step {k}: {bad} masked positions have a non-finite confidence (NaN or inf logits?)")
        confidence = confidence.masked_fill(~masked, math.inf)  # decoded before this step: never re-masked
        mask_len = torch.full((b,), scheduled_mask_count(masking_schedule, k, steps, n_tok), device=device)
        mask_len = torch.maximum(torch.ones_like(mask_len), torch.minimum(masked.sum(dim=1) - 1, mask_len))
        # stable: equal confidences (possible only at temperature 0) keep index order; +inf sorts last
        rank = confidence.argsort(dim=1, stable=True).argsort(dim=1)
        ids = torch.where(rank < mask_len[:, None], torch.full_like(sampled, mask_id), sampled)
        if trace is not None:
            trace.confidences.append(confidence)
            trace.mask_counts.append(mask_len)
    return ids.reshape(b, h, w)
