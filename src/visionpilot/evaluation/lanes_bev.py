"""BEV lane metrics: per-type mask IoU on the BEV grid, and vectorised lane F1 / AP by Chamfer distance.

Grid layout (:class:`BevGrid`) — the one of the model's BEV tensors (``models/view_transform.py``: ``(B, C, X, Y)``):
mask index ``[i, j]`` is the cell whose centre is ``x = x_min + (i + 0.5) * res`` (forward) and
``y = y_min + (j + 0.5) * res`` (left). Rows run along ego +x, columns along ego +y; for a "forward is up, left is
left" picture flip both axes.

Mask IoU (HDMapNet's semantic map IoU): intersection and union per lane type summed over the dataset;
``bev_lane_iou`` is the mean over the types with a non-empty union (in the ground truth or the predictions: a type
predicted where there is none scores 0). Ground-truth lines are drawn by the BEV lane head's own target rasteriser
(:func:`rasterize_polylines`), as HDMapNet draws its training target and its evaluation masks alike.

Vectorised F1 / AP (MapTR's evaluation, ``tpfp_chamfer`` + ``custom_polyline_score``): every polyline is resampled
to ``num_points`` points at equal arc length (xy only); the Chamfer distance of a prediction and a GT line of the
same type is ``(mean_p min_g |p-g| + mean_g min_p |p-g|) / 2``; per frame and type, predictions in descending
score are each compared with their *nearest* GT line (by Chamfer), and are a TP if that distance is <= the
threshold (0.5, 1.0, 1.5 m) and that GT is not covered yet, else an FP (no fall-back to the second nearest, as in
MapTR). AP per type and threshold is the VOC area under the precision envelope; F1 (ours) uses the same matching,
counting the predictions with score >= ``score_threshold`` over all types.

Both predictions and ground truth are cut to the BEV grid first (``grid``): MapTR evaluates the map elements of its
perception range, and the labels here reach beyond the grid (lanes from 60 m behind to 120 m ahead for a +-50 m
grid), which would put every match metres away (a prediction along the whole grid against a GT line 80 % longer).
A line that leaves the grid and re-enters it becomes two instances, as MapTR splits a multi-line map element.

Lines without length (a single point, a piece that only touches the grid's edge) are no instances on either side.
Deviations from MapTR: ties in score are ranked false positives first (MapTR's ``argsort`` leaves them arbitrary),
so results do not depend on the order frames arrive in (e.g. the process order of a DDP gather); MapTR skips pairs
whose 2 m buffers do not intersect (a pre-check that only matters for lines shorter than about a metre, which can be
within 1.5 m Chamfer distance without their buffers meeting), so every pair is computed here; the number of
resampled points is a parameter (100, as MapTR's evaluation hard-codes). ``bev_lane_ap`` ranks the predictions the
decoder reports (the evaluator passes a slot's rows only where its score reaches the head's ``score_threshold``),
not every query as MapTR does, so the precision-recall curve stops at that score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.spatial.distance import cdist
from torch import Tensor
from torchmetrics import Metric

from visionpilot.data.vocab import LANE_TYPES
from visionpilot.evaluation._common import (
    ArrayLike,
    cat_state,
    check_indices,
    check_per_row,
    clean_polylines,
    precision_recall_f1,
    to_numpy,
    voc_area_ap,
)
from visionpilot.geometry.polylines import clip_polyline_box, resample_polyline


@dataclass(frozen=True)
class BevGrid:
    """A BEV grid over the ego frame, metres; see the module docstring for the layout."""

    x_min: float
    x_max: float
    y_min: float
    y_max: float
    resolution: float

    def __post_init__(self) -> None:
        if self.x_max <= self.x_min or self.y_max <= self.y_min or self.resolution <= 0:
            raise ValueError(f"BevGrid needs x_min < x_max, y_min < y_max and resolution > 0, found {self}")

    @classmethod
    def from_any(cls, grid: BevGrid | Mapping[str, Any] | Any) -> BevGrid:
        """A grid from itself, or from anything with ``x_range``, ``y_range`` and ``cell_size`` (the model's
        ``BEVGrid`` or its Hydra config node), as attributes or mapping keys."""
        if isinstance(grid, BevGrid):
            return grid
        get = grid.__getitem__ if isinstance(grid, Mapping) else lambda key: getattr(grid, key)
        try:
            (x_min, x_max), (y_min, y_max), cell = get("x_range"), get("y_range"), get("cell_size")
        except (KeyError, AttributeError) as err:
            raise ValueError(f"BevGrid.from_any: expected a BevGrid or fields x_range, y_range, cell_size, found "
                             f"{grid!r}") from err
        return cls(float(x_min), float(x_max), float(y_min), float(y_max), float(cell))

    @property
    def x_range(self) -> tuple[float, float]:
        return (self.x_min, self.x_max)

    @property
    def y_range(self) -> tuple[float, float]:
        return (self.y_min, self.y_max)

    @property
    def cell_size(self) -> float:
        return self.resolution

    @property
    def shape(self) -> tuple[int, int]:
        """(X, Y): rows along x, columns along y."""
        return (round((self.x_max - self.x_min) / self.resolution), round((self.y_max - self.y_min) / self.resolution))

    def to_pixels(self, xy: np.ndarray) -> np.ndarray:
        """Ego (x, y) (N, 2) -> continuous OpenCV (u = column, v = row), cell centres at integers."""
        xy = np.asarray(xy, dtype=np.float64)
        u = (xy[:, 1] - self.y_min) / self.resolution - 0.5
        v = (xy[:, 0] - self.x_min) / self.resolution - 0.5
        return np.stack([u, v], axis=1)


def rasterize_polylines(polylines: Sequence[ArrayLike] | ArrayLike, types: ArrayLike,
                        grid: BevGrid | Mapping[str, Any] | Any, num_types: int = len(LANE_TYPES),
                        line_width: float = 0.5) -> np.ndarray:
    """Draw ego-frame polylines into per-type BEV masks, exactly as the BEV lane head draws its training target.

    This is :func:`visionpilot.models.heads.lanes_bev.rasterize_lines` (every cell that a band ``line_width``
    metres wide along the line touches; about ``line_width / resolution + 1`` cells across on average), so the
    BEV lane IoU scores the masks the head is trained to produce: a head that reproduces its target scores 1.
    (HDMapNet rasterises its training target and its evaluation ground truth the same way, too.)

    Args:
        polylines: (P_i, >=2) ego-frame points (x, y[, z]), or a padded (L, P, >=2) array; z is ignored. A
            segment is drawn between consecutive finite points (NaN points are padding and break a line, as
            invalid points do in the head's target); a line with one finite point draws nothing.
        types: (L,) lane type index per polyline (negative = padding, skipped).
        grid: the BEV grid (:class:`BevGrid`, or the model's grid / config, see :meth:`BevGrid.from_any`).
        num_types: number of mask channels.
        line_width: width in metres.

    Returns:
        (num_types, X, Y) bool masks.
    """
    grid = BevGrid.from_any(grid)
    type_arr = to_numpy(types, np.int64).reshape(-1)
    if len(type_arr) != len(polylines):
        raise ValueError(f"rasterize_polylines: {len(polylines)} polylines but {len(type_arr)} types")
    if (type_arr >= num_types).any():
        raise ValueError(f"rasterize_polylines: lane type {type_arr.max()} outside the {num_types} mask channels")
    arrays = [to_numpy(line) for line in polylines]
    for i, pts in enumerate(arrays):
        if pts.ndim != 2 or pts.shape[1] < 2:
            raise ValueError(f"rasterize_polylines: polyline #{i} must have shape (P, >=2), found {pts.shape}")
    padded = np.full((1, len(arrays), max([1, *(len(a) for a in arrays)]), 2), np.nan, dtype=np.float32)
    for k, pts in enumerate(arrays):
        padded[0, k, : len(pts)] = pts[:, :2]
    finite = torch.from_numpy(np.isfinite(padded).all(axis=-1))
    return rasterize_lane_batch(torch.from_numpy(np.nan_to_num(padded)), finite, torch.from_numpy(type_arr)[None],
                                grid, num_types, line_width)[0].numpy()


def rasterize_lane_batch(lanes: Tensor, valid: Tensor, types: Tensor, grid: BevGrid, num_types: int,
                         line_width: float, has: Tensor | None = None) -> Tensor:
    """Batched :func:`rasterize_polylines` on the batch contract's padded lanes (B, L, P, >=2), their valid points
    (B, L, P) and types (B, L): (B, num_types, X, Y) bool, drawn exactly as the BEV lane head's target."""
    from visionpilot.models.heads.lanes_bev import lane_segments, rasterize_lines  # one definition of a drawn line

    pts, seg_ok, types = lane_segments(lanes, valid, types, num_types, has)
    return rasterize_lines(pts, seg_ok, types, grid, num_types, line_width / grid.resolution) > 0.5


class BevLaneIoU(Metric):
    """Per-type IoU of BEV lane masks, accumulated over the dataset.

    Args:
        type_names: names of the mask channels (the lane vocabulary by default).
        threshold: a float prediction (probability) counts as lane where ``>= threshold``; bool masks as they are.

    ``compute()`` keys: ``bev_lane_iou`` (mean over the types that are in the ground truth or the predictions) and
    ``bev_lane_iou_<type>`` for them.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, type_names: Sequence[str] = LANE_TYPES, threshold: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.type_names = list(type_names)
        self.threshold = float(threshold)
        for name in ("intersection", "union", "gt_pixels"):
            self.add_state(name, default=torch.zeros(len(self.type_names), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: ArrayLike, targets: ArrayLike) -> None:
        """Accumulate a batch.

        Args:
            preds: (B, T, X, Y) bool masks or probabilities.
            targets: (B, T, X, Y) bool masks (e.g. from :func:`rasterize_polylines`).
        """
        p = torch.as_tensor(preds) if not isinstance(preds, Tensor) else preds
        g = torch.as_tensor(targets) if not isinstance(targets, Tensor) else targets
        if p.ndim == 3:
            p, g = p[None], g[None]
        if p.shape != g.shape or p.shape[1] != len(self.type_names):
            raise ValueError(f"BevLaneIoU.update: preds and targets must be (B, {len(self.type_names)}, X, Y), "
                             f"found {tuple(p.shape)} and {tuple(g.shape)}")
        p = p if p.dtype == torch.bool else p >= self.threshold
        g = g.bool()
        self.intersection += (p & g).sum(dim=(0, 2, 3)).to(self.intersection.device)
        self.union += (p | g).sum(dim=(0, 2, 3)).to(self.union.device)
        self.gt_pixels += g.sum(dim=(0, 2, 3)).to(self.gt_pixels.device)

    def compute(self) -> dict[str, Tensor]:
        # Types with ground truth or predictions (a non-empty union): a type drawn where there is none scores 0,
        # as in HDMapNet's per-class IoU; a type absent from both is undefined and left out.
        present = self.union > 0
        iou = self.intersection.double() / self.union.clamp(min=1).double()
        out = {"bev_lane_iou": iou[present].mean().float() if present.any() else torch.tensor(float("nan"))}
        for t, name in enumerate(self.type_names):
            if present[t]:
                out[f"bev_lane_iou_{name}"] = iou[t].float()
        return out


def chamfer_matrix(preds: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """Symmetric mean Chamfer distance (P, G) between resampled polylines (P, N, 2) and (G, M, 2), as MapTR."""
    n_pred, n = preds.shape[:2]
    out = np.zeros((n_pred, len(gts)))
    flat = preds.reshape(-1, 2)
    for j, gt in enumerate(gts):  # one GT line at a time keeps memory at (P*N, M)
        d = cdist(flat, gt).reshape(n_pred, n, len(gt))
        out[:, j] = 0.5 * (d.min(axis=2).mean(axis=1) + d.min(axis=1).mean(axis=1))
    return out


def maptr_match(chamfer: np.ndarray, scores: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """MapTR TP flags (P, T) of one frame and type: each prediction, by descending score, vs its nearest GT."""
    flags = np.zeros((chamfer.shape[0], len(thresholds)), dtype=bool)
    if chamfer.shape[1] == 0:
        return flags
    nearest = chamfer.argmin(axis=1)
    best = chamfer.min(axis=1)
    for t, threshold in enumerate(thresholds):
        covered = np.zeros(chamfer.shape[1], dtype=bool)
        for i in np.argsort(-scores, kind="stable"):
            if best[i] <= threshold and not covered[nearest[i]]:
                covered[nearest[i]] = True
                flags[i, t] = True
    return flags


class BevLaneChamferF1(Metric):
    """Vectorised BEV lane F1 (and AP) by Chamfer distance, matched as MapTR (see the module docstring).

    Args:
        type_names: lane type names (the lane vocabulary by default).
        thresholds: Chamfer thresholds in metres.
        num_points: points each polyline is resampled to.
        score_threshold: predictions counted by F1 (AP uses all it is given).
        grid: the BEV grid (:class:`BevGrid`, or anything :meth:`BevGrid.from_any` reads); predictions and ground
            truth are cut to its extent first. None compares the lines as given.

    ``compute()`` keys: ``bev_lane_f1`` (mean over thresholds), ``bev_lane_ap`` (mean over thresholds and types
    with GT; NaN without any GT line), and per threshold ``bev_lane_precision@<t>m``, ``bev_lane_recall@<t>m``,
    ``bev_lane_f1@<t>m``, ``bev_lane_ap@<t>m``.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, type_names: Sequence[str] = LANE_TYPES, thresholds: Sequence[float] = (0.5, 1.0, 1.5),
                 num_points: int = 100, score_threshold: float = 0.5, grid: BevGrid | Mapping[str, Any] | Any = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.grid = None if grid is None else BevGrid.from_any(grid)
        self.type_names = list(type_names)
        self.thresholds = [float(t) for t in thresholds]
        self.num_points = int(num_points)
        self.score_threshold = float(score_threshold)
        # Per prediction: score, type, TP flag per threshold (flat 1-D float states, see detection_bev).
        for name in ("scores", "types", "tp"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.add_state("num_gt", default=torch.zeros(len(self.type_names), dtype=torch.long), dist_reduce_fx="sum")

    def _resampled(self, lines: Sequence[ArrayLike] | ArrayLike, types: ArrayLike
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        kept, index = clean_polylines(lines, dim=2, types=types)
        if self.grid is not None:  # the parts inside the grid, each with its line's index (type, score)
            box = (self.grid.x_min, self.grid.x_max), (self.grid.y_min, self.grid.y_max)
            inside = [(piece, i) for line, i in zip(kept, index) for piece in clip_polyline_box(line, *box)]
            kept, index = [p for p, _ in inside], np.asarray([i for _, i in inside], dtype=np.int64)
        # A line needs a length (MapTR skips predictions of fewer than two points; its GT are line strings): a
        # single point, or a piece that only touches the grid's edge, is no instance on either side.
        has_length = [len(p) >= 2 and float(np.linalg.norm(np.diff(p, axis=0), axis=1).sum()) > 0 for p in kept]
        kept, index = [p for p, ok in zip(kept, has_length) if ok], np.asarray(index, dtype=np.int64)[has_length]
        pts = np.stack([resample_polyline(p, num=self.num_points) for p in kept]) if kept else \
            np.zeros((0, self.num_points, 2))
        return pts, to_numpy(types, np.int64).reshape(-1)[index], index

    def update(self, pred_lines: Sequence[Sequence[ArrayLike]], pred_scores: Sequence[ArrayLike],
               pred_types: Sequence[ArrayLike], gt_lines: Sequence[Sequence[ArrayLike]],
               gt_types: Sequence[ArrayLike]) -> None:
        """Accumulate a batch of frames.

        Args:
            pred_lines: per frame, its predicted polylines (P_i, 2 or 3) in the ego frame (or a padded (L, P, D)
                array; NaN points are padding).
            pred_scores: per frame, (L,) confidences; a line with a non-finite score is no prediction.
            pred_types: per frame, (L,) lane type indices; negative = padding.
            gt_lines: per frame, ground-truth polylines in the same form.
            gt_types: per frame, (G,) lane type indices.
        """
        n = len(pred_lines)
        if not len(pred_scores) == len(pred_types) == len(gt_lines) == len(gt_types) == n:
            raise ValueError("BevLaneChamferF1.update: all arguments must list the same frames, found lengths "
                             f"{[len(a) for a in (pred_lines, pred_scores, pred_types, gt_lines, gt_types)]}")
        scores_out, types_out, tp_out = [], [], []
        num_gt = np.zeros(len(self.type_names), dtype=np.int64)
        for f in range(n):
            where = f"BevLaneChamferF1.update, frame {f}"
            p_types = to_numpy(pred_types[f], np.int64).reshape(-1)
            p_scores = to_numpy(pred_scores[f]).reshape(-1)
            num_pred = 0 if pred_lines[f] is None else len(pred_lines[f])
            check_per_row(where, "pred_lines", num_pred, pred_scores=len(p_scores), pred_types=len(p_types))
            g_types = to_numpy(gt_types[f], np.int64).reshape(-1)
            check_per_row(where, "gt_lines", 0 if gt_lines[f] is None else len(gt_lines[f]), gt_types=len(g_types))
            check_indices(where, "pred_types", p_types, self.type_names)
            check_indices(where, "gt_types", g_types, self.type_names)
            # A non-finite score cannot be ranked: no prediction (as padding), as in the detection metrics.
            p_pts, p_types, p_index = self._resampled(pred_lines[f], np.where(np.isfinite(p_scores), p_types, -1))
            p_scores = p_scores[p_index]
            g_pts, g_types, _ = self._resampled(gt_lines[f], g_types)
            num_gt += np.bincount(g_types, minlength=len(self.type_names))[: len(self.type_names)]
            for t in np.unique(p_types):
                sel = p_types == t
                chamfer = chamfer_matrix(p_pts[sel], g_pts[g_types == t])
                tp_out.append(maptr_match(chamfer, p_scores[sel], self.thresholds).reshape(-1))
                scores_out.append(p_scores[sel])
                types_out.append(np.full(int(sel.sum()), t))
        if scores_out:
            for name, parts in (("scores", scores_out), ("types", types_out), ("tp", tp_out)):
                getattr(self, name).append(torch.as_tensor(np.concatenate(parts), dtype=torch.float32,
                                                           device=self.device))
        self.num_gt += torch.as_tensor(num_gt, device=self.num_gt.device)

    def compute(self) -> dict[str, Tensor]:
        scores = cat_state(self.scores).double().cpu().numpy()
        types = cat_state(self.types).cpu().numpy().astype(np.int64)
        flags = cat_state(self.tp).cpu().numpy().reshape(-1, len(self.thresholds)) > 0.5
        num_gt = self.num_gt.cpu().numpy()
        counted = scores >= self.score_threshold
        out: dict[str, Tensor] = {}
        f1s, aps = [], []
        for t, threshold in enumerate(self.thresholds):
            tp = int(flags[counted, t].sum())
            precision, recall, f1 = precision_recall_f1(tp, int(counted.sum()) - tp, int(num_gt.sum()) - tp)
            type_aps = []
            for k in np.flatnonzero(num_gt > 0):
                sel = np.flatnonzero(types == k)
                sel = sel[np.lexsort((flags[sel, t], -scores[sel]))]  # by score; among ties, FPs first
                type_aps.append(voc_area_ap(flags[sel, t].astype(np.float64), int(num_gt[k])))
            # No GT line of any type: AP is undefined (NaN, left out of metrics.json like 2D mAP), not 0.
            ap = float(np.mean(type_aps)) if type_aps else float("nan")
            tag = f"@{threshold:g}m"
            out.update({f"bev_lane_precision{tag}": precision, f"bev_lane_recall{tag}": recall,
                        f"bev_lane_f1{tag}": f1, f"bev_lane_ap{tag}": torch.tensor(ap)})
            f1s.append(float(f1))
            aps.append(ap)
        return {"bev_lane_f1": torch.tensor(float(np.mean(f1s))), "bev_lane_ap": torch.tensor(float(np.mean(aps))),
                **out}
