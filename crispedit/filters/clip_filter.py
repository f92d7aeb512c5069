"""The ``clip_filter`` stage: CLIP and DINOv2 similarity scores of a pair, and thresholds on them.

Scores (each its own column, kept on every row, rejects included):

* ``clip_t_source`` / ``clip_t_target``: CLIP cosine of each image with its caption;
* ``clip_i``: CLIP cosine of source and target images (how much of the picture survived);
* ``clip_dir``: InstructPix2Pix's directional similarity, cos(E(target) - E(source),
  E(target caption) - E(source caption)): did the image change the way the captions did;
* ``dino_i``: DINOv2 cosine of source and target (UltraEdit's structure check), when
  ``dino_model`` is set;
* ``aesthetic_source`` / ``aesthetic_target``: the LAION aesthetic predictor on the CLIP
  embeddings, when ``aesthetic_head`` names its weights (they must match the CLIP model:
  the released head is for ViT-L/14's 768-d embeddings).

All come from one :class:`crispedit.models.clip.Embedder` pass: each distinct image and caption
of a batch is embedded once. Thresholds are ``min_*``/``max_*`` parameters; null means none.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, model_validator

from crispedit.core.bounds import Bound, bound_checks
from crispedit.core.sample import Sample
from crispedit.core.stage import FilterStage, Resources, StageParams, register_stage
from crispedit.models.hub import ModelFiles, scorer_files
from crispedit.models.spec import ModelSpec


class ClipFilterParams(StageParams):
    clip_model: ModelSpec = Field(
        default_factory=lambda: ModelSpec(id="openai/clip-vit-large-patch14"),
        description="CLIP checkpoint (id and revision; `tiny` for the random-init twin). IP2P and UltraEdit use ViT-L/14",
    )
    dino_model: ModelSpec | None = Field(
        None, description="DINOv2 checkpoint for `dino_i` (e.g. facebook/dinov2-base); null: no DINOv2 score",
    )
    aesthetic_head: Path | None = Field(
        None, description="LAION aesthetic predictor weights (.safetensors or .pth) for the aesthetic scores; null: none",
    )
    min_clip_t_source: float | None = Field(None, description="reject when CLIP(source image, source caption) is below this")
    min_clip_t_target: float | None = Field(None, description="reject when CLIP(target image, target caption) is below this")
    min_clip_i: float | None = Field(None, description="reject when CLIP image-image similarity is below this (the edit lost the picture)")
    max_clip_i: float | None = Field(None, description="reject when CLIP image-image similarity is above this (nothing visible changed)")
    min_clip_dir: float | None = Field(None, description="reject when the directional similarity is below this")
    min_dino_i: float | None = Field(None, description="reject when DINOv2 image-image similarity is below this (needs dino_model)")
    max_dino_i: float | None = Field(None, description="reject when DINOv2 image-image similarity is above this (needs dino_model)")
    min_aesthetic: float | None = Field(None, description="reject when the target's aesthetic score is below this (needs aesthetic_head)")
    device: str = Field("auto", description="torch device: auto (CUDA when present), cpu, cuda:1, ...")
    model_batch_size: int = Field(64, ge=1, description="images per model forward pass")

    @model_validator(mode="after")
    def _consistent(self) -> ClipFilterParams:
        if self.dino_model is None and (self.min_dino_i is not None or self.max_dino_i is not None):
            raise ValueError("min_dino_i/max_dino_i need dino_model")
        if self.aesthetic_head is None and self.min_aesthetic is not None:
            raise ValueError("min_aesthetic needs aesthetic_head")
        if self.min_clip_i is not None and self.max_clip_i is not None and self.min_clip_i > self.max_clip_i:
            raise ValueError(f"min_clip_i ({self.min_clip_i}) is above max_clip_i ({self.max_clip_i})")
        return self


@register_stage
class ClipFilter(FilterStage[ClipFilterParams]):
    """CLIP text-image, image-image and directional similarity, DINOv2 similarity and aesthetics, in one pass."""

    kind = "clip_filter"
    in_actor_pool = True
    resources = Resources(num_cpus=1, num_gpus=1)
    default_batch_size = 64
    cites: ClassVar[tuple[str, ...]] = (
        "InstructPix2Pix (Brooks et al. 2023): CLIP ViT-L/14 text-image >= 0.2, directional >= 0.2, image-image >= 0.7",
        "UltraEdit (Zhao et al. 2024): directional >= 0.22, image-image >= 0.75, DINOv2 >= 0.4",
    )

    def inputs(self) -> set[str]:
        return {"source_image", "target_image", "source_caption", "target_caption"}

    def score_columns(self) -> list[str]:
        columns = ["clip_t_source", "clip_t_target", "clip_i", "clip_dir"]
        if self.params.dino_model is not None:
            columns.append("dino_i")
        if self.params.aesthetic_head is not None:
            columns += ["aesthetic_source", "aesthetic_target"]
        return columns

    def model_ids(self) -> dict[str, str]:
        ids = {"clip": self.params.clip_model.describe()}
        if self.params.dino_model is not None:
            ids["dino"] = self.params.dino_model.describe()
        if self.params.aesthetic_head is not None:
            ids["aesthetic"] = str(self.params.aesthetic_head)
        return ids

    def model_files(self) -> dict[str, ModelFiles]:
        return scorer_files(self.params.clip_model, self.params.dino_model)

    def thresholds(self) -> dict[str, tuple[Bound, Bound]]:
        """Bounds per score column, for ``decide``, the card's histograms and ``refilter``."""
        p = self.params
        bounds = {
            "clip_t_source": (p.min_clip_t_source, None),
            "clip_t_target": (p.min_clip_t_target, None),
            "clip_dir": (p.min_clip_dir, None),
            "clip_i": (p.min_clip_i, p.max_clip_i),
            "dino_i": (p.min_dino_i, p.max_dino_i),
            "aesthetic_target": (p.min_aesthetic, None),
        }
        return {k: v for k, v in bounds.items() if v != (None, None)}

    def setup(self) -> None:
        from crispedit.models.aesthetic import aesthetic_head
        from crispedit.models.clip import Embedder

        p = self.params
        self.embedder = Embedder(p.clip_model, p.dino_model, p.device, self.context.seed, p.model_batch_size)
        self.head = None
        if p.aesthetic_head is not None:
            self.head = aesthetic_head(str(p.aesthetic_head), self.embedder.device)
            width = self.embedder.clip.config.projection_dim
            if self.head.input_dim != width:
                raise ValueError(f"aesthetic head {p.aesthetic_head} takes {self.head.input_dim}-d embeddings; the CLIP model gives {width}")

    def score(self, batch: list[Sample]) -> list[dict[str, float | None]]:
        from crispedit.models.aesthetic import aesthetic_scores
        from crispedit.models.clip import finite_or_none

        pairs = self.embedder.embed_pairs(
            [s.source_image for s in batch], [s.target_image for s in batch],
            [s.source_caption for s in batch], [s.target_caption for s in batch],
        )
        out = pairs.scores()
        if self.head is not None:
            values = aesthetic_scores(self.head, pairs.clip_images) if pairs.clip_images is not None else []
            for row, s, t in zip(out, pairs.source, pairs.target, strict=True):
                row["aesthetic_source"] = values[s] if s is not None else None
                row["aesthetic_target"] = values[t] if t is not None else None
        return [{k: finite_or_none(v) for k, v in row.items()} for row in out]

    def decide(self, scores: dict[str, float | None]) -> str | None:
        return bound_checks(scores, self.thresholds(), _LABELS)


_LABELS = {
    "clip_t_source": ("caption mismatch", "caption mismatch"),
    "clip_t_target": ("caption mismatch", "caption mismatch"),
    "clip_dir": ("wrong direction", "wrong direction"),
    "clip_i": ("image changed too much", "no visible change"),
    "dino_i": ("structure lost", "no visible change"),
    "aesthetic_target": ("low aesthetic", "low aesthetic"),
}
