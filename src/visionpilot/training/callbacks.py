"""Training callbacks: prediction images each validation, and throughput with the time spent waiting for data."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from visionpilot.data.frame import Lane
from visionpilot.viz.draw import BEVCanvas, camera_grid, draw_boxes_2d, draw_lanes_2d, legend, save_rgb


class PredictionImages(L.Callback):
    """Writes ``plots/val_e<epoch>_<k>.png``: each camera with labels (solid) and predictions (dashed), plus the BEV.

    Args:
        dirpath: output folder (``<run dir>/plots``).
        score_threshold: minimum detection score drawn.
        lane_threshold: minimum lane existence probability drawn.
        enabled: off for runs on data whose frames must not leave their region (see docs/governance.md).
    """

    def __init__(self, dirpath: str, score_threshold: float = 0.3, lane_threshold: float = 0.5,
                 enabled: bool = True) -> None:
        self.dirpath = Path(dirpath)
        self.score_threshold = score_threshold
        self.lane_threshold = lane_threshold
        self.enabled = enabled
        self.written: list[Path] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled or trainer.sanity_checking or not trainer.is_global_zero:
            return
        self.dirpath.mkdir(parents=True, exist_ok=True)
        for k, (batch, decoded) in enumerate(getattr(pl_module, "val_examples", [])):
            path = self.dirpath / f"val_e{trainer.current_epoch:03d}_{k}.png"
            save_rgb(str(path), render_prediction(batch, decoded, pl_module.camera_names or [],
                                                  self.score_threshold, self.lane_threshold,
                                                  getattr(pl_module, "lane_cameras", None)))
            self.written.append(path)


def render_prediction(batch: dict[str, Any], decoded: dict[str, torch.Tensor], camera_names: list[str],
                      score_threshold: float = 0.3, lane_threshold: float = 0.5,
                      lane_cameras: list[str] | None = None) -> np.ndarray:
    """Predictions (dashed) against labels (solid) for the first frame of a batch, as one RGB image.

    2D lane predictions are drawn on ``lane_cameras`` only (None: all): the lane head is trained there.
    """
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
    body = np.concatenate(panels, axis=1)
    return np.concatenate([body, legend(body.shape[1])], axis=0)


class Throughput(L.Callback):
    """Training frames/s and the fraction of wall time spent waiting for the next batch (data-bound if high).

    Logged as ``train/frames_per_s`` and ``train/data_wait_fraction`` at each epoch end, measured after
    ``warmup_steps`` steps (the first steps include start-up costs).
    """

    def __init__(self, warmup_steps: int = 5) -> None:
        self.warmup_steps = warmup_steps
        self.reset()

    def reset(self) -> None:
        self.frames = 0
        self.wait = 0.0
        self.busy = 0.0
        self._batch_end: float | None = None
        self._batch_start: float | None = None
        self._steps = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._batch_end = None  # the wait before an epoch's first batch includes loader start-up: not counted

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        now = time.perf_counter()
        if self._batch_end is not None and self._steps >= self.warmup_steps:
            self.wait += now - self._batch_end
        self._batch_start = now

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.perf_counter()
        if self._batch_start is not None and self._steps >= self.warmup_steps:
            self.busy += now - self._batch_start
            self.frames += int(batch["images"].shape[0])
        self._steps += 1
        self._batch_end = now

    def summary(self) -> dict[str, float]:
        total = self.wait + self.busy
        if total <= 0:
            return {}
        return {"train/frames_per_s": self.frames / total, "train/data_wait_fraction": self.wait / total}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for key, value in self.summary().items():
            pl_module.log(key, value)
