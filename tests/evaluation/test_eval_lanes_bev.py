"""BEV lanes: grid orientation, rasterised-mask IoU per type, Chamfer F1 / AP with MapTR's matching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visionpilot.evaluation.lanes_bev import (
    BevGrid,
    BevLaneChamferF1,
    BevLaneIoU,
    chamfer_matrix,
    rasterize_polylines,
)

GRID = BevGrid(x_min=-10.0, x_max=10.0, y_min=-5.0, y_max=5.0, resolution=0.5)  # 40 rows x 20 columns


def along_x(y: float, x0: float = -20.0, x1: float = 20.0, n: int = 5) -> np.ndarray:
    """A straight line parallel to the heading (crossing the whole grid by default)."""
    return np.stack([np.linspace(x0, x1, n), np.full(n, y)], axis=1)


def floats(out: dict) -> dict[str, float]:
    return {k: float(v) for k, v in out.items()}


def test_grid_layout_matches_the_model() -> None:
    # The model's BEV tensors are (B, C, X, Y): index [i, j] is the cell centred at
    # x = x_min + (i + 0.5) * res, y = y_min + (j + 0.5) * res.
    assert GRID.shape == (40, 20)
    assert np.allclose(GRID.to_pixels(np.array([[-9.75, -4.75], [9.75, 4.75]])), [[0.0, 0.0], [19.0, 39.0]])
    mask = rasterize_polylines([np.array([[9.75, 4.75], [9.75, 4.75]])], [2], GRID)
    assert mask.shape == (6, 40, 20) and mask[2, 39, 19] and mask.sum() == 1
    # A line ahead of the car, right of centre (y = -2.25): rows 20..39 (x > 0), column 5. (0.2 m wide: a band
    # of exactly one cell centred on it would touch the borders, and its neighbours' closed edges, too.)
    lane = rasterize_polylines([np.array([[0.25, -2.25], [9.75, -2.25]])], [1], GRID, line_width=0.2)[1]
    rows, cols = np.nonzero(lane)
    assert set(cols) == {5} and rows.min() == 20 and rows.max() == 39


def test_grid_from_model_config() -> None:
    config = {"x_range": [-10.0, 10.0], "y_range": [-5.0, 5.0], "z_range": [-1.0, 3.0], "cell_size": 0.5}
    assert BevGrid.from_any(config) == GRID
    line = [np.array([[0.25, -2.25], [9.75, 3.0]])]
    assert np.array_equal(rasterize_polylines(line, [0], config), rasterize_polylines(line, [0], GRID))


def test_rasterize_skips_padding_and_ignores_z() -> None:
    line3d = np.concatenate([along_x(0.25), np.ones((5, 1))], axis=1)
    padded = np.full((5, 3), np.nan)
    masks = rasterize_polylines([line3d, padded, line3d], [0, 3, -1], GRID, line_width=0.2)
    assert masks[0].sum() == 40 and masks[3].sum() == 0  # full column, one cell wide


def test_identical_masks_iou_one() -> None:
    gt = rasterize_polylines([along_x(0.25), along_x(-3.25)], [0, 5], GRID)
    metric = BevLaneIoU()
    metric.update(torch.as_tensor(gt)[None], torch.as_tensor(gt)[None])
    out = floats(metric.compute())
    assert out == {"bev_lane_iou": 1.0, "bev_lane_iou_white_dashed": 1.0, "bev_lane_iou_road_edge": 1.0}


def test_shifted_line_iou() -> None:
    # 3 cells wide (1.4 m at 0.5 m: y in [-0.45, 0.95] touches 3 columns), shifted by one cell across the full
    # grid: intersection 2 columns, union 4.
    gt = rasterize_polylines([along_x(0.25)], [0], GRID, line_width=1.4)
    pred = rasterize_polylines([along_x(0.75)], [0], GRID, line_width=1.4)
    assert gt[0].sum() == 3 * 40
    metric = BevLaneIoU()
    metric.update(pred[None], gt[None])
    assert float(metric.compute()["bev_lane_iou"]) == pytest.approx(0.5)


def test_mean_over_types_in_gt_or_predictions() -> None:
    gt = rasterize_polylines([along_x(0.25), along_x(-3.25)], [0, 1], GRID)
    # Perfect white_dashed, nothing for white_solid, a spurious yellow_solid (no GT: IoU 0, as in HDMapNet).
    pred = rasterize_polylines([along_x(0.25), along_x(3.25)], [0, 3], GRID)
    probs = torch.as_tensor(pred, dtype=torch.float32) * 0.9  # probabilities, thresholded at 0.5
    metric = BevLaneIoU()
    metric.update(probs[None], torch.as_tensor(gt)[None])
    out = floats(metric.compute())
    assert out["bev_lane_iou"] == pytest.approx(1 / 3)
    assert out["bev_lane_iou_white_dashed"] == 1.0
    assert out["bev_lane_iou_white_solid"] == 0.0 and out["bev_lane_iou_yellow_solid"] == 0.0
    assert "bev_lane_iou_road_edge" not in out  # neither drawn nor true: undefined, not averaged


def test_the_heads_own_target_scores_iou_one_in_the_evaluator() -> None:
    # The evaluator draws ground truth with the head's target rasteriser: a head that outputs exactly its
    # training target scores 1 (before, a 1-cell centre line against ~2-cell targets capped it near 0.5).
    from visionpilot.evaluation.evaluator import PerceptionEvaluator
    from visionpilot.models.heads.lanes_bev import LanesBEVHead
    from visionpilot.models.view_transform import BEVGrid

    grid = BEVGrid(x_range=(-10, 10), y_range=(-5, 5), z_range=(-1, 3), cell_size=0.5, z_levels=2)
    xs = np.linspace(-12.0, 12.0, 9)
    lines = [np.stack([xs, 1.3 + 0.02 * xs**2, np.zeros_like(xs)], 1), np.stack([xs, -2.1 + 0.1 * xs, xs * 0], 1)]
    pts = torch.zeros(1, 3, 9, 3)
    valid = torch.zeros(1, 3, 9, dtype=torch.bool)
    for i, line in enumerate(lines):
        pts[0, i], valid[0, i] = torch.as_tensor(line, dtype=torch.float32), True
    valid[0, 1, 4] = False  # a gap: the head draws no segment across it, neither may the ground truth
    batch = {"lanes_3d": pts, "lanes_3d_valid": valid, "lanes_3d_types": torch.tensor([[0, 4, -1]]),
             "has_lanes_3d": torch.tensor([True]), "region": ["us"]}
    for width in (1.0, 1.5, 3.0):  # cells
        head = LanesBEVHead(in_channels=8, grid=grid, line_width=width)
        target = head.build_targets(batch)["seg"]
        evaluator = PerceptionEvaluator(["us"], (64, 176), ["CAM_FRONT"], tasks=["lanes_bev"], bev_grid=grid,
                                        bev_line_width=width * grid.cell_size)
        empty = torch.zeros(1, head.num_slots, grid.shape[0], 3)
        evaluator.update(batch, {"bev.lanes_seg_prob": target, "bev.lanes_points": empty,
                                 "bev.lanes_valid": torch.zeros(empty.shape[:3], dtype=torch.bool),
                                 "bev.lanes_scores": torch.zeros(1, head.num_slots),
                                 "bev.lanes_types": torch.zeros(1, head.num_slots, dtype=torch.long)})
        out = evaluator.compute()
        assert out["bev_lane_iou"] == pytest.approx(1.0), width
        assert target[0, 0].sum() > target[0, 4].sum() > 0  # both lines drawn, the gap left out of the second


def test_chamfer_of_offset_line() -> None:
    line = along_x(0.0, 0.0, 30.0)
    pts = np.stack([line, line + [0.0, 0.7]])
    resampled = np.stack([np.linspace(p[0], p[-1], 100) for p in pts])
    assert chamfer_matrix(resampled[1:], resampled[:1])[0, 0] == pytest.approx(0.7)


def test_offset_line_f1_per_threshold() -> None:
    # A lane 0.7 m to the side of the GT: Chamfer 0.7 -> TP at 1.0 and 1.5 m, an FP and an FN at 0.5 m.
    gt = along_x(0.0, 0.0, 30.0)
    metric = BevLaneChamferF1()
    metric.update([[gt + [0.0, 0.7]]], [[0.9]], [[1]], [[gt]], [[1]])
    out = floats(metric.compute())
    assert out["bev_lane_f1@0.5m"] == 0.0 and out["bev_lane_precision@0.5m"] == 0.0
    assert out["bev_lane_f1@1m"] == 1.0 and out["bev_lane_f1@1.5m"] == 1.0
    assert out["bev_lane_f1"] == pytest.approx(2 / 3)
    assert out["bev_lane_ap@0.5m"] == 0.0 and out["bev_lane_ap@1m"] == 1.0
    assert out["bev_lane_ap"] == pytest.approx(2 / 3)


def test_lines_are_compared_inside_the_grid_only() -> None:
    # Labels reach past the grid (the synthetic world: 60 m behind to 120 m ahead of a +-50 m grid); a prediction
    # along the whole grid must match such a line, not sit metres away from its off-grid part.
    gt = along_x(1.0, -30.0, 60.0, n=10)  # GRID covers x in [-10, 10]
    pred = along_x(1.2, -9.75, 9.75)      # 0.2 m to the side, over the grid's length
    clipped = BevLaneChamferF1(grid=GRID)
    clipped.update([[pred]], [[0.9]], [[0]], [[gt]], [[0]])
    assert float(clipped.compute()["bev_lane_f1@0.5m"]) == 1.0
    whole = BevLaneChamferF1()  # without the grid: Chamfer ~ 12 m
    whole.update([[pred]], [[0.9]], [[0]], [[gt]], [[0]])
    assert float(whole.compute()["bev_lane_f1@1.5m"]) == 0.0
    # A line outside the grid is not a GT instance; one that leaves and re-enters is two.
    outside, wiggle = along_x(7.0), np.array([[-9.0, 0.0], [0.0, 8.0], [9.0, 0.0]])
    counting = BevLaneChamferF1(grid=GRID)
    counting.update([[]], [[]], [[]], [[outside, wiggle]], [[0, 0]])
    assert int(counting.num_gt[0]) == 2


def test_identical_lines_and_type_mismatch() -> None:
    lines = [along_x(0.0, 0.0, 30.0), along_x(3.5, 0.0, 30.0), along_x(-3.5, 5.0, 25.0)]
    metric = BevLaneChamferF1()
    metric.update([lines], [[0.9, 0.8, 0.7]], [[0, 0, 5]], [lines], [[0, 0, 5]])
    assert float(metric.compute()["bev_lane_f1"]) == 1.0
    wrong_type = BevLaneChamferF1()
    wrong_type.update([lines[:1]], [[0.9]], [[1]], [lines[:1]], [[0]])  # same geometry, other type: FP + FN
    assert float(wrong_type.compute()["bev_lane_f1"]) == 0.0


def test_maptr_matching_compares_with_the_nearest_gt_only() -> None:
    # GT A at y=0, B at y=1.2. Pred 1 (0.9) at y=0.1 takes A. Pred 2 (0.8) at y=0.5 is nearest to A (0.5 vs 0.7),
    # which is covered: an FP at 1.0 m even though B is within 0.7 m (MapTR does not fall back to the next GT).
    a, b = along_x(0.0, 0.0, 30.0), along_x(1.2, 0.0, 30.0)
    metric = BevLaneChamferF1(thresholds=(1.0,))
    metric.update([[a + [0, 0.1], a + [0, 0.5]]], [[0.9, 0.8]], [[0, 0]], [[a, b]], [[0, 0]])
    out = floats(metric.compute())
    assert out["bev_lane_precision@1m"] == 0.5 and out["bev_lane_recall@1m"] == 0.5


def test_score_threshold_and_padding() -> None:
    gt = along_x(0.0, 0.0, 30.0)
    padded = np.full((2, 8, 3), np.nan)
    padded[0, :5] = np.concatenate([gt, np.zeros((5, 1))], axis=1)  # 3D points, z ignored
    padded[1, :5] = padded[0, :5] + [0, 5.0, 0]
    metric = BevLaneChamferF1(score_threshold=0.5)
    # The second line scores 0.2: left out of F1 (still in AP, where it ranks last).
    metric.update([padded], [[0.9, 0.2]], [[2, 2]], [[gt]], [[2]])
    out = floats(metric.compute())
    assert out["bev_lane_f1"] == 1.0 and out["bev_lane_ap"] == 1.0


def test_merge_state_equals_single_instance() -> None:
    gt = [along_x(0.0, 0.0, 30.0), along_x(3.5, 0.0, 30.0)]
    frames = [([g + [0, s] for g in gt], [0.9, 0.4], [0, 1], gt, [0, 1]) for s in (0.2, 0.7, 1.2, 2.0)]
    whole, first, second = BevLaneChamferF1(), BevLaneChamferF1(), BevLaneChamferF1()
    whole.update(*zip(*frames))
    first.update(*zip(*frames[:1]))
    second.update(*zip(*frames[1:]))
    first.merge_state(second)
    assert floats(first.compute()) == pytest.approx(floats(whole.compute()))


def test_lines_without_length_are_no_instances() -> None:
    # MapTR skips predictions of fewer than two points, and its ground truth are line strings: a single valid row
    # of a slot is not a false positive, and a GT line that only touches the grid's edge is not a miss.
    gt = along_x(1.0, -9.75, 9.75)
    metric = BevLaneChamferF1(grid=GRID)
    dot = np.array([[3.0, -2.0]])
    edge = np.array([[10.0, 1.0], [12.0, 1.0]])  # x from the grid's far edge outwards: a zero-length piece inside
    metric.update([[gt, dot]], [[0.9, 0.8]], [[0, 0]], [[gt, edge]], [[0, 0]])
    out = floats(metric.compute())
    assert out["bev_lane_f1"] == 1.0 and out["bev_lane_ap"] == 1.0


def test_a_region_without_gt_lines_has_no_ap_rather_than_zero() -> None:
    # gb's frame is BEV-labelled but holds no lane line: AP is undefined there (NaN, as 2D mAP), not 0.
    from visionpilot.evaluation import PerRegionMetric

    gt = along_x(0.0, 0.0, 30.0)
    metric = PerRegionMetric(BevLaneChamferF1, regions=["de", "gb"])
    metric.update(["de", "gb"], [[gt], [gt]], [[0.9], [0.8]], [[0], [0]], [[gt], []], [[0], np.zeros(0, int)])
    out = {region: floats(values) for region, values in metric.compute().items()}
    assert out["de"]["bev_lane_ap"] == 1.0 and out["de"]["bev_lane_f1"] == 1.0
    assert np.isnan(out["gb"]["bev_lane_ap"]) and np.isnan(out["gb"]["bev_lane_ap@1m"])
    assert out["gb"]["bev_lane_precision@1m"] == 0.0  # its prediction is a false positive, still counted
    assert out["all"]["bev_lane_ap"] == pytest.approx(1.0)  # the FP ranks below the TP: precision 1 at recall 1


def test_predictions_with_non_finite_scores_are_no_predictions() -> None:
    # As in the detection metrics. Kept, a NaN-scored line ranked last and took the GT line the other one missed:
    # AP 1 for a model that found one of two lines.
    a, b = along_x(0.0, 0.0, 30.0), along_x(3.5, 0.0, 30.0)
    metric = BevLaneChamferF1()
    metric.update([[a, b]], [[np.nan, 0.8]], [[0, 0]], [[a, b]], [[0, 0]])
    out = floats(metric.compute())
    assert out["bev_lane_ap"] == pytest.approx(0.5) and out["bev_lane_recall@1m"] == pytest.approx(0.5)
    assert metric.scores[0].tolist() == pytest.approx([0.8])


@pytest.mark.parametrize(("field", "rows", "found"), [("pred_scores", "pred_lines", 1),
                                                      ("pred_types", "pred_lines", 3), ("gt_types", "gt_lines", 1)])
def test_mismatched_lengths_name_the_field_and_frame(field: str, rows: str, found: int) -> None:
    lines = [along_x(0.0, 0.0, 30.0), along_x(3.5, 0.0, 30.0)]
    args = {"pred_lines": [lines[:1], lines], "pred_scores": [[0.9], [0.9, 0.8]], "pred_types": [[0], [0, 1]],
            "gt_lines": [lines[:1], lines], "gt_types": [[0], [0, 1]]}
    args[field][1] = [0] * found
    metric = BevLaneChamferF1()
    with pytest.raises(ValueError, match=rf"frame 1: '{field}' must have one entry per row of '{rows}' \(2\), "
                                         rf"found {found}"):
        metric.update(**args)


def test_type_index_outside_the_vocabulary_is_an_error() -> None:
    # A GT type beyond type_names used to be dropped from the GT count silently (rasterize_polylines rejects it).
    line = along_x(0.0, 0.0, 30.0)
    with pytest.raises(ValueError, match=r"frame 0: 'gt_types' must hold indices below 6 .* found 7"):
        BevLaneChamferF1().update([[line]], [[0.9]], [[0]], [[line, line]], [[0, 7]])
