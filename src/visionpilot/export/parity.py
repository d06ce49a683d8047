"""Parity: the same real frames through PyTorch and onnxruntime, compared output by output.

Two questions, two measures (both in ``export.json`` under ``parity``):

- *Is it the same function?* ``max_abs_diff`` per output, raw head outputs (``raw/<head>.<output>``: logits and
  regressions before any top-k) and decoded float outputs. The fp32 gate is on the raw outputs (1e-4): decoded
  outputs go through arg-max and top-k, where a 1e-7 difference between two near-equal scores swaps two
  detections and shows up as a difference of metres — a reordering, not an error.
- *Does the vehicle see the same lanes and objects?* ``agreement`` per decoded output, the fraction of compared
  elements that match, comparing only what the decode's own flags call real:

  - positions are compared in their own units, not relative to their size (a relative tolerance on a coordinate
    would be 20 px at the right edge of a 256 px image and 1 px at the left):
    - 2D detections (``<stem>boxes``, pixels): each reference detection with score >= ``score_threshold`` must
      have an ONNX detection of the same class with IoU >= ``box_iou`` anywhere in the top-k (order-free, so swaps
      of near-equal scores do not count); at 0.5 that is the same object by mAP@0.5's own matching rule. A box
      clipped away entirely (zero area: an untrained head's offset put it outside the image) boxes nothing, and
      is matched by an empty ONNX box of the same class;
    - BEV detections (ego frame, metres): same class, centre (x, y) within ``position_m`` and z within
      ``position_m``, sizes within ``atol + rtol * size``, yaw within ``atol`` radians on the circle;
    - detection scores (``<stem>scores``): the same confident reference detections, each matched as above and its
      ONNX twin's score within ``atol + rtol * score``. Not position by position: the top-k list is sorted, and a
      near-tie at the peak picking (two neighbouring heatmap cells within 1e-6, one a peak in PyTorch, the other in
      ONNX) adds or drops one low score and shifts every score after it by one place (a weak model's flat heatmap
      did so in an fp32 export whose heatmap was within 3.3e-6: 15 of 800 scores 0.07-0.11 "differed" by 0.003);
    - lane points: on rows the reference marks valid, in slots whose existence probability / score is >= 0.5,
      each point within ``position_px`` pixels (image lanes) or ``position_m`` metres (BEV lanes), Euclidean;
  - other per-slot results only for existing slots; probabilities and masks everywhere;
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
from torchvision.ops import box_iou

from visionpilot.export.onnx_export import INPUT_NAMES, RAW_PREFIX


class ParityError(RuntimeError):
    """The exported model differs from the PyTorch model beyond the precision's tolerance."""


@dataclass(frozen=True)
class Tolerance:
    """What counts as agreeing for one precision.

    Attributes:
        raw_max_abs: gate on every raw output's max abs difference, scaled by the output's largest magnitude when
            that exceeds 1 (``raw_max_abs * max(1, max |torch|)``: float error is relative, and a logit of 10 fed by
            a 10^4-cell weighted sum carries ten times the error of a probability); None reports without gating
            (int8, where logits move by design and only decisions matter).
        atol, rtol: a decoded float element that is not a position agrees when
            ``|onnx - torch| <= atol + rtol * |torch|`` (scores, probabilities, sizes; yaw uses ``atol`` alone).
        min_agreement: the least fraction of compared elements that must agree, per decoded output.
        box_iou: a 2D detection agrees with a same-class ONNX detection of at least this IoU.
        position_px: an image-space lane point agrees within this many pixels (Euclidean).
        position_m: a BEV lane point or box centre agrees within this many metres (Euclidean; box z separately).
        score_threshold: reference detections at or above this score are compared.
    """

    raw_max_abs: float | None
    atol: float
    rtol: float
    min_agreement: float
    box_iou: float
    position_px: float
    position_m: float
    score_threshold: float = 0.3


