"""Text-to-image with SDXL: source images (optionally with keyword attention masks) and P2P pairs.

Both run diffusers' stock ``StableDiffusionXLPipeline``; what crispedit adds goes in through
the pipeline's own hooks: attention processors (the keyword store, the P2P processor) and
``callback_on_step_end`` (the step counter and latent blending). Processors are restored
after every call, so one loaded pipeline serves every kind of call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from crispedit.sdxl.alignment import TokenMapping, edited_tokens, sdxl_mapping, word_positions
from crispedit.sdxl.batching import generators, to_uint8
from crispedit.sdxl.blending import StepWindow, blend_pairs, latent_mask
from crispedit.sdxl.local_blend import LocalBlend, LocalBlendSettings
from crispedit.sdxl.options import Sampler
from crispedit.sdxl.p2p import P2PController, PairControl, install
from crispedit.sdxl.p2p_rules import Control, Window, cross_schedule, equalizer, resolve_rules, window_steps


def _common(pipe: Any, sampler: Sampler, height: int, width: int, rows: int) -> dict[str, Any]:
    negative = [sampler.negative_prompt] * rows if sampler.negative_prompt else None
    return {
        "negative_prompt": negative,
        "height": height,
        "width": width,
        "num_inference_steps": sampler.steps,
        "guidance_scale": sampler.guidance_scale,
        "output_type": "np",
    }


def latent_size(pipe: Any, height: int, width: int) -> tuple[int, int]:
    return height // pipe.vae_scale_factor, width // pipe.vae_scale_factor


# --- sources ----------------------------------------------------------------------------------


def generate(
    pipe: Any,
    prompts: Sequence[str],
    seeds: Sequence[int],
    sampler: Sampler,
    height: int,
    width: int,
    keywords: Sequence[dict[str, list[int]]] | None = None,
    keyword_map_side: int | None = None,
) -> tuple[list[np.ndarray], list[dict[str, np.ndarray]] | None]:
    """Images for the prompts, one seed each; with ``keywords`` (token positions per row) also
    each row's mean keyword cross-attention map (crispedit.sdxl.attention_store)."""
    from crispedit.sdxl.attention_store import AttentionStore

    store = None
    if keywords is not None:
        store = AttentionStore(list(keywords), resolution=keyword_map_side, guidance=sampler.guidance_scale > 1).install(pipe.unet)
    try:
        with torch.no_grad():
            images = pipe(prompt=list(prompts), generator=generators(seeds), **_common(pipe, sampler, height, width, len(prompts))).images
    finally:
        if store is not None:
            store.remove(pipe.unet)
    maps = None
    if store is not None:
        found = store.row_maps()
        maps = [found.get(i, {}) for i in range(len(prompts))]
    return to_uint8(images), maps


# --- Prompt-to-Prompt pairs ---------------------------------------------------------------------


@dataclass(frozen=True)
class PairRequest:
    """One (source, target) pair: the prompts, the shared noise seed, P2P fractions and an optional mask."""

    source_prompt: str
    target_prompt: str
    seed: int
    self_fraction: float
    cross_fraction: float
    mask: np.ndarray | None = None  # HxW uint8, 255 = edit; None = no blending for this pair


@dataclass(frozen=True)
class Controls:
    """The P2P and blending switches of one stage (the P2P rules: crispedit.sdxl.p2p_rules)."""

    self_mode: Literal["map", "kv"] = "map"
    attention_mix: StepWindow | None = StepWindow()
    mix_layers: Literal["self", "cross", "both"] = "both"
    latent_blend: StepWindow | None = StepWindow()
    binarize_mask: bool = False
    control: Control = "default"
    self_map_max: int | None = None
    cross_words: Mapping[str, Window] = field(default_factory=dict)
    reweight: Mapping[str, float] = field(default_factory=dict)
    local_blend: LocalBlendSettings | None = None  # for pairs without a mask


@dataclass
class PairResult:
    sources: list[np.ndarray]
    targets: list[np.ndarray]
    mappings: list[TokenMapping]
    blend_steps: list[int]
    #: Final latents, rows [s1, t1, s2, t2, ...], after the last blend (for checks and tests).
    latents: torch.Tensor | None = field(default=None, repr=False)
    #: Per pair, LocalBlend's mask fraction at each blended step (empty when it did not blend the pair).
    local_blend: list[list[float]] = field(default_factory=list)


