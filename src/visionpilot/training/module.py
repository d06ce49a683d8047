"""The LightningModule: wires the network, its weighted losses, the evaluator and the optimiser. Thin on purpose.

Metric names: ``train/loss`` and ``train/<head>.<term>`` per step, ``val/loss``, ``val/<metric>`` and
``val/<region>/<metric>`` per validation (see evaluation/evaluator.py for the metric names), with ``val/frames`` (frames
evaluated) and ``val/subset`` (1 when that is less than the val split, e.g. with ``trainer.limit_val_batches``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from visionpilot.evaluation.evaluator import PerceptionEvaluator
from visionpilot.export.onnx_export import example_inputs
from visionpilot.governance import build_lineage, withhold_frames
from visionpilot.models.net import camera_slots, run_lanes_on, slots_mask

log = logging.getLogger(__name__)

#: What a NaN/Inf loss does: stop with a message (``raise``) or skip the batch and count it (``skip``).
NAN_POLICIES = ("raise", "skip")


class NonFiniteLossError(RuntimeError):
    """A loss term, or a gradient of a finite loss, became NaN or Inf."""


def check_number(field: str, value: Any, ok: Callable[[float], bool], expected: str) -> None:
    """A real number (not a bool) for which ``ok`` holds, or an error naming the field, expected and found."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
        raise ValueError(f"field '{field}': expected {expected}, found {value!r}")


