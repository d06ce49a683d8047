"""Training callbacks: prediction images each validation, throughput with the time spent waiting for data, and a
wall-clock budget that sets a run's length."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from visionpilot.viz.draw import save_rgb
from visionpilot.viz.predictions import render_prediction

log = logging.getLogger(__name__)


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

    CUDA runs asynchronously: a step "ends" when its kernels are queued, so a measured step is bracketed by
    ``torch.cuda.synchronize`` (else the GPU's time on it would count as the next wait for data). A sync costs the
    overlap of the CPU's work with the GPU's, so on a GPU one step in ``cuda_every`` is measured, not every step.
    """

    def __init__(self, warmup_steps: int = 5, cuda_every: int = 10) -> None:
        if isinstance(cuda_every, bool) or not isinstance(cuda_every, int) or cuda_every < 1:
            raise ValueError(f"Throughput: field 'cuda_every' must be a positive integer, found {cuda_every!r}")
        self.warmup_steps = warmup_steps
        self.cuda_every = cuda_every
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

    def _measures(self, pl_module: L.LightningModule, step: int) -> bool:
        if step < self.warmup_steps:
            return False
        return pl_module.device.type != "cuda" or (step - self.warmup_steps) % self.cuda_every == 0

    @staticmethod
    def _now(pl_module: L.LightningModule, sync: bool) -> float:
        if sync and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        measured = self._measures(pl_module, self._steps)
        now = self._now(pl_module, measured)
        if measured and self._batch_end is not None:
            self.wait += now - self._batch_end
        self._batch_start = now

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        measured = self._measures(pl_module, self._steps)
        now = self._now(pl_module, measured)
        if measured and self._batch_start is not None:
            self.busy += now - self._batch_start
            self.frames += int(batch["images"].shape[0])
        self._steps += 1
        # The next step's wait for data starts when this step is done on the device.
        self._batch_end = self._now(pl_module, True) if self._measures(pl_module, self._steps) and not measured \
            else now

    def summary(self) -> dict[str, float]:
        total = self.wait + self.busy
        if total <= 0:
            return {}
        return {"train/frames_per_s": self.frames / total, "train/data_wait_fraction": self.wait / total}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for key, value in self.summary().items():
            pl_module.log(key, value)


