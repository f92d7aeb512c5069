"""The ``dit4edit`` generator: a real source image edited on PixArt by inversion and attention control.

For each sample with a source image, a source caption and a target caption (the instruct
stage writes the latter), the image is fitted to one of the recipe's sizes, inverted with
DPM-Solver++(2M) plus fixed-point correction, and regenerated under the target caption with
DiT4Edit's unified attention control and optional patch merging (crispedit.dit4edit).
When the sample carries a mask (the ground stage's soft mask) the target's latents outside
it are blended back to the inverted source trajectory at every step. The source image of
the pair is the fitted photograph itself, never its reconstruction.

Scores: ``dit4edit_inversion_error``, the relative L2 error of the regenerated source branch
against the encoded source (how exact the inversion was), kept so a dataset can be
re-filtered on it.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from crispedit.core.sample import Sample, derive_seed
from crispedit.core.stage import Resources, Stage, StageParams, register_stage
from crispedit.models.hub import ModelFiles, diffusers_files, merged
from crispedit.models.spec import TINY_ID, ModelSpec

SIZE = re.compile(r"^(\d+)x(\d+)$")
#: --tiny runs the tiny twins at most this long side (their cost grows with the token count).
TINY_MAX_SIDE = 64


class PixArtCheckpoint(BaseModel):
    """One PixArt checkpoint and the outputs it serves."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSpec = Field(description="diffusers-format PixArt repo or path: transformer/ (and vae/, scheduler/ unless components_model)")
    components_model: ModelSpec | None = Field(
        None, description="repo with vae/ and scheduler/ (and T5 when text_model is null) for a transformer-only repo such as PixArt-Σ 2K",
    )
    max_pixels: int = Field(ge=1, description="serves outputs of at most this many pixels; the first checkpoint that fits is used")
    max_sequence_length: int = Field(120, ge=8, description="T5 tokens per prompt: 120 for PixArt-α, 300 for PixArt-Σ (diffusers' defaults)")


def default_checkpoints() -> list[dict[str, Any]]:
    """PixArt-α 512 up to 640², PixArt-α 1024-MS up to 1.5 MP, PixArt-Σ 2K above (revisions as seen on the Hub)."""
    return [
        {"model": {"id": "PixArt-alpha/PixArt-XL-2-512x512", "revision": "50f702106901db6d0f8b67eb88e814c56ded2692"},
         "max_pixels": 640 * 640},
        {"model": {"id": "PixArt-alpha/PixArt-XL-2-1024-MS", "revision": "b89adadeccd9ead2adcb9fa2825d3fabec48d404"},
         "max_pixels": 1536 * 1024},
        {"model": {"id": "PixArt-alpha/PixArt-Sigma-XL-2-2K-MS", "revision": "cd274f4c8b01de0dcc87b65887dd357d473bf516"},
         "components_model": {"id": "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS", "revision": "937eb4b6ca35a159c56494998176988a466f83b5"},
         "max_pixels": 2048 * 2048, "max_sequence_length": 300},
    ]


