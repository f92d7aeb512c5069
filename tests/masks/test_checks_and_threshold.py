"""Mask checks and Emu Edit per-pixel thresholding on constructed masks and images."""

from __future__ import annotations

import numpy as np
import pytest

from crispedit.core.sample import Sample
from crispedit.core.stage import BuildContext
from crispedit.core.stats import stage_stats
from crispedit.engine.run import apply_stage
from crispedit.masks.checks import check_mask, count_contours, coverage
from crispedit.masks.pixel_threshold import (
    pixel_distance,
    threshold_chain,
    threshold_pixels,
)
from crispedit.masks.stages.mask_filter import MaskFilter, MaskFilterParams
from crispedit.masks.stages.pixel_threshold import PixelThreshold, PixelThresholdParams

CONTEXT = BuildContext(recipe_name="t", fingerprint="f", seed=0)


def dots(n: int, size: int = 100) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    for i in range(n):
        y, x = divmod(i, size // 2)
        mask[2 * y, 2 * x] = 255
    return mask


def test_coverage_and_contours_are_exact() -> None:
    mask = np.zeros((100, 100), np.uint8)
    mask[10:30, 10:30] = 255  # 400 px
    mask[50:60, 50:60] = 200  # 100 px, soft but above 127
    mask[70:80, 70:80] = 100  # below the level: outside
    mask[40:45, 15:20] = 0
    assert coverage(mask) == pytest.approx(0.05)
    assert count_contours(mask) == 2
    ring = np.zeros((20, 20), np.uint8)
    ring[2:18, 2:18] = 255
    ring[6:14, 6:14] = 0
    assert count_contours(ring) == 1  # a hole is not a region
    assert count_contours(dots(37)) == 37
    assert coverage(np.full((4, 4), 0.6, np.float32)) == 1.0


def test_check_mask_reasons_and_bounds() -> None:
    full = np.full((10, 10), 255, np.uint8)
    assert check_mask(full).reason == "mask too large: coverage 1.0000 > 0.9"
    empty = np.zeros((100, 100), np.uint8)
    empty[0, :99] = 255  # 0.0099
    assert check_mask(empty).reason == "mask too small: coverage 0.0099 < 0.01"
    empty[1, 0] = 255  # exactly 1%: inside the bounds
    assert check_mask(empty).reason is None
    report = check_mask(dots(600, 100), max_contours=500)
    assert report.contours == 600 and report.reason == "mask too fragmented: 600 contours > 500"
    assert check_mask(dots(600, 100), max_contours=600).reason is None


def test_mask_filter_stage_rejects_with_reasons_and_keeps_scores() -> None:
    big = np.full((50, 50), 255, np.uint8)
    good = np.zeros((50, 50), np.uint8)
    good[10:30, 10:30] = 255
    samples = [
        Sample(id="a", index=0, source_ref="a", mask=good),
        Sample(id="b", index=1, source_ref="b", mask=big),
        Sample(id="c", index=2, source_ref="c"),
        Sample(id="d", index=3, source_ref="d", mask=big, meta={"whole_image": True}),
    ]
    samples = apply_stage(MaskFilter(MaskFilterParams(), CONTEXT), "mask_filter", samples, 8)
    stats = stage_stats(samples)["mask_filter"]
    assert samples[0].alive and samples[0].scores == {"mask_coverage": 0.16, "mask_contours": 1.0, "mask_whole_image": 0.0}
    assert samples[1].scores["mask_coverage"] == 1.0  # a filter's reject keeps its scores
    assert samples[1].reject.reason.startswith("mask too large")
    assert samples[2].reject.reason.startswith("no mask")
    assert samples[3].alive  # a global edit's full mask is by design
    assert stats.to_dict()["rejected"] == {"mask too large": 1, "no mask": 1}
    with pytest.raises(ValueError):
        MaskFilterParams(min_coverage=0.5, max_coverage=0.4)


def test_mask_filter_keeps_unmasked_pairs_on_request_and_only_scores_without_bounds() -> None:
    """UltraEdit's rule (``unmasked: keep``) passes a pair without a mask but still judges a mask; no bounds: no rule."""
    big = np.full((50, 50), 255, np.uint8)

    def run(params: MaskFilterParams) -> list[Sample]:
        samples = [Sample(id="a", index=0, source_ref="a", mask=big), Sample(id="b", index=1, source_ref="b")]
        return apply_stage(MaskFilter(params, CONTEXT), "mask_filter", samples, 8)

    waived = run(MaskFilterParams(unmasked="keep"))
    assert waived[0].reject.reason.startswith("mask too large") and waived[1].alive
    assert waived[1].scores["mask_coverage"] is None
    stage = MaskFilter(MaskFilterParams(unmasked="keep"), CONTEXT)
    assert stage.not_applicable({"source_image", "target_image"}) is not None
    assert stage.not_applicable({"source_image", "target_image", "mask"}) is None
    assert MaskFilter(MaskFilterParams(), CONTEXT).not_applicable(set()) is None  # `reject`: the rule always applies
    scoring = run(MaskFilterParams(min_coverage=None, max_coverage=None, max_contours=None))
    assert all(s.alive for s in scoring) and scoring[0].scores["mask_coverage"] == 1.0
    assert MaskFilter(MaskFilterParams(min_coverage=None, max_coverage=None, max_contours=None), CONTEXT).thresholds() == {}


def test_pixel_distance_is_the_rgb_l1_on_unit_range() -> None:
    a = np.zeros((2, 2, 3), np.uint8)
    b = a.copy()
    b[0, 0] = (51, 0, 255)  # 0.2 + 0 + 1.0
    d = pixel_distance(a, b)
    assert d[0, 0] == pytest.approx(1.2) and d[1, 1] == 0.0
    assert pixel_distance(a, b, "mean")[0, 0] == pytest.approx(0.4)
    # no uint8 wrap-around (AnyEdit's bug): 0 - 255 is 1.0, not 1/255
    assert pixel_distance(b, a)[0, 0] == pytest.approx(1.2)


def constructed_pair() -> tuple[np.ndarray, np.ndarray]:
    """A 64x64 grey source; the target shifts the left half by 2/255 per channel (L1 0.024 < 0.03)
    and paints a 20x20 square on the right half by 40/255 per channel (L1 0.47 > 0.03)."""
    source = np.full((64, 64, 3), 100, np.uint8)
    target = source.copy()
    target[:, :32] += 2
    target[22:42, 40:60] += 40
    return source, target


def test_a_change_under_alpha_reverts_and_over_alpha_stays() -> None:
    source, target = constructed_pair()
    result = threshold_pixels(source, target, alpha=0.03, sigma=2.0)
    np.testing.assert_array_equal(result.image[:, :26], source[:, :26])  # drift under alpha: source again
    np.testing.assert_array_equal(result.image[24:40, 42:58], target[24:40, 42:58])  # the edit stays
    np.testing.assert_array_equal(result.image[:10, 40:], source[:10, 40:])  # untouched stays untouched
    # with alpha below the drift, the drift is kept too
    kept = threshold_pixels(source, target, alpha=0.02, sigma=2.0)
    np.testing.assert_array_equal(kept.image[:, :26], target[:, :26])
    # the edit's edge is decided on the low-passed distance: with no filter it is exact
    exact = threshold_pixels(source, target, alpha=0.03, sigma=0.0)
    expected_kept = np.ones((64, 64), bool)
    expected_kept[22:42, 40:60] = False
    np.testing.assert_array_equal(exact.kept_previous, expected_kept)


def test_a_lone_noisy_pixel_is_smoothed_away() -> None:
    source = np.full((32, 32, 3), 100, np.uint8)
    target = source.copy()
    target[16, 16] = (140, 140, 140)  # L1 0.47 at one pixel; low-passed it is far below 0.03
    result = threshold_pixels(source, target, alpha=0.03, sigma=2.0)
    np.testing.assert_array_equal(result.image, source)
    assert result.reverted_fraction == 1.0


def test_each_turn_of_a_chain_is_thresholded_against_the_previous_output() -> None:
    source, turn1 = constructed_pair()
    # the generator's turn 2 starts from the thresholded turn 1 and drifts again by 2/255
    turn2 = threshold_pixels(source, turn1).image.copy()
    turn2[:, :32] += 2
    turn2[2:12, 2:12] = 0  # a new edit in turn 2
    t1, t2 = threshold_chain([source, turn1, turn2], alpha=0.03, sigma=2.0)
    np.testing.assert_array_equal(t1.image[:, :26], source[:, :26])
    np.testing.assert_array_equal(t2.image[20:, :26], source[20:, :26])  # still the original background
    np.testing.assert_array_equal(t2.image[4:10, 4:10], turn2[4:10, 4:10])
    np.testing.assert_array_equal(t2.image[24:40, 42:58], turn1[24:40, 42:58])  # turn 1's edit carried on
    with pytest.raises(ValueError):
        threshold_chain([source])


def test_pixel_threshold_stage_pairs_and_chains() -> None:
    source, target = constructed_pair()
    pair = Sample(id="p", index=0, source_ref="p", source_image=source, target_image=target)
    turn2 = target.copy()
    turn2[2:12, 2:12] = 0
    chain = Sample(id="c", index=1, source_ref="c", source_image=source, target_image=turn2,
                   meta={"turn_images": [source, target, turn2]})
    broken = Sample(id="x", index=2, source_ref="x", source_image=source)
    stage = PixelThreshold(PixelThresholdParams(), CONTEXT)
    pair, chain, broken = apply_stage(stage, "pixel_threshold", [pair, chain, broken], 8)
    expected = threshold_pixels(source, target)
    np.testing.assert_array_equal(pair.target_image, expected.image)
    assert pair.scores["pixel_reverted"] == pytest.approx(expected.reverted_fraction)
    assert len(chain.meta["turn_images"]) == 3
    np.testing.assert_array_equal(chain.target_image, chain.meta["turn_images"][-1])
    np.testing.assert_array_equal(chain.meta["turn_images"][1], expected.image)
    assert broken.reject.reason.startswith("missing image")
    assert PixelThresholdParams().alpha == 0.03
