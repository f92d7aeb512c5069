"""The released EditMGT sampling loop, re-implemented from its code for the equivalence tests.

Read from weichow23/EditMGT @23a98af (fetched): src/pipeline.py `Pipeline.__call__` (the loop,
guidance, micro-conditioning, timesteps), src/scheduler.py `Scheduler.set_timesteps`,
`Scheduler.step`, `mask_by_random_topk`, `gumbel_noise` and `upsample_score_map` (the
aMUSEd scheduler plus region-hold), src/local_utils.py `tokens_to_attn`, `rescale_scores`
and `smooth_local_scores(method='adaptive')`, and src/v2_utils.py `ConFluxAttnProcessor2_0`
(what is captured). Written here without looking at crispedit's sampler, and shaped like the
released code rather than like crispedit: a scheduler object stepping over timesteps N-1..0,
float32 torch arithmetic where the released code has it, scipy on a CPU numpy copy for the
filter, batch size 1 for region-hold (as upstream), random draws in the released order
(multinomial over every position, then one uniform per position for the Gumbel noise).

Only the transformer is shared with crispedit (the same tiny weights); its attention
processor hands the recorder below the rotated text queries and [text; target] keys of the
blocks asked for, and the recorder does the released capture arithmetic itself.

Deliberate departures, none of which changes what is compared:
- `einops.rearrange` in `upsample_score_map` is a reshape (the same op; einops is not shipped);
- single blocks take the text length from the model, where the released processor hard-codes
  256 (its text length at full size: the same rows there);
- the released pipeline encodes prompts and images itself; here it is given the encodings.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage


class ReleasedScheduler:
    """Scheduler of src/scheduler.py: `set_timesteps` then one `step` per timestep."""

    def __init__(self, mask_token_id: int, masking_schedule: str = "cosine") -> None:
        self.mask_token_id = mask_token_id
        self.masking_schedule = masking_schedule
        self.timesteps: torch.Tensor | None = None
        self.temperatures: torch.Tensor | None = None

    def set_timesteps(self, num_inference_steps: int, temperature=(2, 0), device=None) -> None:
        self.timesteps = torch.arange(num_inference_steps, device=device).flip(0)
        if isinstance(temperature, (tuple, list)):
            self.temperatures = torch.linspace(temperature[0], temperature[1], num_inference_steps, device=device)
        else:
            self.temperatures = torch.linspace(temperature, 0.01, num_inference_steps, device=device)

    @staticmethod
    def _gumbel(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        u = torch.zeros_like(like).uniform_(0, 1, generator=generator)
        return -torch.log((-torch.log(u.clamp(1e-20))).clamp(1e-20))

    def _mask_lowest(self, mask_len: torch.Tensor, probs: torch.Tensor, temperature: torch.Tensor,
                     generator: torch.Generator | None) -> torch.Tensor:
        """mask_by_random_topk: confidence below the (mask_len)-th smallest is re-masked."""
        confidence = torch.log(probs.clamp(1e-20)) + temperature * self._gumbel(probs, generator)
        ascending = torch.sort(confidence, dim=-1).values
        cut_off = torch.gather(ascending, 1, mask_len.long())
        return confidence < cut_off

    def _upsample(self, scores: torch.Tensor) -> torch.Tensor:
        """upsample_score_map: (b, 32*32) -> bicubic -> (b, 64*64)."""
        b = scores.shape[0]
        grid = scores.reshape(b, 1, 32, 32)
        return F.interpolate(grid, size=(64, 64), mode="bicubic", align_corners=False).reshape(b, 64 * 64)

    def step(self, model_output: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, local_guidance: float = 0.0,
             local_scores: torch.Tensor | None = None, ref_latents: torch.Tensor | None = None,
             on_hold: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
        batch, vocab, height, width = model_output.shape
        sample = sample.reshape(batch, height * width)
        logits = model_output.reshape(batch, vocab, height * width).permute(0, 2, 1)
        unknown = sample == self.mask_token_id

        probs = logits.softmax(dim=-1)
        flat = probs.float() if probs.device.type == "cpu" and probs.dtype != torch.float32 else probs  # CPU multinomial
        drawn = torch.multinomial(flat.reshape(-1, vocab), 1, generator=generator)[:, 0].view(batch, height * width)
        drawn = torch.where(unknown, drawn, sample)

        if local_guidance > 0 and local_scores is not None:
            if unknown.shape[-1] == 4096:
                local_scores = self._upsample(local_scores)
            keep_source = local_scores < local_guidance
            if on_hold is not None:
                on_hold(keep_source)
            drawn = torch.where(unknown & keep_source, ref_latents.reshape(batch, -1), drawn)

        if int(timestep) == 0:
            out = drawn
        else:
            step_idx = (self.timesteps == timestep).nonzero()
            ratio = (step_idx + 1) / len(self.timesteps)
            if self.masking_schedule == "cosine":
                mask_ratio = torch.cos(ratio * math.pi / 2)
            elif self.masking_schedule == "linear":
                mask_ratio = 1 - ratio
            else:
                raise ValueError(self.masking_schedule)
            mask_len = (height * width * mask_ratio).floor()
            chosen = torch.gather(probs, -1, drawn[:, :, None])[:, :, 0]
            chosen = torch.where(unknown, chosen, torch.finfo(chosen.dtype).max)
            mask_len = torch.min(unknown.sum(dim=-1, keepdim=True) - 1, mask_len)
            mask_len = torch.max(torch.tensor([1], device=model_output.device), mask_len)
            remask = self._mask_lowest(mask_len, chosen, self.temperatures[step_idx], generator)
            out = torch.where(remask, self.mask_token_id, drawn)
        return out.reshape(batch, height, width)


class ReleasedAttentionRecorder:
    """What ConFluxAttnProcessor2_0 keeps of a block with capture on: softmax(QK^T / sqrt(d))
    over [text; target] (the reference-strength bias is zero there), text rows x target columns."""

    def __init__(self, blocks: list[int]) -> None:
        self.blocks = list(blocks)
        self.text_to_image: dict[int, torch.Tensor] = {}

    def wants(self, block_index: int) -> bool:
        return block_index in self.blocks

    def add_block(self, block_index: int, q_text: torch.Tensor, k_main: torch.Tensor, n_text: int) -> None:
        scores = torch.matmul(q_text, k_main.transpose(-2, -1)) * (1.0 / (q_text.shape[-1] ** 0.5))
        self.text_to_image[block_index] = F.softmax(scores, dim=-1)[:, :, :n_text, n_text:].detach().cpu()

    def local_scores(self) -> torch.Tensor:
        """tokens_to_attn (conditional half, stacked over blocks, mean over blocks, heads and
        text rows), then rescale_scores, then smooth_local_scores(method='adaptive')."""
        per_block = [self.text_to_image[i].chunk(2)[1] for i in self.blocks if i in self.text_to_image]
        stacked = torch.stack(per_block, dim=1).mean(dim=(1, 2, 3))
        lo = torch.min(stacked, dim=-1, keepdim=True)[0]
        hi = torch.max(stacked, dim=-1, keepdim=True)[0]
        return _smooth_adaptive((stacked - lo) / (hi - lo + 1e-8))


class _BlockHook:
    """Adapts the recorder to the capture hook of crispedit's attention processor (which calls
    `wants(i)` and then `add(q_text, k_main, n_text)` for block i, in block order)."""

    def __init__(self, recorder: ReleasedAttentionRecorder) -> None:
        self.recorder = recorder
        self.current = -1

    def wants(self, block_index: int) -> bool:
        self.current = block_index
        return self.recorder.wants(block_index)

    def add(self, q_text: torch.Tensor, k_main: torch.Tensor, n_text: int) -> None:
        self.recorder.add_block(self.current, q_text, k_main, n_text)


def _smooth_adaptive(local_scores: torch.Tensor) -> torch.Tensor:
    """smooth_local_scores(method='adaptive', strength=1, preserve_peaks=True) at batch size 1."""
    n = local_scores.shape[-1]
    side = {1024: 32, 4096: 64}.get(n)
    scores = local_scores.reshape(1, side, side) if side else local_scores
    s = scores.squeeze(0).cpu().numpy()
    original = s.copy()
    blurred = ndimage.gaussian_filter(s, sigma=1.5, mode="reflect")
    var = ndimage.generic_filter(s, np.var, size=5)
    var = (var - var.min()) / (var.max() - var.min() + 1e-8)
    weight = 1.0 - var * 0.7
    out = weight * blurred + (1 - weight) * s
    peaks = original > np.percentile(original, 90)
    out[peaks] = 0.7 * original[peaks] + 0.3 * out[peaks]
    if out.max() > out.min():
        out = (out - out.min()) / (out.max() - out.min())
        out = out * (original.max() - original.min()) + original.min()
    result = torch.from_numpy(out).unsqueeze(0).to(local_scores.device)
    return result.reshape(1, n) if side else result


@torch.no_grad()
def released_sample(model: torch.nn.Module, reference_ids: torch.Tensor, cond_hidden: torch.Tensor, cond_pooled: torch.Tensor,
                    uncond_hidden: torch.Tensor, uncond_pooled: torch.Tensor, micro_conds: torch.Tensor, *,
                    num_inference_steps: int, guidance_scale: float, generator: torch.Generator,
                    reference_strength: float = 1.0, temperature=(2, 0), masking_schedule: str = "cosine",
                    attention_enable_blocks: list[int] | None = None, local_guidance: float = 0.0,
                    on_hold: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """Pipeline.__call__ with a reference image and output_type='latent': token ids (B, H, W).

    `micro_conds` is one row (1, 5); `cond_*` and `uncond_*` are the prompt and negative-prompt
    encodings with batch B. The transformer is called as the released pipeline calls its own:
    timestep = the step index as a long tensor, the source tokens as the reference stream, both
    guidance halves (uncond first) when guidance_scale > 1.
    """
    batch, height, width = reference_ids.shape
    mask_id = model.config.vocab_size - 1
    scheduler = ReleasedScheduler(mask_id, masking_schedule)
    guided = guidance_scale > 1.0
    pooled, hidden = cond_pooled, cond_hidden
    if guided:
        pooled = torch.concat([uncond_pooled, cond_pooled])
        hidden = torch.concat([uncond_hidden, cond_hidden])
    micro = micro_conds.expand(2 * batch if guided else batch, -1)
    scheduler.set_timesteps(num_inference_steps, temperature, reference_ids.device)
    latents = torch.full((batch, height, width), mask_id, dtype=torch.long, device=reference_ids.device)
    recorder = ReleasedAttentionRecorder(attention_enable_blocks) if attention_enable_blocks is not None else None
    # upstream sets the strength on the attention modules only when it differs from 1
    gamma = reference_strength if reference_strength != 1 else 1.0

    for timestep in scheduler.timesteps:
        model_input = torch.cat([latents] * 2) if guided else latents
        reference_input = torch.cat([reference_ids, reference_ids]) if guided else reference_ids
        hook = _BlockHook(recorder) if recorder is not None else None
        model_output = model(model_input, hidden, pooled, micro,
                             torch.tensor([timestep] * model_input.shape[0], dtype=torch.long, device=model_input.device),
                             reference_ids=reference_input, reference_strength=gamma, capture=hook)
        if guided:
            uncond_logits, cond_logits = model_output.chunk(2)
            model_output = uncond_logits + guidance_scale * (cond_logits - uncond_logits)
        local_scores = recorder.local_scores() if recorder is not None else None
        latents = scheduler.step(model_output, timestep, latents, generator=generator, local_guidance=local_guidance,
                                 local_scores=local_scores, ref_latents=reference_ids, on_hold=on_hold)
    return latents
