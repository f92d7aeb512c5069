"""The ``diffusers`` backend of ``edit_model``: an instruction-editing pipeline by class name, N seeded rows per call.

What differs between the pipelines (read from diffusers 0.42's ``__call__``s) is data in
:data:`TRAITS`; every call goes through one function, :meth:`DiffusersEditor.edit`, which passes
only the arguments the pipeline's signature has, so any other editing pipeline class works too
(with the generic defaults, and whatever its ``__call__`` takes). Facts this encodes:

* **guidance**: Qwen-Image-Edit(-2509) has real CFG as ``true_cfg_scale`` (on only when > 1 AND
  a negative prompt is given; its ``guidance_scale`` only feeds a guidance-distilled transformer);
  FLUX.1 Kontext [dev] is guidance-distilled (``guidance_scale`` into the transformer; BFL's and
  X2Edit's examples use 2.5) and adds a second pass for ``true_cfg_scale`` > 1 with a negative
  prompt; InstructPix2Pix has text ``guidance_scale`` (7.5) and ``image_guidance_scale`` (1.5).
* **size**: the output is a bucket that keeps the source's aspect ratio at ``max_pixels``
  (Kontext at 1 MP: its own training resolutions, PREFERRED_KONTEXT_RESOLUTIONS, nearest ratio,
  as BFL's and X2Edit's code do); the source is given at the bucket (Kontext then skips its own
  snap, ``_auto_resize=False``). The Qwen pipelines resize the source to their own ~1 MP working
  size whatever the output.
* **batching**: every pipeline takes one generator per row. The Qwen pipelines encode the prompt
  with the source through a VL model whose text length depends on the batch's longest prompt, and
  Plus refuses more than one prompt per call, so both get ONE source per call (its candidates
  through ``num_images_per_prompt``); Kontext (T5 padded to a fixed length) and pix2pix (CLIP, 77)
  take lists of sources. With ``exact_batches`` every call has ``max_batch`` rows
  (crispedit.sdxl.batching), so a row's bytes never depend on its neighbours; a one-source call
  has min(max_batch, candidates) rows, since more would only be padding copies of its candidates.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field, field_validator, model_validator

from crispedit.core.stage import StageParams
from crispedit.models.spec import ModelSpec
from crispedit.sdxl.options import TINY_MAX_SIDE, TINY_MAX_STEPS, DType

QWEN_IMAGE_EDIT = ModelSpec(id="Qwen/Qwen-Image-Edit", revision="ac7f9318f633fc4b5778c59367c8128225f1e3de")
QWEN_IMAGE_EDIT_2509 = ModelSpec(id="Qwen/Qwen-Image-Edit-2509", revision="d3968ef930e841f4c73640fb8afa3b306a78167e")
FLUX_KONTEXT_DEV = ModelSpec(id="black-forest-labs/FLUX.1-Kontext-dev", revision="af58063aa431f4d2bbc11ae46f57451d4416a170")
INSTRUCT_PIX2PIX = ModelSpec(id="timbrooks/instruct-pix2pix", revision="31519b5cb02a7fd89b906d88731cd4d6a7bbf88d")
MEGAPIXEL = 1024 * 1024


@dataclass(frozen=True)
class Traits:
    """What one pipeline class needs from the backend, and its published defaults."""

    model: ModelSpec | None = None
    steps: int = 28
    guidance_scale: float | None = None
    true_cfg_scale: float | None = None
    image_guidance_scale: float | None = None
    negative_prompt: str | None = None
    max_pixels: int = MEGAPIXEL
    multiple: int = 16  # output sides are multiples of this
    one_source_per_call: bool = False
    preferred_buckets: bool = False  # Kontext: its training resolutions at the default area
    qwen_working_area: bool = False  # the twin's working area must be shrunk (editors.twins.qwen_area)


#: Qwen: the model cards' examples (true_cfg 4, negative " ", 50 steps; 2509: 40 steps; its guidance_scale feeds
#: only guidance-distilled transformers, so it is left unset).
#: Kontext: diffusers' 28 steps, BFL's guidance 2.5. Pix2pix: diffusers' defaults at SD 1.5's 512 px.
TRAITS: dict[str, Traits] = {
    "QwenImageEditPipeline": Traits(QWEN_IMAGE_EDIT, steps=50, true_cfg_scale=4.0, negative_prompt=" ", multiple=32,
                                    one_source_per_call=True, qwen_working_area=True),
    "QwenImageEditPlusPipeline": Traits(QWEN_IMAGE_EDIT_2509, steps=40, true_cfg_scale=4.0, negative_prompt=" ",
                                        multiple=32, one_source_per_call=True, qwen_working_area=True),
    "FluxKontextPipeline": Traits(FLUX_KONTEXT_DEV, steps=28, guidance_scale=2.5, true_cfg_scale=1.0, preferred_buckets=True),
    "StableDiffusionInstructPix2PixPipeline": Traits(INSTRUCT_PIX2PIX, steps=50, guidance_scale=7.5, image_guidance_scale=1.5,
                                                     max_pixels=512 * 512, multiple=8),
}
GENERIC = Traits(guidance_scale=None)


class DiffusersEditorParams(StageParams):
    """The ``diffusers:`` block of ``edit_model``: which pipeline, which weights, how it samples and runs."""

    pipeline: str = Field("QwenImageEditPlusPipeline", description=(
        "the diffusers pipeline class: QwenImageEditPlusPipeline (Qwen-Image-Edit-2509), QwenImageEditPipeline, FluxKontextPipeline, "
        "StableDiffusionInstructPix2PixPipeline, or another instruction-editing pipeline (generic defaults; it gets the arguments "
        "its __call__ has)"))
    model: ModelSpec | None = Field(None, description="checkpoint id or path and pinned revision; default: the pipeline's own release (pinned)")
    steps: int | None = Field(None, ge=1, description="denoising steps; default: the pipeline's published value (--tiny caps them at 3)")
    guidance_scale: float | None = Field(None, ge=0, description="guidance_scale: distilled guidance (Kontext, 2.5) or text CFG (pix2pix, 7.5)")
    true_cfg_scale: float | None = Field(None, ge=0, description="real classifier-free guidance (Qwen 4.0; Kontext: off at 1.0), with the negative prompt")
    image_guidance_scale: float | None = Field(None, ge=0, description="InstructPix2Pix's image guidance (1.5); other pipelines have none")
    negative_prompt: str | None = Field(None, description="negative prompt; default: the pipeline's (Qwen ' ', which turns true CFG on)")
    max_pixels: int | None = Field(None, ge=64 * 64, description="output area; the bucket keeps the source's aspect ratio (default: 1 MP; pix2pix 512x512)")
    buckets: list[str] | None = Field(None, description="explicit output sizes WIDTHxHEIGHT; each source takes the nearest aspect ratio")
    max_sequence_length: int | None = Field(None, ge=1, description="prompt tokens the text encoder keeps (pipelines that take it)")
    dtype: DType = Field("auto", description="'auto': bfloat16 on a GPU that has it, else float16; float32 on the CPU")
    device: str = Field("auto", description="'auto' (the first GPU when there is one), 'cpu', 'cuda', 'cuda:1'...")
    max_batch: int = Field(4, ge=1, description="images per pipeline call (Qwen: candidates of one source per call)")
    exact_batches: bool = Field(True, description="pad every call to max_batch so an image's bytes never depend on its batch-mates")
    cpu_offload: bool = Field(False, description="diffusers' model CPU offload (GPU only): less GPU memory, slower")
    sequential_offload: bool = Field(False, description="diffusers' sequential CPU offload (GPU only): least GPU memory, much slower")
    vae_tiling: bool = Field(False, description="decode the VAE in tiles (large outputs; slower)")
    compile: bool = Field(False, description="torch.compile the denoiser (a long first call; pays off over many images)")
    variant: str | None = Field(None, description="weights variant to load, e.g. 'fp16'; None: the default files")

    @field_validator("buckets")
    @classmethod
    def _sizes(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("list at least one WIDTHxHEIGHT size, or leave buckets unset")
            for size in value:
                parse_size(size)
        return value

    @model_validator(mode="after")
    def _fits_the_pipeline(self) -> DiffusersEditorParams:
        traits = TRAITS.get(self.pipeline)
        if traits is not None:
            if self.image_guidance_scale is not None and traits.image_guidance_scale is None:
                raise ValueError(f"image_guidance_scale: {self.pipeline} has no image guidance (InstructPix2Pix has)")
            if self.true_cfg_scale is not None and traits.true_cfg_scale is None:
                raise ValueError(f"true_cfg_scale: {self.pipeline} has no true CFG (use guidance_scale)")
        if self.model is not None and self.model.dtype != "float32":
            raise ValueError("model: set the precision with the block's `dtype:`, not on the model")
        if self.cpu_offload and self.sequential_offload:
            raise ValueError("choose cpu_offload or sequential_offload, not both")
        return self

    @property
    def traits(self) -> Traits:
        return TRAITS.get(self.pipeline, GENERIC)

    def spec(self) -> ModelSpec:
        spec = self.model or self.traits.model
        if spec is None:
            raise ValueError(f"diffusers.model: {self.pipeline} has no default checkpoint; name one")
        return spec

    def sampler(self, tiny: bool) -> dict[str, Any]:
        """Every sampler value as the calls use it (what provenance records), None where the pipeline has none."""
        t = self.traits
        steps = self.steps or t.steps
        return {
            "pipeline": self.pipeline,
            "steps": min(steps, TINY_MAX_STEPS) if tiny else steps,
            "guidance_scale": self.guidance_scale if self.guidance_scale is not None else t.guidance_scale,
            "true_cfg_scale": self.true_cfg_scale if self.true_cfg_scale is not None else t.true_cfg_scale,
            "image_guidance_scale": self.image_guidance_scale if self.image_guidance_scale is not None else t.image_guidance_scale,
            "negative_prompt": self.negative_prompt if self.negative_prompt is not None else t.negative_prompt,
            "max_sequence_length": self.max_sequence_length,
        }


def parse_size(text: str) -> tuple[int, int]:
    """``"1024x768"`` -> (1024, 768)."""
    width, sep, height = text.lower().partition("x")
    if not sep or not width.strip().isdigit() or not height.strip().isdigit() or int(width) < 8 or int(height) < 8:
        raise ValueError(f"a size is WIDTHxHEIGHT with both sides >= 8, e.g. 1024x768; got {text!r}")
    return int(width), int(height)


def bucket(width: int, height: int, area: int, multiple: int, sizes: Sequence[tuple[int, int]] | None = None) -> tuple[int, int]:
    """(width, height) of the output: the nearest aspect ratio among ``sizes``, else the source's ratio at ``area``."""
    ratio = width / height
    if sizes:
        _, w, h = min((abs(math.log(ratio * h / w)), w, h) for w, h in sizes)
        return w // multiple * multiple or multiple, h // multiple * multiple or multiple
    w = max(multiple, round(math.sqrt(area * ratio) / multiple) * multiple)
    h = max(multiple, round(math.sqrt(area / ratio) / multiple) * multiple)
    return w, h