def pair_control(pipe: Any, pair: PairRequest, mapping: TokenMapping, steps: int, controls: Controls) -> PairControl:
    """One pair's schedules: self steps, per-token cross windows and re-weighting, under the stage's rules."""

    def positions(word: str) -> list[int]:
        return word_positions(pipe.tokenizer, pair.target_prompt, word)

    return PairControl(
        mapping,
        window_steps(pair.self_fraction, steps, controls.control, cross=False),
        cross_schedule(steps, mapping.length, pair.cross_fraction, controls.cross_words, positions, controls.control),
        equalizer(mapping.length, controls.reweight, positions),
    )


def local_blend(pipe: Any, pairs: Sequence[PairRequest], settings: LocalBlendSettings, latent_hw: tuple[int, int], steps: int) -> LocalBlend:
    """LocalBlend over the edited words of every pair that has no mask."""
    words = []
    for p in pairs:
        chosen = None if p.mask is not None else edited_tokens(pipe.tokenizer, p.source_prompt, p.target_prompt)
        words.append(chosen if chosen is not None and (chosen[0] or chosen[1]) else None)
    h, w = latent_hw
    side = settings.map_side or max(h, w) // 4  # image/32 = latent/4
    scale = max(h, w) // side if side and max(h, w) % side == 0 else 0
    if not scale or h % scale or w % scale:
        raise ValueError(f"local_blend map side {side} does not divide a {h}x{w} latent")
    return LocalBlend(settings, words, (h // scale, w // scale), steps, length=pipe.tokenizer.model_max_length)


def run_pairs(pipe: Any, pairs: Sequence[PairRequest], sampler: Sampler, height: int, width: int, controls: Controls) -> PairResult:
    """Source and target of every pair in one batch, from one shared noise per pair, under P2P control."""
    rules = resolve_rules(controls.control, controls.self_map_max, height, width)
    mappings = [sdxl_mapping(pipe.tokenizer, pipe.tokenizer_2, p.source_prompt, p.target_prompt, rules.replace_tail) for p in pairs]
    steps = sampler.steps
    h, w = latent_size(pipe, height, width)
    masked = any(p.mask is not None for p in pairs)
    masks = None
    if masked:
        grids = [latent_mask(p.mask, (h, w), controls.binarize_mask) for p in pairs]
        masks = torch.from_numpy(np.stack(grids))[:, None]
    blend = local_blend(pipe, pairs, controls.local_blend, (h, w), steps) if controls.local_blend is not None else None
    controller = P2PController(
        pairs=[pair_control(pipe, p, m, steps, controls) for p, m in zip(pairs, mappings, strict=True)],
        total_steps=steps,
        latent_hw=(h, w),
        rules=rules,
        self_mode=controls.self_mode,
        masks=masks if controls.attention_mix is not None else None,
        mix_window=controls.attention_mix or StepWindow(),
        mix_layers=controls.mix_layers,
        blend=blend if blend is not None and blend.active else None,
    )
    blend_steps = []
    if masks is not None and controls.latent_blend is not None:
        blend_steps = sorted(set(controls.latent_blend.steps(steps)) | {steps - 1})
    final: dict[str, torch.Tensor] = {}

    def on_step_end(_pipe: Any, i: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        controller.step = i + 1
        latents = tensors["latents"]
        if controller.blend is not None:
            weights = controller.blend.end_step(i, latents)
            if weights is not None:
                latents = blend_pairs(latents, weights)
        if i in blend_steps:
            assert masks is not None
            latents = blend_pairs(latents, masks.to(latents.device))
        final["latents"] = latents
        return {"latents": latents}

    prompts = [text for p in pairs for text in (p.source_prompt, p.target_prompt)]
    seeds = [p.seed for p in pairs for _ in range(2)]  # the same noise for source and target
    saved = install(pipe.unet, controller)
    try:
        with torch.no_grad():
            images = pipe(
                prompt=prompts,
                generator=generators(seeds),
                callback_on_step_end=on_step_end,
                callback_on_step_end_tensor_inputs=["latents"],
                **_common(pipe, sampler, height, width, len(prompts)),
            ).images
    finally:
        pipe.unet.set_attn_processor(saved)
    out = to_uint8(images)
    coverage: list[list[float]] = [[] for _ in pairs]
    if controller.blend is not None:
        for fractions in controller.blend.coverage:
            for p, fraction in enumerate(fractions):
                if fraction is not None:
                    coverage[p].append(fraction)
    return PairResult(out[0::2], out[1::2], mappings, blend_steps, final.get("latents"), coverage)