#: Defaults (docs/deployment.md has the demo model's measurements): fp32 must be the same function (raw diffs
#: 1e-5 on the demo model); fp16 and int8 must make the same decisions — int8 boxes the same objects by mAP@0.5's
#: matching rule (IoU 0.5), BEV centres within nuScenes' tightest matching distance (0.5 m), lane points within
#: 2 px (CULane's IoU > 0.5 between 30 px lanes at 1640 px allows ~10 px, i.e. ~1.6 px at 256 px).
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(raw_max_abs=1e-4, atol=1e-3, rtol=1e-3, min_agreement=0.99, box_iou=0.99, position_px=0.01,
                      position_m=0.01),
    "fp16": Tolerance(raw_max_abs=None, atol=5e-2, rtol=5e-2, min_agreement=0.95, box_iou=0.9, position_px=0.5,
                      position_m=0.1),
    "int8": Tolerance(raw_max_abs=None, atol=1e-1, rtol=1e-1, min_agreement=0.9, box_iou=0.5, position_px=2.0,
                      position_m=0.5),
}


def tolerance_for(precision: str, overrides: Mapping[str, Any] | None = None) -> Tolerance:
    """The default tolerance of ``precision`` with ``overrides`` (fields of :class:`Tolerance`) applied."""
    if precision not in DEFAULT_TOLERANCES:
        raise ValueError(f"unknown precision '{precision}'; valid choices: {sorted(DEFAULT_TOLERANCES)}")
    fields = asdict(DEFAULT_TOLERANCES[precision])
    unknown = sorted(set(overrides or {}) - set(fields))
    if unknown:
        raise ValueError(f"parity tolerance: unknown fields {unknown}; valid: {sorted(fields)}")
    for key, value in (overrides or {}).items():
        # Checked here, not when compared after the export: a string failed there in a numpy ufunc, and a NaN
        # min_agreement failed the gate with no failure named (NaN compares False), so nothing was raised.
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ((number and not math.isnan(value)) or (key == "raw_max_abs" and value is None)):
            raise ValueError(f"parity tolerance: field '{key}' must be a number"
                             f"{' or null (not gated)' if key == 'raw_max_abs' else ''}, found {value!r}")
        fields[key] = value
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


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(..., K, 4) x (..., L, 4) ``x1, y1, x2, y2`` -> (..., K, L) IoU (torchvision's, per leading index)."""
    lead = a.shape[:-2]
    a2, b2 = torch.from_numpy(a.reshape(-1, *a.shape[-2:])), torch.from_numpy(b.reshape(-1, *b.shape[-2:]))
    iou = torch.stack([box_iou(x, y) for x, y in zip(a2, b2)])  # a few dozen camera images: no hot path
    return iou.nan_to_num(0.0).numpy().reshape(*lead, a.shape[-2], b.shape[-2])  # degenerate padding: 0/0


def _box_area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[..., 2] - boxes[..., 0]).clip(0) * (boxes[..., 3] - boxes[..., 1]).clip(0)


