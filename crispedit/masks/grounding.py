"""Grounded masks: GroundingDINO boxes for each edited-object keyword, SAM masks for each box.

This is the Grounded-SAM recipe UltraEdit and AnyEdit use, through transformers' classes so
real checkpoints load by id with ``from_pretrained`` and tiny twins of the same classes run
the identical code in tests.

All keywords of one image go into ONE GroundingDINO prompt ("cat. red hat."), the way the
model was trained, and each box is assigned back to a keyword by the token span of that
keyword: a box belongs to keyword k when its best token score over k's tokens exceeds the
text threshold. transformers' ``post_process_grounded_object_detection`` applies the same
two thresholds but returns decoded label strings, which cannot be mapped back to a keyword
reliably (two keywords may share words); so the thresholds are applied here on the logits,
with the same semantics: box score = max sigmoid over all text tokens > box_threshold.
SAM's own ``post_process_masks`` upsamples and binarises the masks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from crispedit.masks.soft import box_mask

#: Keywords that mean "the whole image" (UltraEdit's edit_object "NONE"; empty lists too).
WHOLE_IMAGE_KEYWORDS = frozenset({"", "none", "whole image", "image"})


@dataclass
class Detection:
    """One GroundingDINO box for one keyword, in pixel xyxy of the original image."""

    keyword: str
    box: tuple[float, float, float, float]
    score: float


@dataclass
class Grounding:
    """What grounding found in one image: the precise mask (union over keywords), boxes per keyword."""

    precise: np.ndarray  # HxW bool
    detections: list[Detection] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # keywords with no box above the thresholds
    whole_image: bool = False

    @property
    def boxes(self) -> list[tuple[float, float, float, float]]:
        return [d.box for d in self.detections]

    def boxes_by_keyword(self) -> dict[str, list[list[float]]]:
        out: dict[str, list[list[float]]] = {}
        for d in self.detections:
            out.setdefault(d.keyword, []).append([round(v, 2) for v in d.box])
        return out


def is_whole_image(keywords: Sequence[str]) -> bool:
    """True when the keywords name no object: the edit is global (style, weather, tone)."""
    return all(k.strip().lower() in WHOLE_IMAGE_KEYWORDS for k in keywords)


def clean_keyword(keyword: str) -> str:
    """GroundingDINO expects lowercase phrases without the '.' that separates them."""
    return re.sub(r"\s+", " ", keyword.replace(".", " ")).strip().lower()


def build_prompt(keywords: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """'cat. red hat.' and the character span of each keyword inside it."""
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    cursor = 0
    for keyword in keywords:
        phrase = clean_keyword(keyword)
        spans.append((cursor, cursor + len(phrase)))
        parts.append(phrase + ".")
        cursor += len(phrase) + 2  # the '.' and the joining space
    return " ".join(parts), spans


def token_spans(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Token positions whose characters fall inside each span (special tokens have empty offsets)."""
    out = []
    for lo, hi in spans:
        out.append([i for i, (a, b) in enumerate(offsets) if b > a and a >= lo and b <= hi])
    return out


def assign_boxes(
    logits: torch.Tensor,
    boxes_cxcywh: torch.Tensor,
    keyword_tokens: Sequence[Sequence[int]],
    keywords: Sequence[str],
    size: tuple[int, int],
    box_threshold: float,
    text_threshold: float,
) -> list[Detection]:
    """GroundingDINO's two thresholds on one image's raw outputs, boxes assigned to keywords.

    logits: (queries, text_len) raw; boxes_cxcywh: (queries, 4) relative. A query is kept
    when max sigmoid over all tokens > box_threshold; it is a detection of keyword k when
    max sigmoid over k's tokens > text_threshold. Its score for k is that keyword maximum.
    """
    height, width = size
    probs = logits.float().sigmoid()
    box_scores = probs.max(dim=-1).values
    cx, cy, w, h = boxes_cxcywh.float().unbind(-1)
    xyxy = torch.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], -1)
    xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, width)
    xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, height)
    detections: list[Detection] = []
    for keyword, tokens in zip(keywords, keyword_tokens):
        if not tokens:
            continue
        kw_scores = probs[:, list(tokens)].max(dim=-1).values
        keep = (box_scores > box_threshold) & (kw_scores > text_threshold)
        for q in torch.nonzero(keep).flatten().tolist():
            box = tuple(float(v) for v in xyxy[q].tolist())
            if box[2] > box[0] and box[3] > box[1]:
                detections.append(Detection(keyword=keyword, box=box, score=float(kw_scores[q])))
    detections.sort(key=lambda d: (keywords.index(d.keyword), -d.score))
    return detections


