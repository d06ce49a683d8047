"""The cross-region matrix: every model evaluated on every region, on the same frames, with the training metrics.

Models are checkpoints, region deltas (merged onto their base) or ONNX models. The evaluation data is built once
from a *reference* checkpoint's stored data config (the first checkpoint among the models unless named), pointed
at the evaluation regions' ``split``; each batch is rendered or read once and run through every model. Each model
gets its own :class:`~visionpilot.evaluation.evaluator.PerceptionEvaluator`, built exactly as training builds its
validation evaluator (:meth:`PerceptionModule.build_evaluator`), so the numbers match ``metrics.json``.

ONNX models are run through ``visionpilot.export.runtime`` (``onnx_decode(runtime, batch)``), with the evaluator
settings (tasks, lane cameras, BEV grid) of the reference checkpoint, the network they were exported from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from visionpilot.data.datamodule import VisionPilotDataModule
from visionpilot.data.replay import plain_datamodule
from visionpilot.evaluation.evaluator import PerceptionEvaluator
from visionpilot.training.checkpoints import LoadedCheckpoint, split_model_spec

log = logging.getLogger(__name__)

Decoder = Callable[[dict[str, Any]], dict[str, Tensor]]


@dataclass
class EvalModel:
    """One model of the matrix: how to decode a batch, and what it is.

    Attributes:
        name: row name (``global``, ``adapter-gb``).
        decode: batch -> decoded outputs (``net.decode`` keys).
        kind: ``checkpoint``, ``delta`` or ``onnx``.
        loaded: the network and its stored config (None for ONNX models).
        info: facts for the report (path, sha256, strategy, region, ...).
    """

    name: str
    decode: Decoder
    kind: str
    loaded: LoadedCheckpoint | None = None
    info: dict[str, Any] = field(default_factory=dict)


def torch_decoder(net: nn.Module) -> Decoder:
    """``net.decode(net(...))`` in eval mode without gradients."""
    net.eval()

    @torch.inference_mode()
    def decode(batch: dict[str, Any]) -> dict[str, Tensor]:
        outputs = net(batch["images"], batch["intrinsics"], batch["extrinsics"])
        return net.decode(outputs, batch["images"].shape[-2:])

    return decode


def onnx_runtime(path: Path) -> tuple[Any, Decoder]:
    """Open an exported ONNX model; decode through ``visionpilot.export.runtime.onnx_decode``."""
    try:
        from visionpilot.export import runtime as rt
    except ImportError as err:
        raise RuntimeError(f"evaluating ONNX model {path} needs visionpilot.export.runtime (onnx_decode), which is "
                           f"not available in this installation ({err}); evaluate the checkpoint instead") from err
    runtime = rt.load_runtime(path)

    def decode(batch: dict[str, Any]) -> dict[str, Tensor]:
        out = rt.onnx_decode(runtime, batch)
        return {k: torch.as_tensor(np.asarray(v)) if not isinstance(v, Tensor) else v for k, v in out.items()}

    return runtime, decode


def load_eval_model(name: str, spec: str | Path) -> EvalModel:
    """An :class:`EvalModel` from a checkpoint, a delta (``.safetensors`` / ``base+delta``) or an ``.onnx`` file."""
    from visionpilot.training.finetune import load_model

    text = str(spec)
    if text.endswith(".onnx"):
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"model '{name}': ONNX file not found: {path}")
        runtime, decode = onnx_runtime(path)
        info = {"path": str(path), "bytes": path.stat().st_size}
        # What the export says it takes, checked against the data (names only when the file records them).
        if getattr(runtime, "image_size", None) is not None:
            info["image_size"] = list(runtime.image_size)
        if (getattr(runtime, "metadata", None) or {}).get("camera_names"):
            info["camera_names"] = list(runtime.metadata["camera_names"])
        if getattr(runtime, "num_cameras", None) is not None:
            info["num_cameras"] = int(runtime.num_cameras)
        return EvalModel(name, decode, "onnx", None, info)
    loaded = load_model(text)
    tune = loaded.meta.get("finetune") or {}
    kind = "delta" if loaded.path.suffix == ".safetensors" else "checkpoint"
    info = {"path": str(loaded.path), "sha256": loaded.sha256, "regions": loaded.meta.get("regions"),
            "strategy": tune.get("strategy"), "region": tune.get("region"),
            "base_sha256": tune.get("base_sha256"), "seed": tune.get("seed", (tune.get("extra") or {}).get("seed")),
            "bytes": loaded.path.stat().st_size}
    return EvalModel(name, torch_decoder(loaded.net), kind, loaded, info)


def build_eval_datamodule(reference: LoadedCheckpoint, regions: str | Sequence[str],
                          overrides: Mapping[str, Any] | None = None,
                          manifest_path: str | Path | None = None,
                          governance: Mapping[str, Any] | None = None) -> VisionPilotDataModule:
    """The evaluation data: the reference's stored data config on ``regions`` (no replay, no augmentation).

    ``regions``: codes, or ``"global"`` for every region the source has.

    ``governance``: the evaluation job's ``governance`` / ``compute_region`` keyword arguments
    (:func:`visionpilot.governance.governance_kwargs`): the job's policy, never the one the model was trained under.
    """
    data = OmegaConf.merge(reference.config.data, dict(overrides or {}))
    # A fine-tuned reference stores a replay datamodule: evaluate with its plain one. Any other datamodule (real
    # and mixed sources' SourceDataModule, streaming) stays: its config has fields only it takes (root, on_error).
    data._target_ = plain_datamodule(data.get("_target_"))
    for key in ("replay_regions", "replay_fraction"):  # a fine-tuned reference stores its replay settings
        data.pop(key, None)
    regions = regions if isinstance(regions, str) else list(regions)
    data.regions = regions
    if "source" in data and "regions" in data.source:  # sources that render or filter regions
        data.source.regions = regions
    data.manifest_path = str(manifest_path) if manifest_path else None
    return hydra.utils.instantiate(data, **dict(governance or {}))


def build_evaluator(loaded: LoadedCheckpoint, regions: Sequence[str], image_size: Sequence[int],
                    camera_names: Sequence[str]) -> PerceptionEvaluator:
    """The evaluator training would build for this network (tasks, lane cameras, BEV grid and line width)."""
    from visionpilot.training.module import PerceptionModule

    # Built through the LightningModule so that the evaluation settings can never drift from training's.
    module = PerceptionModule(loaded.net, optimizer=None, lane_cameras=loaded.config.model.get("lane_cameras"))
    module.camera_names = list(camera_names)
    module.image_size = (int(image_size[0]), int(image_size[1]))
    return module.build_evaluator(list(regions))


def check_compatible(model: EvalModel, image_size: Sequence[int], camera_names: Sequence[str]) -> None:
    """A checkpoint's network must see the evaluation data as it was trained: same image size and cameras."""
    if model.loaded is not None:
        size, cams, path = list(model.loaded.image_size), model.loaded.camera_names, model.loaded.path
    else:
        size, cams, path = model.info.get("image_size"), model.info.get("camera_names"), model.info.get("path")
    if size and [int(v) for v in size] != [int(v) for v in image_size]:
        raise ValueError(f"model '{model.name}' ({path}): field 'image_size' is {list(size)}, but the evaluation "
                         f"data has {list(image_size)}; evaluate models trained on the same input size")
    count = model.info.get("num_cameras")
    if count is not None and count != len(camera_names):
        raise ValueError(f"model '{model.name}' ({path}): takes {count} cameras, but the evaluation data has "
                         f"{len(camera_names)} ({list(camera_names)})")
    if cams and list(cams) != list(camera_names):
        raise ValueError(f"model '{model.name}' ({path}): field 'camera_names' is {list(cams)}, but the "
                         f"evaluation data has {list(camera_names)}")