class Dit4EditParams(StageParams):
    checkpoints: list[PixArtCheckpoint] = Field(
        default_factory=default_checkpoints, validate_default=True,
        description="PixArt checkpoints by output size, smallest first (default: α-512, α-1024-MS, Σ-2K)",
    )
    text_model: ModelSpec | None = Field(
        ModelSpec(id="PixArt-alpha/PixArt-XL-2-1024-MS", revision="b89adadeccd9ead2adcb9fa2825d3fabec48d404"),
        description="repo whose text_encoder/ and tokenizer/ hold T5 (shared by α and Σ: loaded once); null: each checkpoint's own",
    )
    text_encoder_offload: Literal["keep", "cpu", "free"] = Field(
        "cpu", description="T5 between batches: 'keep' on the device, park on the 'cpu', or 'free' it (reloaded next batch)",
    )
    sizes: list[str] = Field(
        default_factory=lambda: ["512x512"],
        description="output sizes WIDTHxHEIGHT (multiples of 16) or 'source' (the source's own size, rounded down); "
        "each sample takes the one nearest its aspect ratio, centre-cropped and resized",
    )
    steps: int = Field(30, ge=2, le=1000, description="denoising (and inversion) steps; DiT4Edit: 30")
    inversion_guidance_scale: float = Field(1.0, ge=0.0, description="CFG scale of the inversion (1: no guidance, the stable choice)")
    guidance_scale: float = Field(4.5, ge=0.0, description="CFG scale of the target branch (diffusers' PixArt default 4.5)")
    source_guidance_scale: float | None = Field(
        None, ge=0.0, description="CFG scale of the regenerated source branch; null: the inversion's, so it retraces the inversion",
    )
    self_attention_switch: float = Field(
        0.4, ge=0.0, le=1.0,
        description="S as a fraction of the steps: before it the target uses the source's Q,K,V, after it its own Q with the source's K,V",
    )
    self_attention_blocks: list[int] | None = Field(
        None, description="transformer blocks with self-attention control (0 = first); null: the deeper half",
    )
    cross_attention: Literal["auto", "replace", "refine", "none"] = Field(
        "auto", description="Prompt-to-Prompt on the T5 maps; 'auto': replace when the captions have as many words, else refine",
    )
    cross_attention_steps: float = Field(0.8, ge=0.0, le=1.0, description="fraction of the steps with cross-attention control (P2P: 0.8)")
    merge_ratio: float = Field(
        0.2, ge=0.0, le=0.75, description="fraction of tokens merged away before self-attention (0: none; at most 3/4 with 2x2 windows)",
    )
    max_corrections: int = Field(3, ge=0, description="fixed-point corrections per inversion step (0: the naive inversion)")
    correction_tolerance: float = Field(2.5e-4, ge=0.0, description="stop correcting a step once the RMS mismatch of its latents is this small")
    correction_relaxation: float = Field(1.0, gt=0.0, le=2.0, description="step size of a correction (1: Newton step with the noise estimate frozen)")
    inversion_passes: int = Field(
        1, ge=1, le=20, description="sweeps of the corrected inversion; more than 1 replaces the history estimate of the second-order term",
    )
    mask_blend: bool = Field(True, description="blend the target outside the sample's mask back to the inverted source trajectory")
    device: str = Field("auto", description="'auto' (a GPU when there is one), 'cpu', 'cuda', 'cuda:1'...")

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, sizes: list[str]) -> list[str]:
        if not sizes:
            raise ValueError("list at least one size")
        for size in sizes:
            match = SIZE.match(size)
            if size != "source" and (match is None or int(match[1]) <= 0 or int(match[2]) <= 0):
                raise ValueError(f"size {size!r}: write WIDTHxHEIGHT, e.g. 1024x2048, or 'source'")
        return sizes

    @model_validator(mode="after")
    def _ordered(self) -> Dit4EditParams:
        if not self.checkpoints:
            raise ValueError("list at least one checkpoint")
        pixels = [c.max_pixels for c in self.checkpoints]
        if pixels != sorted(pixels):
            raise ValueError("list checkpoints by max_pixels, smallest first")
        return self