def _detections(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray], stem: str,
                tol: Tolerance, scores: bool = False) -> tuple[float, int]:
    """Fraction of confident reference detections with a matching same-class ONNX detection (module docstring);
    ``scores``: whose score agrees too."""
    boxes_r, boxes_g = ref[stem + "boxes"].astype(np.float64), got[stem + "boxes"].astype(np.float64)  # (..., K, D)
    cls_r, cls_g = ref[stem + "classes"], got[stem + "classes"]
    keep = (ref[stem + "scores"] >= tol.score_threshold) & (cls_r >= 0)  # (..., K)
    if not keep.any():
        return 1.0, 0
    if boxes_r.shape[-1] == 4:  # image boxes, pixels
        empty_r, empty_g = _box_area(boxes_r) <= 0, _box_area(boxes_g) <= 0  # IoU is 0/0 between empty boxes
        close = (_box_iou(boxes_r, boxes_g) >= tol.box_iou) | (empty_r[..., :, None] & empty_g[..., None, :])
    elif boxes_r.shape[-1] == 7:  # BEV boxes: x, y, z, length, width, height, yaw (ego frame, metres)
        r, g = boxes_r[..., :, None, :], boxes_g[..., None, :, :]  # (..., K_ref, K_onnx, 7)
        centre = np.linalg.norm(r[..., :2] - g[..., :2], axis=-1) <= tol.position_m
        height = np.abs(r[..., 2] - g[..., 2]) <= tol.position_m
        size = (np.abs(r[..., 3:6] - g[..., 3:6]) <= tol.atol + tol.rtol * np.abs(r[..., 3:6])).all(-1)
        yaw = np.abs((r[..., 6] - g[..., 6] + math.pi) % (2 * math.pi) - math.pi) <= tol.atol  # on the circle
        close = centre & height & size & yaw
    else:
        raise ValueError(f"parity: '{stem}boxes' has {boxes_r.shape[-1]} values per box; expected 4 (image "
                         f"x1, y1, x2, y2) or 7 (BEV x, y, z, l, w, h, yaw)")
    close &= cls_r[..., :, None] == cls_g[..., None, :]
    if scores:
        close &= _close(got[stem + "scores"][..., None, :], ref[stem + "scores"][..., :, None], tol)
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
        if is_detection and field in ("boxes", "scores"):
            agreement[key], compared[key] = _detections(ref, got, stem, tol, scores=field == "scores")
            continue
        mask = None
        if exist_key is not None and field not in ("exist", "scores", "seg_prob"):
            exists = ref[exist_key] >= 0.5  # (..., S)
            mask = exists[..., None] if r.ndim > exists.ndim else exists
            if field == "points":
                valid = ref.get(stem + "points_valid", ref.get(stem + "valid"))
                mask = exists[..., None] & valid  # (..., S, R)
        if field == "points":  # (..., S, R, 2 or 3) positions: a point agrees within a distance in its unit
            limit = tol.position_m if stem.startswith("bev.") else tol.position_px
            agree = np.linalg.norm(g.astype(np.float64) - r, axis=-1) <= limit
        elif np.issubdtype(r.dtype, np.floating):
            agree = _close(g, r, tol)
        else:
            agree = g == r
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
    raw_gate = ({} if tol.raw_max_abs is None else
                {k: tol.raw_max_abs * max(1.0, float(np.abs(ref[k]).max(initial=0.0))) for k in raw_diffs})
    raw_ok = all(raw_diffs[k] <= g for k, g in raw_gate.items())
    decoded_agree = all(v >= tol.min_agreement for v in agreement.values())
    return {
        "frames": int(ref[keys[0]].shape[0]),
        "max_abs_diff": max_abs,
        "max_abs_diff_raw": float(np.max(list(raw_diffs.values()))) if raw_diffs else None,  # NaN if any is
        "agreement": agreement,
        "compared": compared,
        "raw_gate": raw_gate,
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
    names = set(candidate[0])  # raw outputs only where a graph has them; a missing decoded one is a failure
    reference = [{k: v for k, v in r.items() if k in names or not k.startswith(RAW_PREFIX)} for r in reference]
    return compare(reference, candidate, tol)


def failures(report: Mapping[str, Any]) -> list[str]:
    """Human-readable reasons a parity report failed (empty when it passed)."""
    tol = report["tolerance"]
    out = []
    out += [f"{k}: max abs diff {report['max_abs_diff'][k]:.3g} > {g:.3g} ({tol['raw_max_abs']:g} x max(1, max "
            f"|output|))" for k, g in report["raw_gate"].items() if not report["max_abs_diff"][k] <= g]  # NaN fails
    out += [f"{k}: agreement {v:.3f} < {tol['min_agreement']:g} ({report['compared'][k]} elements compared)"
            for k, v in report["agreement"].items() if v < tol["min_agreement"]]
    return out


def raise_on_failure(report: Mapping[str, Any], what: str) -> None:
    """Raise :class:`ParityError` naming every output beyond tolerance."""
    reasons = failures(report)
    if reasons:
        raise ParityError(f"parity failed for {what} on {report['frames']} frames:\n  " + "\n  ".join(reasons)
                          + "\n(tolerances: export.parity.tolerance in configs/export.yaml; see docs/deployment.md)")
