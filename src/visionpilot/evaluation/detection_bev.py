"""nuScenes detection metrics in the ego frame: mAP by centre distance, and the ATE / ASE / AOE TP errors.

Definition followed: nuscenes-devkit ``eval/detection`` (``algo.accumulate``, ``calc_ap``, ``calc_tp``,
``common/utils``), with the detection config ``detection_cvpr_2019``:

- per class and per distance threshold (0.5, 1, 2, 4 m), predictions of the whole set are taken in descending
  score; each takes the nearest not-yet-taken GT box of its class in its frame by 2D centre distance on the
  ground plane, and is a TP if that distance is < the threshold (else FP);
- precision and recall from the cumulative counts are resampled at 101 recall points (``np.interp``, precision 0
  beyond the highest recall); AP = mean over recall > 0.1 of ``max(precision - 0.1, 0)``, divided by 0.9;
- TP errors use the 2 m matching: ATE = centre distance (xy), ASE = 1 - IoU of the two boxes after aligning their
  centres and headings (only sizes differ), AOE = smallest yaw difference (period pi for classes listed in
  ``half_turn_classes``, the way nuScenes treats barriers; undefined for ``traffic_cone``, which has no
  orientation). Each is the running mean over matches, resampled at the recall points through the confidences,
  then averaged over recall from 0.1 (exclusive) to the highest recall reached; a class without matches gets 1;
- mAP and the mean errors are averaged over classes (errors with ``nanmean``).

Optional ego-distance filter (``class_ranges``, e.g. :data:`NUSCENES_CLASS_RANGES`): predictions and GT boxes
whose centre is not closer to the ego origin than their class's range (xy distance) are removed first, as
nuScenes' ``filter_eval_boxes`` does.

Deviations: classes without any GT box in the evaluated set are left out of the means (nuScenes scores them AP 0,
errors 1 — it always has every class; with per-region evaluation an absent class is normal); with no GT box at all
every figure is NaN (undefined). No velocity / attribute errors (AVE, AAE), hence no NDS; no lidar-point filter on
GT (camera-only labels). Ties in score are ranked false positives first, then by ATE (nuScenes ranks them by arrival
index), so results do not depend on the order frames arrive in (e.g. the process order of a DDP gather). Within a
frame, tied predictions are matched in input order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from visionpilot.data.vocab import OBJECT_CLASSES
from visionpilot.evaluation._common import (
    ArrayLike,
    box_rows,
    cat_state,
    check_finite_rows,
    check_indices,
    check_per_row,
    to_numpy,
)

NUSCENES_DIST_THRESHOLDS: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
#: nuScenes' evaluation ranges (metres) mapped onto our vocabulary (car, truck with trailer and construction
#: vehicle, bus: 50; motorcycle and bicycle -> two_wheeler, pedestrian: 40; traffic_cone: 30; barriers are not
#: in the vocabulary). The evaluator applies them by default (``PerceptionEvaluator(bev_class_ranges=...)``).
NUSCENES_CLASS_RANGES: dict[str, float] = {"car": 50.0, "truck": 50.0, "bus": 50.0, "two_wheeler": 40.0,
                                           "pedestrian": 40.0, "traffic_cone": 30.0}
_ERRORS = ("ate", "ase", "aoe")


def size_aligned_iou(sizes_a: np.ndarray, sizes_b: np.ndarray) -> np.ndarray:
    """IoU of boxes (N, 3) sizes after aligning centre and heading: prod(min) / (vol_a + vol_b - prod(min))."""
    inter = np.prod(np.minimum(sizes_a, sizes_b), axis=-1)
    return inter / (np.prod(sizes_a, axis=-1) + np.prod(sizes_b, axis=-1) - inter)


def yaw_difference(yaw_a: np.ndarray, yaw_b: np.ndarray, period: float = 2 * np.pi) -> np.ndarray:
    """Smallest absolute difference of headings, modulo ``period`` (2*pi, or pi for symmetric objects)."""
    diff = (np.asarray(yaw_a) - np.asarray(yaw_b) + period / 2) % period - period / 2
    return np.abs(np.where(diff > np.pi, diff - 2 * np.pi, diff))


def greedy_center_match(dist: np.ndarray, threshold: float) -> np.ndarray:
    """nuScenes matching in one frame: predictions (rows, sorted by descending score) take the nearest untaken GT.

    Args:
        dist: (K, G) centre distances.

    Returns:
        (K,) index of the matched GT, -1 for a false positive.
    """
    out = np.full(dist.shape[0], -1, dtype=np.int64)
    if dist.shape[1] == 0:
        return out
    taken = np.zeros(dist.shape[1], dtype=bool)
    # A prediction with no GT under the threshold can neither match nor take one: only loop over the others.
    for i in np.flatnonzero(dist.min(axis=1) < threshold):
        d = np.where(taken, np.inf, dist[i])
        j = int(np.argmin(d))
        if d[j] < threshold:
            taken[j] = True
            out[i] = j
    return out


def _cummean(x: np.ndarray) -> np.ndarray:
    """Running mean ignoring NaN (ones if all NaN), as nuScenes' ``cummean``."""
    if np.isnan(x).all():
        return np.ones(len(x))
    count = np.cumsum(~np.isnan(x))
    return np.divide(np.nancumsum(x), count, out=np.zeros(len(x)), where=count != 0)