@dataclass(frozen=True)
class EditRow:
    """One row of a call: the source (uint8 RGB), the instruction, the candidate's seed."""

    image: np.ndarray
    instruction: str
    seed: int


class DiffusersEditor:
    """One loaded pipeline; cheap to construct, loads in :meth:`load` (a stage's ``setup``)."""

    def __init__(self, params: DiffusersEditorParams, tiny: bool, twin_seed: int) -> None:
        self.params = params
        self.tiny = tiny
        self.twin_seed = twin_seed
        self.pipe: Any = None
        self.accepts: set[str] = set()

    @property
    def traits(self) -> Traits:
        return self.params.traits

    def model_id(self) -> str:
        return "tiny" if self.tiny else self.params.spec().describe()

    # -- loading --------------------------------------------------------------------------
    def load(self) -> None:
        from crispedit.editors import twins  # noqa: F401  (registers the tiny editing pipelines)
        from crispedit.models.devices import resolve_device, resolve_dtype
        from crispedit.models.loading import load_model
        from crispedit.models.spec import TWINS

        p = self.params
        device = resolve_device(p.device)
        dtype = resolve_dtype(p.dtype, device)
        if self.tiny:
            name = f"editor:{p.pipeline}"
            if name not in TWINS:
                known = sorted(k.split(":", 1)[1] for k in TWINS if k.startswith("editor:"))
                raise ValueError(f"diffusers.pipeline {p.pipeline}: no tiny twin (--tiny knows {', '.join(known)})")
            pipe = TWINS[name](self.twin_seed)
        else:
            pipe = load_model(p.spec(), twin="", load=lambda model_id, **kw: self._from_pretrained(model_id, dtype, **kw))
        self.pipe = self._place(pipe, device, dtype)
        self.accepts = set(inspect.signature(type(self.pipe).__call__).parameters)

    def _from_pretrained(self, model_id: str, dtype: Any, **kwargs: Any) -> Any:
        import diffusers

        cls = getattr(diffusers, self.params.pipeline, None)
        if cls is None or not hasattr(cls, "from_pretrained"):
            raise ValueError(f"diffusers.pipeline: diffusers {diffusers.__version__} has no pipeline class {self.params.pipeline!r}")
        extra: dict[str, Any] = {}
        if self.traits.qwen_working_area:
            extra["processor"] = qwen_processor(model_id, kwargs.get("revision"))
        return cls.from_pretrained(model_id, torch_dtype=dtype, variant=self.params.variant, **extra, **kwargs)

    def _place(self, pipe: Any, device: Any, dtype: Any) -> Any:
        """Device, precision and the memory/speed switches a recipe chose."""
        p = self.params
        if pipe.dtype != dtype:  # a cast to the dtype it has already only warns
            pipe.to(dtype=dtype)
        if device.type == "cuda" and (p.cpu_offload or p.sequential_offload):
            if p.sequential_offload:
                pipe.enable_sequential_cpu_offload(device=device)
            else:
                pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device=device)
        if p.vae_tiling and hasattr(pipe.vae, "enable_tiling"):
            pipe.vae.enable_tiling()
        if p.compile:
            denoiser = getattr(pipe, "transformer", None) or pipe.unet
            denoiser.compile()
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # -- sizes ----------------------------------------------------------------------------
    def size_for(self, image: np.ndarray) -> tuple[int, int]:
        """(width, height) of the output for this source."""
        p, t = self.params, self.traits
        height, width = image.shape[:2]
        if self.tiny:  # at most the source's own area, at most TINY_MAX_SIDE**2 * 3/4
            return bucket(width, height, min(TINY_MAX_SIDE * TINY_MAX_SIDE * 3 // 4, width * height), t.multiple)
        sizes = [parse_size(s) for s in p.buckets] if p.buckets else None
        area = p.max_pixels or t.max_pixels
        if sizes is None and t.preferred_buckets and area == MEGAPIXEL:
            from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

            sizes = list(PREFERRED_KONTEXT_RESOLUTIONS)
        return bucket(width, height, area, t.multiple, sizes)

    # -- one call -------------------------------------------------------------------------
    def call_kwargs(self, size: tuple[int, int]) -> dict[str, Any]:
        """The sampler's arguments for one call, only those the pipeline's ``__call__`` takes."""
        sampler = self.params.sampler(self.tiny)
        wanted: dict[str, Any] = {"num_inference_steps": sampler["steps"], "output_type": "np", "width": size[0], "height": size[1]}
        for name in ("guidance_scale", "true_cfg_scale", "image_guidance_scale", "negative_prompt", "max_sequence_length"):
            if sampler[name] is not None:
                wanted[name] = sampler[name]
        if self.tiny and "max_sequence_length" in self.accepts:
            from crispedit.editors.twins import KONTEXT_TWIN_SEQUENCE

            wanted["max_sequence_length"] = min(wanted.get("max_sequence_length", KONTEXT_TWIN_SEQUENCE), KONTEXT_TWIN_SEQUENCE)
        if "_auto_resize" in self.accepts:  # the source is already at the bucket: no second snap to a training size
            wanted.update(max_area=size[0] * size[1], _auto_resize=False)
        return {k: v for k, v in wanted.items() if k in self.accepts}

    def edit(self, rows: Sequence[EditRow], size: tuple[int, int]) -> list[np.ndarray]:
        """One pipeline call for ``rows`` (one output size; one source when the pipeline needs that), uint8 images."""
        from contextlib import nullcontext

        import torch
        from PIL import Image

        from crispedit.sdxl.batching import generators, to_uint8

        kwargs = self.call_kwargs(size)
        if self.traits.one_source_per_call:
            first = rows[0]
            if any(r.image is not first.image or r.instruction != first.instruction for r in rows):
                raise ValueError(f"{self.params.pipeline} edits one source per call: group the candidates by source")
            image: Any = Image.fromarray(first.image)
            prompt: Any = first.instruction
            kwargs["num_images_per_prompt"] = len(rows)
        else:
            image = [_resized(r.image, size) for r in rows]
            prompt = [r.instruction for r in rows]
            if "negative_prompt" in kwargs:
                kwargs["negative_prompt"] = [kwargs["negative_prompt"]] * len(rows)
        area: Any = nullcontext()
        if self.tiny and self.traits.qwen_working_area:
            from crispedit.editors.twins import qwen_area

            area = qwen_area()
        with area, torch.inference_mode():
            out = self.pipe(image=image, prompt=prompt, generator=generators([r.seed for r in rows]), **kwargs).images
        return to_uint8(np.asarray(out))


def _resized(image: np.ndarray, size: tuple[int, int]) -> Any:
    from PIL import Image

    pil = Image.fromarray(image)
    return pil if pil.size == size else pil.resize(size, Image.Resampling.LANCZOS)


def qwen_processor(model_id: str, revision: str | None) -> Any:
    """The Qwen2-VL processor of a Qwen-Image-Edit checkpoint, assembled without the video processor (torchvision)."""
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from crispedit.editors.twins import image_only_qwen2vl_processor

    kwargs = {"revision": revision} if revision else {}
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(model_id, subfolder="processor", **kwargs)
    tokenizer = Qwen2Tokenizer.from_pretrained(model_id, subfolder="tokenizer", **kwargs)
    return image_only_qwen2vl_processor(image_processor, tokenizer)

