"""CULaneF1 against an independent transcription of the official CULane evaluation, on random lane sets.

The reference follows the C++ ``evaluate`` tool of the CULane / SCNN repository (``tools/lane_evaluation``):

- ``spline.cpp``: a lane of more than two points is densified by a natural cubic spline in chord length, solved
  here as the tool does (tridiagonal system by the Thomas algorithm, not scipy), ``times`` = 50 samples per
  segment, plus the last input point; samples are stored as ``Point2f`` (float32);
- ``lane_compare.cpp``: a lane with fewer than 2 points has similarity 0; each consecutive pair of points is drawn
  with ``cv::line`` (width 30, default 8-connected, the float point rounded to the nearest integer) on its own
  590x1640 canvas; IoU = intersection / union of the two masks;
- ``counter.cpp``: no GT -> every prediction an FP, no prediction -> every GT an FN; otherwise a maximum-weight
  one-to-one matching of the IoU matrix (scipy's Hungarian solver), a pair is a TP when IoU > 0.5;
  FP = predictions - TP, FN = GT - TP, summed over the images;
- ``lane_compare.cpp resize_lane``: lanes of another image size are scaled to 1640x590 (x and y separately).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from visionpilot.evaluation.lane_2d import CULaneF1, lane_iou_matrix

HEIGHT, WIDTH, LANE_WIDTH = 590, 1640, 30


def official_spline(points: np.ndarray, times: int = 50) -> np.ndarray:
    """``Spline::splineInterpTimes`` for more than two points (natural cubic spline in chord length)."""
    p = points.astype(np.float32).astype(np.float64)
    n = len(p)
    h = np.hypot(*(p[1:] - p[:-1]).T)  # (n-1,) chord lengths
    a, b, c = h[:-1].copy(), 2 * (h[:-1] + h[1:]), h[1:].copy()
    d = 6 * ((p[2:] - p[1:-1]) / h[1:, None] - (p[1:-1] - p[:-2]) / h[:-1, None])  # (n-2, 2)
    c[0], d[0] = c[0] / b[0], d[0] / b[0]
    for i in range(1, n - 2):  # forward sweep
        tmp = b[i] - a[i] * c[i - 1]
        c[i] = c[i] / tmp
        d[i] = (d[i] - a[i] * d[i - 1]) / tmp
    m = np.zeros((n, 2))  # second derivatives, 0 at both ends (natural)
    m[n - 2] = d[n - 3]
    for i in range(n - 4, -1, -1):  # back substitution
        m[i + 1] = d[i] - c[i] * m[i + 2]
    out = []
    for j in range(n - 1):
        bj = (p[j + 1] - p[j]) / h[j] - (2 * h[j] * m[j] + h[j] * m[j + 1]) / 6
        cj, dj = m[j] / 2, (m[j + 1] - m[j]) / (6 * h[j])
        t = (h[j] / times) * np.arange(times)[:, None]
        out.append(p[j] + bj * t + cj * t ** 2 + dj * t ** 3)
    out.append(p[-1:])
    return np.concatenate(out).astype(np.float32)


def official_mask(lane: np.ndarray) -> np.ndarray:
    pts = lane.astype(np.float32) if len(lane) == 2 else official_spline(lane)
    pts = np.rint(pts).astype(np.int64)  # Point2f -> Point: cvRound (half to even, as np.rint)
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    for p0, p1 in zip(pts[:-1], pts[1:]):
        cv2.line(mask, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), 1, LANE_WIDTH)
    return mask


def official_similarity(lane1: np.ndarray, lane2: np.ndarray) -> float:
    if len(lane1) < 2 or len(lane2) < 2:
        return 0.0
    m1, m2 = official_mask(lane1), official_mask(lane2)
    inter = float(np.sum(m1 * m2))
    union = float(m1.sum()) + float(m2.sum()) - inter
    return inter / union if union > 0 else 0.0  # both lanes off the image: the tool's 0/0 is NaN, never a match


def official_count(gts: list[np.ndarray], preds: list[np.ndarray]) -> tuple[int, int, int]:
    if not gts:
        return 0, len(preds), 0
    if not preds:
        return 0, 0, len(gts)
    sim = np.array([[official_similarity(g, p) for p in preds] for g in gts])
    rows, cols = linear_sum_assignment(sim, maximize=True)
    tp = int(np.sum(sim[rows, cols] > 0.5))
    return tp, len(preds) - tp, len(gts) - tp


def resize_lane(lane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return lane * [WIDTH / size[1], HEIGHT / size[0]]


def random_lane(rng: np.random.Generator) -> np.ndarray:
    """A CULane-like annotation: points on rows 10 px apart (subsampled), a smooth curve, maybe leaving the image."""
    n = int(rng.integers(2, 9))
    bottom = rng.uniform(300, 640)
    rows = np.sort(rng.choice(np.arange(bottom - 400, bottom, 10.0), size=n, replace=False))[::-1]
    x0, slope, bend = rng.uniform(-200, WIDTH + 200), rng.uniform(-2.5, 2.5), rng.uniform(-4e-3, 4e-3)
    dy = rows[0] - rows
    return np.stack([x0 + slope * dy + bend * dy ** 2, rows], axis=1)


def random_image(rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    gts = [random_lane(rng) for _ in range(int(rng.integers(0, 5)))]
    preds = []
    for g in gts:  # near copies, shifted around the 10-px IoU = 0.5 boundary, sometimes shortened
        if rng.random() < 0.8:
            p = g + rng.normal(0, 6, size=2)
            preds.append(p[: max(2, len(p) - int(rng.integers(0, 3)))])
    preds += [random_lane(rng) for _ in range(int(rng.integers(0, 3)))]  # strays
    if preds and rng.random() < 0.2:
        preds.append(preds[int(rng.integers(len(preds)))].copy())  # a duplicate prediction
    if rng.random() < 0.05:  # a one-point lane on each side: counted, never matched
        gts.append(random_lane(rng)[:1])
        preds.append(gts[-1].copy())
    if rng.random() < 0.1:
        preds = []
    rng.shuffle(preds)
    return gts, preds


@pytest.fixture(scope="module")
def random_images() -> list[tuple[list[np.ndarray], list[np.ndarray]]]:
    rng = np.random.default_rng(1234)
    return [random_image(rng) for _ in range(300)]


def test_iou_matrix_agrees_with_official_similarity(random_images: list) -> None:
    # Not bit-exact: the tool stores spline samples as float32 before rounding them to pixels, so about 1 lane in
    # 300 has a sample within 1e-4 px of a half pixel that rounds the other way (1-3 pixels of ~20000 differ).
    diffs = []
    for gts, preds in random_images[:80]:
        if not gts or not preds:
            continue
        ours = lane_iou_matrix(preds, gts, (HEIGHT, WIDTH))
        ref = np.array([[official_similarity(g, p) for g in gts] for p in preds])
        diffs.append(np.abs(ours - ref).max())
    assert len(diffs) > 40
    assert max(diffs) < 1e-3 and np.mean(np.asarray(diffs) == 0) > 0.9


def test_counts_agree_with_official_tool(random_images: list) -> None:
    metric = CULaneF1()
    metric.update([p for _, p in random_images], [g for g, _ in random_images])
    ref = np.sum([official_count(g, p) for g, p in random_images], axis=0)
    assert ref[0] > 100 and ref[1] > 50 and ref[2] > 50  # the set exercises all three counts
    assert (int(metric.tp), int(metric.fp), int(metric.fn)) == tuple(int(v) for v in ref)


def test_uniformly_resized_images_agree_with_official_tool(random_images: list) -> None:
    # An image resized to 820x295: the official tool scales the lanes back to 1640x590 (resize_lane).
    size = (295, 820)
    images = random_images[:100]
    metric = CULaneF1(image_size=size)
    metric.update([[p * 0.5 for p in preds] for _, preds in images], [[g * 0.5 for g in gts] for gts, _ in images])
    ref = np.sum([official_count([resize_lane(g * 0.5, size) for g in gts],
                                 [resize_lane(p * 0.5, size) for p in preds]) for gts, preds in images], axis=0)
    assert (int(metric.tp), int(metric.fp), int(metric.fn)) == tuple(int(v) for v in ref)


def test_culane_at_288x800_agrees_with_official_tool(random_images: list) -> None:
    # The usual lane input size (configs/data/culane.yaml): 1640x590 -> 800x288 scales x by 0.4878 and y by
    # 0.4881. The official tool maps the lanes back with resize_lane (x and y separately); so must the canvas.
    size = (288, 800)
    scale = np.array([size[1] / WIDTH, size[0] / HEIGHT])
    diffs = []
    for gts, preds in random_images[:100]:
        if gts and preds:
            ours = lane_iou_matrix([p * scale for p in preds], [g * scale for g in gts], size)
            ref = np.array([[official_similarity(resize_lane(g * scale, size), resize_lane(p * scale, size))
                             for g in gts] for p in preds])
            diffs.append(np.abs(ours - ref).max())
    assert max(diffs) < 1e-3 and np.mean(np.asarray(diffs) == 0) > 0.9
