"""2D COCO mAP through torchmetrics: identity, a hand-computed toy set, per-class AP, filtering, merging."""

from __future__ import annotations

import math

import pytest
import torch

from visionpilot.evaluation.detection_2d import Detection2DMAP


def t(rows: list) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def toy_inputs(label: int = 0) -> tuple[list, ...]:
    """Class ``label``: image 0 has 2 GT, image 1 has 1 GT.

    Predictions by score: 0.9 exact hit (img 0), 0.8 on nothing (img 0), 0.7 hit with IoU 0.72 (img 1); GT
    [0, 0, 100, 100] vs [0, 0, 100, 72] overlap 7200 / 10000.
    """
    pred_boxes = [t([[0, 0, 10, 10], [200, 200, 220, 220]]), t([[0, 0, 100, 72]])]
    pred_scores = [t([0.9, 0.8]), t([0.7])]
    pred_labels = [torch.tensor([label, label]), torch.tensor([label])]
    gt_boxes = [t([[0, 0, 10, 10], [50, 50, 60, 60]]), t([[0, 0, 100, 100]])]
    gt_labels = [torch.tensor([label, label]), torch.tensor([label])]
    return pred_boxes, pred_scores, pred_labels, gt_boxes, gt_labels


def test_identical_boxes_give_map_one() -> None:
    metric = Detection2DMAP()
    boxes = [t([[0, 0, 10, 10], [20, 20, 40, 50]]), t([[5, 5, 50, 30]])]
    labels = [torch.tensor([0, 4]), torch.tensor([1])]
    scores = [torch.ones(2), torch.ones(1)]
    metric.update(boxes, scores, labels, boxes, labels)
    out = metric.compute()
    assert out["det_map50"] == pytest.approx(1.0) and out["det_map"] == pytest.approx(1.0)
    assert set(k for k in out if k.startswith("det_ap50_")) == {"det_ap50_car", "det_ap50_pedestrian",
                                                               "det_ap50_truck"}


def test_toy_set_against_hand_computation() -> None:
    # Ranked: TP, FP, TP with 3 GT -> precision 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3. COCO samples the precision
    # envelope at 101 recall points: 1 for r in 0.00..0.33 (34 points), 2/3 for 0.34..0.66 (33), 0 above.
    # IoU >= 0.5 .. 0.70 (5 thresholds): AP = (34 + 33 * 2/3) / 101 = 56/101.
    # IoU >= 0.75 .. 0.95 (5 thresholds): the 0.72 hit is an FP -> AP = 34/101.
    metric = Detection2DMAP()
    metric.update(*toy_inputs())
    out = metric.compute()
    assert out["det_map50"] == pytest.approx(56 / 101, abs=1e-4)
    assert out["det_map"] == pytest.approx((5 * 56 / 101 + 5 * 34 / 101) / 10, abs=1e-4)
    assert out["det_ap50_car"] == pytest.approx(56 / 101, abs=1e-4)


def test_per_class_ap50() -> None:
    metric = Detection2DMAP()
    metric.update(*toy_inputs(label=0))
    perfect = [t([[300, 300, 340, 320]])]
    metric.update(perfect, [t([0.5])], [torch.tensor([2])], perfect, [torch.tensor([2])])
    out = metric.compute()
    assert out["det_ap50_car"] == pytest.approx(56 / 101, abs=1e-4)
    assert out["det_ap50_bus"] == pytest.approx(1.0)
    assert out["det_map50"] == pytest.approx((56 / 101 + 1.0) / 2, abs=1e-4)


def test_padding_and_score_threshold() -> None:
    # A fixed-size top-K: label -1 rows are padding; scores under the threshold are dropped.
    boxes = t([[[0, 0, 10, 10], [0, 0, 10, 10], [30, 30, 40, 40], [0, 0, 0, 0]]])
    scores = t([[0.9, 0.01, 0.02, 0.0]])
    labels = torch.tensor([[0, 0, 0, -1]])
    gt_boxes = t([[[0, 0, 10, 10], [0, 0, 0, 0]]])
    gt_labels = torch.tensor([[0, -1]])
    metric = Detection2DMAP(score_threshold=0.05)
    metric.update(boxes, scores, labels, gt_boxes, gt_labels)
    assert metric.compute()["det_map50"] == pytest.approx(1.0)
    assert len(metric.pred_scores[0]) == 1 and len(metric.gt_labels[0]) == 1


