"""Predictions drawn against labels: one model on a frame (training's validation images), or several models on the
same frame, one row each (``visionpilot-eval``'s per-region images: the global model beside its country deltas).

Labels are solid, predictions dashed; each row is the rig's cameras in a grid and, for models with the BEV branch,
the bird's-eye view. Batches are collated training batches (``data/collate.py``); the first frame is drawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from visionpilot.data.frame import Lane
from visionpilot.viz.draw import BEVCanvas, camera_grid, draw_boxes_2d, draw_lanes_2d, legend, outlined_text

_HEADER_PX = 20


def render_prediction(batch: dict[str, Any], decoded: dict[str, torch.Tensor], camera_names: list[str],
                      score_threshold: float = 0.3, lane_threshold: float = 0.5,
                      lane_cameras: list[str] | None = None) -> np.ndarray:
    """Predictions (dashed) against labels (solid) for the first frame of a batch, as one RGB image.

    2D lane predictions are drawn on ``lane_cameras`` only (None: all): the lane head is trained there.
    """
    body = _prediction_panels(batch, decoded, camera_names, score_threshold, lane_threshold, lane_cameras)
    return np.concatenate([body, legend(body.shape[1])], axis=0)


def render_comparison(batch: dict[str, Any], decoded_by_model: Mapping[str, dict[str, torch.Tensor]],
                      camera_names: list[str], score_threshold: float = 0.3, lane_threshold: float = 0.5,
                      lane_cameras: list[str] | None = None) -> np.ndarray:
    """Several models' predictions on the first frame of a batch: one row per model, named, labels in every row.

    Rows are padded to the widest (a model without the BEV branch has no BEV panel).
    """
    if not decoded_by_model:
        raise ValueError("render_comparison: no models to draw")
    frame = f"{batch['frame_id'][0]}  region={str(batch['region'][0]).upper()}" if "frame_id" in batch else ""
    rows = []
    for name, decoded in decoded_by_model.items():
        body = _prediction_panels(batch, decoded, camera_names, score_threshold, lane_threshold, lane_cameras)
        header = np.full((_HEADER_PX, body.shape[1], 3), 16, np.uint8)
        outlined_text(header, f"{name}    {frame}", (6, 14), 0.42)
        rows.append(np.concatenate([header, body], axis=0))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    return np.concatenate([*rows, legend(width)], axis=0)


def _prediction_panels(batch: dict[str, Any], decoded: dict[str, torch.Tensor], camera_names: Sequence[str],
                       score_threshold: float, lane_threshold: float,
                       lane_cameras: Sequence[str] | None) -> np.ndarray:
    """The camera grid and (with BEV labels or predictions) the BEV panel, side by side, without the legend."""
    images = batch["images"][0].permute(0, 2, 3, 1).numpy().copy()  # (N, H, W, 3)
    tiles = []
    for n in range(images.shape[0]):
        if not bool(batch["camera_mask"][0, n]):
            continue
        img = np.ascontiguousarray(images[n])
        gt = [Lane(batch["lanes_2d"][0, n, i][batch["lanes_2d_valid"][0, n, i]].numpy(), int(t))
              for i, t in enumerate(batch["lanes_2d_types"][0, n].tolist()) if t >= 0]
        draw_lanes_2d(img, [lane for lane in gt if len(lane.points) >= 2], thickness=1)
        m = batch["boxes_2d_mask"][0, n]
        draw_boxes_2d(img, batch["boxes_2d"][0, n][m].numpy(), batch["boxes_2d_classes"][0, n][m].numpy())
        lane_camera = lane_cameras is None or (n < len(camera_names) and camera_names[n] in lane_cameras)
        if "lanes_2d.points" in decoded and lane_camera:
            pts, ok = decoded["lanes_2d.points"][0, n], decoded["lanes_2d.points_valid"][0, n]
            ex, ty = decoded["lanes_2d.exist"][0, n], decoded["lanes_2d.types"][0, n]
            pred = [Lane(pts[s][ok[s]].numpy(), int(ty[s])) for s in range(len(ex))
                    if ex[s] >= lane_threshold and int(ok[s].sum()) >= 2]
            draw_lanes_2d(img, pred, thickness=2, dashed=True)
        if "objects_2d.boxes" in decoded:
            sc = decoded["objects_2d.scores"][0, n]
            keep = (sc >= score_threshold) & (decoded["objects_2d.classes"][0, n] >= 0)
            draw_boxes_2d(img, decoded["objects_2d.boxes"][0, n][keep].numpy(),
                          decoded["objects_2d.classes"][0, n][keep].numpy(), sc[keep].numpy(), dashed=True)
        tiles.append(img)
    names = [c for n, c in enumerate(camera_names) if bool(batch["camera_mask"][0, n])] or \
        [f"cam{n}" for n in range(len(tiles))]
    grid = camera_grid(tiles, names)
    panels = [grid]
    if "bev.objects_boxes" in decoded or bool(batch["has_boxes_3d"][0]):
        bev = BEVCanvas(size_px=grid.shape[0], range_m=50.0)
        lanes = [(batch["lanes_3d"][0, i][batch["lanes_3d_valid"][0, i]].numpy(), int(t))
                 for i, t in enumerate(batch["lanes_3d_types"][0].tolist()) if t >= 0]
        bev.lanes([ln for ln in lanes if len(ln[0]) >= 2])
        bev.ego()
        m = batch["boxes_3d_mask"][0]
        bev.boxes(batch["boxes_3d"][0][m].numpy(), batch["boxes_3d_classes"][0][m].numpy())
        if "bev.objects_boxes" in decoded:
            sc = decoded["bev.objects_scores"][0]
            keep = (sc >= score_threshold) & (decoded["bev.objects_classes"][0] >= 0)
            bev.boxes(decoded["bev.objects_boxes"][0][keep].numpy(), decoded["bev.objects_classes"][0][keep].numpy(),
                      dashed=True)
        if "bev.lanes_points" in decoded:
            pts, ok = decoded["bev.lanes_points"][0], decoded["bev.lanes_valid"][0]
            ex, ty = decoded["bev.lanes_scores"][0], decoded["bev.lanes_types"][0]
            bev.lanes([(pts[s][ok[s]].numpy(), int(ty[s])) for s in range(len(ex))
                       if ex[s] >= lane_threshold and int(ok[s].sum()) >= 2], thickness=2, dashed=True)
        panels.append(bev.image)
    return np.concatenate(panels, axis=1)