class GroundedSegmenter:
    """GroundingDINO + SAM on one image at a time: keywords in, precise mask and boxes out."""

    def __init__(
        self,
        detector: Any,
        detector_processor: Any,
        segmenter: Any,
        segmenter_processor: Any,
        *,
        box_threshold: float = 0.3,
        text_threshold: float = 0.25,
        max_boxes_per_keyword: int = 0,
        sam_mask_threshold: float = 0.0,
        clip_to_boxes: bool = False,
        device: str | torch.device = "cpu",
    ) -> None:
        self.detector = detector
        self.detector_processor = detector_processor
        self.segmenter = segmenter
        self.segmenter_processor = segmenter_processor
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold
        self.max_boxes_per_keyword = max_boxes_per_keyword
        self.sam_mask_threshold = sam_mask_threshold
        self.clip_to_boxes = clip_to_boxes
        self.device = torch.device(device)

    @torch.inference_mode()
    def detect(self, image: np.ndarray, keywords: Sequence[str]) -> list[Detection]:
        """Boxes for each keyword (possibly none for some), best first within a keyword."""
        prompt, spans = build_prompt(keywords)
        inputs = self.detector_processor(images=[image], text=prompt, return_tensors="pt")
        encoded = self.detector_processor.tokenizer(prompt, return_offsets_mapping=True)
        if list(encoded["input_ids"]) != inputs["input_ids"][0].tolist():
            raise RuntimeError("detector processor tokenized the prompt differently from its tokenizer")
        max_len = int(getattr(self.detector.config, "max_text_len", len(encoded["input_ids"])))
        tokens = [[i for i in span if i < max_len] for span in token_spans(encoded["offset_mapping"], spans)]
        dtype = next(self.detector.parameters()).dtype
        feed = {k: (v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device)) for k, v in inputs.items()}
        outputs = self.detector(**feed)
        detections = assign_boxes(
            outputs.logits[0].cpu(), outputs.pred_boxes[0].cpu(), tokens, list(keywords), image.shape[:2],
            self.box_threshold, self.text_threshold,
        )
        if self.max_boxes_per_keyword > 0:
            kept: dict[str, int] = {}
            capped = []
            for d in detections:
                if kept.get(d.keyword, 0) < self.max_boxes_per_keyword:
                    capped.append(d)
                    kept[d.keyword] = kept.get(d.keyword, 0) + 1
            detections = capped
        return detections

    @torch.inference_mode()
    def segment(self, image: np.ndarray, boxes: Sequence[Sequence[float]]) -> np.ndarray:
        """One binary SAM mask per box, (N, H, W) bool, at the image's size."""
        height, width = image.shape[:2]
        if not boxes:
            return np.zeros((0, height, width), bool)
        box_list = [[float(v) for v in box] for box in boxes]
        inputs = self.segmenter_processor(images=[image], input_boxes=[box_list], return_tensors="pt")
        dtype = next(self.segmenter.parameters()).dtype
        outputs = self.segmenter(
            pixel_values=inputs["pixel_values"].to(self.device, dtype),
            input_boxes=inputs["input_boxes"].to(self.device, dtype),
            multimask_output=False,
        )
        masks = self.segmenter_processor.post_process_masks(
            outputs.pred_masks.float().cpu(), inputs["original_sizes"], inputs["reshaped_input_sizes"],
            mask_threshold=self.sam_mask_threshold,
        )[0]  # (boxes, 1, H, W)
        return masks[:, 0].numpy().astype(bool)

    def __call__(self, image: np.ndarray, keywords: Sequence[str]) -> Grounding:
        """Ground every keyword; a global edit ("NONE" / no keyword) is the whole image."""
        height, width = image.shape[:2]
        named = [k for k in keywords if clean_keyword(k) not in WHOLE_IMAGE_KEYWORDS]
        if not named:
            full = (0.0, 0.0, float(width), float(height))
            return Grounding(np.ones((height, width), bool), [Detection("NONE", full, 1.0)], whole_image=True)
        # the same keyword twice would only split its boxes between two spans
        unique = list(dict.fromkeys(clean_keyword(k) for k in named))
        detections = self.detect(image, unique)
        found = {d.keyword for d in detections}
        missing = [k for k in unique if k not in found]
        precise = np.zeros((height, width), bool)
        if detections:
            masks = self.segment(image, [d.box for d in detections])
            if self.clip_to_boxes:  # SAM can leak past a box; keep each mask inside its own prompt
                for mask, d in zip(masks, detections):
                    mask &= box_mask((height, width), [d.box]) > 0
            precise = masks.any(axis=0)
        return Grounding(precise, detections, missing)
