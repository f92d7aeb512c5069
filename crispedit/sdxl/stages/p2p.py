"""The ``p2p`` stage: source and target from the input and output captions with Prompt-to-Prompt (branch t2i-p2p).

Both images come from ONE batch and one initial noise (InstructPix2Pix, UltraEdit): the
target's self-attention copies the source's for the first p of the steps (p drawn per
candidate from ``self_fraction``, InstructPix2Pix's [0.1, 0.9]); its cross-attention takes the
source's maps for the first c of the steps, word-for-word when the captions align token for
token, by alignment otherwise. With a mask (the ground stage's Emu Edit soft mask, or the
``sdxl_source`` keyword mask), the target's attention outputs are mixed
M * target + (1 - M) * source at every layer, and its latents blended the same way after the
configured steps and always after the last, so outside a hard mask the target's latents are
the source's bit for bit. See docs/generate.md.

With ``noise: auto`` a sample that an ``sdxl_source`` stage drew reuses that seed and size,
so the pair's source is that same source image (the mask grounded on it still fits).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from crispedit.core.sample import Sample
from crispedit.core.stage import register_stage
from crispedit.models.spec import ModelSpec
from crispedit.sdxl.options import tiny_size
from crispedit.sdxl.stages.base import (
    SDXL_BASE,
    Fraction,
    GeneratorParams,
    TextToImageStage,
    by_size,
    check_fraction,
    draw_fraction,
)


class P2PParams(GeneratorParams):
    base_model: ModelSpec = Field(SDXL_BASE, description="the SDXL checkpoint (id or path, revision)")
    height: int = Field(1024, ge=64, le=8192, multiple_of=8, description="image height when the sample has no recorded source size (--tiny: 64)")
    width: int = Field(1024, ge=64, le=8192, multiple_of=8, description="image width when the sample has no recorded source size")
    noise: Literal["auto", "source", "own"] = Field(
        "auto", description="'source': the seed and size an sdxl_source stage recorded; 'own': a seed per candidate; 'auto': source when recorded"
    )
    self_fraction: Fraction = Field(
        (0.1, 0.9), description="self-attention injection for this fraction of the steps, or a [low, high] range drawn per candidate (InstructPix2Pix)"
    )
    cross_fraction: Fraction = Field(0.8, description="cross-attention control for this fraction of the steps (P2P's default 0.8), or a range")
    self_mode: Literal["map", "kv"] = Field(
        "map", description="'map': the source's attention map on the target's values (P2P); 'kv': the source's keys and values (MasaCtrl)"
    )
    mask: Literal["none", "optional", "required"] = Field(
        "optional", description="use the sample's `mask` for attention mixing and latent blending; 'required' rejects samples without one"
    )
    binarize_mask: bool = Field(False, description="cut the latent-resolution mask at 0.5 (a hard mask, as UltraEdit) instead of keeping it soft")
    attention_mix: bool = Field(True, description="mix attention outputs M * target + (1 - M) * source at each layer's resolution")
    mix_start: float = Field(0.0, ge=0.0, le=1.0, description="attention mixing from this fraction of the steps...")
    mix_end: float = Field(1.0, ge=0.0, le=1.0, description="...until this fraction")
    mix_layers: Literal["self", "cross", "both"] = Field("both", description="which attention layers are mixed")
    latent_blend: bool = Field(True, description="blend latents M * z_target + (1 - M) * z_source after the chosen steps and the last")
    blend_start: float = Field(0.0, ge=0.0, le=1.0, description="latent blending from this fraction of the steps...")
    blend_end: float = Field(1.0, ge=0.0, le=1.0, description="...until this fraction (the last step is always blended)")
    blend_every: int = Field(1, ge=1, description="blend every n-th step of the window (UltraEdit: 2, odd steps)")
    control: Literal["default", "reference"] = Field(
        "default",
        description="'reference': published Prompt-to-Prompt's rules (conditional half, self maps <= image/32, int(f*N) self and "
        "int(c*(N+1)) cross steps, released replace mapper); 'default': both halves, every layer, ceil(f*N) steps",
    )
    self_map_max: int | None = Field(
        None, ge=1, description="inject self-attention only in layers whose map's longest side is at most this (None: every layer; reference: image/32)"
    )
    cross_words: dict[str, float | tuple[float, float]] = Field(
        default_factory=dict, description="per-word cross-attention windows of the target caption, {word: c} or {word: [a, b]} (P2P's {'lion': 0.4})"
    )
    reweight: dict[str, float] = Field(
        default_factory=dict, description="per-word attention re-weighting of the target caption, {word: weight} (P2P's equalizer; no renormalising)"
    )
    local_blend: bool = Field(False, description="for pairs without a mask: P2P's LocalBlend, a mask from the edited words' cross-attention")
    local_blend_threshold: float = Field(0.3, ge=0.0, le=1.0, description="LocalBlend: cut the max-normalised word map above this (P2P: 0.3)")
    local_blend_dilation: int = Field(1, ge=0, le=8, description="LocalBlend: max-pool radius in map pixels (P2P: 1, a 3x3 pool)")
    local_blend_start: float = Field(0.0, ge=0.0, le=1.0, description="LocalBlend: blend from step int(start*N) on (null-text P2P: 0.2)")
    local_blend_map_side: int | None = Field(None, ge=1, description="LocalBlend: the attention maps read, by longest side (None: image/32)")

    @field_validator("self_fraction", "cross_fraction")
    @classmethod
    def _fraction(cls, value: Fraction) -> Fraction:
        return check_fraction(value)

    @field_validator("cross_words")
    @classmethod
    def _word_windows(cls, value: dict[str, Fraction]) -> dict[str, Fraction]:
        for word, window in value.items():
            if not word.strip() or len(word.split()) != 1:
                raise ValueError(f"cross_words: {word!r} is not one word")
            check_fraction(window)
        return value

    @model_validator(mode="after")
    def _windows(self) -> P2PParams:
        if self.mix_start > self.mix_end or self.blend_start > self.blend_end:
            raise ValueError("a window's start must not be after its end")
        return self


@register_stage
class P2PStage(TextToImageStage[P2PParams]):
    """Source and target from the captions in one batch with Prompt-to-Prompt, soft-mask mixing and latent blending."""

    kind = "p2p"
    branch = "t2i-p2p"

    def outputs(self) -> set[str]:
        return {"source_image", "target_image", "branch"}

    def inputs(self) -> set[str]:
        return {"source_caption", "target_caption"} | ({"mask"} if self.params.mask == "required" else set())

    def controls(self) -> Any:
        from crispedit.sdxl.blending import StepWindow
        from crispedit.sdxl.local_blend import LocalBlendSettings
        from crispedit.sdxl.text2image import Controls

        p = self.params
        return Controls(
            self_mode=p.self_mode,
            attention_mix=StepWindow(p.mix_start, p.mix_end) if p.attention_mix else None,
            mix_layers=p.mix_layers,
            latent_blend=StepWindow(p.blend_start, p.blend_end, p.blend_every) if p.latent_blend else None,
            binarize_mask=p.binarize_mask,
            control=p.control,
            self_map_max=p.self_map_max,
            cross_words=dict(p.cross_words),
            reweight=dict(p.reweight),
            local_blend=LocalBlendSettings(p.local_blend_threshold, p.local_blend_dilation, p.local_blend_start, p.local_blend_map_side)
            if p.local_blend
            else None,
        )

    def noise_of(self, sample: Sample) -> tuple[int, tuple[int, int], str]:
        """(seed, (height, width), origin) of a candidate's shared noise."""
        recorded = sample.meta.get("sdxl_source")
        if self.params.noise != "own" and recorded is not None:
            return int(recorded["seed"]), (int(recorded["height"]), int(recorded["width"])), "sdxl_source"
        if self.params.noise == "source":
            raise ValueError("noise: source needs an sdxl_source stage before this one")
        return sample.seed("noise"), tiny_size(self.params.height, self.params.width, self.context.tiny), "own"

    def problem(self, sample: Sample) -> str | None:
        if self.params.noise == "source" and "sdxl_source" not in sample.meta:
            return "missing input: noise 'source' but no sdxl_source stage drew this sample"
        return super().problem(sample)

    def generate(self, samples: list[Sample]) -> None:
        from crispedit.sdxl.batching import run_in_calls
        from crispedit.sdxl.text2image import PairRequest, run_pairs

        p = self.params
        sampler = p.sampler().for_tiny(self.context.tiny)
        controls = self.controls()
        jobs: dict[str, tuple[PairRequest, str]] = {}
        sizes: dict[str, tuple[int, int]] = {}
        for sample in samples:
            seed, size, origin = self.noise_of(sample)
            mask = sample.mask if p.mask != "none" else None
            if mask is not None and mask.shape != size:
                sample.fail(self.name, f"mask size: mask {mask.shape} does not match the image size {size}")
                continue
            jobs[sample.id] = (
                PairRequest(
                    sample.source_caption or "", sample.target_caption or "", seed,
                    draw_fraction(p.self_fraction, sample.seed("p2p-self")), draw_fraction(p.cross_fraction, sample.seed("p2p-cross")),
                    mask,
                ),
                origin,
            )
            sizes[sample.id] = size
        live = [s for s in samples if s.id in jobs]
        for (height, width), group in by_size(live, lambda s: sizes[s.id]).items():
            requests = [jobs[s.id][0] for s in group]

            def call(chunk: list[Any], h: int = height, w: int = width) -> list[Any]:
                result = run_pairs(self.pipe, chunk, sampler, h, w, controls)
                return list(zip(
                    result.sources, result.targets, result.mappings, [result.blend_steps] * len(chunk), result.local_blend, strict=True
                ))

            results = run_in_calls(requests, p.max_batch, p.exact_batches, call)  # an AlignmentError rejects alone on the retry
            for sample, request, (source, target, mapping, blend_steps, coverage) in zip(group, requests, results, strict=True):
                self.finish(sample, request, jobs[sample.id][1], source, target, mapping.mode, blend_steps, coverage)

    def finish(
        self,
        sample: Sample,
        request: Any,
        origin: str,
        source: np.ndarray,
        target: np.ndarray,
        alignment: str,
        blend_steps: list[int],
        coverage: list[float] | None = None,
    ) -> None:
        values: dict[str, Any] = {
            "seed": request.seed,
            "noise": origin,
            "height": source.shape[0],
            "width": source.shape[1],
            "self_fraction": request.self_fraction,
            "cross_fraction": request.cross_fraction,
            "self_mode": self.params.self_mode,
            "control": self.params.control,
            "alignment": alignment,
            "mask": request.mask is not None,
        }
        if request.mask is not None:
            p = self.params
            values["attention_mix"] = [p.mix_start, p.mix_end, p.mix_layers] if p.attention_mix else None
            values["blend_steps"] = blend_steps
            values["binarize_mask"] = p.binarize_mask
        if coverage:
            values["local_blend"] = {"coverage": coverage[-1], "steps": len(coverage)}  # the final mask's fraction of the image
        previous = sample.source_image
        if previous is not None and previous.shape == source.shape:
            # the redrawn source against the one drawn before (0 when the calls had the same shape)
            values["source_max_diff"] = int(np.abs(previous.astype(np.int16) - source.astype(np.int16)).max())
        sample.source_image = source
        sample.target_image = target
        self.record(sample, **values)
