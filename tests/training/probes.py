"""Callbacks the subprocess tests load into ``visionpilot-train`` (``+callbacks.<name>._target_=probes.<Class>``).

Not a test module: the DDP and fault-tolerance tests put this folder on the subprocess's PYTHONPATH.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch


class RankProbe(L.Callback):
    """Writes ``<out>/rank<r>.pt`` at the end of training: the rank's weights and the frame ids it trained on."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.frames: list[str] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.frames += list(batch["frame_id"])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save({"rank": trainer.global_rank, "world_size": trainer.world_size, "frames": self.frames,
                    "steps": trainer.global_step, "state_dict": state,
                    "backend": torch.distributed.get_backend() if torch.distributed.is_initialized() else None},
                   self.out / f"rank{trainer.global_rank}.pt")


class PauseAt(L.Callback):
    """At optimizer step ``step``, once per marker file: create ``marker`` and sleep, so a test can SIGKILL us there."""

    def __init__(self, step: int, marker: str, seconds: float = 600.0) -> None:
        self.step, self.marker, self.seconds = int(step), Path(marker), float(seconds)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step == self.step and not self.marker.exists():
            self.marker.write_text(f"{os.getpid()} step {trainer.global_step} batch {batch_idx}\n")
            time.sleep(self.seconds)
