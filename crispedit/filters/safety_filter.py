"""The ``safety_filter`` stage: diffusers' CLIP-based safety checker on both images of a pair.

InstructPix2Pix ran a moderation filter on its captions; most later pipelines run none.
``StableDiffusionSafetyChecker`` compares a CLIP ViT-L/14 image embedding with 17 concept
embeddings, each with its own threshold, and returns a flag only. The score kept here is
the margin behind that flag, max over concepts of (cosine - threshold) with the checker's
special-care adjustment (:func:`crispedit.models.clip.safety_scores`): above 0 is what the
checker flags, and a stricter cut-off (say -0.02) can be chosen later by ``refilter``.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from crispedit.core.bounds import Bound, bound_checks
from crispedit.core.sample import Sample
from crispedit.core.stage import FilterStage, Resources, StageParams, register_stage
from crispedit.models.hub import ModelFiles, transformers_files
from crispedit.models.spec import ModelSpec


class SafetyParams(StageParams):
    model: ModelSpec = Field(
        default_factory=lambda: ModelSpec(id="CompVis/stable-diffusion-safety-checker"),
        description="the safety checker checkpoint (id and revision; `tiny` for a random-init twin)",
    )
    max_nsfw: float | None = Field(0.0, description="reject when either image's margin is above this (0: the checker's own flag); null: score only")
    device: str = Field("auto", description="torch device: auto (CUDA when present), cpu, cuda:1, ...")
    model_batch_size: int = Field(64, ge=1, description="images per model forward pass")


@register_stage
class SafetyFilter(FilterStage[SafetyParams]):
    """NSFW margins of source and target from the Stable Diffusion safety checker."""

    kind = "safety_filter"
    in_actor_pool = True
    resources = Resources(num_cpus=1, num_gpus=1)
    cites: ClassVar[tuple[str, ...]] = ("diffusers StableDiffusionSafetyChecker (CompVis/stable-diffusion-safety-checker): flags margin > 0",)

    def score_columns(self) -> list[str]:
        return ["nsfw_source", "nsfw_target"]

    def model_ids(self) -> dict[str, str]:
        return {"safety": self.params.model.describe()}

    def model_files(self) -> dict[str, ModelFiles]:
        return {"safety": transformers_files(self.params.model, processor=True)}

    def thresholds(self) -> dict[str, tuple[Bound, Bound]]:
        if self.params.max_nsfw is None:
            return {}
        return {"nsfw_source": (None, self.params.max_nsfw), "nsfw_target": (None, self.params.max_nsfw)}

    def setup(self) -> None:
        from crispedit.models.devices import resolve_device
        from crispedit.models.safety import load_safety_checker

        self.device = resolve_device(self.params.device)
        self.checker, self.preprocess = load_safety_checker(self.params.model, self.context.seed)
        self.checker.to(self.device)

    def score(self, batch: list[Sample]) -> list[dict[str, float | None]]:
        from crispedit.models.clip import finite_or_none
        from crispedit.models.safety import safety_scores

        images = [img for s in batch for img in (s.source_image, s.target_image) if img is not None]
        values: list[float] = []
        size = self.params.model_batch_size
        for lo in range(0, len(images), size):
            values += safety_scores(self.checker, self.preprocess(images[lo : lo + size], self.device))
        found = iter(values)
        out = []
        for s in batch:
            src = next(found) if s.source_image is not None else None
            tgt = next(found) if s.target_image is not None else None
            out.append({"nsfw_source": finite_or_none(src), "nsfw_target": finite_or_none(tgt)})
        return out

    def decide(self, scores: dict[str, float | None]) -> str | None:
        labels = {"nsfw_source": ("unsafe", "unsafe"), "nsfw_target": ("unsafe", "unsafe")}
        return bound_checks(scores, self.thresholds(), labels)
