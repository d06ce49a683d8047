"""``train(cfg) -> (metrics, objects)``: the plain function behind ``visionpilot-train`` (lightning-hydra style)."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from visionpilot.data.datamodule import has_val_frames
from visionpilot.governance import governance_kwargs
from visionpilot.training.callbacks import Throughput, TimeBudget
from visionpilot.training.fault_tolerance import (
    check_resume,
    final_validation_missing,
    install_atomic_io,
    remove_earlier_checkpoints,
    resolve_ckpt_path,
    starts_over,
    with_previous_metrics,
)
from visionpilot.utils.io import write_json_atomic
from visionpilot.utils.machine import keep_freed_memory

log = logging.getLogger(__name__)


def instantiate_list(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` node of a config group (callbacks, loggers); null entries are skipped."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(node) for _, node in cfg.items() if node is not None and "_target_" in node]


def build(cfg: DictConfig) -> dict[str, Any]:
    """Datamodule, LightningModule, callbacks, loggers and trainer from a composed config."""
    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True)
    torch.set_float32_matmul_precision("high")
    torch.set_flush_denormal(True)  # denormal floats make CPU convolutions orders of magnitude slower
    log.info("allocator: %s", keep_freed_memory())  # no page faults on every step's fresh tensors
    # The job's policy and compute region go to the datamodule, which enforces them before reading any frame.
    datamodule = hydra.utils.instantiate(cfg.data, **governance_kwargs(cfg))
    module = hydra.utils.instantiate(cfg.model)
    # Stored in every checkpoint, so fine-tuning, evaluation and export can rebuild the network from the file.
    module.run_config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    callbacks = instantiate_list(cfg.get("callbacks"))
    loggers = instantiate_list(cfg.get("logger"))
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    install_atomic_io(trainer)  # every checkpoint atomic, with or without callbacks.periodic_checkpoint
    return {"datamodule": datamodule, "model": module, "callbacks": callbacks, "loggers": loggers, "trainer": trainer}


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Train (or resume with ``cfg.ckpt_path``), validate, write ``metrics.json``; return metrics and objects."""
    objects = build(cfg)
    trainer: L.Trainer = objects["trainer"]
    regions = cfg.data.regions
    steps = cfg.trainer.get("max_steps")
    budget = next((cb for cb in objects["callbacks"] if isinstance(cb, TimeBudget)), None)
    length = f"{steps} steps" if budget is None else f"as many steps as {budget.minutes:g} minutes hold (<= {steps})"
    log.info("training %s on regions %s: %s at precision %s", cfg.model.net.backbone.name,
             OmegaConf.to_container(regions) if OmegaConf.is_config(regions) else regions, length, trainer.precision)
    # ckpt_path=auto: rerunning a command in the same run dir resumes from its newest checkpoint (fault_tolerance.py).
    # weights_only=False: our checkpoints hold the run config and hyperparameters (optimizer partials), not just
    # tensors, and come from this run dir or a path the user named.
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.output_dir)
    check_resume(ckpt_path, objects["model"])
    if starts_over(cfg.get("ckpt_path")):  # ckpt_path=never: nothing of an earlier run here may be resumed later
        remove_earlier_checkpoints(cfg.paths.output_dir)
    try:
        trainer.fit(objects["model"], objects["datamodule"], ckpt_path=ckpt_path, weights_only=False)
    except SIGTERMException:
        # Lightning's SIGTERMException is a SystemExit without a code: the process would exit 0, and a scheduler or
        # `train && export` would take a stopped run for a finished one. 143 = 128 + SIGTERM, as a killed process.
        log.warning("training stopped by SIGTERM at step %d: no metrics.json; rerun the same command to resume",
                    trainer.global_step)
        raise SystemExit(128 + signal.SIGTERM) from None
    model, datamodule = objects["model"], objects["datamodule"]
    metrics_path = Path(cfg.paths.output_dir) / cfg.get("metrics_file", "metrics.json")
    # Also a resumed run that trained nothing: it was killed during its final validation (or before metrics.json).
    stale = model.validation_is_stale() or (ckpt_path is not None and model.val_step is None
                                            and final_validation_missing(metrics_path, trainer.global_step))
    if stale and has_val_frames(datamodule) and trainer.limit_val_batches:
        log.info("validating the final model (step %d): the last validation saw step %s", trainer.global_step,
                 model.val_step)
        trainer.validate(model, datamodule, verbose=False)
    metrics = model.run_metrics()
    for cb in objects["callbacks"]:
        if isinstance(cb, Throughput):
            metrics.update(cb.summary())
    metrics["train/skipped_batches"] = float(objects["model"].skipped_batches)
    metrics["train/steps"] = float(trainer.global_step)
    if ckpt_path is not None:  # a resumed run keeps what it did not recompute (a finished run's rerun: everything)
        metrics = with_previous_metrics(metrics_path, metrics)
    write_json_atomic(metrics_path, metrics)
    ckpt = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
    log.info("metrics written to %s; best checkpoint %s", metrics_path, ckpt or "(none)")
    return metrics, objects
