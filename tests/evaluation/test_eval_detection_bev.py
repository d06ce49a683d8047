"""nuScenes-style BEV detection: AP per distance threshold and ATE / ASE / AOE on hand-computed toy cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visionpilot.evaluation.detection_bev import (
    NUSCENES_CLASS_RANGES,
    BevDetectionMetric,
    greedy_center_match,
    size_aligned_iou,
    yaw_difference,
)

CAR, TRUCK, CONE = 0, 1, 5


def box(x: float, y: float, size: tuple[float, float, float] = (4.0, 2.0, 1.5), yaw: float = 0.0) -> list[float]:
    return [x, y, 0.75, *size, yaw]


def floats(out: dict) -> dict[str, float]:
    return {k: float(v) for k, v in out.items()}


GT = np.array([box(10, 0), box(20, 0), box(30, 0)])
BIG = (4.4, 2.2, 1.65)  # every side x1.1


def toy_predictions() -> tuple[np.ndarray, np.ndarray]:
    """Three cars: 0.3 m off car A (score 0.9), 1.5 m off B (0.8), 3 m off C (0.7); 10% larger, yaw 0.2."""
    boxes = np.array([box(10.3, 0, BIG, 0.2), box(20, 1.5, BIG, 0.2), box(33, 0, BIG, 0.2)])
    return boxes, np.array([0.9, 0.8, 0.7])


def test_identical_boxes() -> None:
    metric = BevDetectionMetric()
    gt = np.array([box(10, 0), box(15, -3, (10, 2.5, 3), 1.0), box(8, 4, (0.4, 0.4, 0.7))])
    labels = np.array([CAR, TRUCK, CONE])
    metric.update([gt], [np.ones(3)], [labels], [gt], [labels])
    out = floats(metric.compute())
    assert out["bev_map"] == pytest.approx(1.0)
    assert out["bev_ate"] == pytest.approx(0.0) and out["bev_ase"] == pytest.approx(0.0)
    assert out["bev_aoe"] == pytest.approx(0.0)
    assert {k for k in out if k.startswith("bev_ap_")} == {"bev_ap_car", "bev_ap_truck", "bev_ap_traffic_cone"}


def test_toy_ap_per_threshold() -> None:
    # 3 GT. Per threshold the ranked predictions are:
    #   0.5 m, 1 m: TP FP FP -> recall stays 1/3: precision 1 at recall points 0.00..0.33, 0 above;
    #               AP = mean over the 90 points 0.11..1.00 of max(p - 0.1, 0) / 0.9 = 23 * 0.9 / 90 / 0.9 = 23/90
    #   2 m:        TP TP FP -> precision 1 up to recall 2/3 (points 0..66): AP = 56/90
    #   4 m:        TP TP TP -> AP = 1
    boxes, scores = toy_predictions()
    metric = BevDetectionMetric()
    metric.update([boxes], [scores], [np.zeros(3, int)], [GT], [np.zeros(3, int)])
    out = floats(metric.compute())
    assert out["bev_map@0.5m"] == pytest.approx(23 / 90)
    assert out["bev_map@1m"] == pytest.approx(23 / 90)
    assert out["bev_map@2m"] == pytest.approx(56 / 90)
    assert out["bev_map@4m"] == pytest.approx(1.0)
    assert out["bev_map"] == pytest.approx((23 + 23 + 56 + 90) / 360)
    assert out["bev_ap_car"] == pytest.approx(out["bev_map"])


def test_toy_tp_errors() -> None:
    # At 2 m the matches are (score 0.9, 0.3 m) and (0.8, 1.5 m): running mean ATE 0.3, 0.9. Confidence at the
    # recall points: 0.9 up to recall 1/3, then linear to 0.8 at 2/3, 0 beyond (max recall index 66), so the
    # resampled ATE is 0.3 for points 11..33 and 0.3 + 1.8 (r - 1/3) for 34..66:
    # sum = 56 * 0.3 + 1.8 * (sum_{i=34..66} i / 100 - 33 / 3) = 16.8 + 1.8 * 5.5 = 26.7 over 56 points.
    boxes, scores = toy_predictions()
    metric = BevDetectionMetric()
    metric.update([boxes], [scores], [np.zeros(3, int)], [GT], [np.zeros(3, int)])
    out = floats(metric.compute())
    assert out["bev_ate"] == pytest.approx(26.7 / 56)
    # Size-aligned IoU of 4x2x1.5 and 4.4x2.2x1.65: 12 / 15.972 = 1 / 1.331.
    assert out["bev_ase"] == pytest.approx(1 - 1 / 1.331)
    assert out["bev_aoe"] == pytest.approx(0.2)


def test_error_helpers() -> None:
    assert size_aligned_iou(np.array([4.0, 2.0, 1.5]), np.array([4.4, 2.2, 1.65])) == pytest.approx(1 / 1.331)
    assert yaw_difference(3.1, -3.1) == pytest.approx(2 * np.pi - 6.2)  # across the +-pi seam
    assert yaw_difference(0.0, np.pi - 0.1, period=np.pi) == pytest.approx(0.1)  # a barrier facing backwards


def test_greedy_match_takes_nearest_untaken() -> None:
    dist = np.array([[0.4, 0.3], [0.2, 5.0], [0.1, 0.1]])  # rows already sorted by score
    # Row 0 takes GT 1 (0.3 < 0.4); row 1 takes GT 0; row 2 has nothing left.
    assert greedy_center_match(dist, 0.5).tolist() == [1, 0, -1]
    # At 0.25 m row 0 is an FP and takes nothing, so GT 1 is still free for row 2.
    assert greedy_center_match(dist, 0.25).tolist() == [-1, 0, 1]


def test_cones_have_no_orientation_error() -> None:
    gt = np.array([box(10, 0, (0.4, 0.4, 0.7))])
    pred = np.array([box(10, 0, (0.4, 0.4, 0.7), yaw=1.0)])
    metric = BevDetectionMetric()
    metric.update([pred], [np.ones(1)], [[CONE]], [gt], [[CONE]])
    assert np.isnan(float(metric.compute()["bev_aoe"]))  # only cones: AOE undefined (nuScenes: nanmean -> NaN)
    car = np.array([box(20, 0)])
    metric.update([np.array([box(20, 0, yaw=0.5)])], [np.ones(1)], [[CAR]], [car], [[CAR]])
    assert float(metric.compute()["bev_aoe"]) == pytest.approx(0.5)  # the car's, the cone left out


def test_class_ranges_filter_far_boxes() -> None:
    boxes, scores = toy_predictions()
    far_gt = np.concatenate([GT, [box(60, 0)]])  # 60 m > 50 m for cars: removed together with its prediction
    far_pred = np.concatenate([boxes, [box(60, 0)]])
    plain, ranged = BevDetectionMetric(), BevDetectionMetric(class_ranges=NUSCENES_CLASS_RANGES)
    ranged.update([far_pred], [np.append(scores, 0.95)], [np.zeros(4, int)], [far_gt], [np.zeros(4, int)])
    plain.update([boxes], [scores], [np.zeros(3, int)], [GT], [np.zeros(3, int)])
    assert floats(ranged.compute()) == pytest.approx(floats(plain.compute()))


def test_classes_without_gt_are_left_out_and_padding_ignored() -> None:
    boxes, scores = toy_predictions()
    stray = np.array([box(-20, 5)])
    metric = BevDetectionMetric()
    pred = np.concatenate([boxes, stray, np.zeros((1, 7))])
    labels = np.array([CAR, CAR, CAR, TRUCK, -1])  # a truck with no truck GT; a padding row
    metric.update([pred], [np.append(scores, [0.99, 0.0])], [labels], [GT], [np.zeros(3, int)])
    out = floats(metric.compute())
    assert "bev_ap_truck" not in out
    assert out["bev_map"] == pytest.approx((23 + 23 + 56 + 90) / 360)


def test_matching_is_per_frame_and_ranked_globally() -> None:
    # Frame 1 holds the 0.3 m and 3 m predictions, frame 2 the 1.5 m one: same PR curve as one frame.
    boxes, scores = toy_predictions()
    metric = BevDetectionMetric()
    metric.update([boxes[[0, 2]], boxes[[1]]], [scores[[0, 2]], scores[[1]]], [np.zeros(2, int), np.zeros(1, int)],
                  [GT[[0, 2]], GT[[1]]], [np.zeros(2, int), np.zeros(1, int)])
    assert float(metric.compute()["bev_map"]) == pytest.approx((23 + 23 + 56 + 90) / 360)


def test_merge_state_equals_single_instance() -> None:
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(4):
        gt = np.array([box(*rng.uniform(-30, 30, 2), yaw=rng.uniform(-3, 3)) for _ in range(3)])
        pred = gt + rng.normal(0, 0.8, gt.shape) * [1, 1, 0, 0.1, 0.1, 0.1, 1]
        # Few distinct scores: ties across frames, which must not make the result depend on the merge order.
        frames.append((pred, rng.choice([0.5, 0.9], 3), rng.integers(0, 2, 3), gt, rng.integers(0, 2, 3)))
    whole = BevDetectionMetric()
    whole.update(*zip(*frames))
    expected = floats(whole.compute())
    for order in ((0, 1), (1, 0)):
        parts = [BevDetectionMetric(), BevDetectionMetric()]
        parts[0].update(*zip(*frames[:2]))
        parts[1].update(*zip(*frames[2:]))
        parts[order[0]].merge_state(parts[order[1]])
        assert floats(parts[order[0]].compute()) == pytest.approx(expected)


def test_the_evaluator_counts_boxes_within_nuscenes_class_ranges() -> None:
    # A cone found at 10 m, one missed at 35 m (inside the +-50 m grid, beyond nuScenes' 30 m for cones): only the
    # first counts, so AP is 1 — as nuScenes scores it; cut to the grid alone it would count the miss.
    from visionpilot.evaluation.evaluator import PerceptionEvaluator
    from visionpilot.models.view_transform import BEVGrid

    grid = BEVGrid(x_range=(-50, 50), y_range=(-50, 50), z_range=(-1, 3), cell_size=1.0, z_levels=2)
    cone = CONE
    gt = torch.tensor([[[10.0, 0.0, 0.3, 0.4, 0.4, 0.7, 0.0], [35.0, 0.0, 0.3, 0.4, 0.4, 0.7, 0.0]]])
    batch = {"boxes_3d": gt, "boxes_3d_classes": torch.tensor([[cone, cone]]),
             "boxes_3d_mask": torch.tensor([[True, True]]), "has_boxes_3d": torch.tensor([True]), "region": ["us"]}
    decoded = {"bev.objects_boxes": gt[:, :1], "bev.objects_scores": torch.tensor([[0.9]]),
               "bev.objects_classes": torch.tensor([[cone]])}
    results = {}
    for name, ranges in (("nuscenes", NUSCENES_CLASS_RANGES), ("grid", None)):
        evaluator = PerceptionEvaluator(["us"], (64, 176), ["CAM_FRONT"], tasks=["objects_3d"], bev_grid=grid,
                                        bev_class_ranges=ranges)
        evaluator.update(batch, decoded)
        results[name] = float(evaluator.compute()["bev_map"])
    assert results["nuscenes"] == pytest.approx(1.0)
    assert results["grid"] < 0.5


def test_a_region_without_gt_boxes_has_no_map_rather_than_zero() -> None:
    # gb's frame is 3D-labelled but holds no object (a false positive only): mAP and errors are undefined there,
    # not 0 mAP / 1 m ATE, which would read as a model that missed everything (NaN is left out of metrics.json).
    from visionpilot.evaluation import PerRegionMetric

    boxes, scores = toy_predictions()
    metric = PerRegionMetric(BevDetectionMetric, regions=["de", "gb"])
    metric.update(["de", "gb"], [boxes, np.array([box(15, 2)])], [scores, np.ones(1)],
                  [np.zeros(3, int), np.array([CAR])], [GT, np.zeros((0, 7))], [np.zeros(3, int), np.zeros(0, int)])
    out = {region: floats(values) for region, values in metric.compute().items()}
    assert out["de"]["bev_map"] == pytest.approx((23 + 23 + 56 + 90) / 360)
    assert set(out["gb"]) == {"bev_map", "bev_ate", "bev_ase", "bev_aoe", *(f"bev_map@{t:g}m" for t in
                                                                           (0.5, 1, 2, 4))}
    assert all(np.isnan(v) for v in out["gb"].values())
    assert out["all"]["bev_map"] < out["de"]["bev_map"]  # gb's false positive still counts in the pooled figure


def test_predictions_with_non_finite_scores_are_no_detections() -> None:
    # nuScenes rejects NaN scores; here, as in 2D mAP, such a prediction is dropped. Kept, it made ATE / ASE / AOE
    # NaN (the confidence curve became NaN) however good the other predictions were.
    boxes, scores = toy_predictions()
    nan_score = BevDetectionMetric()
    nan_score.update([np.concatenate([boxes, [box(20, 0)]])], [np.append(scores, np.nan)], [np.zeros(4, int)], [GT],
                     [np.zeros(3, int)])
    plain = BevDetectionMetric()
    plain.update([boxes], [scores], [np.zeros(3, int)], [GT], [np.zeros(3, int)])
    assert floats(nan_score.compute()) == pytest.approx(floats(plain.compute()))


def test_non_finite_ground_truth_box_is_an_error() -> None:
    gt = np.array([box(10, 0), box(20, 0, yaw=np.nan), [np.nan] * 7])  # the last row is padding (label -1)
    metric = BevDetectionMetric()
    with pytest.raises(ValueError, match=r"frame 0: 'gt_boxes' must be finite, found \[20.0, 0.0, .*nan\] in row 1"):
        metric.update([GT], [np.ones(3)], [np.zeros(3, int)], [gt], [np.array([CAR, CAR, -1])])


@pytest.mark.parametrize(("field", "rows", "found"), [("pred_scores", "pred_boxes", 2),
                                                      ("pred_labels", "pred_boxes", 4), ("gt_labels", "gt_boxes", 2)])
def test_mismatched_lengths_name_the_field_and_frame(field: str, rows: str, found: int) -> None:
    boxes, scores = toy_predictions()
    args = {"pred_boxes": [boxes[:1], boxes], "pred_scores": [scores[:1], scores],
            "pred_labels": [np.zeros(1, int), np.zeros(3, int)], "gt_boxes": [GT[:1], GT],
            "gt_labels": [np.zeros(1, int), np.zeros(3, int)]}
    args[field][1] = np.zeros(found, int)
    metric = BevDetectionMetric()
    with pytest.raises(ValueError, match=rf"frame 1: '{field}' must have one entry per row of '{rows}' \(3\), "
                                         rf"found {found}"):
        metric.update(**args)
    assert not metric.scores and int(metric.num_gt.sum()) == 0


def test_class_index_outside_the_vocabulary_is_an_error() -> None:
    # A GT label beyond class_names used to be dropped silently (fewer GT, a higher mAP).
    boxes, scores = toy_predictions()
    with pytest.raises(ValueError, match=r"frame 0: 'gt_labels' must hold indices below 6 .* found 9"):
        BevDetectionMetric().update([boxes], [scores], [np.zeros(3, int)], [GT], [np.array([0, 0, 9])])
