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


def test_each_image_is_scored_on_its_own_rows() -> None:
    # label_data_0531.json samples 240..710 (48 rows), others 160..710 (56): the official script uses each label's.
    short = np.arange(240.0, 720.0, 10.0)
    gt48, gt56 = np.full((1, 48), 500.0), vertical(500)[None]
    metric = TuSimpleMetric()
    metric.update([gt48 + 5.0, gt56 + 30.0], [gt48, gt56], h_samples=[short, YS])
    out = metric.compute()
    assert out["tusimple_accuracy"] == pytest.approx(0.5) and out["tusimple_fn"] == pytest.approx(0.5)


@pytest.mark.parametrize("lanes", [np.full((7, 48), 500.0), np.full((4, 48), 500.0), np.full(56, 500.0)])
def test_lanes_of_another_row_count_are_refused(lanes: np.ndarray) -> None:
    # 7 x 48 values would reshape into 6 lanes of 56 rows and score an accuracy above 1 (1.25 before this check).
    with pytest.raises(ValueError, match=r"preds\[0\] must be \(lanes, 56\) x values, one per row of h_samples, "
                                         r"found shape \((7, 48|4, 48|56,)\)"):
        TuSimpleMetric().update([lanes], [vertical(500)[None]])


def test_a_ground_truth_lane_absent_at_every_row_counts_as_the_official_code_counts_it() -> None:
    # Official LaneEval.bench: the empty GT lane's -100 placeholders agree with no row of the present prediction:
    # best accuracies [1, 0] -> accuracy 1/2, FN 1 of 2 (it was dropped as padding before: accuracy 1, FN 0).
    empty = np.full((1, len(YS)), -2.0)
    gt = np.concatenate([vertical(500)[None], empty])
    metric = TuSimpleMetric()
    metric.update([vertical(500)[None]], [gt])
    out = metric.compute()
    assert out["tusimple_accuracy"] == pytest.approx(0.5) and out["tusimple_fn"] == pytest.approx(0.5)
    assert out["tusimple_fp"] == 0.0


def test_f1_is_clrnets_from_the_mean_rates() -> None:
    # Image 1: 2 GT, 2 preds, 1 matched -> FP 1/2, FN 1/2. Image 2: 4 GT, 1 pred matched -> FP 0, FN 3/4.
    gts = [np.stack([vertical(300), vertical(600)]), np.stack([vertical(x) for x in (100, 300, 500, 700)])]
    preds = [np.stack([vertical(300), vertical(900)]), vertical(100)[None]]
    metric = TuSimpleMetric()
    metric.update(preds, gts)
    out = metric.compute()
    fp, fn = (0.5 + 0.0) / 2, (0.5 + 0.75) / 2
    precision, recall = 1 - fp, (1 - fp) / (1 - fp + fn)
    assert out["tusimple_fp"] == pytest.approx(fp) and out["tusimple_fn"] == pytest.approx(fn)
    assert out["tusimple_f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    # (the count-based F1 of lanes summed over images, this metric's until now, would be 2 * 2 / (4 + 1 + 4) = 0.444)
    assert out["tusimple_f1"] == pytest.approx(0.6316, abs=1e-4)