class PerceptionModule(L.LightningModule):
    """Trains a :class:`~visionpilot.models.net.HydraNet` from batches of the batch contract.

    Args:
        net: the network (a plain ``nn.Module``).
        optimizer: factory taking the parameter groups (Hydra ``_partial_`` of ``torch.optim.AdamW``).
        warmup_steps: linear warm-up length; a float in (0, 1) is a fraction of the total steps.
        min_lr_ratio: the cosine schedule decays to ``min_lr_ratio * lr``.
        loss_weights: weight per loss term (``"lanes_2d.position"``) or per head (``"lanes_2d"``); default 1.
        lane_cameras: camera names the 2D lane head is trained and evaluated on (None: all). Row-anchor lanes are
            defined for forward/rearward views, not for side cameras that see lanes edge-on.
        regions: region codes for per-region metrics (None: the datamodule's selection).
        nan_policy: what a non-finite loss term, or a non-finite gradient of a finite loss, does: ``raise`` (stop,
            naming the step and the term or parameters) or ``skip`` (no update that step; counted).
        compile: wrap the network in ``torch.compile``.
        weight_decay_norm: apply weight decay to norm layers and biases too (off: the usual exclusion).
        lr_mult: learning-rate multiplier per parameter-name prefix of the net (``{"backbone": 0.5}``: the
            backbone, adapters inside it included, at half the lr); the longest matching prefix wins, others 1.
    """

    def __init__(self, net: nn.Module, optimizer: Callable[..., torch.optim.Optimizer],
                 warmup_steps: float = 0.05, min_lr_ratio: float = 0.05,
                 loss_weights: Mapping[str, float] | None = None, lane_cameras: Sequence[str] | None = None,
                 regions: Sequence[str] | None = None, nan_policy: str = "raise", compile: bool = False,
                 weight_decay_norm: bool = False, lr_mult: Mapping[str, float] | None = None) -> None:
        super().__init__()
        if nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {list(NAN_POLICIES)}, found '{nan_policy}'")
        for prefix, mult in flatten_dotted(lr_mult).items():
            check_number(f"model.lr_mult.{prefix}", mult, lambda v: v > 0, "a positive number")
        # A command-line override +model.loss_weights.lanes_2d.position=0.5 arrives nested, as lr_mult's do.
        weights = flatten_dotted(loss_weights)
        for key, value in weights.items():
            check_number(f"model.loss_weights.{key}", value, lambda v: v >= 0, "a number >= 0")
        # A float is a fraction below 1 and a count above (100.0 from a computed config); 1.0 or 2.5 is neither, and
        # was cut to 1 or 2 steps where "the whole run" or a count was meant.
        check_number("model.warmup_steps", warmup_steps,
                     lambda v: v >= 0 and (isinstance(v, int) or v < 1 or (v > 1 and float(v).is_integer())),
                     "a count >= 0 or a fraction in (0, 1) of the total steps")
        check_number("model.min_lr_ratio", min_lr_ratio, lambda v: 0 <= v <= 1, "a number in [0, 1]")
        self.save_hyperparameters(ignore=["net"], logger=False)
        self.net = net
        self.optimizer_factory = optimizer
        self.loss_weights = {k: float(v) for k, v in weights.items()}
        self._weights_checked = False
        self.lane_cameras = list(lane_cameras) if lane_cameras else None
        self.nan_policy = nan_policy
        self.skipped_batches = 0
        self.evaluator: PerceptionEvaluator | None = None
        self.camera_names: list[str] | None = None
        self.image_size: tuple[int, int] | None = None
        self.val_examples: list[tuple[dict[str, Any], dict[str, Tensor]]] = []  # for prediction images
        # The ``val/`` metrics of the last validation (None before one): Lightning's callback_metrics keep a metric
        # an earlier validation logged and the last could not compute (NaN), which must not reach metrics.json.
        self.val_metrics: dict[str, float] | None = None
        self.val_step: int | None = None  # the optimiser step the last validation saw (None before one)
        self.train_start_step: int | None = None  # the step this process started training at (after a resume)
        self._val_frames = 0
        self.run_config: dict[str, Any] | None = None  # the resolved Hydra config, stored in checkpoints
        self.lineage_parents: list[dict[str, Any]] = []  # lineage of the model this run starts from (fine-tunes)
        self.num_val_examples = 4
        self._compiled = False

    # --- setup -------------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.nan_policy == "skip" and self._trainer is not None and self.trainer.world_size > 1:
            # A rank cannot skip its step alone: Lightning refuses a None loss under DDP, and every rank must take
            # part in each gradient all-reduce.
            raise ValueError(f"model.nan_policy=skip works in single-process training only, found "
                             f"{self.trainer.world_size} processes; use model.nan_policy=raise (the default) with "
                             f"DDP, which stops at the first non-finite loss and names the step and the loss term")
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is not None:
            self.camera_names = list(dm.camera_names)
            self.image_size = tuple(dm.image_size) if getattr(dm, "image_size", None) else None
            self.restrict_lane_head()
            withhold_frames(self.trainer, self)  # no prediction images of data that may not leave its region
            if self.camera_names and self.image_size and self.example_input_array is None and not self.hparams.compile:
                # One frame of the rig for Lightning's model summary: it prints the forward FLOPs per frame
                # ("Total FLOPs: 0" without one). Not when compiling: an eval-mode graph would compile for it.
                images, intrinsics, extrinsics = example_inputs(len(self.camera_names), self.image_size, batch=1)
                self.example_input_array = ({"images": images, "intrinsics": intrinsics, "extrinsics": extrinsics},)
        if self.hparams.compile and not self._compiled:
            # In place (nn.Module.compile): the state dict keeps the net's own keys, so checkpoints are the same with
            # or without compile (torch.compile's wrapper stored them under net._orig_mod.*).
            self.net.compile()
            self._compiled = True

    def build_evaluator(self, regions: Sequence[str]) -> PerceptionEvaluator:
        """An evaluator for this network's tasks on images of the configured size and cameras."""
        net = getattr(self.net, "_orig_mod", self.net)
        tasks = [name for name in self._heads() if name in ("lanes_2d", "objects_2d")]
        grid, line_width = None, 1.0
        if getattr(net, "bev", None) is not None:
            grid = net.bev.grid
            heads = net.bev.heads
            if "objects" in heads:
                tasks.append("objects_3d")
            if "lanes" in heads:
                tasks.append("lanes_bev")
                line_width = float(heads["lanes"].line_width) * float(grid.cell_size)
        return PerceptionEvaluator(regions, self.image_size or (0, 0), self.camera_names or [],
                                   lane_cameras=self.lane_cameras, tasks=tasks, bev_grid=grid,
                                   bev_line_width=line_width).to(self.device)

    def _heads(self) -> list[str]:
        net = getattr(self.net, "_orig_mod", self.net)
        names = list(getattr(net, "heads", {}).keys())
        if getattr(net, "bev", None) is not None:
            names.append("bev")
        return names

    def restrict_lane_head(self) -> None:
        """Run the 2D lane head on ``lane_cameras`` only (``models/net.py: run_lanes_on``)."""
        if self.camera_names is not None:
            run_lanes_on(self.net, self.lane_cameras, self.camera_names, "model.lane_cameras")

    def _with_lane_cameras(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.lane_cameras is None or self.camera_names is None:
            return batch
        slots = camera_slots(self.lane_cameras, self.camera_names, "model.lane_cameras")
        return {**batch, "lanes_2d_camera_mask": slots_mask(batch["camera_mask"], slots)}

    # --- steps -------------------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        outputs = self.net(batch["images"], batch["intrinsics"], batch["extrinsics"])
        # Under mixed precision (trainer.precision=bf16-mixed) the heads answer in bf16; losses, decoding and metrics
        # take float32 (bf16 keeps 8 bits: detection scores would tie in the AP ranking, focal terms lose their tail).
        return {k: v.float() if v.is_floating_point() else v for k, v in outputs.items()}

    def _losses(self, outputs: dict[str, Tensor], batch: dict[str, Any]) -> dict[str, Tensor]:
        with torch.autocast(self.device.type, enabled=False):  # the loss terms' own matmuls in float32 too
            return self.net.loss(outputs, batch)

    def weight(self, term: str) -> float:
        if term in self.loss_weights:
            return float(self.loss_weights[term])
        return float(self.loss_weights.get(term.split(".")[0], 1.0))

    def _check_loss_weights(self, terms: Sequence[str]) -> None:
        """Every ``loss_weights`` key names a loss term or a head: a typo would otherwise weigh nothing, silently."""
        valid = sorted({*terms, *(t.split(".")[0] for t in terms)})
        for key in self.loss_weights:
            if key not in valid:
                raise ValueError(f"field 'model.loss_weights.{key}': expected a loss term or a head of the net, one of "
                                 f"{valid}; found no such term")
        self._weights_checked = True

    def _total_loss(self, losses: dict[str, Tensor]) -> Tensor:
        if not self._weights_checked:
            self._check_loss_weights(list(losses))
        return sum(self.weight(k) * v for k, v in losses.items() if self.weight(k) != 0.0)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor | None:
        batch = self._with_lane_cameras(batch)
        # A skipped batch's forward has already moved the norm layers' running statistics (to NaN, from a NaN/Inf
        # activation), which every later validation and checkpoint would inherit: kept to be put back.
        running = self._running_stats() if self.nan_policy == "skip" else []
        outputs = self(batch)
        losses = self._losses(outputs, batch)
        # A term weighted 0 is not part of the loss: its NaN does not reach the weights.
        bad = [k for k, v in losses.items() if self.weight(k) != 0.0 and not torch.isfinite(v).all()]
        if bad:
            values = ", ".join(f"'{k}' = {losses[k].detach().float().cpu().item():.4g}" for k in bad)
            if self.nan_policy == "raise":
                raise NonFiniteLossError(
                    f"non-finite loss at step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx}): "
                    f"{values}; frames {list(batch['frame_id'])}. Lower the learning rate, check the data, or set "
                    f"model.nan_policy=skip to skip such batches")
            with torch.no_grad():
                for buffer, saved in running:
                    buffer.copy_(saved)
            self.skipped_batches += 1
            self.log("train/skipped_batches", float(self.skipped_batches), on_step=True)
            return None
        loss = self._total_loss(losses)
        bs = batch["images"].shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=bs)
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, on_step=True, batch_size=bs)
        return loss

    def _running_stats(self) -> list[tuple[Tensor, Tensor]]:
        """(buffer, copy) of every normalisation layer's running statistics (BatchNorm, InstanceNorm)."""
        return [(b, b.clone()) for m in self.net.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
                for b in m.buffers(recurse=False)]

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # A finite loss can still give non-finite gradients (an overflow in a backward op); one such step writes
        # NaN into every weight it touches, and the next periodic checkpoint would keep them. Before clipping.
        # float16 AMP's gradient scaler makes and handles such steps itself (it skips them and lowers its scale).
        if getattr(getattr(self._trainer, "precision_plugin", None), "scaler", None) is not None:
            return
        named = [(n, p.grad) for n, p in self.named_parameters() if p.grad is not None]
        if not named or torch.isfinite(torch.nn.utils.get_total_norm([g for _, g in named])):
            return
        if self.nan_policy == "raise":
            bad = [n for n, g in named if not torch.isfinite(g).all()]
            # Finite gradients whose norm overflows (sum of squares past the dtype's range): clipping would scale them
            # by max_norm / inf = 0, so the step is as lost as a NaN one, and the run has diverged the same way.
            where = (f"in {len(bad)} parameter(s), e.g. {bad[:3]}" if bad else
                     "every gradient finite but their norm overflowing, e.g. "
                     f"{[n for n, _ in sorted(named, key=lambda ng: -float(ng[1].abs().max()))[:3]]}")
            raise NonFiniteLossError(
                f"non-finite gradient at step {self.global_step} (epoch {self.current_epoch}) of a finite loss, "
                f"{where}. Lower the learning rate, check the data, or set model.nan_policy=skip to skip such steps")
        for p in self.parameters():  # the optimiser leaves parameters without a gradient untouched: a true skip
            p.grad = None
        self.skipped_batches += 1
        self.log("train/skipped_batches", float(self.skipped_batches), on_step=True)

    def on_validation_epoch_start(self) -> None:
        regions = self.hparams.regions or getattr(self.trainer.datamodule, "selected_regions", None)
        if not regions:
            regions = sorted({r for ref in self.trainer.datamodule.datasets["val"].refs for r in [ref.region]})
        self.evaluator = self.build_evaluator(regions)
        self.val_examples = []
        self._val_frames = 0

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        batch = self._with_lane_cameras(batch)
        outputs = self(batch)
        losses = self._losses(outputs, batch)
        bs = batch["images"].shape[0]
        self._val_frames += int(bs)
        self.log("val/loss", self._total_loss(losses), on_epoch=True, batch_size=bs, sync_dist=True)
        with torch.autocast(self.device.type, enabled=False):  # float32, as in _losses
            decoded = self.net.decode(outputs, batch["images"].shape[-2:])
        self.evaluator.update(batch, decoded)
        if len(self.val_examples) < self.num_val_examples:
            self.val_examples.append(({k: (v[:1].cpu() if isinstance(v, Tensor) else v[:1]) for k, v in batch.items()},
                                      {k: v[:1].detach().cpu() for k, v in decoded.items()}))

    def on_validation_epoch_end(self) -> None:
        metrics = self.evaluator.compute()
        # Frames evaluated (every rank's), and whether that is less than the val split (trainer.limit_val_batches):
        # figures of a subset must not pass for the split's.
        frames = float(self.trainer.strategy.reduce(torch.tensor(float(self._val_frames), device=self.device),
                                                    reduce_op="sum"))
        dm = self.trainer.datamodule
        total = len(dm.datasets["val"]) if "val" in getattr(dm, "datasets", {}) else None
        subset = frames < total if total is not None else self.trainer.limit_val_batches not in (1, 1.0)
        metrics = {**metrics, "frames": frames, "subset": float(subset)}
        logged = {f"val/{k}": float(v) for k, v in metrics.items() if not math.isnan(v)}
        for key, value in logged.items():
            self.log(key, value, sync_dist=False)
        if not self.trainer.sanity_checking:
            self.val_metrics, self.val_step = logged, int(self.global_step)

    # --- optimisation ------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(self.param_groups())
        for group in optimizer.param_groups:  # before the scheduler records each group's initial lr
            group["lr"] *= group.pop("lr_mult")
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total) or total < 1:
            # inf: max_steps=-1 with max_epochs=-1; -1: max_steps=-1 with a training set of unknown length (a
            # stream), which used to give a one-step schedule, i.e. the whole run at min_lr_ratio * lr.
            raise ValueError(f"trainer.max_steps: expected a number of steps (the warm-up + cosine schedule needs the "
                             f"run's length), found {self.trainer.max_steps} with trainer.max_epochs="
                             f"{self.trainer.max_epochs} and a training set of unknown length or no epoch limit; set "
                             f"trainer.max_steps")
        self.plan_schedule(int(total))
        # Through a lambda, not the schedule itself: TimeBudget re-plans the run's length after it has started, and
        # LambdaLR stores no state of a plain function in checkpoints (a resumed run plans from its own config).
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.lr_schedule(step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def plan_schedule(self, total_steps: int) -> None:
        """The warm-up + cosine learning-rate schedule for a run of ``total_steps`` optimiser steps (a fractional
        ``warmup_steps`` is a fraction of them); takes effect at the next step."""
        warm = self.hparams.warmup_steps
        warm = int(warm * total_steps) if isinstance(warm, float) and warm < 1 else int(warm)
        if warm >= total_steps > 1:
            log.warning("field 'model.warmup_steps': %d steps of warm-up, not fewer than the run's %d steps: the learning "
                        "rate rises for the whole run and never reaches model.optimizer.lr (no cosine); set fewer, or "
                        "a fraction of the run (e.g. 0.1)", warm, total_steps)
        self.lr_schedule = warmup_cosine(total_steps, warm, self.hparams.min_lr_ratio)

    def param_groups(self) -> list[dict[str, Any]]:
        """The trainable parameters grouped by weight decay (none on norm layers and biases unless
        ``weight_decay_norm``) and by learning-rate multiplier (``lr_mult``); each group carries its ``lr_mult``."""
        mults = {k: float(v) for k, v in flatten_dotted(self.hparams.get("lr_mult")).items()}
        named = list(getattr(self.net, "_orig_mod", self.net).named_parameters())
        for prefix in mults:
            if not any(under_prefix(name, prefix) for name, _ in named):
                raise ValueError(f"field 'model.lr_mult.{prefix}': no parameter of the net is named {prefix!r} or "
                                 f"'{prefix}.*' (top-level modules: {sorted({n.split('.')[0] for n, _ in named})})")
        groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
        for name, param in named:
            if not param.requires_grad:
                continue
            matches = [prefix for prefix in mults if under_prefix(name, prefix)]
            mult = mults[max(matches, key=len)] if matches else 1.0
            decay = param.ndim > 1 or bool(self.hparams.weight_decay_norm)
            groups.setdefault((mult, decay), []).append(param)
        return [{"params": params, "lr_mult": mult, **({} if decay else {"weight_decay": 0.0})}
                for (mult, decay), params in sorted(groups.items(), key=lambda item: (-item[0][0], not item[0][1]))]

    # --- checkpoints -------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Everything needed to rebuild and describe the network from this file alone (training/checkpoints.py).
        dm = self.trainer.datamodule if self._trainer is not None else None
        facts: dict[str, Any] = {}
        if dm is not None and getattr(dm, "manifest", None) is not None:
            facts = {"regions": list(dm.selected_regions), "frame_counts": dm.frame_counts.get("train", {}),
                     "manifest_sha256": dm.manifest.sha256}
        entry = dict(checkpoint.get("visionpilot") or {})
        base_sha256 = (entry.get("finetune") or {}).get("base_sha256")
        checkpoint["visionpilot"] = {
            **entry,
            "skipped_batches": self.skipped_batches,  # nan_policy=skip's count, carried across a resume
            "config": self.run_config,
            "model_signature": model_signature(self.net),
            "camera_names": self.camera_names,
            "image_size": list(self.image_size) if self.image_size else None,
            **facts,
            "lineage": build_lineage("checkpoint", datamodule=dm, config=self.run_config, base_sha256=base_sha256,
                                     parents=self.lineage_parents),
        }

    def run_metrics(self) -> dict[str, float]:
        """The trainer's scalar metrics for ``metrics.json``: ``val/`` ones only from the last validation (Lightning
        keeps a metric an earlier validation logged and the last could not compute), and ``val/step``, the step
        that validation saw."""
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if v.numel() == 1}
        if self.val_metrics is None:
            return metrics
        metrics = {k: v for k, v in metrics.items()
                   if not k.startswith("val/") or k == "val/loss" or k in self.val_metrics}
        return {**metrics, "val/step": float(self.val_step)}

    def on_train_start(self) -> None:
        self.train_start_step = int(self.global_step)
        # A resumed run's optimiser comes back with the learning rate its checkpoint stored, which the schedule of
        # *this* run (another max_steps, a TimeBudget plan: callbacks run before this hook) may not give at this
        # step; the scheduler only sets it after the first step. Set it now, so that step follows the schedule too.
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs,
                                               scheduler.lr_lambdas, strict=True):
                    group["lr"] = base * factor(scheduler.last_epoch)

    def validation_is_stale(self) -> bool:
        """Whether this process trained steps after the last validation: Lightning does not validate when
        ``max_steps`` ends a run inside an epoch, so metrics.json would describe an earlier model than last.ckpt."""
        trained = self.train_start_step is not None and self.global_step > self.train_start_step
        return trained and (self.val_step is None or self.val_step < self.global_step)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("state_dict")
        if state is not None and any(k.startswith("net._orig_mod.") for k in state):
            # written by a compiled run before compile kept the net's keys: before Lightning's strict load
            checkpoint["state_dict"] = {k.replace("net._orig_mod.", "net.", 1): v for k, v in state.items()}
        entry = checkpoint.get("visionpilot", {})
        self.skipped_batches = int(entry.get("skipped_batches", 0))
        saved = entry.get("model_signature")
        if saved is None:
            return
        check_signature(saved, model_signature(self.net))


