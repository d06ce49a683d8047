"""Training that survives faults: atomic checkpoint files, periodic step checkpoints, and automatic resume.

Three parts, each small:

- :class:`AtomicCheckpointIO` writes every checkpoint of the trainer to a temporary file in the target folder,
  ``fsync``\\ s it and renames it over the target (``os.replace``), so a process killed mid-write leaves the previous
  file intact and at worst a ``.tmp`` leftover that nothing reads. (Lightning's default writer streams through an
  fsspec transaction whose temporary file lives in the system temp folder, so its final move can be a copy across
  file systems that a crash cuts short, and it never ``fsync``\\ s.)
- :class:`PeriodicCheckpoint` is Lightning's ``ModelCheckpoint`` writing ``last.ckpt`` every ``every_n_train_steps``
  optimizer steps, at every epoch end and when training ends. It puts :class:`AtomicCheckpointIO` into the trainer
  when the trainer still has the plain default writer. Lightning stores the loop counters, optimizer and scheduler
  state, callbacks' state and the train loader's position (``ResumableDataLoader`` / litdata's
  ``StreamingDataLoader``) in it, and ``PerceptionModule.on_save_checkpoint`` adds the ``visionpilot`` entry that
  keeps the file loadable on its own (``training/checkpoints.py``).
- :func:`resolve_ckpt_path` turns the config's ``ckpt_path`` into what ``Trainer.fit`` takes: ``auto`` (the default)
  resumes from the newest readable checkpoint in ``<run dir>/checkpoints`` (or a SLURM ``hpc_ckpt_*.ckpt`` in the run
  dir), so rerunning the same command with the same ``hydra.run.dir`` continues a killed run.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from visionpilot.utils.io import write_atomic

log = logging.getLogger(__name__)

#: ``ckpt_path`` values that mean "find the newest checkpoint of this run dir, if any".
AUTO = "auto"
#: ``ckpt_path`` values that mean "start fresh even if the run dir has checkpoints".
NEVER = ("never", "none", "null", "")
CHECKPOINT_DIR = "checkpoints"


def _is_url(path: str | os.PathLike[str]) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``.<name>.<random>.tmp`` beside the target, ``fsync``, then ``os.replace`` (atomic on POSIX).

    Object-store URLs go through Lightning's writer (an object PUT is already all-or-nothing).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike[str],
                        storage_options: Any | None = None) -> None:
        if _is_url(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO.save_checkpoint: storage_options are not supported for local files, "
                            f"found {storage_options!r}")
        path = Path(str(path).removeprefix("file://"))

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)

        write_atomic(path, write)  # flushed to disk before the rename, the folder's entry after it


def install_atomic_io(trainer: L.Trainer) -> bool:
    """Give ``trainer`` an :class:`AtomicCheckpointIO` if it has Lightning's plain default writer; True if changed.

    Strategies with their own writers (FSDP's sharded checkpoints, user plugins) are left alone.
    """
    strategy = trainer.strategy
    current = getattr(strategy, "_checkpoint_io", None)
    if current is None or type(current) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
        return True
    return False


class PeriodicCheckpoint(ModelCheckpoint):
    """``<dirpath>/last.ckpt`` every ``every_n_train_steps`` optimizer steps, at each epoch end and at the end.

    Args:
        dirpath: checkpoint folder (``<run dir>/checkpoints``: where ``ckpt_path=auto`` looks).
        every_n_train_steps: steps between saves; the work lost to a crash is at most this many steps.
        atomic: install :class:`AtomicCheckpointIO` in the trainer (on unless the trainer has its own writer).
        **kwargs: other ``ModelCheckpoint`` arguments.
    """

    def __init__(self, dirpath: str | os.PathLike[str], every_n_train_steps: int = 500, atomic: bool = True,
                 **kwargs: Any) -> None:
        if int(every_n_train_steps) < 1:
            raise ValueError(f"PeriodicCheckpoint: field 'every_n_train_steps' must be >= 1, "
                             f"found {every_n_train_steps}")
        # save_top_k=0 + save_last: one file, last.ckpt, replaced in place; monitor=None: no metric needed.
        kwargs = {"save_top_k": 0, "save_last": True, "monitor": None, **kwargs}
        kwargs.setdefault("enable_version_counter", False)  # last.ckpt is overwritten, never last-v1.ckpt
        super().__init__(dirpath=dirpath, every_n_train_steps=int(every_n_train_steps), **kwargs)
        self.atomic = atomic

    @property
    def state_key(self) -> str:
        # Distinct from a ModelCheckpoint with the same arguments, so both can restore their own state.
        return f"PeriodicCheckpoint{{every_n_train_steps={self._every_n_train_steps}}}"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.atomic and install_atomic_io(trainer):
            log.debug("checkpoints are written atomically (AtomicCheckpointIO)")

    def _save_last_now(self, trainer: L.Trainer) -> None:
        if self._should_skip_saving_checkpoint(trainer):  # fast_dev_run, sanity check, or already saved this step
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_last_now(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass  # ModelCheckpoint would rewrite last.ckpt after validation; the epoch-end save covers that step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The final state too: rerunning a finished command then resumes at max_steps and stops at once.
        self._save_last_now(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # SIGTERM (a scheduler's preemption, `kill`, a container stop): Lightning stops at the end of the current
        # batch; save that step, so a rerun loses nothing. Other exceptions may come from a broken state: the last
        # periodic checkpoint stays the one to resume from.
        if isinstance(exception, SIGTERMException) and trainer.state.fn == "fit":
            self._save_last_now(trainer)
            log.warning("SIGTERM: saved %s at step %d; rerun the same command to resume", self.last_model_path,
                        trainer.global_step)


def checkpoint_step(path: str | os.PathLike[str]) -> int | None:
    """The ``global_step`` stored in a checkpoint, or None if the file cannot be read as a checkpoint.

    Memory-maps the file, so only the small metadata is read, not the weights.
    """
    step, problem = _step_or_problem(path)
    if problem:
        log.warning("ignoring %s: %s", path, problem)
    return step


def _step_or_problem(path: str | os.PathLike[str]) -> tuple[int | None, str | None]:
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as err:  # truncated, not a zip, not a torch file
        return None, f"unreadable checkpoint ({type(err).__name__}: {str(err)[:200]})"
    if not isinstance(ckpt, dict) or "global_step" not in ckpt:
        return None, "not a Lightning checkpoint (no field 'global_step')"
    return int(ckpt["global_step"]), None


def _checkpoints_of(run_dir: str | os.PathLike[str]) -> list[Path]:
    """The checkpoint files a run dir may resume from: ``checkpoints/*.ckpt`` and SLURM's ``hpc_ckpt_*.ckpt``."""
    run_dir = Path(run_dir)
    return sorted((run_dir / CHECKPOINT_DIR).glob("*.ckpt")) + sorted(run_dir.glob("hpc_ckpt_*.ckpt"))


def find_resume_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The newest readable checkpoint of a run: highest ``global_step``, ``last.ckpt`` first among equals.

    Looks at ``<run_dir>/checkpoints/*.ckpt`` and SLURM's ``<run_dir>/hpc_ckpt_*.ckpt``; temporary files of an
    interrupted write (``.*.tmp``) are never candidates, and unreadable files are skipped with a warning. When there
    are checkpoints but none can be read, it raises rather than start fresh and overwrite them.
    """
    candidates = _checkpoints_of(run_dir)
    best: tuple[int, bool, float] | None = None
    chosen: Path | None = None
    problems: list[str] = []
    for path in candidates:
        if path.name.startswith(".") or not path.is_file():
            continue
        step, problem = _step_or_problem(path)
        if step is None:
            problems.append(f"{path}: {problem}")
            log.warning("ignoring %s: %s", path, problem)
            continue
        key = (step, path.name == "last.ckpt", path.stat().st_mtime)
        if best is None or key > best:
            best, chosen = key, path
    if chosen is None and problems:
        raise RuntimeError("ckpt_path=auto: this run dir has checkpoints, but none can be read, so it cannot resume "
                           "(and starting fresh would overwrite them):\n  " + "\n  ".join(problems) +
                           "\nGive ckpt_path=<a readable checkpoint>, or ckpt_path=never to start fresh (which removes them).")
    return chosen


def starts_over(ckpt_path: str | os.PathLike[str] | None) -> bool:
    """Whether the config's ``ckpt_path`` / ``resume`` says to start fresh (None, ``never``)."""
    return ckpt_path is None or str(ckpt_path).lower() in NEVER


def remove_earlier_checkpoints(run_dir: str | os.PathLike[str], keep: str | os.PathLike[str] | None = None) -> None:
    """Starting over (``never``) in a run dir: the checkpoints an earlier run left there go when this one starts
    (those :func:`find_resume_checkpoint` looks at), except ``keep`` (a fine-tune's base, if it lies there).

    Kept until this run wrote its own, they could outlive it: killed before its first checkpoint and rerun with
    ``auto``, it resumed the earlier run's newest checkpoint (a fine-tune of the same base, region, strategy and seed
    passes every check), and an earlier run's best checkpoints (``epochNNN.ckpt``) would sit beside this run's.
    """
    keep_path = Path(keep).resolve() if keep is not None else None
    for path in _checkpoints_of(run_dir):
        if path.resolve() == keep_path:
            continue
        log.warning("starting over: removing %s, a checkpoint of an earlier run in this run dir", path)
        path.unlink(missing_ok=True)


def resolve_ckpt_path(ckpt_path: str | os.PathLike[str] | None, run_dir: str | os.PathLike[str]) -> str | None:
    """What ``Trainer.fit(ckpt_path=...)`` gets for the config's ``ckpt_path``.

    ``auto``: the newest checkpoint of ``run_dir`` (:func:`find_resume_checkpoint`), None for a fresh run dir.
    None / ``never``: start fresh. Anything else (a path, or Lightning's ``last`` / ``hpc``) is passed through.
    """
    if starts_over(ckpt_path):
        return None
    if str(ckpt_path).lower() != AUTO:
        return str(ckpt_path)
    # A process killed while writing a checkpoint leaves its temporary file (as large as a checkpoint); no write is
    # in progress when a run starts, so they are leftovers.
    for tmp in (Path(run_dir) / CHECKPOINT_DIR).glob(".*.tmp"):
        log.info("ckpt_path=auto: removing %s, left by a checkpoint write that was interrupted", tmp)
        tmp.unlink(missing_ok=True)
    found = find_resume_checkpoint(run_dir)
    if found is None:
        log.info("ckpt_path=auto: no checkpoint in %s, starting fresh", Path(run_dir) / CHECKPOINT_DIR)
        return None
    log.info("ckpt_path=auto: resuming from %s", found)
    return str(found)


def with_previous_metrics(path: str | os.PathLike[str], metrics: dict[str, float]) -> dict[str, float]:
    """``metrics`` on top of those already in ``path`` (a resumed run's earlier ``metrics.json``), if any.

    Rerunning a finished command resumes at its last step and trains and validates nothing, so the metrics it
    computes are only the step counters; the validation metrics of the run stay those it wrote when it finished.
    A run that validated (``val/step`` in ``metrics``) keeps none of them: they describe an earlier model.
    """
    path = Path(path)
    if not path.is_file():
        return metrics
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable %s: %s", path, err)
        return metrics
    validated = "val/step" in metrics  # a metric it could not compute (NaN) or no longer computes stays out
    return {**{k: v for k, v in previous.items() if isinstance(v, int | float)
               and not (validated and k.startswith("val/"))}, **metrics}


def final_validation_missing(path: str | os.PathLike[str], step: int) -> bool:
    """Whether a resumed run that trained nothing (its checkpoint was at the last step) still owes the validation of
    that step: ``path`` (the ``metrics.json`` the run writes when it finishes) is absent or holds no ``val/step`` of
    ``step``. The last checkpoint is written before the final validation, so a run killed during that validation
    resumes with its training complete and its final figures never written."""
    return with_previous_metrics(path, {}).get("val/step") != float(step)


def read_checkpoint_to_check(ckpt_path: str | os.PathLike[str] | None, field: str = "ckpt_path"
                             ) -> tuple[Path, Any] | None:
    """A local checkpoint read (memory-mapped) for checks before a resume, or an error naming ``field=<path>``;
    None for no checkpoint, Lightning's own ``last`` / ``hpc`` and object-store URLs (left to Lightning)."""
    if ckpt_path is None or str(ckpt_path) in ("last", "hpc") or _is_url(str(ckpt_path)):
        return None
    path = Path(str(ckpt_path).removeprefix("file://"))
    if not path.is_file():
        raise FileNotFoundError(f"{field}={ckpt_path}: no such checkpoint file")
    try:
        return path, torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as err:
        raise ValueError(f"{field}={path}: cannot be read as a checkpoint ({type(err).__name__}: "
                         f"{str(err)[:200]}); the file is truncated or not a checkpoint") from None


def check_resume(ckpt_path: str | None, module: L.LightningModule, field: str = "ckpt_path") -> None:
    """Before ``Trainer.fit`` restores ``ckpt_path``: a checkpoint this run can continue, or an error that names it.

    Checks what Lightning's restore reports without the file's name (a truncated file: "PytorchStreamReader failed
    reading zip archive"; another optimizer layout: "loaded state dict has a different number of parameter groups")
    or not at all (``lr_mult`` values: the optimizer's restored learning rates win silently). Lightning's own
    ``last`` / ``hpc`` and object-store URLs are left to Lightning. ``field``: the config field that named the
    checkpoint (``resume`` in visionpilot-finetune, where ``ckpt_path`` is the base checkpoint).
    """
    from visionpilot.training.module import check_signature, flatten_dotted, model_signature

    loaded = read_checkpoint_to_check(ckpt_path, field=field)
    if loaded is None:
        return
    path, ckpt = loaded
    # How to not resume: a training run starts from its weights in a new run; a fine-tune starts over.
    fresh = ("start a new run from its weights with visionpilot-finetune" if field == "ckpt_path" else
             f"give another hydra.run.dir, or {field}=never to start over here")
    entry = (ckpt.get("visionpilot") or {}) if isinstance(ckpt, dict) else {}
    if entry.get("model_signature") is not None:
        try:
            check_signature(entry["model_signature"], model_signature(module.net))
        except ValueError as err:
            message = str(err) if field == "ckpt_path" else "\n".join(  # its last line's advice is ckpt_path's
                [*str(err).splitlines()[:-1], f"Resume with the model settings it was trained with, or {fresh}."])
            raise ValueError(f"{field}={path}: {message}") from None
    changed = config_changes(entry.get("config") or {}, getattr(module, "run_config", None) or {})
    if changed:  # not an error: continuing a run on other data or for more steps can be meant
        log.warning("resuming %s with settings other than it was trained with (checkpoint -> this run): %s", path,
                    "; ".join(changed))
    stored = ((entry.get("config") or {}).get("model") or {})
    if not stored:
        return
    checks = {"lr_mult": (flatten_dotted(stored.get("lr_mult")), flatten_dotted(module.hparams.get("lr_mult"))),
              "weight_decay_norm": (bool(stored.get("weight_decay_norm", False)),
                                    bool(module.hparams.get("weight_decay_norm", False)))}
    for name, (saved, current) in checks.items():
        if saved != current:
            raise ValueError(f"{field}={path}: field 'model.{name}' is {current!r} in this run but {saved!r} in the "
                             f"checkpoint; a resumed run continues the checkpoint's optimizer (its parameter groups "
                             f"and learning rates). Resume with model.{name}={saved!r}, or {fresh}")


def config_changes(stored: Mapping[str, Any], current: Mapping[str, Any], limit: int = 8) -> list[str]:
    """``'data.regions: [us] -> [us, gb]'`` for each leaf of the data, model and rig configs that differs."""
    from visionpilot.training.module import flatten_dotted

    if not stored or not current:
        return []
    a, b = (flatten_dotted({part: config.get(part) for part in ("data", "model", "rig")}) for config in (stored, current))
    diffs = [f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in sorted(set(a) | set(b))
             if a.get(k, "(unset)") != b.get(k, "(unset)")]
    return diffs[:limit] + ([f"... {len(diffs) - limit} more"] if len(diffs) > limit else [])
