"""benchmarks/error_analysis.py: it runs on a checkpoint and its headline figures are visionpilot-eval's."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.benchmark import load_script
from visionpilot.cli.eval import run
from visionpilot.data.vocab import LANE_TYPES
from visionpilot.evaluation import cross_region
from visionpilot.paths import config_dir
from visionpilot.training.finetune import write_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SMALL = ["rig=front1", "data.image_size=[64,176]", "data.source.scenes_per_region=4",
         "data.source.frames_per_scene=3", "data.num_workers=0", "data.persistent_workers=false", "data.batch_size=2",
         "data.regions=[us]"]


def _near_ground_truth(net: torch.nn.Module):
    """A decoder answering with the batch's own labels, every other one moved: figures strictly between 0 and 1
    (a random-init network scores 0 everywhere, which any two implementations agree on)."""
    def decode(batch: dict) -> dict:
        g = torch.Generator().manual_seed(int(batch["images"].float().sum()) % 1000)
        lanes, valid = batch["lanes_2d"].float(), batch["lanes_2d_valid"]
        shift = torch.zeros_like(lanes)
        shift[:, :, 1::2, :, 0] = 6.0  # every other lane 6 px aside: CULane width at 176 px is ~3 px, no overlap
        exist = torch.full(valid.shape[:3], 0.9)
        exist[:, :, 1::2] = 0.35  # ... and less sure of: dropped at existence 0.5, false positives at 0.3
        boxes, mask = batch["boxes_2d"].float(), batch["boxes_2d_mask"]
        # Each edge moved by up to 0.3 of the box's size: most boxes keep IoU > 0.5 (mAP@0.5 0.54 here). Larger moves
        # leave the figure to which few boxes these frames hold: at 0.4 it fell from 0.42 to 0.17 when the world's
        # scenes changed (2026-11-24, parked cars), at 0.6 to 0.005 after the synthetic ground moved by a pixel.
        jitter = (torch.rand(boxes.shape, generator=g) - 0.5) * 0.6 * (boxes[..., 2:] - boxes[..., :2]).repeat(1, 1, 1, 2)
        types = batch["lanes_2d_types"].clamp(min=0)
        types[:, :, 2::4] = (types[:, :, 2::4] + 1) % len(LANE_TYPES)  # of the lanes kept, every other one mistyped
        return {"lanes_2d.points": lanes + shift, "lanes_2d.points_valid": valid,
                "lanes_2d.exist": valid.any(-1).float() * exist, "lanes_2d.types": types,
                "objects_2d.boxes": boxes + jitter, "objects_2d.scores": torch.rand(mask.shape, generator=g),
                "objects_2d.classes": torch.where(mask, batch["boxes_2d_classes"], -1)}
    return decode


def test_error_analysis_reports_the_evaluators_figures(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={tmp_path / 'run'}", *SMALL])
        eval_cfg = compose("eval", overrides=[f"paths.output_dir={tmp_path / 'eval'}", "data.num_workers=0",
                                              "data.batch_size=2", f"models={{m: '{tmp_path / 'm.ckpt'}'}}",
                                              "regions=[us]", "split=val"])
    torch.manual_seed(0)
    net = hydra.utils.instantiate(cfg.model.net)
    ckpt = write_checkpoint(tmp_path / "m.ckpt", net, cfg, {"camera_names": ["CAM_FRONT"], "image_size": [64, 176],
                                                            "regions": ["us"]})
    monkeypatch.setattr(cross_region, "torch_decoder", _near_ground_truth)  # for visionpilot-eval and the script
    figures = load_script("error_analysis").analyse(str(ckpt), ["us"], "val")
    printed = capsys.readouterr().out
    assert "2D lanes:" in printed and "2D boxes:" in printed and "existence >= 0.5" in printed
    assert "types of the matched lines" in printed and 0.2 < figures["type_accuracy"] < 0.8, figures

    run(eval_cfg)
    overall = json.loads((tmp_path / "eval" / "eval.json").read_text())["overall"]["m"]
    assert 0.2 < figures["f1@0.5"] < 0.9 and 0.2 < figures["map50"] < 0.99, figures
    assert figures["f1@0.5"] == pytest.approx(overall["lane_f1"], abs=1e-6)
    assert figures["map50"] == pytest.approx(overall["det_map50"], abs=1e-6)
    assert figures["map"] == pytest.approx(overall["det_map"], abs=1e-6)
    assert figures["f1@0.3"] < figures["f1@0.5"] == figures["f1@0.7"]  # the thresholds are applied
    # The decoder keeps every class right, so merging the classes loses nothing it does not also lose per class.
    assert "class-agnostic" in printed and 0.2 < figures["map50_agnostic"] <= 1.0


def test_bev_lane_counts_score_the_heads_own_target_as_perfect_and_a_swapped_type_as_confused() -> None:
    from visionpilot.data.vocab import LANE_TYPES, lane_type_index
    from visionpilot.evaluation.lanes_bev import BevGrid
    from visionpilot.models.heads.lanes_bev import LanesBEVHead
    from visionpilot.models.view_transform import BEVGrid

    script = load_script("error_analysis")
    grid = BEVGrid(x_range=(-10, 20), y_range=(-8, 8), z_range=(-1, 3), cell_size=0.5, z_levels=2)
    head = LanesBEVHead(in_channels=4, grid=grid, head_channels=4)
    xs = torch.arange(-10.0, 21.0, 2.0)
    lanes = torch.zeros(2, 2, len(xs), 3)
    lanes[:, 0, :, 1], lanes[:, 1, :, 1] = 1.75, -1.75
    lanes[..., 0] = xs
    batch = {"lanes_3d": lanes, "lanes_3d_valid": torch.ones(2, 2, len(xs), dtype=torch.bool),
             "lanes_3d_types": torch.tensor([[lane_type_index("white_dashed"), lane_type_index("yellow_dashed")]] * 2),
             "has_lanes_3d": torch.tensor([True, False])}
    target = head.build_targets(batch)["seg"]
    evaluator_grid, width_m = BevGrid.from_any(grid), head.line_width * grid.cell_size  # as build_evaluator gives
    counts = script.BevLaneCounts(evaluator_grid, width_m, ring_m=4.0)  # rings 0-4 m and beyond (to 22 m ahead)
    counts.update(batch, target * 0.9)
    figures = script.bev_lanes_report(counts)
    assert counts.num_rings == 2 and counts.any_gt.min() > 0
    assert figures == {"bev_iou@0.3": 1.0, "bev_iou@0.5": 1.0, "bev_iou_merged@0.5": 1.0,
                       "bev_iou@0.5_ring0": 1.0, "bev_iou_merged@0.5_ring0": 1.0,
                       "bev_iou@0.5_ring1": 1.0, "bev_iou_merged@0.5_ring1": 1.0}
    wd, yd = lane_type_index("white_dashed"), lane_type_index("yellow_dashed")
    assert counts.gt[wd] == target[0, wd].sum() > 0 and counts.gt[2:].sum() == target[0, yd].sum()  # frame 1 unlabelled
    swapped = target.clone()
    swapped[:, wd], swapped[:, yd] = target[:, yd], target[:, wd]  # yellow called white and the reverse
    counts = script.BevLaneCounts(evaluator_grid, width_m, ring_m=4.0)
    counts.update(batch, swapped * 0.9)
    assert counts.confusion[yd, wd] == counts.gt[yd] and counts.confusion[wd, yd] == counts.gt[wd]
    assert counts.confusion[:, len(LANE_TYPES)].sum() == 0
    figures = script.bev_lanes_report(counts)
    # Every line in its place, each with the other's type: no type scores, the types merged score it perfect.
    assert figures["bev_iou@0.5"] == figures["bev_iou@0.5_ring0"] == figures["bev_iou@0.5_ring1"] == 0.0
    assert figures["bev_iou_merged@0.5"] == figures["bev_iou_merged@0.5_ring1"] == 1.0
    # Half the lines dropped beyond 4 m: the near ring stays perfect, the far one loses.
    far = torch.from_numpy(np.hypot(*np.meshgrid(np.arange(-9.75, 20, 0.5), np.arange(-7.75, 8, 0.5),
                                                 indexing="ij")) >= 4.0)
    dropped = target * 0.9
    dropped[:, wd][:, far] = 0.0
    counts = script.BevLaneCounts(evaluator_grid, width_m, ring_m=4.0)
    counts.update(batch, dropped)
    figures = script.bev_lanes_report(counts)
    assert figures["bev_iou@0.5_ring0"] == figures["bev_iou_merged@0.5_ring0"] == 1.0
    assert figures["bev_iou@0.5_ring1"] < 0.75 and 0.0 < figures["bev_iou_merged@0.5_ring1"] < 1.0


def test_bev_box_analysis_scores_as_the_evaluator_and_sorts_false_positives(capsys: pytest.CaptureFixture) -> None:
    # Two frames: cars, a truck and a pedestrian. The predictions: every car found, the truck called a car (a class
    # confusion), a second peak 1.5 m from a found car (a duplicate), a car where nothing is, and the pedestrian
    # found 45 m away (beyond its class's 40 m range, so neither side counts). Merged into one class, the truck
    # called a car is a hit; per class it is a miss and a false positive.
    from visionpilot.data.vocab import OBJECT_CLASSES
    from visionpilot.evaluation.evaluator import PerceptionEvaluator
    from visionpilot.models.view_transform import BEVGrid

    car, truck, ped = (OBJECT_CLASSES.index(n) for n in ("car", "truck", "pedestrian"))

    def boxes(*xy: tuple[float, float]) -> torch.Tensor:
        return torch.tensor([[x, y, 0.8, 4.5, 1.9, 1.6, 0.0] for x, y in xy])

    gt = torch.stack([boxes((10, 0), (20, 3.5), (-15, 0), (45, 0)), boxes((8, -3.5), (30, 0), (60, 60), (5, 5))])
    gt_classes = torch.tensor([[car, car, truck, ped], [car, car, car, car]])
    gt_mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    pred = torch.stack([boxes((10.3, 0), (20, 3.8), (-15, 0.2), (45, 0), (21.5, 3.5)),
                        boxes((8, -3.2), (30.4, 0), (0, -20), (0, 0), (0, 0))])
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5], [0.95, 0.85, 0.4, 0.0, 0.0]])
    classes = torch.tensor([[car, car, car, ped, car], [car, car, car, -1, -1]])  # -1: the top-K's padding
    batch = {"boxes_3d": gt, "boxes_3d_classes": gt_classes, "boxes_3d_mask": gt_mask,
             "has_boxes_3d": torch.tensor([True, True]), "region": ["us", "us"]}
    decoded = {"bev.objects_boxes": pred, "bev.objects_scores": scores, "bev.objects_classes": classes}
    grid = BEVGrid(x_range=(-50, 50), y_range=(-50, 50), z_range=(-1, 3), cell_size=1.0, z_levels=2)
    evaluator = PerceptionEvaluator(["us"], (64, 176), ["CAM_FRONT"], tasks=["objects_3d"], bev_grid=grid)
    evaluator.update(batch, decoded)
    frames = evaluator.bev_box_frames(batch, decoded)
    assert [len(f["boxes"]) for f in frames] == [5, 3] and [len(f["gt_boxes"]) for f in frames] == [4, 2]

    figures = load_script("error_analysis").bev_boxes_report(frames)
    printed = capsys.readouterr().out
    assert figures["bev_map"] == pytest.approx(evaluator.compute()["bev_map"])
    # Cars all found before any false positive (AP 1 but for nuScenes' interpolation over 101 recall points with 4
    # boxes), the truck never (AP 0); merged, the truck is found too.
    assert figures["bev_map"] == pytest.approx(0.5, abs=0.01), figures
    assert figures["bev_map_agnostic"] == pytest.approx(1.0, abs=0.01), figures
    car_line = next(line for line in printed.splitlines() if line.strip().startswith("car "))
    # Confident (>= 0.3) car predictions: 4 found, the truck (another class), the 1.5 m peak (a duplicate), the
    # one at (0, -20) (elsewhere).
    assert "4 true, false 1 near another class / 1 duplicate / 1 elsewhere" in car_line, car_line
    assert "recall@4m 1.00" in car_line
    truck_line = next(line for line in printed.splitlines() if line.strip().startswith("truck "))
    assert "AP 0.000 / 0.000 / 0.000 / 0.000" in truck_line and "recall@4m 0.00" in truck_line
    assert not any(line.strip().startswith("pedestrian ") for line in printed.splitlines())  # none in range