class BevDetectionMetric(Metric):
    """nuScenes-style 3D detection mAP and TP errors (see the module docstring).

    Args:
        class_names: names of the label indices (the object vocabulary by default).
        dist_thresholds: centre-distance thresholds (m) averaged in mAP.
        tp_threshold: threshold whose matches the TP errors use.
        min_recall, min_precision: nuScenes' clipping of the precision-recall curve.
        class_ranges: optional max ego distance (m) per class name; None evaluates everything.
        no_orientation_classes: classes without AOE (cones).
        half_turn_classes: classes whose heading is defined modulo pi (barriers).

    ``compute()`` keys: ``bev_map``, ``bev_ate``, ``bev_ase``, ``bev_aoe``, ``bev_map@<t>m`` per threshold and
    ``bev_ap_<class>`` (mean over thresholds) for classes with GT.
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, class_names: Sequence[str] = OBJECT_CLASSES,
                 dist_thresholds: Sequence[float] = NUSCENES_DIST_THRESHOLDS, tp_threshold: float = 2.0,
                 min_recall: float = 0.1, min_precision: float = 0.1,
                 class_ranges: Mapping[str, float] | None = None,
                 no_orientation_classes: Sequence[str] = ("traffic_cone",), half_turn_classes: Sequence[str] = (),
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0 <= min_precision < 1 or not 0 <= min_recall <= 1:
            raise ValueError(f"min_precision must be in [0, 1) and min_recall in [0, 1], found {min_precision}, "
                             f"{min_recall}")
        self.class_names = list(class_names)
        self.dist_thresholds = [float(t) for t in dist_thresholds]
        self.tp_threshold = float(tp_threshold)
        # Thresholds matched at update: those of mAP, plus the TP-error one if it is not among them.
        self._match_thresholds = self.dist_thresholds + ([] if self.tp_threshold in self.dist_thresholds
                                                         else [self.tp_threshold])
        self._tp_column = self._match_thresholds.index(self.tp_threshold)
        self.min_recall = float(min_recall)
        self.min_precision = float(min_precision)
        ranges = dict(class_ranges or {})
        self._ranges = np.array([ranges.get(n, np.inf) for n in self.class_names], dtype=np.float64)
        self._no_orientation = np.array([n in no_orientation_classes for n in self.class_names])
        self._period = np.array([np.pi if n in half_turn_classes else 2 * np.pi for n in self.class_names])
        # Per prediction: score, class, TP flag per matching threshold, (ATE, ASE, AOE) at the TP threshold (NaN
        # when unmatched). Flat 1-D float states so that DDP gathers work for ranks that saw nothing.
        for name in ("scores", "labels", "tp", "errors"):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self.add_state("num_gt", default=torch.zeros(len(self.class_names), dtype=torch.long), dist_reduce_fx="sum")

    def _filter(self, boxes: np.ndarray, labels: np.ndarray, *extra: np.ndarray) -> tuple[np.ndarray, ...]:
        keep = (labels >= 0) & (labels < len(self.class_names)) & np.isfinite(boxes).all(axis=1)
        keep &= np.hypot(boxes[:, 0], boxes[:, 1]) < self._ranges[np.clip(labels, 0, len(self.class_names) - 1)]
        return (boxes[keep], labels[keep], *(e[keep] for e in extra))

    def update(self, pred_boxes: Sequence[ArrayLike], pred_scores: Sequence[ArrayLike],
               pred_labels: Sequence[ArrayLike], gt_boxes: Sequence[ArrayLike], gt_labels: Sequence[ArrayLike]
               ) -> None:
        """Accumulate a batch of frames (a padded ``(B, K, ...)`` tensor works as a sequence of frames).

        Args:
            pred_boxes: per frame, (K, 7) ``x, y, z, length, width, height, yaw`` in the ego frame; a box with
                NaN / Inf is no detection.
            pred_scores: per frame, (K,) confidences; a non-finite score is no detection.
            pred_labels: per frame, (K,) class indices; negative = padding.
            gt_boxes: per frame, (G, 7) in the same form, finite.
            gt_labels: per frame, (G,) class indices; negative = padding.
        """
        n = len(pred_boxes)
        if not len(pred_scores) == len(pred_labels) == len(gt_boxes) == len(gt_labels) == n:
            raise ValueError("BevDetectionMetric.update: all arguments must list the same frames, found lengths "
                             f"{[len(a) for a in (pred_boxes, pred_scores, pred_labels, gt_boxes, gt_labels)]}")
        scores_out, labels_out, tp_out, err_out = [], [], [], []
        num_gt = np.zeros(len(self.class_names), dtype=np.int64)
        for f in range(n):
            where = f"BevDetectionMetric.update, frame {f}"
            pb = box_rows(pred_boxes[f], 7, where, "pred_boxes")
            pl = to_numpy(pred_labels[f], np.int64).reshape(-1)
            ps = to_numpy(pred_scores[f]).reshape(-1)
            check_per_row(where, "pred_boxes", len(pb), pred_scores=len(ps), pred_labels=len(pl))
            gb = box_rows(gt_boxes[f], 7, where, "gt_boxes")
            gl = to_numpy(gt_labels[f], np.int64).reshape(-1)
            check_per_row(where, "gt_boxes", len(gb), gt_labels=len(gl))
            check_indices(where, "pred_labels", pl, self.class_names)
            check_indices(where, "gt_labels", gl, self.class_names)
            check_finite_rows(where, "gt_boxes", gb, gl >= 0)
            # A non-finite score cannot be ranked (nuScenes rejects NaN scores): no detection, as in 2D mAP.
            finite = np.isfinite(ps)
            pb, pl, ps = self._filter(pb[finite], pl[finite], ps[finite])
            gb, gl = self._filter(gb, gl)
            num_gt += np.bincount(gl, minlength=len(self.class_names))
            for c in np.unique(pl):
                p = pb[pl == c]
                s = ps[pl == c]
                order = np.argsort(-s, kind="stable")
                p, s = p[order], s[order]
                g = gb[gl == c]
                dist = np.linalg.norm(p[:, None, :2] - g[None, :, :2], axis=-1)  # (K, G)
                matches = np.stack([greedy_center_match(dist, t) for t in self._match_thresholds], axis=1)
                errors = np.full((len(p), 3), np.nan)
                m = matches[:, self._tp_column]
                hit = m >= 0
                if hit.any():
                    gm = g[m[hit]]
                    errors[hit, 0] = dist[hit, m[hit]]
                    errors[hit, 1] = 1.0 - size_aligned_iou(p[hit, 3:6], gm[:, 3:6])
                    if not self._no_orientation[c]:
                        errors[hit, 2] = yaw_difference(gm[:, 6], p[hit, 6], self._period[c])
                scores_out.append(s)
                labels_out.append(np.full(len(p), c))
                tp_out.append((matches >= 0).reshape(-1))
                err_out.append(errors.reshape(-1))
        if scores_out:
            for name, parts in (("scores", scores_out), ("labels", labels_out), ("tp", tp_out), ("errors", err_out)):
                getattr(self, name).append(torch.as_tensor(np.concatenate(parts), dtype=torch.float32,
                                                           device=self.device))
        self.num_gt += torch.as_tensor(num_gt, device=self.num_gt.device)

    @staticmethod
    def _rank(scores: np.ndarray, flags: np.ndarray, ate: np.ndarray | None = None) -> np.ndarray:
        """Order by descending score; ties: false positives first, then by ATE (order-independent results)."""
        keys = (flags, -scores) if ate is None else (ate, flags, -scores)
        return np.lexsort(keys)

    def _ap(self, scores: np.ndarray, flags: np.ndarray, npos: int) -> float:
        """nuScenes ``accumulate`` + ``calc_ap`` for one class and threshold."""
        if not flags.any():
            return 0.0
        flags = flags[self._rank(scores, flags)]
        tp = np.cumsum(flags)
        fp = np.cumsum(~flags)
        precision = np.interp(np.linspace(0, 1, 101), tp / npos, tp / (tp + fp), right=0)
        first = round(100 * self.min_recall) + 1  # +1: the min-recall bin itself is excluded
        clipped = np.clip(precision[first:] - self.min_precision, 0, None)
        return float(np.mean(clipped)) / (1.0 - self.min_precision)

    def _tp_errors(self, flags: np.ndarray, scores: np.ndarray, errors: np.ndarray, npos: int) -> np.ndarray:
        """nuScenes ``accumulate`` + ``calc_tp``: (ATE, ASE, AOE) for one class at the TP threshold."""
        if not flags.any():
            return np.ones(3)
        order = self._rank(scores, flags, errors[:, 0])
        flags, scores, errors = flags[order], scores[order], errors[order]
        recall = np.cumsum(flags) / npos
        conf = np.interp(np.linspace(0, 1, 101), recall, scores, right=0)
        match_conf = scores[flags]
        first = round(100 * self.min_recall) + 1
        nonzero = np.flatnonzero(conf)
        last = nonzero[-1] if len(nonzero) else 0  # index of the highest recall reached
        if last < first:
            return np.ones(3)
        out = np.empty(3)
        for k in range(3):
            running = _cummean(errors[flags, k])
            curve = np.interp(conf[::-1], match_conf[::-1], running[::-1])[::-1]
            out[k] = np.mean(curve[first:last + 1])
        return out

    def compute(self) -> dict[str, Tensor]:
        scores = cat_state(self.scores).double().cpu().numpy()
        labels = cat_state(self.labels).cpu().numpy().astype(np.int64)
        n_thr = len(self._match_thresholds)
        flags = cat_state(self.tp).cpu().numpy().reshape(-1, n_thr) > 0.5
        errors = cat_state(self.errors).double().cpu().numpy().reshape(-1, 3)
        num_gt = self.num_gt.cpu().numpy()
        aps, errs, out = [], [], {}
        for c, name in enumerate(self.class_names):
            if num_gt[c] == 0:
                continue
            sel = np.flatnonzero(labels == c)
            class_aps = [self._ap(scores[sel], flags[sel, t], int(num_gt[c])) for t in range(len(self.dist_thresholds))]
            class_errs = self._tp_errors(flags[sel, self._tp_column], scores[sel], errors[sel], int(num_gt[c]))
            if self._no_orientation[c]:
                class_errs[2] = np.nan
            aps.append(class_aps)
            errs.append(class_errs)
            out[f"bev_ap_{name}"] = torch.tensor(float(np.mean(class_aps)))
        if not aps:
            # No GT box of any class (e.g. a region whose labelled frames hold no object in range): every class is
            # left out, so mAP and the errors are undefined. NaN says so (left out of metrics.json, as for 2D mAP);
            # 0 / 1 would read as a model that missed everything there.
            keys = ["bev_map", *(f"bev_{k}" for k in _ERRORS), *(f"bev_map@{t:g}m" for t in self.dist_thresholds)]
            return {k: torch.tensor(float("nan")) for k in keys}
        ap_table, err_table = np.asarray(aps), np.asarray(errs)
        result = {"bev_map": torch.tensor(float(ap_table.mean()))}
        for k, key in enumerate(_ERRORS):
            column = err_table[:, k]
            # nanmean: AOE is NaN for orientation-less classes (and overall NaN if only those have GT).
            value = float(np.mean(column[~np.isnan(column)])) if (~np.isnan(column)).any() else float("nan")
            result[f"bev_{key}"] = torch.tensor(value)
        for t, threshold in enumerate(self.dist_thresholds):
            result[f"bev_map@{threshold:g}m"] = torch.tensor(float(ap_table[:, t].mean()))
        return {**result, **out}
