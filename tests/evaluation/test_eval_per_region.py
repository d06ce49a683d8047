"""Per-region routing: each sample reaches its region's metric and the overall one; flat keys; merging."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from visionpilot.evaluation import BevLaneIoU, CULaneF1, PerRegionMetric, flatten_region_results

LANE = np.array([[800.0, 580.0], [780.0, 400.0], [740.0, 250.0], [700.0, 150.0]])


def lane_batch() -> tuple[list[str], list, list]:
    """de images are predicted perfectly, gb images not at all."""
    regions = ["de", "gb", "DE", "gb"]
    preds = [[LANE], [], [LANE], []]
    targets = [[LANE]] * 4
    return regions, preds, targets


def test_routing_by_region() -> None:
    metric = PerRegionMetric(CULaneF1, regions=["de", "gb", "us"])
    metric.update(*lane_batch())
    out = metric.compute()
    assert set(out) == {"all", "de", "gb"}  # no us sample: no us entry
    assert float(out["de"]["lane_f1"]) == 1.0
    assert float(out["gb"]["lane_f1"]) == 0.0 and int(out["gb"]["lane_fn"]) == 2
    assert float(out["all"]["lane_precision"]) == 1.0 and float(out["all"]["lane_recall"]) == 0.5
    assert float(out["all"]["lane_f1"]) == pytest.approx(2 / 3)


def test_tensor_arguments_are_split_by_sample() -> None:
    gt = torch.zeros(3, 6, 4, 4, dtype=torch.bool)
    gt[:, 0, :, 1] = True
    pred = gt.clone()
    pred[1] = False  # the gb sample misses its lane
    metric = PerRegionMetric(partial(BevLaneIoU, threshold=0.5), regions=["gb", "jp"])
    metric(["jp", "gb", "jp"], pred, targets=gt)  # forward accumulates; keyword arguments are split too
    out = metric.compute()
    assert float(out["jp"]["bev_lane_iou"]) == 1.0 and float(out["gb"]["bev_lane_iou"]) == 0.0
    assert float(out["all"]["bev_lane_iou"]) == pytest.approx(2 / 3)


def test_flat_keys() -> None:
    metric = PerRegionMetric(CULaneF1, regions=["de", "gb"])
    metric.update(*lane_batch())
    flat = flatten_region_results(metric.compute(), prefix="val")
    assert flat["val/lane_f1"] == pytest.approx(2 / 3)
    assert flat["val/de/lane_f1"] == 1.0 and flat["val/gb/lane_f1"] == 0.0
    assert "lane_f1" in flatten_region_results(metric.compute())


def test_bad_inputs_are_named() -> None:
    metric = PerRegionMetric(CULaneF1, regions=["de"])
    with pytest.raises(ValueError, match=r"region\(s\) \['fr'\]"):
        metric.update(["fr"], [[LANE]], [[LANE]])
    with pytest.raises(ValueError, match="argument '#2' must have one entry per sample"):
        metric.update(["de", "de"], [[LANE], [LANE]], [[LANE]])
    with pytest.raises(ValueError, match="unique"):
        PerRegionMetric(CULaneF1, regions=["de", "DE"])


def test_merge_and_reset() -> None:
    regions, preds, targets = lane_batch()
    whole, first, second = (PerRegionMetric(CULaneF1, regions=["de", "gb"]) for _ in range(3))
    whole.update(regions, preds, targets)
    first.update(regions[:1], preds[:1], targets[:1])  # de only: its gb child stays empty
    second.update(regions[1:], preds[1:], targets[1:])
    first.merge_state(second)
    expected = flatten_region_results(whole.compute())
    assert flatten_region_results(first.compute()) == pytest.approx(expected)
    first.reset()
    assert set(first.compute()) == set()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (metrics on the training device)")
def test_metrics_on_gpu_with_gpu_inputs() -> None:
    # Lightning moves metrics to the module's device and passes device tensors: states and inputs on CUDA.
    gt = torch.zeros(2, 6, 4, 4, dtype=torch.bool, device="cuda")
    gt[:, 0, :, 1] = True
    iou = PerRegionMetric(BevLaneIoU, regions=["de", "gb"]).to("cuda")
    iou.update(["de", "gb"], gt.float(), gt)
    assert float(iou.compute()["all"]["bev_lane_iou"]) == 1.0
    lanes = PerRegionMetric(CULaneF1, regions=["de", "gb"]).to("cuda")
    lane = torch.as_tensor(LANE, device="cuda")
    lanes.update(["de", "gb"], [[lane], [lane]], [[lane], [lane]])
    assert float(lanes.compute()["gb"]["lane_f1"]) == 1.0