def fit_size(width: int, height: int, sizes: list[str], multiple: int, tiny: bool = False) -> tuple[int, int]:
    """The listed size nearest the source's aspect ratio (first on ties), as (width, height), rounded to ``multiple``."""
    best: tuple[float, tuple[int, int]] | None = None
    for entry in sizes:
        if entry == "source":
            w, h = width, height
        else:
            match = SIZE.match(entry)
            assert match is not None
            w, h = int(match[1]), int(match[2])
        distance = abs(math.log(w / h) - math.log(width / height))
        if best is None or distance < best[0] - 1e-12:
            best = (distance, (w, h))
    assert best is not None
    w, h = best[1]
    if tiny and max(w, h) > TINY_MAX_SIDE:
        scale = TINY_MAX_SIDE / max(w, h)
        w, h = round(w * scale), round(h * scale)
    return max(multiple, w // multiple * multiple), max(multiple, h // multiple * multiple)


def fit_image(image: np.ndarray, width: int, height: int, resample: Image.Resampling) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Centre-crop to the aspect ratio of (width, height), then resize. Returns the image and (x0, y0, sx, sy)."""
    h, w = image.shape[:2]
    target = width / height
    crop_w, crop_h = (round(h * target), h) if w / h > target else (w, round(w / target))
    crop_w, crop_h = max(1, min(w, crop_w)), max(1, min(h, crop_h))
    x0, y0 = (w - crop_w) // 2, (h - crop_h) // 2
    cropped = Image.fromarray(image[y0 : y0 + crop_h, x0 : x0 + crop_w])
    out = np.asarray(cropped.resize((width, height), resample))
    return out, (x0, y0, width / crop_w, height / crop_h)


#: What an edit needs, in the order a missing-input reason names them.
INPUTS = ("source_image", "source_caption", "target_caption")


@register_stage
class Dit4EditStage(Stage[Dit4EditParams]):
    """DiT4Edit on PixArt: DPM-Solver++ inversion of the source, attention-controlled regeneration under the target caption."""

    kind = "dit4edit"
    in_actor_pool = True
    resources = Resources(num_cpus=1, num_gpus=1)
    default_batch_size = 8

    def inputs(self) -> set[str]:
        return set(INPUTS)

    def outputs(self) -> set[str]:
        return {"source_image", "target_image"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pipelines: dict[int, Any] = {}
        self._encoders: dict[str, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Ray ships the stage before setup(): models never travel."""
        state = dict(self.__dict__)
        state["_pipelines"], state["_encoders"] = {}, {}
        return state

    # -- models --------------------------------------------------------------------------------
    def _spec(self, spec: ModelSpec) -> ModelSpec:
        return ModelSpec(id=TINY_ID, dtype="float32") if self.context.tiny else spec

    def _device(self) -> Any:
        from crispedit.models.devices import resolve_device

        return resolve_device(self.params.device)

    def setup(self) -> None:
        """Nothing up front: a checkpoint loads on the first sample that needs it (a build rarely needs all three)."""

    def _text_spec(self, checkpoint: PixArtCheckpoint) -> ModelSpec:
        return self._spec(self.params.text_model or checkpoint.components_model or checkpoint.model)

    def _pipeline(self, tier: int) -> Any:
        if tier not in self._pipelines:
            from crispedit.dit4edit.models import load_pixart, load_text
            from crispedit.dit4edit.pipeline import DiT4EditPipeline, PromptEncoder

            checkpoint = self.params.checkpoints[tier]
            seed = derive_seed(self.context.seed, "dit4edit", "twins")
            text_spec = self._text_spec(checkpoint)
            key = text_spec.describe()
            if key not in self._encoders:
                self._encoders[key] = PromptEncoder(
                    lambda: load_text(text_spec, seed=seed + 1), self._device(), self.params.text_encoder_offload,
                )
            components = checkpoint.components_model
            models = load_pixart(self._spec(checkpoint.model), None if components is None else self._spec(components), seed=seed)
            max_length = checkpoint.max_sequence_length
            if self.context.tiny:
                from crispedit.dit4edit.models import TINY_SEQUENCE_LENGTH

                max_length = TINY_SEQUENCE_LENGTH
            self._pipelines[tier] = DiT4EditPipeline(models, self._encoders[key], max_length, self._device())
        return self._pipelines[tier]

    def _tier(self, pixels: int) -> int | None:
        for k, checkpoint in enumerate(self.params.checkpoints):
            if pixels <= checkpoint.max_pixels:
                return k
        return None

    def settings(self) -> Any:
        from crispedit.dit4edit.pipeline import EditSettings

        p = self.params
        return EditSettings(
            steps=p.steps, inversion_guidance=p.inversion_guidance_scale, guidance=p.guidance_scale,
            source_guidance=p.source_guidance_scale, self_switch=p.self_attention_switch,
            self_blocks=None if p.self_attention_blocks is None else tuple(p.self_attention_blocks),
            cross=p.cross_attention, cross_steps=p.cross_attention_steps, merge_ratio=p.merge_ratio,
            max_corrections=p.max_corrections, tolerance=p.correction_tolerance, relaxation=p.correction_relaxation,
            passes=p.inversion_passes, mask_blend=p.mask_blend,
        )

    # -- running -------------------------------------------------------------------------------
    def __call__(self, batch: list[Sample]) -> list[Sample]:
        planned: list[tuple[Sample, int, tuple[int, int]]] = []
        for sample in batch:
            plan = self._plan(sample)
            if plan is not None:
                planned.append((sample, *plan))
        for tier in sorted({tier for _, tier, _ in planned}):  # T5 once per prompt, before any denoising
            pipe = self._pipeline(tier)
            prompts = [p for s, t, _ in planned if t == tier for p in ("", s.source_caption, s.target_caption)]
            pipe.prompts.encode(prompts, pipe.max_length)  # type: ignore[arg-type]
        for sample, tier, size in planned:
            self._edit(sample, tier, size)
        return batch

    def _plan(self, sample: Sample) -> tuple[int, tuple[int, int]] | None:
        """(checkpoint index, output size), or None with the sample rejected."""
        missing = [name for name in INPUTS if getattr(sample, name) is None or (isinstance(getattr(sample, name), str) and not getattr(sample, name).strip())]
        if missing:
            sample.fail(self.name, f"missing-input: dit4edit needs {', '.join(missing)}")
            return None
        height, width = sample.source_image.shape[:2]  # type: ignore[union-attr]
        size = fit_size(width, height, self.params.sizes, 16 if not self.context.tiny else 8, tiny=self.context.tiny)
        tier = self._tier(size[0] * size[1])
        if tier is None:
            sample.fail(self.name, f"too-large: {size[0]}x{size[1]} exceeds every checkpoint's max_pixels")
            return None
        return tier, size

    def _edit(self, sample: Sample, tier: int, size: tuple[int, int]) -> None:
        from crispedit.dit4edit.pipeline import PromptMismatch

        pipe = self._pipeline(tier)
        width, height = pipe.multiple * (size[0] // pipe.multiple), pipe.multiple * (size[1] // pipe.multiple)
        image, transform = fit_image(sample.source_image, width, height, Image.Resampling.LANCZOS)  # type: ignore[arg-type]
        mask = None
        if sample.mask is not None:
            mask, _ = fit_image(sample.mask, width, height, Image.Resampling.BILINEAR)
        seed = sample.seed("dit4edit-merge")
        settings = self.settings()
        try:
            result = pipe.edit(image, sample.source_caption, sample.target_caption, settings, mask=mask, seed=seed)  # type: ignore[arg-type]
        except PromptMismatch as problem:
            sample.fail(self.name, f"prompt-mismatch: {problem}")
            return
        sample.source_image = image
        sample.target_image = result.target
        if mask is not None:
            sample.mask = mask
            self._refit_meta(sample, width, height, transform)
        sample.branch = "dit4edit"
        sample.scores["dit4edit_inversion_error"] = result.reconstruction_error
        checkpoint = self.params.checkpoints[tier]
        sample.provenance["dit4edit"] = {
            "checkpoint": self._spec(checkpoint.model).describe(),
            "components": None if checkpoint.components_model is None else self._spec(checkpoint.components_model).describe(),
            "text_model": pipe.prompts.name,
            "size": [width, height],
            "steps": settings.steps,
            "guidance": {"inversion": settings.inversion_guidance, "target": settings.guidance,
                         "source": settings.inversion_guidance if settings.source_guidance is None else settings.source_guidance},
            "self_attention": {"switch_step": result.self_switch, "blocks": list(result.self_blocks)},
            "cross_attention": {"mode": result.cross, "until_step": round(settings.cross_steps * settings.steps)},
            "merge_ratio": settings.merge_ratio,
            "inversion": {
                "max_corrections": settings.max_corrections, "tolerance": settings.tolerance, "relaxation": settings.relaxation,
                "passes": settings.passes, "model_calls": result.inversion.evaluations, "corrections": result.inversion.corrections,
                "reconstruction_error": round(result.reconstruction_error, 8),
            },
            "mask_blend": result.blended,
            "seeds": {"merge": seed},
        }

    @staticmethod
    def _refit_meta(sample: Sample, width: int, height: int, transform: tuple[float, float, float, float]) -> None:
        """Keep the ground stage's precise mask and boxes on the fitted image."""
        x0, y0, sx, sy = transform
        precise = sample.meta.get("precise_mask")
        if isinstance(precise, np.ndarray):
            sample.meta["precise_mask"] = fit_image(precise, width, height, Image.Resampling.NEAREST)[0]
        boxes = sample.meta.get("boxes")
        if isinstance(boxes, dict):
            sample.meta["boxes"] = {
                keyword: [[(b[0] - x0) * sx, (b[1] - y0) * sy, (b[2] - x0) * sx, (b[3] - y0) * sy] for b in found]
                for keyword, found in boxes.items()
            }

    def score_columns(self) -> list[str]:
        return ["dit4edit_inversion_error"]

    def model_ids(self) -> dict[str, str]:
        ids = {}
        for k, checkpoint in enumerate(self.params.checkpoints):
            ids[f"checkpoint_{k}"] = self._spec(checkpoint.model).describe()
            if checkpoint.components_model is not None:
                ids[f"checkpoint_{k}_components"] = self._spec(checkpoint.components_model).describe()
        if self.params.text_model is not None:
            ids["text_model"] = self._spec(self.params.text_model).describe()
        return ids

    def model_files(self) -> dict[str, ModelFiles]:
        """What load_pixart and load_text read: transformer/ of each checkpoint, vae/ and scheduler/ of its
        components (default: itself), and the text model's text_encoder/ and tokenizer/."""
        files: dict[str, ModelFiles] = {}
        for k, checkpoint in enumerate(self.params.checkpoints):
            components = {"vae": "diffusers", "scheduler": "scheduler"}
            own = {"transformer": "diffusers", **({} if checkpoint.components_model is not None else components)}
            files[f"checkpoint_{k}"] = diffusers_files(self._spec(checkpoint.model), own)
            if checkpoint.components_model is not None:
                files[f"checkpoint_{k}_components"] = diffusers_files(self._spec(checkpoint.components_model), components)
        text = {"text_encoder": "transformers", "tokenizer": "tokenizer"}
        if self.params.text_model is not None:
            files["text_model"] = diffusers_files(self._spec(self.params.text_model), text)
        else:  # each checkpoint's text encoder comes from its components (or itself): add those folders there
            for k, checkpoint in enumerate(self.params.checkpoints):
                key = f"checkpoint_{k}_components" if checkpoint.components_model is not None else f"checkpoint_{k}"
                files[key] = merged(files[key], diffusers_files(files[key].spec, text))
        return files