def test_merge_state_equals_single_instance() -> None:
    inputs = toy_inputs()
    whole, first, second = Detection2DMAP(), Detection2DMAP(), Detection2DMAP()
    whole.update(*inputs)
    first.update(*(a[:1] for a in inputs))
    second.update(*(a[1:] for a in inputs))
    first.merge_state(second)
    expected = {k: float(v) for k, v in whole.compute().items()}
    assert {k: float(v) for k, v in first.compute().items()} == pytest.approx(expected)


def test_no_ground_truth() -> None:
    metric = Detection2DMAP()
    metric.update([t([[0, 0, 1, 1]])], [t([0.5])], [torch.tensor([0])], [torch.zeros(0, 4)], [torch.zeros(0)])
    # Undefined (COCO's -1), so NaN: a -1 would read as a score of -100 points
    assert all(math.isnan(float(v)) for v in metric.compute().values())


def test_coco_thresholds_are_exact() -> None:
    # COCO's IoU thresholds 0.50, 0.55, ... and recall points 0, 0.01, ..., 1 (pycocotools: float64 linspace). An
    # IoU of exactly 0.55 matches at 0.55, and a recall of exactly 3/5 reaches the recall point 0.60 (torchmetrics'
    # defaults are float32-rounded: 0.55000001 and 0.60000002 miss both).
    metric = Detection2DMAP()
    metric.update([t([[0, 0, 100, 55]])], [t([0.9])], [torch.tensor([0])], [t([[0, 0, 100, 100]])],
                  [torch.tensor([0])])
    assert metric.compute()["det_map"] == pytest.approx(2 / 10)  # a TP at IoU 0.50 and 0.55 only
    # 5 GT; ranked FP, FP, TP, TP, TP: precision envelope 3/5 up to recall 3/5 -> 61 of 101 points at 0.6.
    gt = t([[100 * i, 0, 100 * i + 50, 50] for i in range(5)])
    pred = torch.cat([t([[0, 500, 50, 550], [100, 500, 150, 550]]), gt[:3]])
    metric = Detection2DMAP()
    metric.update([pred], [t([0.9, 0.8, 0.7, 0.6, 0.5])], [torch.zeros(5, dtype=torch.long)], [gt],
                  [torch.zeros(5, dtype=torch.long)])
    assert metric.compute()["det_map50"] == pytest.approx(61 * 0.6 / 101, abs=1e-6)


