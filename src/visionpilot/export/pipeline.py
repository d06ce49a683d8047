"""``export(cfg)``: the plain function behind ``visionpilot-export``.

checkpoint (+ region delta) -> full fp32 graph (decoded + raw outputs) -> fp16 / int8 variant -> parity on real
frames of the target region -> shipped graph (decoded outputs only, metadata) -> ``model.onnx`` + ``export.json``.
A parity failure writes ``export.json`` (``parity.passed: false``) and the graph as ``<name>.failed.onnx`` for
inspection, then raises :class:`~visionpilot.export.parity.ParityError`; no ``model.onnx`` is written, and an
earlier export's is removed (with ``parity.fail=false`` it is written, and the failure is a warning).
"""

from __future__ import annotations

import importlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import onnx
import onnxruntime as ort
from omegaconf import DictConfig, OmegaConf
from torch import nn

import visionpilot
from visionpilot.data.collate import collate_frames
from visionpilot.data.vocab import LANE_TYPES, OBJECT_CLASSES
from visionpilot.export.onnx_export import (
    check_onnx,
    export_onnx,
    graph_io,
    save_onnx_atomic,
    set_metadata,
    strip_raw_outputs,
)
from visionpilot.export.parity import check_parity, failures, raise_on_failure, tolerance_for
from visionpilot.export.quantize import quantize_int8, to_fp16
from visionpilot.governance import governance_kwargs
from visionpilot.governance.provenance import (
    build_lineage,
    checkpoint_lineage,
    code_version,
    config_sha256,
    merge_lineage,
    parent_record,
)
from visionpilot.training.checkpoints import LoadedCheckpoint, file_sha256, load_checkpoint
from visionpilot.utils.io import write_json_atomic

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "fp16", "int8")
#: The metadata's ``input_format``, per graph input.
INPUT_FORMATS = {"images": "images uint8 RGB (B, N, 3, H, W), cameras in camera_names order",
                 "intrinsics": "intrinsics (B, N, 3, 3) for the input pixels",
                 "extrinsics": "extrinsics (B, N, 4, 4) camera -> ego"}


# --- inputs ------------------------------------------------------------------------------------------------------

def merge_region_delta(net: nn.Module, delta_path: str | Path, base_sha256: str) -> tuple[nn.Module, dict[str, Any]]:
    """Merge a region delta (``visionpilot-finetune``) into ``net``; return the net and what the delta says.

    Uses ``visionpilot.training.finetune`` (``merge_delta`` checks that the delta was made from this base and
    inserts its adapters first).
    """
    try:
        finetune = importlib.import_module("visionpilot.training.finetune")  # owned by visionpilot-finetune
    except ModuleNotFoundError as err:
        if err.name != "visionpilot.training.finetune":
            raise
        raise ImportError(f"delta_path={delta_path}: region deltas need visionpilot.training.finetune "
                          f"(visionpilot-finetune), which this installation does not have") from err
    if not Path(delta_path).is_file():
        raise FileNotFoundError(f"delta_path: region delta file not found: {delta_path}")
    meta = finetune.read_delta_metadata(delta_path) if hasattr(finetune, "read_delta_metadata") else {}
    merged = finetune.merge_delta(net, delta_path, base_sha256)
    info = {"path": str(delta_path), "sha256": file_sha256(delta_path), "region": meta.get("region"),
            "strategy": meta.get("strategy"), "frame_counts": meta.get("frame_counts"), "adapter": meta.get("adapter"),
            "lineage": meta.get("lineage")}
    return (merged if isinstance(merged, nn.Module) else net), info


def build_datamodule(ckpt: LoadedCheckpoint, regions: Sequence[str], batch_size: int,
                     governance: Mapping[str, Any] | None = None) -> Any:
    """The checkpoint's own datamodule (its stored ``data`` config) restricted to ``regions``, set up, no workers,
    writing no split manifest (the splits are rebuilt exactly as in training: same source, seed, fractions).
    ``governance``: the export job's ``governance`` / ``compute_region`` kwargs (:func:`governance_kwargs`)."""
    data_cfg = OmegaConf.create(OmegaConf.to_container(ckpt.config.data, resolve=True))
    # Parity frames come from the regions asked for only: no replay of a fine-tune's other regions, and a source
    # that renders or filters regions (the synthetic world) must hold them (a delta's region may be new to the base).
    if data_cfg.get("_target_") == "visionpilot.data.replay.ReplayDataModule":
        data_cfg._target_ = "visionpilot.data.datamodule.VisionPilotDataModule"
    for key in ("replay_regions", "replay_fraction"):
        data_cfg.pop(key, None)
    if "source" in data_cfg and "regions" in data_cfg.source:
        data_cfg.source.regions = list(regions)
    # No frame cache (a training run's data.cache=ram): it would load every split to take a few frames of one; no
    # class-balanced resampling (data.balance=classes) of a train split it does not read. A config from before a
    # field existed does not have it.
    off = {k: None for k in ("cache", "balance") if k in data_cfg}
    dm = hydra.utils.instantiate(data_cfg, regions=list(regions), num_workers=0, persistent_workers=False,
                                 manifest_path=None, batch_size=batch_size, **off, **dict(governance or {}))
    dm.setup()
    return dm


