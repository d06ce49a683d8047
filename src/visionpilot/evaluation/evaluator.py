"""From decoded network outputs and a batch to the project's metrics, per region.

One evaluator serves training (validation metrics), ``visionpilot-eval`` (checkpoints and ONNX models) and
benchmarks, so every number is computed the same way. It reads the decoded keys of the network contract
(``"lanes_2d.points"``, ``"objects_2d.boxes"``, ``"bev.boxes"``, ...) and the batch contract's labels; a task is
evaluated when its decoded outputs are present.

Metric names (``compute()`` keys, ``<region>/<name>`` per region; ``metrics.json`` adds ``val/``):
    lanes_2d   ``lane_f1``, ``lane_precision``, ``lane_recall`` (CULane definition, see evaluation/lane_2d.py)
    objects_2d ``det_map50``, ``det_map`` (COCO mAP@0.5 and @[.5:.95], each camera image one COCO image)
    bev        ``bev_map``, ``bev_ate``, ``bev_ase``, ``bev_aoe`` (nuScenes definitions), ``bev_lane_iou``,
               ``bev_lane_f1`` (Chamfer, MapTR-style)

Ground truth of the 2D lane F1 follows CULane's annotation protocol: the (up to) 4 lines of the ego lane and its
neighbours, selected per image by the same slot rule as the lane head (``models/heads/lanes_2d.assign_slots``), on
the cameras in ``lane_cameras`` (row-anchor lanes are defined for forward- and rearward-looking cameras).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from visionpilot.data.vocab import LANE_TYPES, OBJECT_CLASSES
from visionpilot.evaluation.detection_2d import Detection2DMAP
from visionpilot.evaluation.detection_bev import NUSCENES_CLASS_RANGES, BevDetectionMetric
from visionpilot.evaluation.lane_2d import CULaneF1
from visionpilot.evaluation.lanes_bev import BevGrid, BevLaneChamferF1, BevLaneIoU, rasterize_lane_batch
from visionpilot.evaluation.per_region import PerRegionMetric, flatten_region_results
from visionpilot.models.net import camera_slots, slots_mask

#: CULane annotates at most the 4 lane lines of the ego lane and its two neighbours.
CULANE_SLOTS = 4


class PerceptionEvaluator(nn.Module):
    """Accumulates every available task's metrics per region.

    Args:
        regions: region codes that may appear (every process needs the same list).
        image_size: (H, W) of the evaluated images.
        camera_names: camera slot names of the batches.
        lane_cameras: names of the cameras the 2D lane metric uses (None: all).
        lane_rows: row anchors (fractions of the height) at which GT lanes are sampled for the slot rule.
        lane_threshold: existence probability above which a predicted lane counts.
        tasks: which of ``lanes_2d``, ``objects_2d``, ``objects_3d``, ``lanes_bev`` to evaluate.
        bev_grid: the BEV grid (``x_range``, ``y_range``, ``cell_size``); ground truth outside it is not counted.
        bev_line_width: width in metres of ground-truth lines rasterised for the BEV lane IoU: the head's training
            target width; with the head's own rasteriser (``lanes_bev.rasterize_polylines``) the IoU measures
            what the head was asked to draw.
        bev_class_ranges: BEV detection counts boxes (predicted and true) whose centre is closer to the ego than
            their class's range, as nuScenes does (:data:`NUSCENES_CLASS_RANGES`: vehicles 50 m, pedestrians and
            two-wheelers 40 m, cones 30 m), and inside the grid; None: every box inside the grid.
    """

    def __init__(self, regions: Sequence[str], image_size: Sequence[int], camera_names: Sequence[str],
                 lane_cameras: Sequence[str] | None = None, lane_rows: Sequence[float] = (0.45, 0.98),
                 lane_threshold: float = 0.5, tasks: Sequence[str] = ("lanes_2d", "objects_2d"),
                 bev_grid: Any = None, bev_line_width: float = 1.0,
                 bev_class_ranges: Mapping[str, float] | None = NUSCENES_CLASS_RANGES) -> None:
        super().__init__()
        self.regions = [str(r).lower() for r in regions]
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.camera_names = list(camera_names)
        self.lane_slots = camera_slots(lane_cameras, self.camera_names, "lane_cameras")
        self.lane_rows = tuple(float(v) for v in lane_rows)
        self.lane_threshold = float(lane_threshold)
        self.tasks = list(tasks)
        metrics: dict[str, PerRegionMetric] = {}
        if "lanes_2d" in self.tasks:
            metrics["lanes_2d"] = PerRegionMetric(partial(CULaneF1, image_size=self.image_size), self.regions)
        if "objects_2d" in self.tasks:
            metrics["objects_2d"] = PerRegionMetric(partial(Detection2DMAP, OBJECT_CLASSES, class_metrics=False),
                                                    self.regions)
        self.bev_grid = BevGrid.from_any(bev_grid) if bev_grid is not None else None
        self.bev_line_width = float(bev_line_width)
        if ("objects_3d" in self.tasks or "lanes_bev" in self.tasks) and self.bev_grid is None:
            raise ValueError("PerceptionEvaluator: BEV tasks need bev_grid")
        if "objects_3d" in self.tasks:
            metrics["objects_3d"] = PerRegionMetric(partial(BevDetectionMetric, OBJECT_CLASSES,
                                                            class_ranges=bev_class_ranges), self.regions)
        if "lanes_bev" in self.tasks:
            metrics["lanes_bev_iou"] = PerRegionMetric(partial(BevLaneIoU, LANE_TYPES), self.regions)
            metrics["lanes_bev_f1"] = PerRegionMetric(partial(BevLaneChamferF1, LANE_TYPES, grid=self.bev_grid),
                                                      self.regions)
        self.metrics = nn.ModuleDict(metrics)

    def lanes_camera_mask(self, batch: dict[str, Any]) -> Tensor:
        """(B, N) bool: the camera slots the 2D lane task applies to."""
        return slots_mask(batch["camera_mask"], self.lane_slots)

    @torch.no_grad()
    def update(self, batch: dict[str, Any], decoded: dict[str, Tensor]) -> None:
        """Accumulate one batch of decoded outputs (``net.decode(...)`` keys) against the batch's labels."""
        regions = [str(r).lower() for r in batch["region"]]
        if "lanes_2d" in self.metrics and "lanes_2d.points" in decoded:
            self._update_lanes(batch, decoded, regions)
        if "objects_2d" in self.metrics and "objects_2d.boxes" in decoded:
            self._update_objects(batch, decoded, regions)
        if "objects_3d" in self.metrics and "bev.objects_boxes" in decoded:
            self._update_objects_3d(batch, decoded, regions)
        if "lanes_bev_iou" in self.metrics and "bev.lanes_seg_prob" in decoded:
            self._update_lanes_bev(batch, decoded, regions)

    def lane_images(self, batch: dict[str, Any], decoded: dict[str, Tensor]) -> list[dict[str, Any]]:
        """The 2D lane task image by image, before any existence threshold: per labelled lane-camera image its
        batch and camera indices ``b``, ``n``, ``exist`` (K,), ``preds`` (K lanes of (P, 2) px) and ``types`` (K,
        lane-type indices; None where the head has none) for the slots with at least 2 valid points, ``gts`` (the
        CULane ground-truth lines), ``gt_types`` (their types; None where the batch has none) and ``gt_slots``
        (their slot indices, left to right). ``_update_lanes`` and benchmarks/error_analysis.py read the same
        lists."""
        from visionpilot.models.heads.lanes_2d import assign_slots

        height = batch["images"].shape[-2]
        rows = torch.linspace(self.lane_rows[0], self.lane_rows[1], 64, device=batch["lanes_2d"].device) * height
        gt = assign_slots({**batch, "lanes_2d_camera_mask": self.lanes_camera_mask(batch)}, rows, CULANE_SLOTS)
        image_mask = gt["image_mask"].cpu().numpy()  # (B, N)
        lane_index = gt["lane_index"].cpu().numpy()  # (B, N, S)
        lanes = batch["lanes_2d"].cpu().numpy()
        valid = batch["lanes_2d_valid"].cpu().numpy()
        points = decoded["lanes_2d.points"].float().cpu().numpy()  # (B, N, S, R, 2)
        pvalid = decoded["lanes_2d.points_valid"].cpu().numpy()
        exist = decoded["lanes_2d.exist"].float().cpu().numpy()  # (B, N, S)
        types = decoded["lanes_2d.types"].cpu().numpy() if "lanes_2d.types" in decoded else None  # (B, N, S)
        gt_types = batch["lanes_2d_types"].cpu().numpy() if "lanes_2d_types" in batch else None  # (B, N, L)
        images = []
        for b, n in zip(*np.nonzero(image_mask)):
            slots = [s for s in range(exist.shape[-1]) if pvalid[b, n, s].sum() >= 2]
            images.append({"b": int(b), "n": int(n), "exist": exist[b, n, slots],
                           "preds": [points[b, n, s][pvalid[b, n, s]] for s in slots],
                           "types": types[b, n, slots] if types is not None else None,
                           "gts": [lanes[b, n, i][valid[b, n, i]] for i in lane_index[b, n] if i >= 0],
                           "gt_types": None if gt_types is None else
                           np.array([gt_types[b, n, i] for i in lane_index[b, n] if i >= 0], np.int64),
                           "gt_slots": [s for s, i in enumerate(lane_index[b, n]) if i >= 0]})
        return images

    def _update_lanes(self, batch: dict[str, Any], decoded: dict[str, Tensor], regions: list[str]) -> None:
        images = self.lane_images(batch, decoded)
        if images:
            self.metrics["lanes_2d"].update(
                [regions[img["b"]] for img in images],
                [[p for p, e in zip(img["preds"], img["exist"]) if e >= self.lane_threshold] for img in images],
                [img["gts"] for img in images])

    @staticmethod
    def box_images(batch: dict[str, Any], decoded: dict[str, Tensor]) -> list[dict[str, Any]]:
        """The 2D box task image by image: per labelled camera image its ``b``, ``n``, the predictions
        (``boxes`` (K, 4) px, ``scores``, ``labels``; the fixed-size top-K's padding and, as :class:`Detection2DMAP`
        does, non-finite boxes and scores dropped) and the ground truth (``gt_boxes``, ``gt_labels``).
        ``_update_objects`` and benchmarks/error_analysis.py read the same lists."""
        image_mask = (batch["has_boxes_2d"][:, None] & batch["camera_mask"]).cpu().numpy()  # (B, N)
        boxes = decoded["objects_2d.boxes"].float().cpu()
        scores = decoded["objects_2d.scores"].float().cpu()
        classes = decoded["objects_2d.classes"].cpu()
        gt_boxes = batch["boxes_2d"].cpu()
        gt_classes = batch["boxes_2d_classes"].cpu()
        gt_mask = batch["boxes_2d_mask"].cpu()
        images = []
        for b, n in zip(*np.nonzero(image_mask)):
            keep = classes[b, n] >= 0  # padding of the fixed-size top-K
            keep &= torch.isfinite(scores[b, n]) & torch.isfinite(boxes[b, n]).all(dim=-1)  # no detections
            images.append({"b": int(b), "n": int(n), "boxes": boxes[b, n][keep], "scores": scores[b, n][keep],
                           "labels": classes[b, n][keep], "gt_boxes": gt_boxes[b, n][gt_mask[b, n]],
                           "gt_labels": gt_classes[b, n][gt_mask[b, n]]})
        return images

    def _update_objects(self, batch: dict[str, Any], decoded: dict[str, Tensor], regions: list[str]) -> None:
        images = self.box_images(batch, decoded)
        if images:
            self.metrics["objects_2d"].update(
                [regions[img["b"]] for img in images], *([img[k] for img in images]
                                                        for k in ("boxes", "scores", "labels", "gt_boxes",
                                                                  "gt_labels")))

    def _in_grid(self, xy: Tensor) -> Tensor:
        g = self.bev_grid
        return (xy[..., 0] >= g.x_min) & (xy[..., 0] < g.x_max) & (xy[..., 1] >= g.y_min) & (xy[..., 1] < g.y_max)

    def bev_box_frames(self, batch: dict[str, Any], decoded: dict[str, Tensor]) -> list[dict[str, Any]]:
        """The BEV box task frame by frame: per frame with 3D labels its ``b``, the predictions (``boxes`` (K, 7)
        ``x, y, z, l, w, h, yaw`` in the ego frame, ``scores``, ``labels``) and the ground truth (``gt_boxes``,
        ``gt_labels``), both cut to the grid (what the model sees; the metric then applies the class ranges) and
        the fixed-size top-K's padding dropped. ``_update_objects_3d`` and benchmarks/error_analysis.py read the
        same lists."""
        boxes = decoded["bev.objects_boxes"].float().cpu()
        scores = decoded["bev.objects_scores"].float().cpu()
        classes = decoded["bev.objects_classes"].cpu()
        gt = batch["boxes_3d"].cpu()
        gt_cls = batch["boxes_3d_classes"].cpu()
        gt_ok = batch["boxes_3d_mask"].cpu() & self._in_grid(gt[..., :2])
        keep = (classes >= 0) & self._in_grid(boxes[..., :2])
        return [{"b": int(b), "boxes": boxes[b][keep[b]], "scores": scores[b][keep[b]], "labels": classes[b][keep[b]],
                 "gt_boxes": gt[b][gt_ok[b]], "gt_labels": gt_cls[b][gt_ok[b]]}
                for b in np.flatnonzero(batch["has_boxes_3d"].cpu().numpy())]

    def _update_objects_3d(self, batch: dict[str, Any], decoded: dict[str, Tensor], regions: list[str]) -> None:
        frames = self.bev_box_frames(batch, decoded)
        if frames:
            self.metrics["objects_3d"].update(
                [regions[f["b"]] for f in frames], *([f[k] for f in frames]
                                                     for k in ("boxes", "scores", "labels", "gt_boxes", "gt_labels")))

    def _update_lanes_bev(self, batch: dict[str, Any], decoded: dict[str, Tensor], regions: list[str]) -> None:
        frames = np.flatnonzero(batch["has_lanes_3d"].cpu().numpy())
        if len(frames) == 0:
            return
        lanes = batch["lanes_3d"].cpu().numpy()
        valid = batch["lanes_3d_valid"].cpu().numpy()
        types = batch["lanes_3d_types"].cpu().numpy()
        gt_lines = [[lanes[b, i][valid[b, i], :2] for i in range(types.shape[1]) if types[b, i] >= 0] for b in frames]
        gt_types = [types[b][types[b] >= 0] for b in frames]
        # Drawn as the head draws its target (the same segments and rasteriser), the whole batch at once.
        targets = rasterize_lane_batch(batch["lanes_3d"][frames].cpu(), batch["lanes_3d_valid"][frames].cpu(),
                                       batch["lanes_3d_types"][frames].cpu(), self.bev_grid, len(LANE_TYPES),
                                       self.bev_line_width)
        prob = decoded["bev.lanes_seg_prob"].float().cpu()[frames]
        codes = [regions[b] for b in frames]
        self.metrics["lanes_bev_iou"].update(codes, prob, targets)
        pts = decoded["bev.lanes_points"].float().cpu().numpy()  # (B, S, X, 3)
        ok = decoded["bev.lanes_valid"].cpu().numpy()
        scores = decoded["bev.lanes_scores"].float().cpu().numpy()
        ptypes = decoded["bev.lanes_types"].cpu().numpy()
        pred_lines = [[pts[b, s][ok[b, s], :2] for s in range(pts.shape[1])] for b in frames]
        self.metrics["lanes_bev_f1"].update(codes, pred_lines, [scores[b] for b in frames],
                                            [ptypes[b] for b in frames], gt_lines, gt_types)

    def compute(self) -> dict[str, float]:
        """Flat ``{"lane_f1": ..., "gb/lane_f1": ...}`` over everything accumulated (regions without data omitted)."""
        out: dict[str, float] = {}
        for metric in self.metrics.values():
            out.update(flatten_region_results(metric.compute(), prefix=""))
        return {k.lstrip("/"): float(v) for k, v in out.items()}

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()
