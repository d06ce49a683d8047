"""Small helpers shared by the metrics: input conversion, state concatenation, precision/recall/F1."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

#: What the metrics accept wherever they take numbers: numpy arrays, tensors (any device) or nested lists.
ArrayLike = np.ndarray | Tensor | Sequence[Any]


def to_numpy(x: ArrayLike, dtype: type = np.float64) -> np.ndarray:
    """A numpy copy of a tensor (detached, on CPU) or array-like."""
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def box_rows(boxes: ArrayLike, width: int, where: str, name: str) -> np.ndarray:
    """(K, width) float64 boxes of one image / frame: a (K, width) array, one (width,) box or an empty array."""
    arr = to_numpy(boxes)
    if arr.size and (arr.ndim == 0 or arr.shape[-1] != width):
        raise ValueError(f"{where}: '{name}' must be (K, {width}) boxes, found shape {tuple(arr.shape)}")
    return arr.reshape(-1, width)


def check_per_row(where: str, rows_name: str, rows: int, **lengths: int) -> None:
    """Raise if a per-row field (scores, labels, ...) has another length than ``rows`` (the boxes or lines)."""
    for name, length in lengths.items():
        if length != rows:
            raise ValueError(f"{where}: '{name}' must have one entry per row of '{rows_name}' ({rows}), found "
                             f"{length}")


def check_finite_rows(where: str, name: str, rows: np.ndarray, real: np.ndarray) -> None:
    """Raise if a real (not padding) row of ground truth (K, D) holds NaN or Inf: bad input, not a row to drop."""
    bad = np.flatnonzero(real & ~np.isfinite(rows).all(axis=1))
    if len(bad):
        raise ValueError(f"{where}: '{name}' must be finite, found {rows[bad[0]].tolist()} in row {int(bad[0])}")


def check_indices(where: str, name: str, labels: np.ndarray, names: Sequence[str]) -> None:
    """Raise if a class / type index is beyond the vocabulary (negative ones are padding)."""
    if len(labels) and labels.max() >= len(names):
        raise ValueError(f"{where}: '{name}' must hold indices below {len(names)} ({list(names)}) or negative for "
                         f"padding, found {int(labels.max())}")


def cat_state(state: list[Tensor] | Tensor) -> Tensor:
    """Concatenate a cat-reduced list state (already a tensor after a DDP sync); empty -> a 0-length tensor."""
    if isinstance(state, Tensor):
        return state
    if not state:
        return torch.zeros(0)
    return torch.cat([s.reshape(-1) for s in state])


def clean_polylines(lines: Sequence[ArrayLike] | ArrayLike | None, dim: int = 2,
                    types: ArrayLike | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    """Drop padding from a set of polylines.

    Non-finite points (NaN padding of a fixed-size output) are removed; a line left with no point, or whose type
    is negative (the batch contract's padding index), is dropped.

    Args:
        lines: polylines (P_i, >= dim) or a padded (L, P, >= dim) array; only the first ``dim`` columns are used.
        dim: coordinates to keep (2 for image pixels or the BEV ground plane).
        types: optional (L,) type/class index per line.

    Returns:
        The kept (P_i, dim) float64 polylines and their indices into ``lines``.
    """
    out: list[np.ndarray] = []
    keep: list[int] = []
    if lines is None:
        return out, np.zeros(0, dtype=np.int64)
    type_arr = None if types is None else to_numpy(types, np.int64).reshape(-1)
    for i, line in enumerate(lines):
        if type_arr is not None and type_arr[i] < 0:
            continue
        pts = to_numpy(line)
        if pts.ndim != 2 or pts.shape[1] < dim:
            raise ValueError(f"polyline #{i} must have shape (P, >={dim}), found {pts.shape}")
        pts = pts[:, :dim]
        pts = pts[np.isfinite(pts).all(axis=1)]
        if len(pts):
            out.append(pts)
            keep.append(i)
    return out, np.asarray(keep, dtype=np.int64)


def precision_recall_f1(tp: Tensor | float, fp: Tensor | float, fn: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
    """Precision, recall and F1 from counts; 0/0 gives 0 (torchmetrics' default ``zero_division``)."""
    tp, fp, fn = (torch.as_tensor(v, dtype=torch.float64) for v in (tp, fp, fn))
    precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp(min=1e-12), torch.zeros_like(tp))
    recall = torch.where(tp + fn > 0, tp / (tp + fn).clamp(min=1e-12), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12),
                     torch.zeros_like(tp))
    return precision.float(), recall.float(), f1.float()


def voc_area_ap(tp: np.ndarray, num_gt: int) -> float:
    """Area under the precision envelope (VOC 2010+ / mmdet ``average_precision(mode='area')``).

    Args:
        tp: (N,) 1 for a true positive, 0 for a false positive, sorted by descending score.
        num_gt: number of ground-truth instances (> 0).
    """
    if num_gt <= 0:
        return float("nan")
    tp_cum = np.cumsum(tp, dtype=np.float64)
    fp_cum = np.cumsum(1.0 - tp, dtype=np.float64)
    recall = np.concatenate([[0.0], tp_cum / num_gt, [1.0]])
    precision = np.concatenate([[0.0], tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # the monotone envelope
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def nan_invalid(points: Tensor, valid: Tensor, keep: Tensor | None = None) -> Tensor:
    """Fixed-size polylines with a validity mask -> NaN padding, the form the lane metrics take.

    Args:
        points: (..., L, P, D) padded points (the batch's ``lanes_*`` or a head's decoded ``points``).
        valid: (..., L, P) real point.
        keep: optional (..., L) lane kept (e.g. ``scores >= threshold``); dropped lanes become all-NaN (padding).
    """
    mask = valid.bool() if keep is None else valid.bool() & keep.bool()[..., None]
    return torch.where(mask[..., None], points, torch.full_like(points, float("nan")))
