"""Exact expectations for the Emu Edit soft-mask maths on masks drawn in the test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crispedit.masks import soft


def point_mask(h: int = 41, w: int = 41, y: int = 20, x: int = 20) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[y, x] = 255
    return mask


def rect_mask(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[y0:y1, x0:x1] = 255
    return mask


@pytest.mark.parametrize("radius", [0, 1, 3, 7])
def test_dilation_grows_a_point_into_a_disc_of_exactly_the_radius(radius: int) -> None:
    grown = soft.dilate(point_mask(), radius)
    ys, xs = np.nonzero(grown)
    # extent along both axes is exactly r on each side of the point
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (20 - radius, 20 + radius, 20 - radius, 20 + radius)
    # the row and column through the point are filled out to r; r+1 is empty
    assert grown[20, 20 + radius] == 1 and grown[20 + radius, 20] == 1
    assert grown[20, 20 + radius + 1] == 0 and grown[20 + radius + 1, 20] == 0
    # elliptical, not square: corners of the bounding square stay empty once r > 1
    if radius > 1:
        assert grown[20 - radius, 20 - radius] == 0
    # every set pixel lies within the disc of radius r (+ half a pixel of rasterisation)
    assert np.all(np.hypot(ys - 20, xs - 20) <= radius + 0.5)


def test_dilation_of_a_rectangle_adds_radius_pixels_on_each_side() -> None:
    grown = soft.dilate(rect_mask(64, 64, 20, 30, 25, 40), 5)
    ys, xs = np.nonzero(grown)
    assert (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) == (15, 35, 20, 45)
    # the original rectangle is still inside
    assert grown[20:30, 25:40].all()


def test_blur_is_bounded_and_monotone_away_from_a_disc() -> None:
    disc = soft.dilate(point_mask(81, 81, 40, 40), 14)
    blurred = soft.blur(disc, sigma=3.0)
    assert blurred.dtype == np.float32
    assert blurred.min() >= 0.0 and blurred.max() <= 1.0
    row = blurred[40, 40:]
    # non-increasing from the centre outwards, strictly falling across the edge
    assert np.all(np.diff(row) <= 1e-6)
    assert row[12] > row[14] > row[16] > row[18]
    # the kernel (radius 9) fits inside the disc (radius 14) at its centre: exactly 1 there;
    # beyond radius + 3 sigma the truncated kernel reaches nothing: exactly 0
    assert row[0] == pytest.approx(1.0, abs=1e-5)
    assert row[14 + 3 * 3 + 1] == pytest.approx(0.0, abs=1e-6)
    # symmetric about the centre
    np.testing.assert_allclose(blurred[40, 40:], blurred[40, 40::-1], atol=1e-6)


def test_blur_kernel_covers_three_sigma() -> None:
    assert soft.gaussian_kernel_size(1.0) == 7
    assert soft.gaussian_kernel_size(2.5) == 17
    assert soft.gaussian_kernel_size(0.1) == 3


def test_blur_with_sigma_zero_is_identity_as_float() -> None:
    mask = rect_mask(16, 16, 2, 9, 3, 7)
    out = soft.blur(mask, 0.0)
    np.testing.assert_array_equal(out, (mask > 0).astype(np.float32))


def test_smooth_mask_is_one_on_the_precise_mask_when_radius_covers_the_blur() -> None:
    precise = rect_mask(64, 64, 20, 40, 20, 40)
    smooth = soft.smooth_mask(precise, radius=8, sigma=2.0)  # 3 sigma = 6 < 8
    assert np.all(smooth[20:40, 20:40] >= 1.0 - 1e-5)
    # beyond radius + 3 sigma (+1 for the half-open edge) nothing is left
    assert np.all(smooth[: 20 - 8 - 6 - 1, :] == 0.0)


def test_box_mask_contains_the_precise_mask_and_covers_fractional_boxes() -> None:
    precise = np.zeros((50, 60), np.uint8)
    precise[12:30, 7:19] = 1
    precise[15, 40] = 1
    boxes = soft.boxes_of(precise)
    assert sorted(boxes) == [(7, 12, 19, 30), (40, 15, 41, 16)]
    box = soft.box_mask(precise.shape, boxes)
    assert np.all(box[precise > 0] == 1)
    assert int(box.sum()) == 18 * 12 + 1
    # a detector's float box is widened to whole pixels: floor the start, ceil the end
    fractional = soft.box_mask((10, 10), [(1.5, 2.2, 4.1, 6.0)])
    assert fractional.sum() == (6 - 2) * (5 - 1)
    assert fractional[2:6, 1:5].all()
    # boxes past the image edge are clipped
    assert soft.box_mask((10, 10), [(-5, -5, 3, 100)]).sum() == 3 * 10


def test_hull_fills_a_concave_shape_per_region() -> None:
    mask = np.zeros((40, 80), np.uint8)
    # an L: hull is the triangle closing it
    mask[5:30, 5:9] = 1
    mask[26:30, 5:30] = 1
    # a far-away square: its own hull, not bridged to the L
    mask[5:15, 60:70] = 1
    hull = soft.hull_mask(mask)
    assert np.all(hull[mask > 0] == 1)
    assert hull[20, 15] == 1  # inside the L's triangle
    assert hull[10, 40] == 0  # between the regions stays empty
    assert hull[5:15, 60:70].sum() == 100 and hull[:, 45:59].sum() == 0


def test_weights_are_normalised_and_validated() -> None:
    w = soft.SoftMaskWeights(precise=1, smooth=2, box=1, hull=0).normalised()
    assert w == {"precise": 0.25, "smooth": 0.5, "box": 0.25, "hull": 0.0}
    with pytest.raises(ValueError):
        soft.SoftMaskWeights(precise=0, smooth=0, box=0, hull=0).normalised()
    with pytest.raises(ValueError):
        soft.SoftMaskWeights(precise=-1, smooth=2).normalised()


def test_fusion_equals_the_precise_mask_when_only_its_weight_is_set() -> None:
    precise = rect_mask(32, 48, 4, 20, 10, 30)
    out = soft.soft_mask(precise, dilate_radius=5, blur_sigma=2.0, weights=soft.SoftMaskWeights(1, 0, 0, 0))
    np.testing.assert_array_equal(out, (precise > 0).astype(np.float32))
    np.testing.assert_array_equal(soft.to_uint8(out), precise)


def test_fusion_is_the_exact_weighted_mean_and_stays_in_unit_range() -> None:
    precise = np.zeros((64, 64), np.uint8)
    precise[10:20, 10:30] = 1
    precise[40:55, 35:50] = 1
    boxes = [(8.5, 9.0, 31.0, 22.0), (35, 40, 50, 55)]
    weights = soft.SoftMaskWeights(precise=1.0, smooth=3.0, box=2.0, hull=2.0)
    out = soft.soft_mask(precise, boxes, dilate_radius=4, blur_sigma=1.5, weights=weights)
    expected = (
        1 * (precise > 0)
        + 3 * soft.smooth_mask(precise, 4, 1.5)
        + 2 * soft.box_mask(precise.shape, boxes)
        + 2 * soft.hull_mask(precise)
    ) / 8.0
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0
    # inside the precise mask precise, box and hull are 1 and the smooth mask is nearly 1
    assert np.all(out[precise > 0] > 0.99)
    assert out[15, 20] == pytest.approx(1.0, abs=1e-6)  # centre of a region: every term is 1
    # the default (box=smooth=0.5) puts exactly 0.5 where only the box reaches
    default = soft.soft_mask(precise, [(0, 0, 64, 64)], dilate_radius=2, blur_sigma=1.0)
    assert default[63, 0] == pytest.approx(0.5)


def test_soft_mask_without_boxes_uses_the_regions_tight_boxes() -> None:
    precise = rect_mask(30, 30, 5, 10, 5, 25)
    out = soft.soft_mask(precise, None, dilate_radius=1, blur_sigma=0.0, weights=soft.SoftMaskWeights(0, 0, 1, 0))
    np.testing.assert_array_equal(out, (precise > 0).astype(np.float32))


def test_uint8_round_trip_rounds_to_nearest() -> None:
    values = np.array([[0.0, 0.5, 1.0, 1.2, -0.1, 1 / 255 * 0.49]], np.float32)
    assert soft.to_uint8(values).tolist() == [[0, 128, 255, 255, 0, 0]]
    np.testing.assert_allclose(soft.from_uint8(np.array([[0, 255, 51]], np.uint8)), [[0.0, 1.0, 0.2]])


def test_mask_inputs_of_any_dtype_are_accepted() -> None:
    boolean = np.zeros((5, 5), bool)
    boolean[2, 2] = True
    for mask in (boolean, boolean.astype(np.uint8) * 255, boolean.astype(np.float32)):
        assert soft.dilate(mask, 1).sum() == 5
    with pytest.raises(ValueError):
        soft.as_binary(np.zeros((2, 2, 3)))
    assert math.isclose(float(soft.blur(boolean.astype(np.uint8) * 255, 0).max()), 1.0)
