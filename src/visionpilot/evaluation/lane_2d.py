"""CULane lane F1: image-space lanes as 30-px-wide masks, IoU, Hungarian matching, TP at IoU > 0.5.

Definition followed: the official CULane evaluation (SCNN ``tools/lane_evaluation``: ``lane_compare.cpp``,
``counter.cpp``, ``spline.cpp``). For each image:

1. every lane with more than two points is densified by a natural cubic spline parameterised by chord length,
   50 samples per segment (two-point lanes are used as they are);
2. consecutive samples, rounded to integer pixels, are joined with ``cv2.line`` of width 30 on a 1640x590 canvas;
3. IoU of two lanes = |A and B| / |A or B| over their masks;
4. ground truth and predictions are matched one-to-one by the Hungarian algorithm maximising the summed IoU
   (:func:`scipy.optimize.linear_sum_assignment`), and a matched pair is a true positive when IoU > 0.5;
5. FP = predictions - TP, FN = ground truth - TP; precision, recall and F1 come from the counts summed over all
   images.

Other image sizes. The 30 px width belongs to 1640-px-wide images, so the line width scales with image width:
``30 * W / 1640`` pixels of the evaluated image. By default the lanes are drawn on a canvas ``canvas_width`` (1640)
pixels wide and ``round(H * 1640 / W)`` high, the image mapped onto it edge to edge (so the width is exactly 30
canvas px, and x and y scales differ by under half a pixel over the height); for a resized CULane image (e.g. the
usual 800x288 input) this is the official tool's ``resize_lane`` back to 1640x590, and it avoids the quantisation
of a thin line on a small image. With ``canvas_width=None`` the lanes are drawn at the evaluated size with width
``max(1, round(30*W/1640))``.

A lane of a single point counts (an FP or an FN) but has IoU 0 with every lane, as in the official tool.

Deviation: lanes with no finite point (padding of a fixed-size output) are dropped rather than counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch
from scipy.interpolate import CubicSpline
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchmetrics import Metric

from visionpilot.evaluation._common import ArrayLike, clean_polylines, precision_recall_f1

#: CULane's image size (height, width) and lane width in pixels at that size.
CULANE_IMAGE_SIZE: tuple[int, int] = (590, 1640)
CULANE_LANE_WIDTH: float = 30.0


def interpolate_lane(points: np.ndarray, times: int = 50) -> np.ndarray:
    """Densify a lane (P, 2) as CULane does: a natural cubic spline in chord length, ``times`` samples per segment.

    Two-point lanes are returned unchanged (the official code draws them as one segment).
    """
    pts = np.asarray(points, dtype=np.float64)
    if len(pts) > 1:  # repeated points make zero-length chords, which the spline cannot parameterise
        pts = pts[np.concatenate([[True], np.linalg.norm(np.diff(pts, axis=0), axis=1) > 0])]
    if len(pts) <= 2:
        return pts
    chord = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    spline = CubicSpline(chord, pts, axis=0, bc_type="natural")
    t = (chord[:-1, None] + np.diff(chord)[:, None] * (np.arange(times) / times)[None]).reshape(-1)
    return spline(np.concatenate([t, chord[-1:]]))


def draw_lane(points: np.ndarray, canvas_size: tuple[int, int], width: int
              ) -> tuple[np.ndarray, tuple[int, int]]:
    """A lane drawn through its interpolated points with line width ``width`` on a canvas (H, W).

    Returns:
        The mask (uint8, 0/1) of the canvas region around the lane, and that region's (row, column) offset — lanes
        are thin, so masks of their bounding boxes keep drawing and intersections cheap.
    """
    height, width_px = canvas_size
    pts = np.round(interpolate_lane(points)).astype(np.int32)
    if len(pts) == 1:
        pts = np.concatenate([pts, pts])
    pad = int(width) // 2 + 2
    c0, r0 = np.clip(pts.min(axis=0) - pad, 0, [width_px, height])
    c1, r1 = np.clip(pts.max(axis=0) + pad + 1, 0, [width_px, height])
    mask = np.zeros((max(r1 - r0, 0), max(c1 - c0, 0)), dtype=np.uint8)
    if mask.size:
        shifted = (pts - [c0, r0]).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(mask, [shifted], isClosed=False, color=1, thickness=int(width), lineType=cv2.LINE_8)
    return mask, (int(r0), int(c0))


def lane_iou_matrix(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray], image_size: tuple[int, int],
                    lane_width: float = CULANE_LANE_WIDTH, canvas_width: int | None = CULANE_IMAGE_SIZE[1]
                    ) -> np.ndarray:
    """IoU (P, G) between predicted and ground-truth lanes of one image.

    Args:
        preds, gts: (N, 2) pixel polylines (u, v) of the evaluated image.
        image_size: (height, width) of the evaluated image.
        lane_width: the line width at a 1640-px-wide image (30 for CULane).
        canvas_width: draw on a canvas this wide (image scaled isotropically); None draws at the image size.
    """
    height, width = image_size
    if canvas_width is None:
        canvas, line = (height, width), max(1, round(lane_width * width / CULANE_IMAGE_SIZE[1]))
    else:
        canvas = (max(1, round(height * canvas_width / width)), int(canvas_width))
        line = max(1, round(lane_width * canvas_width / CULANE_IMAGE_SIZE[1]))
    # The image is mapped onto the whole canvas, edge to edge: x and y scale apart by under half a canvas pixel over
    # the height, and an 800x288 CULane input goes back onto 1640x590 exactly as the official ``resize_lane`` does.
    scale = np.array([canvas[1] / width, canvas[0] / height])
    drawn = [draw_lane(np.asarray(lane) * scale, canvas, line) for lane in [*preds, *gts]]
    areas = [int(m.sum()) for m, _ in drawn]
    # A one-point lane still counts, but its similarity is 0, as in the official ``get_lane_similarity``.
    short = [len(lane) < 2 for lane in [*preds, *gts]]
    n_pred = len(preds)
    iou = np.zeros((n_pred, len(gts)))
    for i in range(n_pred):
        (ma, (ra, ca)), area_a = drawn[i], areas[i]
        for j in range(len(gts)):
            (mb, (rb, cb)), area_b = drawn[n_pred + j], areas[n_pred + j]
            if short[i] or short[n_pred + j]:
                continue
            r0, c0 = max(ra, rb), max(ca, cb)  # overlap of the two regions, in canvas pixels
            r1, c1 = min(ra + ma.shape[0], rb + mb.shape[0]), min(ca + ma.shape[1], cb + mb.shape[1])
            if r0 >= r1 or c0 >= c1:
                continue
            inter = np.count_nonzero(ma[r0 - ra:r1 - ra, c0 - ca:c1 - ca] & mb[r0 - rb:r1 - rb, c0 - cb:c1 - cb])
            union = area_a + area_b - inter
            iou[i, j] = inter / union if union > 0 else 0.0
    return iou


def match_lanes(iou: np.ndarray, iou_threshold: float = 0.5) -> tuple[int, int, int]:
    """(TP, FP, FN) of one image from its (P, G) IoU matrix: Hungarian matching, TP when IoU > threshold."""
    n_pred, n_gt = iou.shape
    if n_pred == 0 or n_gt == 0:
        return 0, n_pred, n_gt
    rows, cols = linear_sum_assignment(iou, maximize=True)
    tp = int(np.count_nonzero(iou[rows, cols] > iou_threshold))
    return tp, n_pred - tp, n_gt - tp


class CULaneF1(Metric):
    """CULane lane precision / recall / F1 (see the module docstring for the definition and size scaling).

    Args:
        image_size: (height, width) of the evaluated images.
        lane_width: line width at 1640 px image width (30 in CULane).
        iou_threshold: a matched pair is a TP when IoU is strictly above this (0.5 in CULane).
        canvas_width: width of the drawing canvas (1640 = CULane's), or None to draw at ``image_size``.

    ``compute()`` keys: ``lane_precision``, ``lane_recall``, ``lane_f1``, and counts ``lane_tp``, ``lane_fp``,
    ``lane_fn``.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, image_size: tuple[int, int] = CULANE_IMAGE_SIZE, lane_width: float = CULANE_LANE_WIDTH,
                 iou_threshold: float = 0.5, canvas_width: int | None = CULANE_IMAGE_SIZE[1], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.lane_width = float(lane_width)
        self.iou_threshold = float(iou_threshold)
        self.canvas_width = canvas_width
        for name in ("tp", "fp", "fn"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[Sequence[ArrayLike]], targets: Sequence[Sequence[ArrayLike]]) -> None:
        """Accumulate a batch of images.

        Args:
            preds: per image, its predicted lanes, each (P, 2) pixel points (u, v); NaN points are ignored.
            targets: per image, its ground-truth lanes in the same form.
        """
        if len(preds) != len(targets):
            raise ValueError(f"CULaneF1.update: preds and targets must list the same images, "
                             f"found {len(preds)} and {len(targets)}")
        counts = np.zeros(3, dtype=np.int64)
        for pred, target in zip(preds, targets):
            p, _ = clean_polylines(pred)
            g, _ = clean_polylines(target)
            iou = lane_iou_matrix(p, g, self.image_size, self.lane_width, self.canvas_width)
            counts += match_lanes(iou, self.iou_threshold)
        self.tp += int(counts[0])
        self.fp += int(counts[1])
        self.fn += int(counts[2])

    def compute(self) -> dict[str, Tensor]:
        precision, recall, f1 = precision_recall_f1(self.tp, self.fp, self.fn)
        return {"lane_precision": precision, "lane_recall": recall, "lane_f1": f1,
                "lane_tp": self.tp.clone(), "lane_fp": self.fp.clone(), "lane_fn": self.fn.clone()}
