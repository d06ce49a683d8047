"""Checkpoints that stand alone: every Lightning checkpoint carries the resolved run config and the data facts,
so fine-tuning, evaluation and export rebuild the network from the file alone (no run directory needed).

The ``visionpilot`` entry of a checkpoint:
    ``config``          the resolved Hydra config of the run (``model``, ``data``, ``rig``, ...)
    ``model_signature`` parameter/buffer names and shapes (checked before loading weights)
    ``camera_names``    camera slot order; ``image_size`` (H, W) of the network input
    ``regions``         regions trained on; ``frame_counts`` train frames per region
    ``manifest_sha256`` the split manifest's hash
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from visionpilot.models.net import run_lanes_on
from visionpilot.training.module import check_signature, model_signature
from visionpilot.utils.io import file_sha256  # noqa: F401  (re-exported: callers import it from here)


@dataclass
class LoadedCheckpoint:
    """A network rebuilt from a checkpoint, with what the checkpoint says about itself."""

    net: nn.Module
    config: DictConfig
    meta: dict[str, Any]
    path: Path
    sha256: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def camera_names(self) -> list[str]:
        return list(self.meta.get("camera_names") or [])

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.meta.get("image_size") or self.config.data.image_size
        return int(size[0]), int(size[1])


def split_model_spec(spec: str | Path, *, must_exist: bool = True) -> tuple[Path | None, Path]:
    """``(base, model)`` of a model given as ``model.ckpt``, ``delta.safetensors`` or ``base.ckpt+delta.safetensors``.

    Paths may contain '+' themselves (``runs/lr+aug/delta.safetensors``), so the files on disk decide: the whole text
    when it is a file, else the one '+' at which both sides are files. With nothing on disk to decide, it is split at
    the last '+' (a delta named without '+'), or with ``must_exist`` an error names every reading that was tried.

    Raises:
        ValueError: the text is a file and also splits into two files, or splits into two files at two places.
        FileNotFoundError: with ``must_exist``, a text with '+' that names no file either way.
    """
    text = str(spec)
    # Every '+' with a .safetensors file name after it: Path(".safetensors").suffix is "", so "a+.safetensors" is none.
    splits = [(Path(text[:i]), Path(text[i + 1:])) for i, c in enumerate(text)
              if c == "+" and i > 0 and Path(text[i + 1:]).suffix == ".safetensors"]
    if not splits:
        return None, Path(text)
    whole = Path(text).is_file()
    found = [(base, delta) for base, delta in splits if base.is_file() and delta.is_file()]
    if whole + len(found) > 1:
        readings = ([f"'{text}'"] if whole else []) + [f"'{base}' + '{delta}'" for base, delta in found]
        raise ValueError(f"model '{text}' is ambiguous: it reads as {' or as '.join(readings)}; rename a file so that "
                         f"only one reading names existing files")
    if whole:
        return None, Path(text)
    if found:
        return found[0]
    if must_exist:
        tried = "; ".join(f"'{base}' ({'found' if base.is_file() else 'missing'}) + '{delta}' "
                          f"({'found' if delta.is_file() else 'missing'})" for base, delta in splits)
        raise FileNotFoundError(f"model '{text}' not found: no such file, and no split at a '+' names a base "
                                f"checkpoint and a region delta that both exist ({tried})")
    return splits[-1]


def net_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The network's weights from a LightningModule state dict (``net.`` prefix, ``torch.compile``'s too)."""
    out = {}
    for key, value in state_dict.items():
        if not key.startswith("net."):
            continue
        key = key[len("net."):]
        if key.startswith("_orig_mod."):
            key = key[len("_orig_mod."):]
        out[key] = value
    return out


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file (CPU) and check it is one of ours, with a clear message otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # corrupt or not a torch file
        raise ValueError(f"could not read checkpoint {path}: {err}") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "visionpilot" not in ckpt:
        found = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path} is not a visionpilot checkpoint: expected keys 'state_dict' and 'visionpilot', "
                         f"found {found}")
    return ckpt


def load_checkpoint(path: str | Path, config_overrides: dict[str, Any] | None = None) -> LoadedCheckpoint:
    """Rebuild the network of a checkpoint from its stored config and load its weights (eval mode, CPU).

    Args:
        path: a ``.ckpt`` written by ``visionpilot-train`` / ``visionpilot-finetune``.
        config_overrides: dotted keys to change in the stored config before building (e.g. adapters).
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    meta = dict(ckpt["visionpilot"])
    if "config" not in meta:
        raise ValueError(f"{path}: field 'visionpilot.config' missing; the checkpoint predates stand-alone "
                         f"checkpoints, re-train or fine-tune to write a new one")
    config = OmegaConf.create(meta["config"])
    for key, value in (config_overrides or {}).items():
        OmegaConf.update(config, key, value, force_add=True)
    try:
        net = hydra.utils.instantiate(config.model.net)
    except Exception as err:  # a target this code no longer has, a field it no longer takes
        raise ValueError(f"{path}: field 'visionpilot.config.model.net' does not build a network with this code: "
                         f"{err}") from err
    state = net_state_dict(ckpt["state_dict"])
    try:
        check_signature({k: list(v.shape) for k, v in state.items()}, model_signature(net))
    except ValueError as err:  # its lines name the tensors; its advice is for a training run's ckpt_path
        details = [line for line in str(err).splitlines() if line.startswith("  ")]
        raise ValueError("\n".join([
            f"{path}: field 'state_dict' does not fit the network its stored config (field "
            f"'visionpilot.config.model.net') builds with this code"
            f"{f' and config_overrides {sorted(config_overrides)}' if config_overrides else ''}:", *details,
            "The checkpoint was written by another version of the model code, or its file was edited; load it with "
            "the code version that wrote it."])) from None
    net.load_state_dict(state)
    net.eval()
    loaded = LoadedCheckpoint(net=net, config=config, meta=meta, path=path, sha256=file_sha256(path))
    if loaded.camera_names:  # as in training: the 2D lane head runs on the lane cameras only
        run_lanes_on(net, config.model.get("lane_cameras"), loaded.camera_names, f"{path}: model.lane_cameras")
    return loaded