def flatten_dotted(mapping: Mapping[str, Any] | None, parent: str = "") -> dict[str, Any]:
    """A nested mapping's leaves under dotted keys, e.g. ``lr_mult``: a command-line override
    ``model.lr_mult.heads.lanes_2d=2`` arrives as ``{"heads": {"lanes_2d": 2}}``, YAML may write ``heads.lanes_2d: 2``."""
    flat: dict[str, Any] = {}
    for key, value in dict(mapping or {}).items():
        prefix = f"{parent}.{key}" if parent else str(key)
        flat.update(flatten_dotted(value, prefix) if isinstance(value, Mapping) else {prefix: value})
    return flat


def under_prefix(name: str, prefix: str) -> bool:
    """Whether parameter ``name`` is ``prefix`` or inside the module ``prefix`` (``backbone`` not ``backbone2``)."""
    return name == prefix or name.startswith(prefix + ".")


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up from ~0 to 1 over ``warmup_steps``, then cosine to ``min_ratio``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(warmup_steps, 1)
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


def model_signature(net: nn.Module) -> dict[str, list[int]]:
    """Parameter and buffer names with their shapes: what a checkpoint must match to load into ``net``."""
    net = getattr(net, "_orig_mod", net)
    return {k: list(v.shape) for k, v in net.state_dict().items()}


def check_signature(saved: Mapping[str, Sequence[int]], current: Mapping[str, Sequence[int]]) -> None:
    """Raise a readable error when a checkpoint was trained with another model configuration."""
    missing = sorted(set(current) - set(saved))
    unexpected = sorted(set(saved) - set(current))
    shapes = sorted(k for k in set(saved) & set(current) if list(saved[k]) != list(current[k]))
    if not (missing or unexpected or shapes):
        return
    lines = ["the checkpoint was trained with a different model configuration than this run:"]
    if shapes:
        lines.append(f"  {len(shapes)} tensors differ in shape, e.g. " + "; ".join(
            f"{k}: checkpoint {list(saved[k])}, this model {list(current[k])}" for k in shapes[:3]))
    if missing:
        lines.append(f"  {len(missing)} tensors of this model are not in the checkpoint, e.g. {missing[:3]}")
    if unexpected:
        lines.append(f"  {len(unexpected)} tensors of the checkpoint are not in this model, e.g. {unexpected[:3]}")
    lines.append("Use the model config the checkpoint was trained with (its .hydra/config.yaml), or start without "
                 "ckpt_path.")
    raise ValueError("\n".join(lines))
