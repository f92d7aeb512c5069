"""The ``sdxl_source`` stage: the source image from the input caption with SDXL, optionally with a keyword mask.

With ``keyword_mask`` on, the cross-attention each edited object's tokens receive while the
image is drawn is summed over steps, heads and layers (crispedit.sdxl.attention_store), cut
at ``keyword_threshold`` x its mean as EditWorld does, united over the objects, optionally
softened, and written as the record's ``mask``: the edit region of a generated source, with
no detector. Objects the caption does not name (an object to add) contribute nothing.

The seed and sampler are kept in ``meta.sdxl_source`` so a later ``p2p`` stage can redraw
this exact source next to its target from the same noise.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from crispedit.core.sample import Sample
from crispedit.core.stage import register_stage
from crispedit.models.spec import ModelSpec
from crispedit.sdxl.options import tiny_size
from crispedit.sdxl.stages.base import SDXL_BASE, GeneratorParams, TextToImageStage


class SourceParams(GeneratorParams):
    base_model: ModelSpec = Field(SDXL_BASE, description="the SDXL checkpoint (id or path, revision)")
    height: int = Field(1024, ge=64, le=8192, multiple_of=8, description="image height in pixels (SDXL's native 1024; --tiny: 64 on the long side)")
    width: int = Field(1024, ge=64, le=8192, multiple_of=8, description="image width in pixels")
    keyword_mask: Literal["off", "optional", "required"] = Field(
        "off", description="write `mask` from the edit objects' cross-attention; 'required' rejects samples whose caption names none"
    )
    keyword_map_side: int | None = Field(
        None, ge=1, description="read only attention layers of this grid side (EditWorld: 16 at 512 px); None: every layer (--tiny: always None)"
    )
    keyword_threshold: float = Field(0.85, gt=0, description="a pixel is in the mask above this x the map's mean (EditWorld: 0.85)")
    mask_dilate: int = Field(0, ge=0, description="grow the keyword mask by this many pixels")
    mask_blur: float = Field(0.0, ge=0.0, description="Gaussian sigma (pixels) softening the keyword mask; 0 keeps it binary")


@register_stage
class SDXLSourceStage(TextToImageStage[SourceParams]):
    """The source image from ``source_caption`` with SDXL (one per candidate seed), optionally a keyword attention mask."""

    kind = "sdxl_source"

    def inputs(self) -> set[str]:
        return {"source_caption"} | ({"edit_objects"} if self.params.keyword_mask != "off" else set())

    def outputs(self) -> set[str]:
        return {"source_image", "meta.sdxl_source"} | ({"mask"} if self.params.keyword_mask != "off" else set())

    def size(self) -> tuple[int, int]:
        return tiny_size(self.params.height, self.params.width, self.context.tiny)

    def keywords_of(self, sample: Sample) -> dict[str, list[int]]:
        """Token positions of each edit object the caption names (both SDXL tokenizers agree on them)."""
        from crispedit.sdxl.attention_store import KeywordNotInPrompt, sdxl_keyword_indices

        found: dict[str, list[int]] = {}
        for keyword in sample.edit_objects:
            try:
                found[keyword] = sdxl_keyword_indices(self.pipe.tokenizer, self.pipe.tokenizer_2, sample.source_caption or "", keyword)
            except KeywordNotInPrompt:
                continue
        return found

    def generate(self, samples: list[Sample]) -> None:
        from crispedit.sdxl.batching import run_in_calls
        from crispedit.sdxl.text2image import generate

        p = self.params
        sampler = p.sampler().for_tiny(self.context.tiny)
        height, width = self.size()
        wants_mask = p.keyword_mask != "off"
        jobs: list[tuple[Sample, int, dict[str, list[int]]]] = []
        for sample in samples:
            keywords = self.keywords_of(sample) if wants_mask else {}
            if p.keyword_mask == "required" and not keywords:
                sample.fail(self.name, f"no keyword: the caption names none of {sample.edit_objects}")
                continue
            jobs.append((sample, sample.seed("noise"), keywords))
        side = None if self.context.tiny else p.keyword_map_side

        def call(chunk: list[tuple[Sample, int, dict[str, list[int]]]]) -> list[tuple[np.ndarray, dict[str, np.ndarray] | None]]:
            images, maps = generate(
                self.pipe, [s.source_caption or "" for s, _, _ in chunk], [seed for _, seed, _ in chunk], sampler, height, width,
                keywords=[k for _, _, k in chunk] if wants_mask else None, keyword_map_side=side,
            )
            return list(zip(images, maps or [None] * len(images), strict=True))

        results = run_in_calls(jobs, p.max_batch, p.exact_batches, call)
        for (sample, seed, keywords), (image, maps) in zip(jobs, results, strict=True):
            sample.source_image = image
            record: dict[str, Any] = {"seed": seed, "height": height, "width": width}
            sample.meta["sdxl_source"] = {**record, "model": p.base_model.describe()}
            if wants_mask:
                sample.mask = self.mask_from(maps or {}, (height, width))
                record["keywords"] = {k: v for k, v in keywords.items()}
            self.record(sample, **record)

    def mask_from(self, maps: dict[str, np.ndarray], size: tuple[int, int]) -> np.ndarray | None:
        """Union of the keywords' thresholded maps, optionally grown and softened (uint8, 255 = edit)."""
        from crispedit.masks import soft
        from crispedit.sdxl.attention_store import keyword_mask

        if not maps:
            return None
        union = np.zeros(size, np.uint8)
        for attention in maps.values():
            union |= keyword_mask(attention, size, binarize=True, threshold_factor=self.params.keyword_threshold).astype(np.uint8)
        return soft.to_uint8(soft.smooth_mask(union, self.params.mask_dilate, self.params.mask_blur))
