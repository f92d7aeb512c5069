"""The ``ground`` stage: keywords -> GroundingDINO boxes -> SAM precise mask -> Emu Edit soft mask.

Writes ``sample.mask`` (the soft mask, uint8, 255 = edit), and for later stages
``meta["precise_mask"]`` (uint8 0/255), ``meta["boxes"]`` ({keyword: [[x0, y0, x1, y1], ...]})
and ``meta["whole_image"]``. The score ``ground_score`` is the weakest keyword's best
detection score, kept so a dataset can be re-filtered on it without regrounding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from crispedit.core.sample import Sample, derive_seed
from crispedit.core.stage import Resources, Stage, StageParams, register_stage
from crispedit.masks import soft, twins  # noqa: F401  (twins: registers the tiny GroundingDINO and SAM)
from crispedit.models.devices import resolve_device
from crispedit.models.hub import ModelFiles, transformers_files
from crispedit.models.loading import load_model
from crispedit.models.spec import ModelSpec

if TYPE_CHECKING:  # torch and the model code load in setup(), so validating a recipe stays light
    pass


class GroundParams(StageParams):
    """Every threshold, weight, radius and sigma of grounding and the soft mask."""

    detector_model: ModelSpec = Field(ModelSpec(id="IDEA-Research/grounding-dino-base"), description="GroundingDINO checkpoint (id or path, revision, dtype)")
    segmenter_model: ModelSpec = Field(ModelSpec(id="facebook/sam-vit-huge"), description="SAM checkpoint (id or path, revision, dtype)")
    box_threshold: float = Field(0.3, ge=0.0, le=1.0, description="UltraEdit: 0.3")
    text_threshold: float = Field(0.25, ge=0.0, le=1.0, description="UltraEdit: 0.25")
    max_boxes_per_keyword: int = Field(0, ge=0, description="boxes kept per keyword, best first; 0 keeps every box above the thresholds")
    sam_mask_threshold: float = Field(0.0, description="SAM logit above which a pixel is inside the mask")
    clip_masks_to_boxes: bool = Field(False, description="cut each SAM mask to its detection box")
    image: Literal["source", "target"] = Field("source", description="which image of the pair is grounded")
    keywords: list[str] = Field(default_factory=list, description="grounded in every sample besides its edit_objects")
    dilate_radius: int = Field(8, ge=0, description="dilation of the precise mask, in pixels (our default; upstream publishes none)")
    blur_sigma: float = Field(4.0, ge=0.0, description="Gaussian blur of the dilated mask, in pixels")
    precise_weight: float = Field(0.0, ge=0.0, description="weight of the precise SAM mask in the soft-mask fusion")
    smooth_weight: float = Field(0.5, ge=0.0, description="weight of the dilated, blurred mask in the fusion")
    box_weight: float = Field(0.5, ge=0.0, description="weight of the box mask in the fusion")
    hull_weight: float = Field(0.0, ge=0.0, description="weight of the per-region convex hull in the fusion")
    device: str = Field("auto", description="'auto' (a GPU when there is one), 'cpu', 'cuda', 'cuda:1'...")

    def weights(self) -> soft.SoftMaskWeights:
        return soft.SoftMaskWeights(self.precise_weight, self.smooth_weight, self.box_weight, self.hull_weight)


def _pretrained_pair(model_cls: Any, processor_cls: Any, spec: ModelSpec) -> Any:
    """A from_pretrained-shaped loader returning (model, processor) like the twins do."""

    def load(model_id: str, **kwargs: Any) -> tuple[Any, Any]:
        import torch

        dtype = getattr(torch, spec.dtype)
        model = model_cls.from_pretrained(model_id, dtype=dtype, **kwargs).eval()
        return model, processor_cls.from_pretrained(model_id, **kwargs)

    return load


@register_stage
class GroundStage(Stage[GroundParams]):
    """Grounded-SAM masks and the Emu Edit soft mask for each sample's edited objects."""

    kind = "ground"
    in_actor_pool = True
    resources = Resources(num_cpus=1, num_gpus=1)
    default_batch_size = 8

    def outputs(self) -> set[str]:
        return {"mask", "meta.precise_mask", "meta.boxes", "meta.whole_image"}

    def inputs(self) -> set[str]:
        return {f"{self.params.image}_image", "edit_objects"}

    def setup(self) -> None:
        from transformers import (
            GroundingDinoForObjectDetection,
            GroundingDinoProcessor,
            SamModel,
            SamProcessor,
        )

        from crispedit.masks.grounding import GroundedSegmenter

        p = self.params
        device = resolve_device(p.device)
        seed = derive_seed(self.context.seed, "ground", "twins")
        detector, detector_processor = load_model(
            p.detector_model, twin="grounding-dino", seed=seed,
            load=_pretrained_pair(GroundingDinoForObjectDetection, GroundingDinoProcessor, p.detector_model),
        )
        segmenter, segmenter_processor = load_model(
            p.segmenter_model, twin="sam", seed=seed + 1,
            load=_pretrained_pair(SamModel, SamProcessor, p.segmenter_model),
        )
        self.grounder = GroundedSegmenter(
            detector.to(device), detector_processor, segmenter.to(device), segmenter_processor,
            box_threshold=p.box_threshold, text_threshold=p.text_threshold,
            max_boxes_per_keyword=p.max_boxes_per_keyword, sam_mask_threshold=p.sam_mask_threshold,
            clip_to_boxes=p.clip_masks_to_boxes, device=device,
        )

    def __call__(self, batch: list[Sample]) -> list[Sample]:
        for sample in batch:
            self.ground_one(sample)
        return batch

    def ground_one(self, sample: Sample) -> None:
        p = self.params
        image = sample.source_image if p.image == "source" else sample.target_image
        if image is None:
            sample.fail(self.name, f"missing image: no {p.image}_image to ground")
            return
        from crispedit.masks.grounding import is_whole_image

        named = [k for k in sample.edit_objects if not is_whole_image([k])]
        result = self.grounder(image, named + list(p.keywords))
        if result.missing:
            sample.fail(self.name, "no detection: " + ", ".join(repr(k) for k in result.missing))
            return
        precise = result.precise
        mask = soft.soft_mask(
            precise, result.boxes, dilate_radius=p.dilate_radius, blur_sigma=p.blur_sigma, weights=p.weights(),
        )
        sample.mask = soft.to_uint8(mask)
        sample.meta["precise_mask"] = precise.astype(np.uint8) * 255
        sample.meta["boxes"] = result.boxes_by_keyword()
        sample.meta["whole_image"] = result.whole_image
        best: dict[str, float] = {}
        for d in result.detections:
            best[d.keyword] = max(best.get(d.keyword, 0.0), d.score)
        sample.scores["ground_score"] = min(best.values()) if best else 1.0

    def score_columns(self) -> list[str]:
        return ["ground_score"]

    def model_ids(self) -> dict[str, str]:
        return {
            "detector_model": self.params.detector_model.describe(),
            "segmenter_model": self.params.segmenter_model.describe(),
        }

    def model_files(self) -> dict[str, ModelFiles]:
        return {"detector_model": transformers_files(self.params.detector_model, tokenizer=True, processor=True),
                "segmenter_model": transformers_files(self.params.segmenter_model, processor=True)}