class TimeBudget(L.Callback):
    """Trains as many steps as fit in ``minutes`` of wall time, with the whole warm-up + cosine schedule in them.

    Lightning's ``max_time`` stops a run when time is up, in the middle of its learning-rate schedule; this callback
    instead measures the seconds per step early in the run and sets ``max_steps`` (never above the configured one,
    which stays the upper bound) and the schedule's length to what the budget holds, re-measuring at each of
    ``plan_at``. The budget counts from the start of training: start-up before it and the validation that ends the
    run come on top. The planned length is rounded down to a multiple of ``round_to`` and logged.

    Each plan takes the seconds per step of the steps since the previous one, the machine's speed now (validations
    in between left out: they are not steps), plus the validation seconds per step up to the last validation
    (validations to come, at the rate they came), and the seconds actually left. After the last of ``plan_at`` the
    run is re-measured every ``replan_every`` steps, and a new length is taken only when it differs from the plan by
    more than ``replan_change`` (a fraction), and only in the first ``replan_until`` of the run (a later change
    would bend the end of the cosine): a plan made while another job shared the machine is corrected once it is
    gone (the run was short by ~260 steps of 1,300 after a 20-second test run in its first minutes), and a machine
    that slows down later still ends within the budget.
    On a quiet machine the steps' speed varies by a few percent, so re-plans change nothing there and the run is
    reproducible with ``trainer.max_steps=<the length>`` and no budget (``callbacks.time_budget=null``); the log
    names every change of length. A resumed run keeps the length its first process planned (stored in the
    checkpoint).

    Args:
        minutes: the training budget.
        plan_at: optimiser steps (of this process) after which the run's length is planned; later ones refine it.
        skip_steps: the first steps are not timed (allocator and loader warm-up), though their time is spent.
        round_to: the planned length is a multiple of this (two runs on one machine usually agree).
        replan_every: steps between re-measurements after the last of ``plan_at`` (0: none).
        replan_change: least relative change of the length a re-measurement applies.
        replan_until: fraction of the planned run after which the length is not changed any more.
    """

    def __init__(self, minutes: float, plan_at: Sequence[int] = (20, 100, 300), skip_steps: int = 5,
                 round_to: int = 10, replan_every: int = 100, replan_change: float = 0.05,
                 replan_until: float = 0.75) -> None:
        if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not math.isfinite(minutes) \
                or minutes <= 0:
            raise ValueError(f"field 'callbacks.time_budget.minutes': expected a positive number, found {minutes!r}")
        plan_at = sorted(int(p) for p in plan_at)
        if not plan_at or plan_at[0] <= skip_steps or skip_steps < 0:
            raise ValueError(f"field 'callbacks.time_budget.plan_at': expected steps after skip_steps={skip_steps}, "
                             f"found {plan_at}")
        if round_to < 1:
            raise ValueError(f"field 'callbacks.time_budget.round_to': expected an integer >= 1, found {round_to}")
        if replan_every < 0:
            raise ValueError(f"field 'callbacks.time_budget.replan_every': expected steps >= 0 (0: no re-plans), "
                             f"found {replan_every}")
        if replan_change < 0:
            raise ValueError(f"field 'callbacks.time_budget.replan_change': expected a fraction >= 0, found "
                             f"{replan_change}")
        if not 0.0 <= replan_until <= 1.0:
            raise ValueError(f"field 'callbacks.time_budget.replan_until': expected a fraction in [0, 1], found "
                             f"{replan_until}")
        self.minutes = float(minutes)
        self.plan_at = plan_at
        self.skip_steps = skip_steps
        self.round_to = int(round_to)
        self.replan_every = int(replan_every)
        self.replan_change = float(replan_change)
        self.replan_until = float(replan_until)
        self.clock: Callable[[], float] = time.monotonic
        self.planned_steps: int | None = None  # the run's length once planned; kept across a resume
        self.restored = False
        self.start_step = 0
        self.paused, self.paused_steps = 0.0, 0  # validation seconds since training started; steps at the last one
        self._validating_since: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"planned_steps": self.planned_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.planned_steps = state_dict.get("planned_steps")
        self.restored = self.planned_steps is not None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The configured length is the upper bound: max_steps, or what max_epochs comes to.
        upper = trainer.estimated_stepping_batches
        if not math.isfinite(upper) or upper < 1:
            raise ValueError(f"field 'trainer.max_steps': the time budget needs an upper bound on the run's steps "
                             f"(max_steps, or max_epochs of a training set of known length), found max_steps="
                             f"{trainer.max_steps} with max_epochs={trainer.max_epochs}")
        self.upper = int(upper)
        self.start_step = trainer.global_step
        self.start = self.clock()
        self.timed_from: float | None = None  # the clock at the previous measurement (None: not timing yet)
        self.timed_steps = 0  # the steps done at it
        self.paused, self.paused_steps = 0.0, 0  # the sanity check's validation is not part of the run
        self.paused_from = 0.0  # the validation seconds at the previous measurement
        if self.restored:  # a resumed run: the length its first process planned, not a new plan from this one
            self.apply(trainer, pl_module, int(self.planned_steps))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.restored:
            return
        done = trainer.global_step - self.start_step
        if done == self.skip_steps and self.timed_from is None:
            self.timed_from, self.timed_steps, self.paused_from = self.clock(), done, self.paused
        last = self.plan_at[-1]
        replan = self.replan_every > 0 and done > last and (done - last) % self.replan_every == 0
        if (done not in self.plan_at and not replan) or self.timed_from is None:
            return
        now = self.clock()
        window = done - self.timed_steps
        # The speed since the previous measurement, validations left out (a validation every N steps would
        # otherwise shrink the run after each one and stretch it back after the next quiet window).
        per_step = max(now - self.timed_from - (self.paused - self.paused_from), 0.0) / window
        self.timed_from, self.timed_steps, self.paused_from = now, done, self.paused
        left = self.minutes * 60 - (now - self.start)
        # A step and its share of the validations to come (every N steps: the rate up to the last one, which does
        # not jump after each validation as a share of all steps done would).
        cost = per_step + (self.paused / self.paused_steps if self.paused_steps else 0.0)
        steps = trainer.global_step + (max(int(left / cost), 0) if cost > 0 else self.upper)
        steps = max(min(steps // self.round_to * self.round_to, self.upper), trainer.global_step)
        steps = int(trainer.strategy.broadcast(steps, src=0))  # every rank stops at the same step
        if replan and (trainer.global_step >= self.replan_until * self.planned_steps
                       or abs(steps - self.planned_steps) <= self.replan_change * self.planned_steps):
            return
        if steps != self.planned_steps:
            log.info("time budget %.1f min: %.3f s per step over the last %d steps -> %d steps (of at most %d, the "
                     "configured length; callbacks.time_budget=null trains all of them)", self.minutes, per_step,
                     window, steps, self.upper)
        self.apply(trainer, pl_module, steps)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validating_since = self.clock()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._validating_since is not None:
            self.paused += self.clock() - self._validating_since
            self.paused_steps = trainer.global_step - self.start_step
            self._validating_since = None

    def apply(self, trainer: L.Trainer, pl_module: L.LightningModule, steps: int) -> None:
        """Make ``steps`` the run's length: the loop's ``max_steps``, the validation that was set for the last step,
        and the learning-rate schedule."""
        previous = trainer.fit_loop.epoch_loop.max_steps
        if trainer.val_check_batch == previous:  # val_check_interval=${trainer.max_steps}: validate at the end
            trainer.val_check_batch = steps
        trainer.fit_loop.epoch_loop.max_steps = steps
        if hasattr(pl_module, "plan_schedule"):
            pl_module.plan_schedule(steps)
        self.planned_steps = steps
