"""TuSimple accuracy / FP / FN against hand-computed cases of the official definition."""

from __future__ import annotations

import numpy as np
import pytest

from visionpilot.evaluation.tusimple import TUSIMPLE_H_SAMPLES, TuSimpleMetric, tusimple_image

YS = np.asarray(TUSIMPLE_H_SAMPLES, dtype=np.float64)  # 56 rows


def vertical(x: float) -> np.ndarray:
    return np.full(len(YS), float(x))


def test_identical() -> None:
    lanes = np.stack([vertical(300), vertical(600), vertical(900)])
    metric = TuSimpleMetric()
    metric.update([lanes, lanes[:2]], [lanes, lanes[:2]])
    out = metric.compute()
    assert out["tusimple_accuracy"] == 1.0 and out["tusimple_fp"] == 0.0 and out["tusimple_fn"] == 0.0
    assert out["tusimple_f1"] == 1.0


def test_pixel_threshold() -> None:
    gt = vertical(500)[None]
    assert tusimple_image(gt + 19.0, gt, YS)[:3] == (1.0, 0.0, 0.0)  # within 20 px
    assert tusimple_image(gt + 21.0, gt, YS)[:3] == (0.0, 1.0, 1.0)  # every row off: FP and FN


def test_angle_widens_the_threshold() -> None:
    # x = y: 45 degrees, threshold 20 / cos(45 deg) = 28.3 px, so a 25 px offset still matches.
    gt = YS.copy()[None]
    assert tusimple_image(gt + 25.0, gt, YS)[0] == 1.0
    assert tusimple_image(gt + 29.0, gt, YS)[0] == 0.0


def test_point_accuracy_below_085_is_a_miss() -> None:
    gt = vertical(500)[None]
    pred = gt.copy()
    pred[0, :10] += 50.0  # 46 of 56 rows right: 0.821 < 0.85
    acc, fp, fn, matched = tusimple_image(pred, gt, YS)
    assert acc == pytest.approx(46 / 56) and (fp, fn, matched) == (1.0, 1.0, 0)
    pred[0, :10] = gt[0, :10]
    pred[0, :8] += 50.0  # 48 / 56 = 0.857 >= 0.85
    assert tusimple_image(pred, gt, YS)[1:] == (0.0, 0.0, 1)


def test_rows_absent_in_both_count_as_correct() -> None:
    # The official code compares -100 placeholders: rows where neither lane exists are "correct".
    gt = vertical(500)
    gt[:28] = -2
    pred = gt.copy()
    pred[28:38] += 50  # 10 wrong rows out of 56 -> 46/56
    assert tusimple_image(np.where(pred < 0, np.nan, pred)[None], np.where(gt < 0, np.nan, gt)[None], YS)[0] == \
        pytest.approx(46 / 56)


def test_more_than_four_gt_lanes_drops_the_worst() -> None:
    gts = np.stack([vertical(x) for x in (100, 300, 500, 700, 900)])
    acc, fp, fn, _ = tusimple_image(gts[:4], gts, YS)
    # best accuracies [1, 1, 1, 1, 0]: sum - min = 4 over min(4, 5) lanes; the single FN is forgiven.
    assert (acc, fp, fn) == (1.0, 0.0, 0.0)


def test_too_many_predictions() -> None:
    gt = vertical(500)[None]
    preds = np.stack([vertical(x) for x in (500, 700, 900, 1100)])  # 4 > 1 + 2
    assert tusimple_image(preds, gt, YS)[:3] == (0.0, 0.0, 1.0)


def test_threshold_scales_with_width_and_padding_is_ignored() -> None:
    metric = TuSimpleMetric(image_width=640)  # 10 px threshold
    gt = vertical(250)[None]
    padded = np.concatenate([gt + 9.0, np.full((2, len(YS)), -2.0)])  # two all-absent padding lanes
    metric.update([padded, gt + 11.0], [gt, gt])
    out = metric.compute()
    assert out["tusimple_accuracy"] == pytest.approx(0.5)
    assert out["tusimple_fp"] == pytest.approx(0.5) and out["tusimple_fn"] == pytest.approx(0.5)
    assert out["tusimple_f1"] == pytest.approx(0.5)
