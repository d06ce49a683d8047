"""Parity: the same real frames through PyTorch and onnxruntime, compared output by output.

Two questions, two measures (both in ``export.json`` under ``parity``):

- *Is it the same function?* ``max_abs_diff`` per output, raw head outputs (``raw/<head>.<output>``: logits and
  regressions before any top-k) and decoded float outputs. The fp32 gate is on the raw outputs (1e-4): decoded
  outputs go through arg-max and top-k, where a 1e-7 difference between two near-equal scores swaps two
  detections and shows up as a difference of metres — a reordering, not an error.
- *Does the vehicle see the same lanes and objects?* ``agreement`` per decoded output, the fraction of compared
  elements that match, comparing only what the decode's own flags call real:

  - detections (``<stem>boxes``): each reference detection with score >= ``score_threshold`` must have an ONNX
    detection of the same class whose box is within tolerance, anywhere in the top-k (order-free, so swaps of
    near-equal scores do not count); yaw is compared modulo 2 pi;
  - lane slots: points only on rows the reference marks valid, per-slot results only for slots whose existence
    probability / score is >= 0.5; probabilities and masks everywhere;
  - anything else: every element (floats within ``atol + rtol * |reference|``, integers and booleans equal).

  ``decoded_agree`` is every output's agreement >= ``min_agreement``.

What "within tolerance" means depends on the precision (:data:`DEFAULT_TOLERANCES`); fp32 must be the same
function, fp16 and int8 must give the same decisions (their task-level cost is measured by ``visionpilot-eval``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from visionpilot.export.onnx_export import INPUT_NAMES, RAW_PREFIX


class ParityError(RuntimeError):
    """The exported model differs from the PyTorch model beyond the precision's tolerance."""


@dataclass(frozen=True)
class Tolerance:
    """What counts as agreeing for one precision.

    Attributes:
        raw_max_abs: gate on every raw output's max abs difference; None reports without gating (int8, where
            logits move by design and only decisions matter).
        atol, rtol: a decoded float element agrees when ``|onnx - torch| <= atol + rtol * |torch|``.
        min_agreement: the least fraction of compared elements that must agree, per decoded output.
        score_threshold: reference detections at or above this score are compared.
    """

    raw_max_abs: float | None
    atol: float
    rtol: float
    min_agreement: float
    score_threshold: float = 0.3


#: Defaults, with margin over the demo model's measurements (docs/deployment.md): fp32 raw diffs 1e-5, every
#: agreement 1.0; fp16 (onnxruntime CPU) scores within 0.054; int8 scores within 0.056, lowest agreement 0.976.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(raw_max_abs=1e-4, atol=1e-3, rtol=1e-3, min_agreement=0.99),
    "fp16": Tolerance(raw_max_abs=None, atol=5e-2, rtol=5e-2, min_agreement=0.95),
    "int8": Tolerance(raw_max_abs=None, atol=1e-1, rtol=1e-1, min_agreement=0.9),
}


def tolerance_for(precision: str, overrides: Mapping[str, Any] | None = None) -> Tolerance:
    """The default tolerance of ``precision`` with ``overrides`` (fields of :class:`Tolerance`) applied."""
    if precision not in DEFAULT_TOLERANCES:
        raise ValueError(f"unknown precision '{precision}'; valid choices: {sorted(DEFAULT_TOLERANCES)}")
    fields = asdict(DEFAULT_TOLERANCES[precision])
    unknown = sorted(set(overrides or {}) - set(fields))
    if unknown:
        raise ValueError(f"parity tolerance: unknown fields {unknown}; valid: {sorted(fields)}")
    fields.update({k: v for k, v in (overrides or {}).items()})
    return Tolerance(**fields)


# --- running both sides ------------------------------------------------------------------------------------------

@torch.no_grad()
def torch_outputs(net: nn.Module, batch: Mapping[str, Any], image_size: Sequence[int]) -> dict[str, np.ndarray]:
    """Decoded outputs and ``raw/``-prefixed raw outputs of the PyTorch model, as numpy."""
    raw = net(batch["images"], batch["intrinsics"], batch["extrinsics"])
    decoded = net.decode(raw, tuple(image_size))
    out = {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in decoded.items()}
    out.update({RAW_PREFIX + k: v.float().numpy() for k, v in raw.items()})
    return out


