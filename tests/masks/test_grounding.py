"""GroundingDINO + SAM: the box/keyword assignment maths exactly, and the tiny twins end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crispedit.masks import grounding
from crispedit.masks.grounding import (
    GroundedSegmenter,
    assign_boxes,
    build_prompt,
    token_spans,
)
from crispedit.masks.twins import tiny_bert_tokenizer, tiny_grounding_dino, tiny_sam


def logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def test_prompt_joins_keywords_with_dots_and_records_their_spans() -> None:
    prompt, spans = build_prompt(["Cat", "red  hat.", "zebra"])
    assert prompt == "cat. red hat. zebra."
    assert [prompt[a:b] for a, b in spans] == ["cat", "red hat", "zebra"]


def test_token_spans_cover_multi_token_words_and_skip_specials() -> None:
    tokenizer = tiny_bert_tokenizer()
    prompt, spans = build_prompt(["cat", "zebra hat"])
    encoded = tokenizer(prompt, return_offsets_mapping=True)
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    cat, zebra_hat = token_spans(encoded["offset_mapping"], spans)
    assert [tokens[i] for i in cat] == ["cat"]
    # "zebra" is not in the tiny vocabulary: it is 5 word pieces, then "hat"
    assert [tokens[i] for i in zebra_hat] == ["z", "##e", "##b", "##r", "##a", "hat"]
    assert 0 not in cat  # [CLS]
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"


def test_assign_boxes_applies_both_thresholds_per_keyword() -> None:
    # tokens: 0 [CLS], 1 cat, 2 '.', 3 red, 4 hat, 5 '.', 6 [SEP]
    low = logit(0.01)
    logits = torch.full((4, 8), low)
    logits[0, 1] = logit(0.9)  # confident cat
    logits[1, 3] = logit(0.35)  # box score 0.35 > 0.3, and 'red' 0.35 > 0.25 -> red hat
    logits[2, 4] = logit(0.29)  # box score 0.29 <= 0.3: dropped although the text score passes
    logits[3, 2] = logit(0.8)  # confident on the '.' only: passes the box threshold, no keyword
    boxes = torch.tensor([[0.5, 0.5, 0.5, 0.25], [0.25, 0.25, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.9, 0.9, 0.4, 0.4]])
    dets = assign_boxes(logits, boxes, [[1], [3, 4]], ["cat", "red hat"], (100, 200), 0.3, 0.25)
    assert [(d.keyword, d.box) for d in dets] == [
        ("cat", (50.0, 37.5, 150.0, 62.5)),
        ("red hat", (0.0, 0.0, 100.0, 50.0)),
    ]
    assert dets[0].score == pytest.approx(0.9) and dets[1].score == pytest.approx(0.35)
    # boxes past the image are clipped; a query over the text threshold only for 'cat' is not 'red hat'
    logits2 = torch.full((1, 8), low)
    logits2[0, 1] = logit(0.6)
    dets2 = assign_boxes(logits2, torch.tensor([[0.9, 0.9, 0.4, 0.4]]), [[1], [3, 4]], ["cat", "red hat"], (10, 10), 0.3, 0.25)
    assert [(d.keyword, d.box) for d in dets2] == [("cat", pytest.approx((7.0, 7.0, 10.0, 10.0)))]


def test_tiny_grounded_sam_end_to_end_is_deterministic_for_a_seed(drawn_image: np.ndarray) -> None:
    detector, detector_processor = tiny_grounding_dino(3)
    segmenter, segmenter_processor = tiny_sam(4)
    first = GroundedSegmenter(detector, detector_processor, segmenter, segmenter_processor)(drawn_image, ["cat", "zebra"])
    detector, detector_processor = tiny_grounding_dino(3)
    segmenter, segmenter_processor = tiny_sam(4)
    again = GroundedSegmenter(detector, detector_processor, segmenter, segmenter_processor)(drawn_image, ["cat", "zebra"])
    assert first.precise.shape == drawn_image.shape[:2] and first.precise.dtype == bool
    assert first.detections == again.detections
    np.testing.assert_array_equal(first.precise, again.precise)
    # random weights put every keyword over the thresholds at 0; the boxes lie in the image
    assert {d.keyword for d in first.detections} == {"cat", "zebra"} and first.missing == []
    for d in first.detections:
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 96
        assert 0.3 < d.score <= 1.0
    # another seed is another model
    other_detector, other_processor = tiny_grounding_dino(5)
    other = GroundedSegmenter(other_detector, other_processor, segmenter, segmenter_processor)(drawn_image, ["cat", "zebra"])
    assert [d.box for d in other.detections] != [d.box for d in first.detections]


def test_precise_mask_is_the_union_of_the_sam_masks(tiny_grounding_models, drawn_image: np.ndarray) -> None:
    grounder = GroundedSegmenter(*tiny_grounding_models, clip_to_boxes=True, max_boxes_per_keyword=2)
    result = grounder(drawn_image, ["cat", "hat"])
    assert len([d for d in result.detections if d.keyword == "cat"]) <= 2
    masks = grounder.segment(drawn_image, result.boxes)
    assert masks.shape == (len(result.boxes), 96, 128)
    for mask, box in zip(masks, result.boxes):
        mask &= grounding.box_mask((96, 128), [box]) > 0
    np.testing.assert_array_equal(result.precise, masks.any(axis=0))
    # clipped: nothing outside the boxes
    assert not np.any(result.precise & (grounding.box_mask((96, 128), result.boxes) == 0))


def test_a_keyword_without_detection_is_reported_missing(tiny_grounding_models, drawn_image: np.ndarray) -> None:
    grounder = GroundedSegmenter(*tiny_grounding_models, box_threshold=1.0)  # sigmoid never exceeds 1
    result = grounder(drawn_image, ["cat", "red hat"])
    assert result.missing == ["cat", "red hat"] and result.detections == []
    assert not result.precise.any()


@pytest.mark.parametrize("keywords", [[], ["NONE"], ["none", " "]])
def test_no_object_means_the_whole_image(tiny_grounding_models, drawn_image: np.ndarray, keywords: list[str]) -> None:
    result = GroundedSegmenter(*tiny_grounding_models)(drawn_image, keywords)
    assert result.whole_image and result.precise.all() and result.missing == []
    assert result.boxes == [(0.0, 0.0, 128.0, 96.0)]
