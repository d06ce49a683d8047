"""Real DDP sync (2 CPU processes, gloo): per-region metrics over split data equal one process over all data.

Rank 1 never sees a "gb" sample, so its gb children sync from empty states — the corner case that fixed-rank,
cat-reduced 1-D states exist for.
"""

from __future__ import annotations

import json
import os
from functools import partial
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from visionpilot.evaluation import (
    BevDetectionMetric,
    BevLaneChamferF1,
    BevLaneIoU,
    CULaneF1,
    Detection2DMAP,
    PerRegionMetric,
    TuSimpleMetric,
    flatten_region_results,
)

REGIONS = ["de", "gb"]
SAMPLE_REGIONS = ["de", "gb", "de", "de"]  # rank 0 gets samples 0-1, rank 1 gets 2-3 (de only)


def samples() -> dict[str, tuple[Any, ...]]:
    """Per metric, its update arguments for 4 samples (deterministic)."""
    rng = np.random.default_rng(0)
    lane = np.array([[800.0, 580.0], [760.0, 300.0], [700.0, 150.0]])
    ys = np.arange(160.0, 720.0, 10.0)
    boxes2d = [torch.tensor([[0.0, 0, 50, 50], [60, 60, 90, 100]]) + i for i in range(4)]
    boxes3d = [np.array([[10.0 + i, 2, 0.7, 4, 2, 1.5, 0.1], [20, -3, 0.7, 4, 2, 1.5, 0]]) for i in range(4)]
    line = np.stack([np.linspace(0, 30, 5), np.zeros(5)], axis=1)
    masks = torch.as_tensor(rng.random((4, 6, 8, 8)) > 0.7)
    return {
        "culane": ([[lane + [k, 0]] for k in (0, 12, 3, 0)], [[lane]] * 4),
        "tusimple": ([np.full((1, len(ys)), 500.0 + k) for k in (0, 30, 5, 0)], [np.full((1, len(ys)), 500.0)] * 4),
        "det2d": ([b + torch.tensor([k, 0, k, 0.0]) for b, k in zip(boxes2d, (0, 20, 5, 0))],
                  [torch.tensor([0.9, 0.6])] * 4, [torch.tensor([0, 1])] * 4, boxes2d, [torch.tensor([0, 1])] * 4),
        "bev_det": ([b + [[0.3 * k, 0, 0, 0, 0, 0, 0]] * 2 for b, k in zip(boxes3d, (0, 5, 2, 1))],
                    [np.array([0.8, 0.7])] * 4, [np.array([0, 4])] * 4, boxes3d, [np.array([0, 4])] * 4),
        "bev_iou": (masks.flip(-1), masks),
        "bev_vec": ([[line + [0, 0.3 * k]] for k in range(4)], [[0.9]] * 4, [[1]] * 4, [[line]] * 4, [[1]] * 4),
    }


FACTORIES = {
    "culane": CULaneF1,
    "tusimple": TuSimpleMetric,
    "det2d": Detection2DMAP,
    "bev_det": BevDetectionMetric,
    "bev_iou": BevLaneIoU,
    "bev_vec": BevLaneChamferF1,
}


def evaluate(rank_slice: slice) -> dict[str, dict[str, float]]:
    out = {}
    for name, args in samples().items():
        metric = PerRegionMetric(FACTORIES[name], regions=REGIONS)
        metric.update(SAMPLE_REGIONS[rank_slice], *(a[rank_slice] for a in args))
        out[name] = flatten_region_results(metric.compute())
    return out


def _worker(rank: int, tmp_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_dir}/init", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        result = evaluate(slice(2 * rank, 2 * rank + 2))
    finally:
        dist.destroy_process_group()
    with open(os.path.join(tmp_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available in this build")
@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs the fork start method (POSIX)")
def test_two_process_sync_equals_single_process(tmp_path: Any) -> None:
    expected = evaluate(slice(None))
    assert "gb/lane_f1" in expected["culane"] and "gb/det_map50" in expected["det2d"]
    # fork, not spawn: the children inherit the imported modules instead of re-importing torch (seconds each).
    mp.start_processes(_worker, args=(str(tmp_path),), nprocs=2, join=True, start_method="fork")
    for rank in (0, 1):
        with open(tmp_path / f"rank{rank}.json") as f:
            gathered = json.load(f)
        for name, values in expected.items():
            assert gathered[name] == pytest.approx(values, nan_ok=True), (rank, name)


def test_fresh_metrics_compute_without_data() -> None:
    # PerRegionMetric computes every child on every process, including children that never saw a sample.
    for name, factory in FACTORIES.items():
        with pytest.warns(UserWarning, match="before the ``update``"):
            values = partial(factory)().compute()
        assert isinstance(values, dict) and values, name
