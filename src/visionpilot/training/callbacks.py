"""Training callbacks: prediction images each validation, and throughput with the time spent waiting for data."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L

from visionpilot.viz.draw import save_rgb
from visionpilot.viz.predictions import render_prediction


class PredictionImages(L.Callback):
    """Writes ``plots/val_s<step>_<k>.png`` after each validation: each camera with labels (solid) and predictions
    (dashed), plus the BEV. Named by optimiser step, so several validations in one epoch keep their own images.

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
            path = self.dirpath / f"val_s{trainer.global_step:06d}_{k}.png"
            save_rgb(str(path), render_prediction(batch, decoded, pl_module.camera_names or [],
                                                  self.score_threshold, self.lane_threshold,
                                                  getattr(pl_module, "lane_cameras", None)))
            self.written.append(path)


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

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A validation inside the epoch (val_check_interval) runs between one step's end and the next step's start:
        # its time is neither training nor waiting for data.
        self._batch_end = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        # A periodic checkpoint is written after this callback's batch end (Lightning runs checkpoint callbacks
        # last): like a validation, its time is neither training nor waiting for data.
        self._batch_end = None

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