def onnx_feed(session: ort.InferenceSession, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The batch's arrays for the graph inputs the session has (a model without BEV takes images only)."""
    dtypes = {"images": np.uint8, "intrinsics": np.float32, "extrinsics": np.float32}
    feed = {}
    for inp in session.get_inputs():
        if inp.name not in INPUT_NAMES:
            raise ValueError(f"ONNX model input '{inp.name}' is not one of {list(INPUT_NAMES)}")
        value = batch[inp.name]
        value = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        feed[inp.name] = np.ascontiguousarray(value, dtype=dtypes[inp.name])
    return feed


def onnx_outputs(session: ort.InferenceSession, batch: Mapping[str, Any],
                 names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The session's outputs (all, or ``names``) for one batch."""
    names = list(names) if names is not None else [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, onnx_feed(session, batch))))


# --- comparing ---------------------------------------------------------------------------------------------------

def _split_key(key: str) -> tuple[str, str]:
    """``lanes_2d.points`` -> (``lanes_2d.``, ``points``); ``bev.objects_boxes`` -> (``bev.objects_``, ``boxes``)."""
    head, rest = key.split(".", 1)
    if head == "bev" and "_" in rest:  # the BEV branch names its outputs <head>_<field> (models/bev.py)
        sub, field = rest.split("_", 1)
        return f"bev.{sub}_", field
    return f"{head}.", rest


def _close(got: np.ndarray, ref: np.ndarray, tol: Tolerance) -> np.ndarray:
    return np.abs(got.astype(np.float64) - ref) <= tol.atol + tol.rtol * np.abs(ref)


def _detections(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], stem: str,
                tol: Tolerance) -> tuple[float, int]:
    """Fraction of confident reference detections with a same-class ONNX detection within tolerance."""
    boxes_r, boxes_g = ref[stem + "boxes"].astype(np.float64), got[stem + "boxes"].astype(np.float64)  # (..., K, D)
    cls_r, cls_g = ref[stem + "classes"], got[stem + "classes"]
    keep = (ref[stem + "scores"] >= tol.score_threshold) & (cls_r >= 0)  # (..., K)
    if not keep.any():
        return 1.0, 0
    diff = np.abs(boxes_r[..., :, None, :] - boxes_g[..., None, :, :])  # (..., K_ref, K_onnx, D)
    if boxes_r.shape[-1] == 7:  # yaw: compare on the circle (atan2 jumps from pi to -pi)
        diff[..., 6] = np.abs((diff[..., 6] + math.pi) % (2 * math.pi) - math.pi)
    close = (diff <= tol.atol + tol.rtol * np.abs(boxes_r[..., :, None, :])).all(-1)
    close &= cls_r[..., :, None] == cls_g[..., None, :]
    matched = close.any(-1)  # (..., K_ref)
    return float(matched[keep].mean()), int(keep.sum())


def _masked(agree: np.ndarray, mask: np.ndarray | None) -> tuple[float, int]:
    if mask is not None:
        mask = np.broadcast_to(mask, agree.shape)
        agree = agree[mask]
    return (float(agree.mean()), int(agree.size)) if agree.size else (1.0, 0)


def decoded_agreement(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray],
                      tol: Tolerance) -> tuple[dict[str, float], dict[str, int]]:
    """Agreement fraction and number of compared elements per decoded output (see the module docstring)."""
    agreement: dict[str, float] = {}
    compared: dict[str, int] = {}
    for key in ref:
        if key.startswith(RAW_PREFIX):
            continue
        stem, field = _split_key(key)
        r, g = ref[key], got[key]
        is_detection = stem + "boxes" in ref and stem + "classes" in ref and stem + "scores" in ref
        exist_key = next((stem + f for f in ("exist", "scores") if stem + "points" in ref and stem + f in ref), None)
        if is_detection and field == "classes":
            continue  # compared together with the boxes
        if is_detection and field == "boxes":
            agreement[key], compared[key] = _detections(ref, got, stem, tol)
            continue
        mask = None
        if exist_key is not None and field not in ("exist", "scores", "seg_prob"):
            exists = ref[exist_key] >= 0.5  # (..., S)
            mask = exists[..., None] if r.ndim > exists.ndim else exists
            if field == "points":
                valid = ref.get(stem + "points_valid", ref.get(stem + "valid"))
                mask = (exists[..., None] & valid)[..., None]  # (..., S, R, 1)
        agree = _close(g, r, tol) if np.issubdtype(r.dtype, np.floating) else g == r
        agreement[key], compared[key] = _masked(agree, mask)
    return agreement, compared