def evaluate_matrix(models: Sequence[EvalModel], datamodule: VisionPilotDataModule, regions: Sequence[str],
                    reference: LoadedCheckpoint, split: str = "val", limit_batches: int | None = None,
                    examples_per_region: int = 0) -> dict[str, Any]:
    """Run every model over ``split`` of ``regions``.

    Args:
        split: ``val``, ``test``, or ``val+test`` (both: more frames, a tighter estimate; never ``train``).
        examples_per_region: keep the first this many frames of each region with every model's decoded outputs,
            for drawing (``examples``).

    Returns:
        ``{"results": {model: {region: {metric: value}}}, "overall": {model: {metric: value}},
        "frames": {region: n}, "manifest_sha256": ..., "examples": {region: [(frame, {model: decoded})]}}``
        (metric names without ``val/``; ``frame`` is a one-frame batch, ``decoded`` that frame's outputs).
    """
    splits = str(split).split("+")
    if not splits or any(s not in ("val", "test") for s in splits) or len(set(splits)) < len(splits):  # val+val
        raise ValueError(f"field 'split': expected 'val', 'test' or 'val+test', found '{split}'")
    datamodule.setup("validate")
    missing = [s for s in splits if s not in datamodule.datasets]
    if missing:
        raise ValueError(f"split(s) {missing} are not in the evaluation data's splits {list(datamodule.datasets)}")
    image_size = list(datamodule.image_size or reference.image_size)
    cameras = list(datamodule.camera_names)
    for model in models:
        check_compatible(model, image_size, cameras)
    regions = list(datamodule.selected_regions)
    evaluators = {m.name: build_evaluator(m.loaded or reference, regions, image_size, cameras) for m in models}
    loaders = [datamodule.val_dataloader() if s == "val" else datamodule.test_dataloader() for s in splits]
    batches = (batch for loader in loaders for batch in loader)
    frames: dict[str, int] = dict.fromkeys(regions, 0)
    examples: dict[str, list[tuple[dict[str, Any], dict[str, dict[str, Tensor]]]]] = {}
    for i, batch in enumerate(batches):
        if limit_batches is not None and i >= limit_batches:
            break
        for code in batch["region"]:
            frames[str(code).lower()] = frames.get(str(code).lower(), 0) + 1
        decoded = {}
        for model in models:
            decoded[model.name] = model.decode(batch)
            evaluators[model.name].update(batch, decoded[model.name])
        for j, code in enumerate(batch["region"] if examples_per_region > 0 else []):
            kept = examples.setdefault(str(code).lower(), [])
            if len(kept) < examples_per_region:
                kept.append((_frame(batch, j), {name: _frame(out, j) for name, out in decoded.items()}))
    results: dict[str, dict[str, dict[str, float]]] = {}
    overall: dict[str, dict[str, float]] = {}
    for name, evaluator in evaluators.items():
        flat = evaluator.compute()
        overall[name] = {k: v for k, v in flat.items() if "/" not in k}
        results[name] = {r: {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith(f"{r}/")}
                         for r in regions}
    assert datamodule.manifest is not None
    return {"results": results, "overall": overall, "frames": frames, "regions": regions,
            "manifest_sha256": datamodule.manifest.sha256, "examples": examples}


def _frame(batch: Mapping[str, Any], j: int) -> dict[str, Any]:
    """Frame ``j`` of a batch (or of decoded outputs) as a batch of one, on the CPU."""
    return {k: (v[j:j + 1].detach().cpu() if isinstance(v, Tensor) else v[j:j + 1]) for k, v in batch.items()}


def model_specs(models: Any) -> dict[str, str]:
    """``{name: spec}`` from a mapping, or from a list of paths (named by their run folder or file stem)."""
    if isinstance(models, DictConfig | dict):
        return {str(k): str(v) for k, v in dict(models).items()}
    if isinstance(models, str):
        models = [models]
    out = {}
    for spec in models:
        path = split_model_spec(spec, must_exist=False)[1]  # paths may contain '+' themselves
        name = path.parent.parent.name if path.parent.name == "checkpoints" else (
            path.parent.name if path.suffix == ".safetensors" else path.stem)
        if name in out:
            raise ValueError(f"models: two models would be named '{name}' ({out[name]} and {spec}); name them, "
                             f"e.g. models={{global: ..., adapter-gb: ...}}")
        out[name] = str(spec)
    return out
