"""TuSimple lane accuracy, FP and FN (the official ``LaneEval.bench`` of tusimple-benchmark ``evaluate/lane.py``).

Lanes are x coordinates sampled at fixed image rows ``h_samples`` (negative or NaN = no lane at that row).
For each image, with ``thresh = 20 px / cos(angle)`` per ground-truth lane (``angle`` from a least-squares fit of
x on y over its valid points, so steep lanes get a wider horizontal tolerance):

- the accuracy of a prediction against a GT lane is the fraction of *all* rows where both agree: both absent, or
  both present with ``|x_pred - x_gt| < thresh`` (the official code compares -100 placeholders, so rows absent in
  both count as correct);
- each GT lane takes its best accuracy over the predictions (not one-to-one); it is matched if that is >= 0.85,
  else it is a false negative; FP = predictions - matched GT lanes;
- image accuracy = sum of best accuracies / max(min(4, #GT), 1), where with more than 4 GT lanes the worst one is
  dropped from the sum and one FN forgiven; image FP rate = FP / #pred (0 without predictions), FN rate =
  FN / max(min(#GT, 4), 1);
- an image with more than #GT + 2 predictions scores accuracy 0, FP 0, FN 1;
- the reported accuracy / FP / FN are the means of the image values.

Rows are the label's own ``h_samples``, per image (the official script passes each label's; they differ between
the label files). Ground-truth lanes count exactly as the label lists them, a lane absent at every row included
(the official code compares its -100 placeholders); predicted lanes with no point are dropped, as the result
writers of LaneATT and CLRNet drop them (so fixed-size, padded predictions can be passed).

Other image widths scale the 20 px threshold by ``W / 1280`` (TuSimple images are 1280 px wide); the angle is
scale-invariant. ``tusimple_f1`` is the F1 that CLRNet and later papers report next to the official numbers
(``clrnet/utils/tusimple_metric.py``), from the mean rates: precision = 1 - FP, recall = (1 - FP) / (1 - FP + FN);
it is not official. The runtime rule of the benchmark (> 200 ms per image) does not apply here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from visionpilot.evaluation._common import ArrayLike, precision_recall_f1, to_numpy

#: The rows TuSimple samples lanes at (its 1280x720 images).
TUSIMPLE_H_SAMPLES: tuple[int, ...] = tuple(range(160, 720, 10))
TUSIMPLE_WIDTH = 1280


def _as_lanes(lanes: ArrayLike | Sequence[ArrayLike], num_rows: int, what: str, drop_empty: bool) -> np.ndarray:
    """(L, S) x coordinates with NaN where absent; with ``drop_empty``, lanes with no valid row are dropped."""
    arr = np.asarray(to_numpy(lanes) if len(lanes) else np.zeros((0, num_rows)), dtype=np.float64)
    if arr.size == 0:
        arr = arr.reshape(0, num_rows)
    if arr.ndim != 2 or arr.shape[1] != num_rows:
        raise ValueError(f"TuSimpleMetric.update: {what} must be (lanes, {num_rows}) x values, one per row of "
                         f"h_samples, found shape {tuple(arr.shape)}")
    arr = np.where(np.isfinite(arr) & (arr >= 0), arr, np.nan)
    return arr[np.isfinite(arr).any(axis=1)] if drop_empty else arr


def lane_angles(gt: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Angle (L,) of each lane from the slope of a least-squares line x = k*y + b over its valid rows (0 if < 2)."""
    valid = np.isfinite(gt)
    n = valid.sum(axis=1)
    y = np.where(valid, ys[None], 0.0)
    x = np.where(valid, gt, 0.0)
    y_mean = y.sum(axis=1) / np.maximum(n, 1)
    x_mean = x.sum(axis=1) / np.maximum(n, 1)
    dy = np.where(valid, ys[None] - y_mean[:, None], 0.0)
    dx = np.where(valid, gt - x_mean[:, None], 0.0)
    var = (dy * dy).sum(axis=1)
    slope = np.where((n > 1) & (var > 0), (dy * dx).sum(axis=1) / np.where(var > 0, var, 1.0), 0.0)
    return np.arctan(slope)