def test_evaluator_skips_images_without_2d_labels() -> None:
    # Frame 0 (de): camera 0 labelled and predicted exactly; camera 1 is padding (no camera). Frame 1 (gb) comes
    # from a source without 2D boxes: its confident detections are neither FPs nor an image with zero objects.
    from visionpilot.evaluation.evaluator import PerceptionEvaluator

    box = t([0, 0, 10, 10])
    gt_boxes = torch.zeros(2, 2, 1, 4)
    gt_boxes[0, 0, 0] = box
    batch = {"region": ["de", "gb"], "has_boxes_2d": torch.tensor([True, False]),
             "camera_mask": torch.tensor([[True, False], [True, True]]), "boxes_2d": gt_boxes,
             "boxes_2d_classes": torch.zeros(2, 2, 1, dtype=torch.long),
             "boxes_2d_mask": torch.tensor([[[True], [False]], [[False], [False]]])}
    decoded = {"objects_2d.boxes": box.expand(2, 2, 1, 4).clone(), "objects_2d.scores": torch.full((2, 2, 1), 0.9),
               "objects_2d.classes": torch.zeros(2, 2, 1, dtype=torch.long)}
    evaluator = PerceptionEvaluator(["de", "gb"], (64, 64), ["front", "back"], tasks=["objects_2d"])
    evaluator.update(batch, decoded)
    out = evaluator.compute()
    assert out["det_map50"] == pytest.approx(1.0) and out["de/det_map50"] == pytest.approx(1.0)
    assert not any(k.startswith("gb/") for k in out)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_predictions_with_non_finite_boxes_are_no_detections(bad: float) -> None:
    # A box with NaN / Inf cannot match anything: dropped like a non-finite score, not ranked as a confident FP
    # (NaN scored 0.95 above the exact hit made AP 0.5) nor kept in one of the image's max_detections places.
    boxes = [t([[bad, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])]
    metric = Detection2DMAP()
    metric.update(boxes, [t([0.95, 0.9, float("nan")])], [torch.tensor([0, 0, 0])], [t([[0, 0, 10, 10]])],
                  [torch.tensor([0])])
    assert metric.compute()["det_map50"] == pytest.approx(1.0)
    assert len(metric.pred_scores[0]) == 1 and float(metric.pred_scores[0][0]) == pytest.approx(0.9)


def test_non_finite_ground_truth_box_is_an_error() -> None:
    # Ground truth with NaN is bad input; a NaN row of padding (label -1) is not.
    gt_boxes = [t([[0, 0, 10, 10], [float("nan"), 0, 0, 0]]), t([[0, 0, 10, 10], [0, 0, float("inf"), 5]])]
    gt_labels = [torch.tensor([0, -1]), torch.tensor([0, 2])]
    metric = Detection2DMAP()
    with pytest.raises(ValueError, match=r"image 1: 'gt_boxes' must be finite, found \[0.0, 0.0, inf, 5.0\] in row 1"):
        metric.update([t([[0, 0, 10, 10]])] * 2, [t([0.9])] * 2, [torch.tensor([0])] * 2, gt_boxes, gt_labels)


@pytest.mark.parametrize(("field", "rows", "found"), [("pred_scores", "pred_boxes", 1),
                                                      ("pred_labels", "pred_boxes", 3), ("gt_labels", "gt_boxes", 1)])
def test_mismatched_lengths_name_the_field_and_image(field: str, rows: str, found: int) -> None:
    args = {"pred_boxes": [t([[0, 0, 10, 10]]), t([[0, 0, 10, 10], [5, 5, 20, 20]])],
            "pred_scores": [t([0.9]), t([0.9, 0.8])], "pred_labels": [torch.tensor([0]), torch.tensor([0, 1])],
            "gt_boxes": [t([[0, 0, 10, 10]]), t([[0, 0, 10, 10], [5, 5, 20, 20]])],
            "gt_labels": [torch.tensor([0]), torch.tensor([0, 1])]}
    args[field][1] = torch.arange(found)
    metric = Detection2DMAP()
    with pytest.raises(ValueError, match=rf"image 1: '{field}' must have one entry per row of '{rows}' \(2\), "
                                         rf"found {found}"):
        metric.update(**args)
    assert not metric.pred_counts and not metric.gt_counts  # image 0 was not accumulated either


def test_boxes_of_the_wrong_width_are_an_error() -> None:
    # (2, 5) boxes (x1, y1, x2, y2, score) used to be read silently as some other (K, 4) array.
    with pytest.raises(ValueError, match=r"image 0: 'pred_boxes' must be \(K, 4\) boxes, found shape \(2, 5\)"):
        Detection2DMAP().update([torch.zeros(2, 5)], [t([0.9, 0.8])], [torch.tensor([0, 0])], [t([[0, 0, 1, 1]])],
                                [torch.tensor([0])])


def test_evaluator_box_images_drop_non_finite_predictions() -> None:
    # box_images feeds both Detection2DMAP and benchmarks/error_analysis.py's own COCO run: the same detections.
    from visionpilot.evaluation.evaluator import PerceptionEvaluator

    batch = {"has_boxes_2d": torch.tensor([True]), "camera_mask": torch.tensor([[True]]),
             "boxes_2d": t([[[[0, 0, 10, 10]]]]), "boxes_2d_classes": torch.zeros(1, 1, 1, dtype=torch.long),
             "boxes_2d_mask": torch.tensor([[[True]]])}
    decoded = {"objects_2d.boxes": t([[[[float("nan"), 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]]]]),
               "objects_2d.scores": t([[[0.95, float("nan"), 0.9]]]),
               "objects_2d.classes": torch.zeros(1, 1, 3, dtype=torch.long)}
    (image,) = PerceptionEvaluator.box_images(batch, decoded)
    assert image["scores"].tolist() == pytest.approx([0.9]) and image["boxes"].tolist() == [[0, 0, 10, 10]]
