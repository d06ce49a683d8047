"""Detection2DMAP against a direct COCO ``bbox`` evaluation written from the COCO definition (pycocotools'
``COCOeval.evaluateImg`` / ``accumulate``), on hand-made cases with known answers and on random sets.

COCO, as transcribed here: per class and image, detections sorted by score and cut to ``maxDets`` (100); each
detection, in score order, takes the unmatched ground truth of highest IoU when that IoU >= t (t = 0.50, 0.55, ...,
0.95); per class all images' detections are ranked by score, precision is made monotone from the right and sampled
at 101 recall points (0 beyond the last recall); AP = their mean; mAP = the mean over classes with ground truth
(and over the 10 thresholds for AP@[.5:.95]). Boxes ``x1, y1, x2, y2`` in pixels, area = w * h (no +1).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visionpilot.evaluation.detection_2d import Detection2DMAP

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def coco_ap(images: list[dict[str, np.ndarray]], label: int, t: float, max_dets: int = 100) -> float | None:
    """AP of one class at one IoU threshold; None when the class has no ground truth."""
    scores, hits, num_gt = [], [], 0
    for img in images:
        gt = img["gt_boxes"][img["gt_labels"] == label]
        keep = img["labels"] == label
        order = np.argsort(-img["scores"][keep], kind="mergesort")[:max_dets]
        dt, sc = img["boxes"][keep][order], img["scores"][keep][order]
        num_gt += len(gt)
        matched = np.zeros(len(gt), bool)
        iou = box_iou(dt, gt) if len(dt) and len(gt) else np.zeros((len(dt), len(gt)))
        for d in range(len(dt)):
            best, m = min(t, 1 - 1e-10), -1
            for g in range(len(gt)):
                if not matched[g] and iou[d, g] >= best:
                    best, m = iou[d, g], g
            if m >= 0:
                matched[m] = True
            hits.append(m >= 0)
            scores.append(sc[d])
    if num_gt == 0:
        return None
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    tp = np.cumsum(np.asarray(hits, dtype=float)[order])
    fp = np.cumsum(1.0 - np.asarray(hits, dtype=float)[order])
    recall = tp / num_gt
    precision = np.maximum.accumulate((tp / np.maximum(tp + fp, np.spacing(1)))[::-1])[::-1]
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.array([precision[i] if i < len(precision) else 0.0 for i in idx])
    return float(sampled.mean())


def coco_map(images: list[dict[str, np.ndarray]], thresholds: np.ndarray) -> float:
    labels = np.unique(np.concatenate([np.concatenate([i["labels"], i["gt_labels"]]) for i in images]))
    aps = [coco_ap(images, int(c), float(t)) for t in thresholds for c in labels]
    aps = [a for a in aps if a is not None]
    return float(np.mean(aps)) if aps else -1.0


def run_metric(images: list[dict[str, np.ndarray]]) -> dict[str, float]:
    metric = Detection2DMAP(class_metrics=False)
    metric.update(*([torch.as_tensor(i[k]) for i in images]
                    for k in ("boxes", "scores", "labels", "gt_boxes", "gt_labels")))
    return {k: float(v) for k, v in metric.compute().items()}


def image(boxes: list, scores: list, labels: list, gt_boxes: list, gt_labels: list) -> dict[str, np.ndarray]:
    return {"boxes": np.asarray(boxes, np.float64).reshape(-1, 4), "scores": np.asarray(scores, np.float64),
            "labels": np.asarray(labels, np.int64), "gt_boxes": np.asarray(gt_boxes, np.float64).reshape(-1, 4),
            "gt_labels": np.asarray(gt_labels, np.int64)}


def test_labelled_empty_image_counts_its_false_positives() -> None:
    # Image A: one GT, hit with score 0.5. Image B: labelled, no object, a 0.9 detection -> ranked FP then TP:
    # precision 1/2 at recall 1 -> AP = 0.5 at every threshold. Without image B, AP = 1.
    a = image([[0, 0, 10, 10]], [0.5], [0], [[0, 0, 10, 10]], [0])
    b = image([[50, 50, 60, 60]], [0.9], [0], [], [])
    assert run_metric([a, b])["det_map50"] == pytest.approx(0.5, abs=1e-6) == coco_map([a, b], IOU_THRESHOLDS[:1])
    assert run_metric([a])["det_map"] == pytest.approx(1.0)


def test_iou_exactly_at_threshold_is_a_match_and_classes_without_gt_are_skipped() -> None:
    # [0,0,100,100] vs [0,0,100,50]: IoU exactly 0.5 -> a TP at 0.5 only (COCO: IoU >= t). A class 3 detection
    # with no class 3 GT anywhere does not enter the mean.
    img = image([[0, 0, 100, 50], [0, 0, 5, 5]], [0.8, 0.9], [0, 3], [[0, 0, 100, 100]], [0])
    out = run_metric([img])
    assert out["det_map50"] == pytest.approx(1.0)
    assert out["det_map"] == pytest.approx(0.1)
    assert out["det_map"] == pytest.approx(coco_map([img], IOU_THRESHOLDS), abs=1e-6)


@pytest.mark.filterwarnings("ignore:Encountered more than 100 detections")
def test_max_100_detections_per_image() -> None:
    # 100 higher-scoring misses, then the only hit: cut by maxDets=100 -> AP 0.
    misses = [[200 + i, 200, 210 + i, 210] for i in range(100)]
    img = image([*misses, [0, 0, 10, 10]], [*np.linspace(0.99, 0.5, 100), 0.1], [0] * 101, [[0, 0, 10, 10]], [0])
    assert run_metric([img])["det_map50"] == pytest.approx(0.0) == coco_map([img], IOU_THRESHOLDS[:1])


def random_images(rng: np.random.Generator, n: int) -> list[dict[str, np.ndarray]]:
    out = []
    for _ in range(n):
        g = int(rng.integers(0, 6))
        xy = rng.uniform(0, 500, (g, 2))
        gt = np.concatenate([xy, xy + rng.uniform(8, 120, (g, 2))], axis=1)
        gl = rng.integers(0, 3, g)
        hit = rng.random(g) < 0.7
        jitter = gt[hit] + rng.normal(0, 1, (hit.sum(), 4)) * (gt[hit, 2:] - gt[hit, :2]).repeat(2, 0).reshape(
            -1, 4) * 0.08
        pl = np.where(rng.random(hit.sum()) < 0.9, gl[hit], rng.integers(0, 4, hit.sum()))
        k = int(rng.integers(0, 4))
        xy = rng.uniform(0, 500, (k, 2))
        stray = np.concatenate([xy, xy + rng.uniform(8, 120, (k, 2))], axis=1)
        boxes = np.concatenate([jitter, stray]).reshape(-1, 4)
        boxes = np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:] - 1), boxes[:, 2:]], axis=1)
        out.append({"boxes": boxes, "scores": rng.random(len(boxes)), "gt_boxes": gt, "gt_labels": gl,
                    "labels": np.concatenate([pl, rng.integers(0, 4, k)]).astype(np.int64)})
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_random_sets_agree_with_direct_coco(seed: int) -> None:
    images = random_images(np.random.default_rng(seed), 40)
    out = run_metric(images)
    assert out["det_map50"] == pytest.approx(coco_map(images, IOU_THRESHOLDS[:1]), abs=1e-5)
    assert out["det_map75"] == pytest.approx(coco_map(images, IOU_THRESHOLDS[5:6]), abs=1e-5)
    assert out["det_map"] == pytest.approx(coco_map(images, IOU_THRESHOLDS), abs=1e-5)