def tusimple_image(pred: np.ndarray, gt: np.ndarray, ys: np.ndarray, pixel_threshold: float = 20.0,
                   point_threshold: float = 0.85) -> tuple[float, float, float, int]:
    """Official per-image (accuracy, FP rate, FN rate) and the number of matched GT lanes.

    Args:
        pred, gt: (L, S) x at the rows ``ys``, NaN where absent.
    """
    n_pred, n_gt = len(pred), len(gt)
    if n_gt + 2 < n_pred:
        return 0.0, 0.0, 1.0, 0
    thresh = pixel_threshold / np.cos(lane_angles(gt, ys))  # (G,)
    if n_pred and n_gt:
        p, g = pred[None], gt[:, None]  # (1, P, S), (G, 1, S)
        both_absent = np.isnan(p) & np.isnan(g)
        close = np.abs(np.nan_to_num(p, nan=-1e9) - np.nan_to_num(g, nan=1e9)) < thresh[:, None, None]
        acc = (both_absent | close).mean(axis=2)  # (G, P)
        best = acc.max(axis=1)
    else:
        best = np.zeros(n_gt)
    matched = int(np.count_nonzero(best >= point_threshold))
    fn = n_gt - matched
    fp = n_pred - matched
    total = float(best.sum())
    if n_gt > 4:
        fn = fn - 1 if fn > 0 else fn
        total -= float(best.min())
    accuracy = total / max(min(4.0, n_gt), 1.0)
    return accuracy, (fp / n_pred if n_pred else 0.0), fn / max(min(n_gt, 4.0), 1.0), matched


class TuSimpleMetric(Metric):
    """TuSimple accuracy / FP / FN (official, see the module docstring) plus a count-based F1.

    Args:
        h_samples: the image rows the lanes are sampled at.
        image_width: width of the evaluated images; the pixel threshold scales by ``image_width / 1280``.
        pixel_threshold: horizontal tolerance at 1280 px width (20 in TuSimple).
        point_threshold: accuracy a GT lane needs to count as detected (0.85 in TuSimple).

    ``compute()`` keys: ``tusimple_accuracy``, ``tusimple_fp``, ``tusimple_fn``, ``tusimple_f1`` (CLRNet's, from
    the mean FP and FN rates).
    """

    full_state_update = False
    is_differentiable = False

    def __init__(self, h_samples: Sequence[float] = TUSIMPLE_H_SAMPLES, image_width: int = TUSIMPLE_WIDTH,
                 pixel_threshold: float = 20.0, point_threshold: float = 0.85, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.h_samples = np.asarray(h_samples, dtype=np.float64)
        self.pixel_threshold = float(pixel_threshold) * image_width / TUSIMPLE_WIDTH
        self.point_threshold = float(point_threshold)
        for name in ("accuracy_sum", "fp_sum", "fn_sum"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("images", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[ArrayLike], targets: Sequence[ArrayLike],
               h_samples: Sequence[Sequence[float]] | None = None) -> None:
        """Accumulate a batch of images.

        Args:
            preds: per image, (L, S) predicted x at the image's rows (negative or NaN = absent).
            targets: per image, (L, S) ground-truth x in the same form (the label's ``lanes``).
            h_samples: per image, the S rows (the label's ``h_samples``); None: the metric's ``h_samples``.
        """
        if len(preds) != len(targets) or (h_samples is not None and len(h_samples) != len(preds)):
            raise ValueError(f"TuSimpleMetric.update: preds, targets (and h_samples) must list the same images, "
                             f"found {len(preds)}, {len(targets)}"
                             + ("" if h_samples is None else f" and {len(h_samples)}"))
        sums = np.zeros(3)
        for k, (pred, target) in enumerate(zip(preds, targets)):
            ys = self.h_samples if h_samples is None else np.asarray(h_samples[k], dtype=np.float64)
            p = _as_lanes(pred, len(ys), f"preds[{k}]", drop_empty=True)
            g = _as_lanes(target, len(ys), f"targets[{k}]", drop_empty=False)
            sums += tusimple_image(p, g, ys, self.pixel_threshold, self.point_threshold)[:3]
        self.accuracy_sum += float(sums[0])
        self.fp_sum += float(sums[1])
        self.fn_sum += float(sums[2])
        self.images += len(preds)

    def compute(self) -> dict[str, Tensor]:
        n = self.images.clamp(min=1).double()
        fp, fn = self.fp_sum / n, self.fn_sum / n
        _, _, f1 = precision_recall_f1(1.0 - fp, fp, fn)  # CLRNet's: rates as counts, tp = 1 - fp
        return {"tusimple_accuracy": (self.accuracy_sum / n).float(), "tusimple_fp": fp.float(),
                "tusimple_fn": fn.float(), "tusimple_f1": f1}