def compare(reference: Iterable[Mapping[str, np.ndarray]], candidate: Iterable[Mapping[str, np.ndarray]],
            tol: Tolerance) -> dict[str, Any]:
    """The ``parity`` section of ``export.json`` from per-batch outputs of both sides (same keys, same frames)."""
    ref_batches, got_batches = list(reference), list(candidate)
    if not ref_batches:
        raise ValueError("parity: no frames to compare")
    keys = list(ref_batches[0])
    missing = sorted(set(keys) - set(got_batches[0]))
    if missing:
        raise ParityError(f"parity: the ONNX model lacks outputs {missing}; it has {sorted(got_batches[0])}")
    ref = {k: np.concatenate([b[k] for b in ref_batches]) for k in keys}
    got = {k: np.concatenate([b[k] for b in got_batches]) for k in keys}
    for k in keys:
        if got[k].shape != ref[k].shape:
            raise ParityError(f"parity: output '{k}' has shape {list(got[k].shape)} in ONNX, "
                              f"{list(ref[k].shape)} in PyTorch")
    max_abs = {k: float(np.abs(got[k].astype(np.float64) - ref[k]).max()) for k in keys
               if np.issubdtype(ref[k].dtype, np.floating)}
    agreement, compared = decoded_agreement(ref, got, tol)
    raw_diffs = {k: v for k, v in max_abs.items() if k.startswith(RAW_PREFIX)}
    raw_ok = tol.raw_max_abs is None or all(v <= tol.raw_max_abs for v in raw_diffs.values())
    decoded_agree = all(v >= tol.min_agreement for v in agreement.values())
    return {
        "frames": int(ref[keys[0]].shape[0]),
        "max_abs_diff": max_abs,
        "max_abs_diff_raw": max(raw_diffs.values()) if raw_diffs else None,
        "agreement": agreement,
        "compared": compared,
        "raw_within_tolerance": raw_ok,
        "decoded_agree": decoded_agree,
        "passed": raw_ok and decoded_agree,
        "tolerance": asdict(tol),
    }


def check_parity(net: nn.Module, session: ort.InferenceSession, batches: Sequence[Mapping[str, Any]],
                 image_size: Sequence[int], tol: Tolerance,
                 raw_session: ort.InferenceSession | None = None) -> dict[str, Any]:
    """Run ``batches`` through PyTorch and ONNX and :func:`compare` them (does not raise; see
    :func:`raise_on_failure`).

    Args:
        net: the PyTorch model.
        session: the graph under test (the shipped one: its decoded outputs are compared).
        batches: collated batches (``images``, ``intrinsics``, ``extrinsics``).
        image_size: (H, W) for ``net.decode``.
        tol: the precision's tolerance.
        raw_session: the same graph with ``raw/`` outputs (before :func:`strip_raw_outputs`); its raw outputs
            are compared too. None: only what ``session`` returns.
    """
    net = net.eval()
    raw_names = [o.name for o in raw_session.get_outputs() if o.name.startswith(RAW_PREFIX)] if raw_session else []
    reference, candidate = [], []
    for batch in batches:
        reference.append(torch_outputs(net, batch, image_size))
        got = onnx_outputs(session, batch)
        if raw_names:
            got.update(onnx_outputs(raw_session, batch, raw_names))
        candidate.append(got)
    names = set(candidate[0])
    reference = [{k: v for k, v in r.items() if k in names} for r in reference]
    return compare(reference, candidate, tol)


def failures(report: Mapping[str, Any]) -> list[str]:
    """Human-readable reasons a parity report failed (empty when it passed)."""
    tol = report["tolerance"]
    out = []
    if tol["raw_max_abs"] is not None:
        out += [f"{k}: max abs diff {v:.3g} > {tol['raw_max_abs']:g}" for k, v in report["max_abs_diff"].items()
                if k.startswith(RAW_PREFIX) and v > tol["raw_max_abs"]]
    out += [f"{k}: agreement {v:.3f} < {tol['min_agreement']:g} ({report['compared'][k]} elements compared)"
            for k, v in report["agreement"].items() if v < tol["min_agreement"]]
    return out


def raise_on_failure(report: Mapping[str, Any], what: str) -> None:
    """Raise :class:`ParityError` naming every output beyond tolerance."""
    reasons = failures(report)
    if reasons:
        raise ParityError(f"parity failed for {what} on {report['frames']} frames:\n  " + "\n  ".join(reasons)
                          + "\n(tolerances: export.parity.tolerance in configs/export.yaml; see docs/deployment.md)")
