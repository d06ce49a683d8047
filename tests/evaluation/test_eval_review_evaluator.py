"""PerceptionEvaluator.compute: undefined figures are NaN, never a sentinel that reads as a score."""

from __future__ import annotations

import math

import pytest
import torch

from visionpilot.evaluation.evaluator import PerceptionEvaluator


def test_region_without_2d_boxes_has_no_map() -> None:
    # de: one labelled box, predicted exactly. gb: 2D-labelled, but no object in view (COCO answers -1 for it).
    box = torch.tensor([0.0, 0, 10, 10])
    gt_boxes = torch.zeros(2, 1, 1, 4)
    gt_boxes[0, 0, 0] = box
    batch = {"region": ["de", "gb"], "has_boxes_2d": torch.tensor([True, True]),
             "camera_mask": torch.tensor([[True], [True]]), "boxes_2d": gt_boxes,
             "boxes_2d_classes": torch.zeros(2, 1, 1, dtype=torch.long),
             "boxes_2d_mask": torch.tensor([[[True]], [[False]]])}
    decoded = {"objects_2d.boxes": box.expand(2, 1, 1, 4).clone(), "objects_2d.scores": torch.tensor([0.9, 0.95]).view(2, 1, 1),
               "objects_2d.classes": torch.zeros(2, 1, 1, dtype=torch.long)}
    evaluator = PerceptionEvaluator(["de", "gb"], (64, 64), ["front"], tasks=["objects_2d"])
    evaluator.update(batch, decoded)
    out = evaluator.compute()
    assert out["de/det_map50"] == pytest.approx(1.0)
    assert out["det_map50"] == pytest.approx(0.5)  # gb's false positive, ranked first, counts in the pooled figure
    assert math.isnan(out["gb/det_map50"]) and math.isnan(out["gb/det_map"])  # was -1.0: "-100.0" points
