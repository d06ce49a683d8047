"""CULane F1: hand-computed geometry of 30-px lanes, Hungarian matching, counting, size scaling, padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visionpilot.evaluation import nan_invalid
from visionpilot.evaluation.lane_2d import CULaneF1, interpolate_lane, lane_iou_matrix, match_lanes

# A gently curved lane and a straight vertical one on a 1640x590 image.
CURVED = np.array([[800.0, 580.0], [780.0, 400.0], [740.0, 250.0], [700.0, 150.0]])
VERTICAL = np.array([[800.0, 100.0], [800.0, 500.0]])


def test_identical_lanes_give_f1_one() -> None:
    metric = CULaneF1()
    image = [CURVED, CURVED + [300.0, 0.0], CURVED - [300.0, 0.0]]
    metric.update([image, image[:1]], [image, image[:1]])
    out = metric.compute()
    assert out["lane_f1"] == 1.0 and out["lane_precision"] == 1.0 and out["lane_recall"] == 1.0
    assert (out["lane_tp"], out["lane_fp"], out["lane_fn"]) == (4, 0, 0)


@pytest.mark.parametrize("shift", [5, 9, 11])
def test_parallel_shift_iou_matches_geometry(shift: int) -> None:
    # Two parallel 30-px-wide strips of length L shifted sideways by d overlap in (30 - d) of their width:
    # IoU = (30 - d) * L / ((30 + d) * L) = (30 - d) / (30 + d) (round caps and pixel rounding move it by < 0.015).
    iou = lane_iou_matrix([VERTICAL + [shift, 0.0]], [VERTICAL], (590, 1640))[0, 0]
    assert iou == pytest.approx((30 - shift) / (30 + shift), abs=0.015)


def test_shift_crosses_the_half_iou_threshold_at_ten_pixels() -> None:
    # (30 - d) / (30 + d) > 0.5  <=>  d < 10: a 9-px shift is a TP, an 11-px shift an FP plus an FN.
    near, far = CULaneF1(), CULaneF1()
    near.update([[VERTICAL + [9.0, 0.0]]], [[VERTICAL]])
    far.update([[VERTICAL + [11.0, 0.0]]], [[VERTICAL]])
    assert (near.tp, near.fp, near.fn) == (1, 0, 0)
    assert (far.tp, far.fp, far.fn) == (0, 1, 1)


def test_fp_fn_counting() -> None:
    metric = CULaneF1()
    gts = [CURVED, CURVED + [300.0, 0.0], CURVED - [300.0, 0.0]]
    preds = [CURVED + [2.0, 0.0], CURVED - [301.0, 0.0], CURVED + [700.0, 0.0]]  # 2 hits, 1 stray, 1 missed GT
    metric.update([preds, []], [gts, [CURVED]])  # second image: nothing predicted -> one more FN
    out = metric.compute()
    assert (out["lane_tp"], out["lane_fp"], out["lane_fn"]) == (2, 1, 2)
    assert out["lane_precision"] == pytest.approx(2 / 3)
    assert out["lane_recall"] == pytest.approx(2 / 4)
    assert out["lane_f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))


def test_hungarian_beats_greedy() -> None:
    # Greedy on the best pair (0, 0) leaves pred 1 with nothing; the optimal assignment matches both.
    iou = np.array([[0.6, 0.55], [0.58, 0.0]])
    assert match_lanes(iou) == (2, 0, 0)
    assert match_lanes(np.array([[0.5]])) == (0, 1, 1)  # strictly above 0.5, as the official counter


def test_width_scales_with_image_size() -> None:
    full = lane_iou_matrix([CURVED + [9.0, 0.0]], [CURVED], (590, 1640))[0, 0]
    # Half-size image, default canvas: drawn at 1640 px wide -> the same IoU as full size.
    half = lane_iou_matrix([(CURVED + [9.0, 0.0]) / 2], [CURVED / 2], (295, 820))[0, 0]
    assert half == pytest.approx(full, abs=1e-9)
    # Drawn at the evaluated size: width 30 * 820 / 1640 = 15 px, a 5 px shift gives about (15-5)/(15+5); one
    # pixel is now 7% of the width, so rasterisation moves the value more (why the 1640-px canvas is the default).
    native = lane_iou_matrix([VERTICAL / 2 + [5.0, 0.0]], [VERTICAL / 2], (295, 820), canvas_width=None)[0, 0]
    assert native == pytest.approx((15 - 5) / (15 + 5), abs=0.05)


def test_padding_and_tensor_inputs() -> None:
    # A fixed-size (B, L, P, 2) output: NaN rows are padding, an all-NaN lane is dropped entirely.
    preds = torch.full((1, 3, 4, 2), float("nan"))
    preds[0, 0] = torch.as_tensor(CURVED)
    preds[0, 1, :2] = torch.as_tensor(VERTICAL)
    targets = [[CURVED, VERTICAL]]
    metric = CULaneF1()
    metric.update(preds, targets)
    assert (metric.tp, metric.fp, metric.fn) == (2, 0, 0)


def test_valid_mask_to_nan_padding() -> None:
    # The batch / decode form (points + valid mask + per-lane keep) feeds the metric through nan_invalid.
    points = torch.zeros(1, 3, 4, 2)
    points[0, 0] = torch.as_tensor(CURVED)
    points[0, 1] = torch.as_tensor(CURVED + [300.0, 0.0])
    points[0, 2] = torch.as_tensor(CURVED - [300.0, 0.0])
    valid = torch.ones(1, 3, 4, dtype=torch.bool)
    valid[0, 1, 2:] = False
    preds = nan_invalid(points, valid, keep=torch.tensor([[True, True, False]]))
    assert torch.isnan(preds[0, 1, 2:]).all() and torch.isnan(preds[0, 2]).all()
    metric = CULaneF1()
    metric.update(preds, [[CURVED, CURVED[:2] + [300.0, 0.0]]])
    assert (metric.tp, metric.fp, metric.fn) == (2, 0, 0)


def test_spline_interpolation_passes_through_points() -> None:
    dense = interpolate_lane(CURVED, times=50)
    assert len(dense) == 3 * 50 + 1
    assert np.allclose(dense[::50], CURVED)
    assert np.array_equal(interpolate_lane(VERTICAL), VERTICAL)  # two points: drawn as one segment


def test_mismatched_batch_raises() -> None:
    with pytest.raises(ValueError, match="same images"):
        CULaneF1().update([[CURVED]], [])


def test_single_point_lanes_count_but_never_match() -> None:
    # The official counter counts a one-point lane (it is a line of the file) but its similarity to anything is 0
    # (``get_lane_similarity``: "lane size must be greater or equal to 2"): an FP and an FN, never a TP.
    dot = np.array([[800.0, 300.0]])
    assert lane_iou_matrix([dot], [dot, VERTICAL], (590, 1640)).tolist() == [[0.0, 0.0]]
    metric = CULaneF1()
    metric.update([[dot], [VERTICAL]], [[dot], [VERTICAL, dot]])
    assert (metric.tp, metric.fp, metric.fn) == (1, 1, 2)