def collect_batches(dm: Any, splits: Sequence[str], frames: int, batch_size: int,
                    field: str = "parity") -> list[dict[str, Any]]:
    """``frames`` frames spread over the scenes of ``splits`` (taken in order until enough), deterministic,
    resized by the val transform (no augmentation: calibration should see what the car sees), collated.
    ``field`` names the config block in errors (``parity``, ``calibration``)."""
    for key, value in ((f"{field}.frames", frames), ("parity.batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{key} must be >= 1, found {value}")
    items = []
    for split in splits:
        if split not in dm.datasets:
            raise ValueError(f"{field}.splits: split '{split}' does not exist; the datamodule has "
                             f"{sorted(dm.datasets)}")
        refs = dm.datasets[split].refs
        take = min(frames - len(items), len(refs))
        if take <= 0:
            continue
        picks = np.unique(np.linspace(0, len(refs) - 1, take).round().astype(int))  # spread over scenes
        items += [dm.val_transform(dm.source.load(refs[i].index), 0) for i in picks]
    if not items:
        raise ValueError(f"no frames in splits {list(splits)} for regions {dm.selected_regions}; pick other "
                         f"splits or regions")
    if len(items) < frames:
        log.warning("asked for %d frames, splits %s of regions %s hold %d", frames, list(splits),
                    dm.selected_regions, len(items))
    return [collate_frames(items[i:i + batch_size]) for i in range(0, len(items), batch_size)]


def graph_feeds(model: onnx.ModelProto, batches: Sequence[Mapping[str, Any]]) -> list[dict[str, np.ndarray]]:
    """The batches as graph-input dicts (only the inputs the graph has)."""
    dtypes = {"images": np.uint8, "intrinsics": np.float32, "extrinsics": np.float32}
    names = [i.name for i in model.graph.input]
    return [{n: np.ascontiguousarray(b[n].numpy(), dtype=dtypes[n]) for n in names} for b in batches]


# --- facts -------------------------------------------------------------------------------------------------------

def model_metadata(ckpt: LoadedCheckpoint, net: nn.Module, model: onnx.ModelProto, precision: str, opset: int,
                   delta: Mapping[str, Any] | None, calibration_regions: Sequence[str] | None) -> dict[str, Any]:
    """The ``metadata_props`` of the shipped graph: everything a vehicle integration must know."""
    mean = (net.mean.flatten() / 255.0).tolist()
    std = (net.std.flatten() / 255.0).tolist()
    bev = getattr(net, "bev", None)
    grid = None
    if bev is not None:
        g = bev.grid
        grid = {"x_range": list(g.x_range), "y_range": list(g.y_range), "z_range": list(g.z_range),
                "cell_size": g.cell_size, "z_levels": g.z_levels, "layout": "(X, Y): rows ego +x, columns ego +y"}
    heads = getattr(net, "heads", {})
    # The cameras the 2D lane head runs on (HydraNet.set_head_cameras); the others' lane outputs are "no lane".
    lane_cameras = ([ckpt.camera_names[i] for i in net.head_cameras.get("lanes_2d", range(len(ckpt.camera_names)))
                     if i < len(ckpt.camera_names)] if "lanes_2d" in heads else None)
    return {
        "object_classes": list(OBJECT_CLASSES),
        "lane_types": list(LANE_TYPES),
        "camera_names": ckpt.camera_names,
        "lane_cameras": lane_cameras,
        "input_size": list(ckpt.image_size),
        # The graph's inputs only: a model without a BEV branch takes no calibration (the exporter drops it).
        "input_format": "; ".join(INPUT_FORMATS[i.name] for i in model.graph.input if i.name in INPUT_FORMATS),
        "normalization": {"mean": [round(v, 6) for v in mean], "std": [round(v, 6) for v in std],
                          "scale": "(x / 255 - mean) / std, inside the graph"},
        "inputs": [i.name for i in model.graph.input],
        "outputs": [o.name for o in model.graph.output],
        "bev_grid": grid,
        "regions": list(ckpt.meta.get("regions") or []),
        "frame_counts": dict(ckpt.meta.get("frame_counts") or {}),
        "manifest_sha256": ckpt.meta.get("manifest_sha256"),
        "base_sha256": ckpt.sha256,
        "delta_sha256": delta["sha256"] if delta else None,
        "delta_file": Path(delta["path"]).name if delta else None,
        "delta_region": delta.get("region") if delta else None,
        "delta_strategy": delta.get("strategy") if delta else None,
        "delta_frame_counts": delta.get("frame_counts") if delta else None,
        "config_sha256": config_sha256(ckpt.config),
        "code_version": code_version(),
        "precision": precision,
        "opset": opset,
        "calibration_regions": list(calibration_regions) if calibration_regions else None,
    }


# --- the job -----------------------------------------------------------------------------------------------------

def session_for(model: onnx.ModelProto, threads: int | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export ``cfg.ckpt_path`` at ``cfg.precision``; write ``model.onnx`` and ``export.json``; return the report."""
    start = time.perf_counter()
    precision = str(cfg.precision)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, found '{precision}'")
    if isinstance(cfg.opset, bool) or not isinstance(cfg.opset, int):  # else int() failed after the frames were read
        raise ValueError(f"opset must be an integer ONNX opset (17, docs/deployment.md), found {cfg.opset!r}")
    if cfg.get("ckpt_path") in (None, "", "???"):
        raise ValueError("ckpt_path is required: visionpilot-export ckpt_path=runs/demo/checkpoints/last.ckpt")
    out_dir = Path(cfg.paths.output_dir)
    ckpt = load_checkpoint(cfg.ckpt_path)
    net = ckpt.net
    delta = None
    if cfg.get("delta_path"):
        net, delta = merge_region_delta(net, cfg.delta_path, ckpt.sha256)
        net = net.eval()
    if not ckpt.camera_names:
        raise ValueError(f"{cfg.ckpt_path}: field 'visionpilot.camera_names' is empty; the export needs the camera "
                         f"order the model was trained with")
    # Parity and calibration frames: the regions asked for (region=gb or data.regions=[...], as for every command),
    # else the delta's region, else the regions the checkpoint was trained on.
    asked = (cfg.get("data") or {}).get("regions")
    region = OmegaConf.to_container(asked) if OmegaConf.is_config(asked) else asked
    region = region or (delta or {}).get("region")
    regions = [region] if isinstance(region, str) else list(region or ckpt.meta.get("regions") or ["global"])
    tol = tolerance_for(precision, OmegaConf.to_container(cfg.parity.tolerance) if cfg.parity.tolerance else None)

    dm = build_datamodule(ckpt, regions, int(cfg.parity.batch_size), governance_kwargs(cfg))
    parity_batches = collect_batches(dm, list(cfg.parity.splits), int(cfg.parity.frames), int(cfg.parity.batch_size))
    log.info("exporting %s (%s) for %d cameras at %s", cfg.ckpt_path, precision, len(ckpt.camera_names),
             ckpt.image_size)
    full = export_onnx(net, ckpt.image_size, len(ckpt.camera_names), opset=int(cfg.opset), raw_outputs=True)
    calibration = None
    if precision == "fp16":
        full = to_fp16(full)
    elif precision == "int8":
        c = cfg.calibration
        calib_batches = collect_batches(dm, list(c.splits), int(c.frames), int(cfg.parity.batch_size), "calibration")
        full = quantize_int8(full, graph_feeds(full, calib_batches), activation_type=c.activation_type,
                             weight_type=c.weight_type, per_channel=bool(c.per_channel),
                             reduce_range=bool(c.reduce_range), calibrate_method=c.method,
                             op_types=list(c.op_types) if c.get("op_types") else None,
                             keep_output_layers=bool(c.get("keep_output_layers", True)),
                             keep_float=list(c.get("keep_float") or []))
        calibration = {"frames": sum(len(b["frame_id"]) for b in calib_batches), "regions": dm.selected_regions,
                       "splits": list(c.splits), **{k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
                                                    for k, v in c.items() if k not in ("frames", "splits")}}
    shipped = strip_raw_outputs(full)
    shipped.producer_name, shipped.producer_version = "visionpilot", visionpilot.__version__
    shipped.doc_string = "visionpilot HydraNet: camera frames + calibration -> lanes and objects (docs/deployment.md)"
    metadata = model_metadata(ckpt, net, shipped, precision, int(cfg.opset), delta,
                              dm.selected_regions if precision == "int8" else None)
    # Lineage: this export (what it read for parity/calibration, where) on top of the model's (base + delta).
    model_lineage = parent_record(checkpoint_lineage(ckpt.meta), ckpt.sha256, ckpt.path)
    if delta:
        model_lineage = merge_lineage(model_lineage, delta.get("lineage"), base_sha256=ckpt.sha256,
                                      delta_sha256=delta["sha256"], base_path=ckpt.path, delta_path=delta["path"])
    metadata["lineage"] = build_lineage("onnx", datamodule=dm, data_role="parity_calibration", config=cfg,
                                        base_sha256=ckpt.sha256, parents=[model_lineage], precision=precision,
                                        delta_sha256=delta["sha256"] if delta else None)
    set_metadata(shipped, metadata)
    check_onnx(shipped)

    threads = cfg.get("intra_op_threads")
    report = check_parity(net, session_for(shipped, threads), parity_batches, ckpt.image_size, tol,
                          raw_session=session_for(full, threads))
    report["regions"] = dm.selected_regions
    ok = report["passed"]
    name = str(cfg.get("output") or "model.onnx")
    # A failed graph is kept for inspection under another name, unless the user accepted it (parity.fail=false).
    shipped_path = out_dir / name
    failed_path = shipped_path.with_name(f"{shipped_path.stem}.failed.onnx")  # beside it (output=sub/model.onnx)
    path = shipped_path if ok or not cfg.parity.fail else failed_path
    # The verdict travels inside the graph: a failed graph copied or renamed still says so where it is loaded.
    metadata["parity"] = {"passed": bool(ok), "failures": failures(report), "accepted": bool(not ok and not cfg.parity.fail)}
    set_metadata(shipped, {"parity": metadata["parity"]})
    # An earlier export in this run dir must not outlive this one: its model.onnx beside a report saying the gate
    # failed, or its export.json (sha256, parity) beside this model if the job dies between the two writes below.
    for stale in {out_dir / "export.json", shipped_path, failed_path} - {path}:
        stale.unlink(missing_ok=True)
    save_onnx_atomic(shipped, path)
    io_info = graph_io(shipped)
    result = {
        "precision": precision,
        "opset": int(cfg.opset),
        # Relative to the run dir, where export.json lies (output=sub/model.onnx), so that what reads the report
        # there finds this model and not an earlier export's model.onnx; absolute if output points elsewhere.
        "model": path.relative_to(out_dir).as_posix() if path.is_relative_to(out_dir) else str(path),
        "size_mb": path.stat().st_size / 2**20,
        "sha256": file_sha256(path),
        "inputs": io_info["inputs"],
        "outputs": io_info["outputs"],
        "parity": report,
        "checkpoint": {"path": str(cfg.ckpt_path), "sha256": ckpt.sha256},
        "delta": delta,
        "calibration": calibration,
        "metadata": metadata,
        "seconds": time.perf_counter() - start,
    }
    write_json_atomic(out_dir / "export.json", result)
    if cfg.parity.fail and not ok:
        raise_on_failure(report, f"{precision} export of {cfg.ckpt_path} (graph kept at {path})")
    if not ok:
        log.warning("parity beyond tolerance (parity.fail=false): %s", "; ".join(failures(report)))
    return result


def summary(result: Mapping[str, Any]) -> str:
    """A few lines for the console: file, size, parity."""
    p = result["parity"]
    worst = sorted(p["agreement"].items(), key=lambda kv: kv[1])[:3]
    raw = p.get("max_abs_diff_raw")
    gates = p.get("raw_gate") or {}
    if gates:  # the output closest to its own gate (gates scale with each output's magnitude, see parity.py)
        # a non-finite difference (NaN compares false with everything) ranks first, as beyond its gate
        def ratio(k: str) -> float:
            diff = p["max_abs_diff"][k]
            return math.inf if not math.isfinite(diff) or gates[k] <= 0 else diff / gates[k]

        key = max(gates, key=ratio)
        raw_text = (f"{raw:.2e}; closest to its gate: {key} {p['max_abs_diff'][key]:.2e} <= "
                    f"{gates[key]:.2e}" if p["max_abs_diff"][key] <= gates[key] else
                    f"{raw:.2e}; beyond its gate: {key} {p['max_abs_diff'][key]:.2e} > {gates[key]:.2e}")
    else:
        raw_text = f"{'n/a' if raw is None else f'{raw:.2e}'} (not gated at {result['precision']})"
    lines = [
        f"{result['precision']} ONNX: {result['model']} ({result['size_mb']:.1f} MB, opset {result['opset']}, "
        f"inputs {[i['name'] for i in result['inputs']]}, {len(result['outputs'])} outputs)",
        f"parity on {p['frames']} frames of {p['regions']}: raw max abs diff {raw_text}, decoded agree: "
        f"{p['decoded_agree']} (lowest agreement: " + ", ".join(f"{k} {v:.3f}" for k, v in worst) + ")",
        f"{'PASSED' if p['passed'] else 'FAILED'} in {result['seconds']:.1f} s",
    ]
    return "\n".join(lines)
