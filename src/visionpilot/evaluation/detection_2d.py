"""2D detection mAP (COCO): AP@0.5 and AP@[.5:.95], each camera image one COCO image.

The COCO evaluation itself is torchmetrics' :class:`~torchmetrics.detection.MeanAveragePrecision` (backend
``faster_coco_eval``, falling back to ``pycocotools``) — nothing here re-implements it. This class only keeps its
inputs in DDP-friendly states (flat, cat-reduced tensors, so ``merge_state`` and syncing work, which
``MeanAveragePrecision`` itself does not support for merging) and runs one local COCO evaluation at ``compute``.

Deviations: none in the evaluation. No ``iscrowd`` regions (all GT are regular instances); COCO's default of at
most 100 detections per image applies (``max_detections``). Predictions with a NaN / Inf score or box are no
detections and are dropped before it; ground-truth boxes must be finite.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.detection import MeanAveragePrecision

from visionpilot.data.vocab import OBJECT_CLASSES
from visionpilot.evaluation._common import (
    ArrayLike,
    box_rows,
    cat_state,
    check_finite_rows,
    check_per_row,
    to_numpy,
)

# faster-coco-eval logs a 12-line COCO summary at INFO on every evaluation — once per region per validation here,
# which buries the training and evaluation logs; the numbers are in metrics.json / eval.json.
logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)

# COCO's thresholds exactly as pycocotools builds them (float64). torchmetrics' defaults come from a float32
# torch.linspace (0.55000001, 0.60000002, ...), so an IoU of exactly 0.55 or a recall of exactly 3/5 would miss them.
COCO_IOU_THRESHOLDS: list[float] = np.linspace(0.5, 0.95, 10).tolist()
COCO_RECALL_THRESHOLDS: list[float] = np.linspace(0.0, 1.0, 101).tolist()


def coco_backend(preferred: str = "faster_coco_eval") -> str:
    """The COCO backend to use: ``preferred`` if importable, else the other one."""
    for name in (preferred, "faster_coco_eval", "pycocotools"):
        if importlib.util.find_spec(name) is not None:
            return name
    raise ModuleNotFoundError("2D mAP needs 'faster-coco-eval' or 'pycocotools'; install one (pip install "
                              "faster-coco-eval)")


class Detection2DMAP(Metric):
    """COCO mAP of 2D boxes, with per-class AP@0.5.

    Args:
        class_names: names of the label indices (the object vocabulary by default), used in per-class keys.
        score_threshold: predictions scoring below it are dropped (0 keeps a fixed-size top-K as it is).
        max_detections: detections kept per image by the COCO evaluation, highest scores first.
        class_metrics: also report ``det_ap50_<class>`` (read from the same evaluation, no extra cost).
        backend: ``faster_coco_eval`` or ``pycocotools``.

    ``compute()`` keys: ``det_map50`` (AP@0.5), ``det_map`` (AP@[.5:.95]), ``det_map75``, ``det_ap50_<class>`` for
    classes with ground truth. With no ground truth at all COCO's -1 is returned.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, class_names: Sequence[str] = OBJECT_CLASSES, score_threshold: float = 0.0,
                 max_detections: int = 100, class_metrics: bool = True, backend: str = "faster_coco_eval",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.class_names = list(class_names)
        self.score_threshold = float(score_threshold)
        self.max_detections = int(max_detections)
        self.class_metrics = class_metrics
        self.backend = coco_backend(backend)
        # Flat 1-D float states: every process gathers tensors of one rank and dtype, even one that saw no image.
        for name in ("pred_boxes", "pred_scores", "pred_labels", "pred_counts", "gt_boxes", "gt_labels", "gt_counts"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, pred_boxes: Sequence[ArrayLike], pred_scores: Sequence[ArrayLike],
               pred_labels: Sequence[ArrayLike], gt_boxes: Sequence[ArrayLike], gt_labels: Sequence[ArrayLike]
               ) -> None:
        """Accumulate a batch of images (a padded ``(I, K, ...)`` tensor works as a sequence of images).

        Args:
            pred_boxes: per image, (K, 4) ``x1, y1, x2, y2`` pixels; a box with NaN / Inf is no detection.
            pred_scores: per image, (K,) confidences; a non-finite score is no detection.
            pred_labels: per image, (K,) class indices; negative = padding.
            gt_boxes: per image, (G, 4) ``x1, y1, x2, y2`` pixels, finite.
            gt_labels: per image, (G,) class indices; negative = padding.
        """
        n = len(pred_boxes)
        if not len(pred_scores) == len(pred_labels) == len(gt_boxes) == len(gt_labels) == n:
            raise ValueError("Detection2DMAP.update: all arguments must list the same images, found lengths "
                             f"{[len(a) for a in (pred_boxes, pred_scores, pred_labels, gt_boxes, gt_labels)]}")
        images = []  # checked first, appended after: a bad image leaves the states as they were
        for i in range(n):
            where = f"Detection2DMAP.update, image {i}"
            boxes = box_rows(pred_boxes[i], 4, where, "pred_boxes")
            scores = to_numpy(pred_scores[i]).reshape(-1)
            labels = to_numpy(pred_labels[i]).reshape(-1)
            check_per_row(where, "pred_boxes", len(boxes), pred_scores=len(scores), pred_labels=len(labels))
            # A non-finite score cannot be ranked and a non-finite box cannot match: neither is a detection (COCO
            # would count a NaN box as a false positive, in one of the image's max_detections places).
            keep = (labels >= 0) & (scores >= self.score_threshold) & np.isfinite(scores)
            keep &= np.isfinite(boxes).all(axis=1)
            gt = box_rows(gt_boxes[i], 4, where, "gt_boxes")
            gt_cls = to_numpy(gt_labels[i]).reshape(-1)
            check_per_row(where, "gt_boxes", len(gt), gt_labels=len(gt_cls))
            check_finite_rows(where, "gt_boxes", gt, gt_cls >= 0)
            images.append((boxes[keep], labels[keep], scores[keep], gt[gt_cls >= 0], gt_cls[gt_cls >= 0]))
        for boxes, labels, scores, gt, gt_cls in images:
            self._append("pred", boxes, labels, scores)
            self._append("gt", gt, gt_cls)

    def _append(self, kind: str, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray | None = None) -> None:
        def as_tensor(a: np.ndarray | list[int]) -> Tensor:
            return torch.as_tensor(np.asarray(a, dtype=np.float32).reshape(-1), device=self.device)

        getattr(self, f"{kind}_boxes").append(as_tensor(boxes))
        getattr(self, f"{kind}_labels").append(as_tensor(labels))
        getattr(self, f"{kind}_counts").append(as_tensor([len(labels)]))
        if scores is not None:
            self.pred_scores.append(as_tensor(scores))

    def _images(self, kind: str) -> list[dict[str, Tensor]]:
        counts = cat_state(getattr(self, f"{kind}_counts")).long().cpu()
        boxes = cat_state(getattr(self, f"{kind}_boxes")).cpu().reshape(-1, 4).split(counts.tolist())
        labels = cat_state(getattr(self, f"{kind}_labels")).cpu().long().split(counts.tolist())
        out = [{"boxes": b, "labels": la} for b, la in zip(boxes, labels)]
        if kind == "pred":
            for d, s in zip(out, cat_state(self.pred_scores).cpu().split(counts.tolist())):
                d["scores"] = s
        return out

    def compute(self) -> dict[str, Tensor]:
        preds, targets = self._images("pred"), self._images("gt")
        # No ground-truth box: AP is undefined (COCO answers -1), and NaN says so (left out of metrics.json like every
        # undefined metric), where -1 would read as -100 points in tables, gains and plots.
        if not any(len(t["labels"]) for t in targets):
            nan = torch.tensor(float("nan"))
            return {"det_map50": nan, "det_map": nan.clone(), "det_map75": nan.clone()}
        # A local evaluation on the already-synced inputs: it must not sync again (each process would gather
        # copies of the same data).
        coco = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend=self.backend,
                                    iou_thresholds=COCO_IOU_THRESHOLDS, rec_thresholds=COCO_RECALL_THRESHOLDS,
                                    max_detection_thresholds=[1, 10, self.max_detections],
                                    extended_summary=self.class_metrics, sync_on_compute=False)
        coco.update(preds, targets)
        result = coco.compute()
        out = {k: torch.where(result[key] < 0, float("nan"), result[key].float())  # COCO's -1: undefined, as above
               for k, key in (("det_map50", "map_50"), ("det_map", "map"), ("det_map75", "map_75"))}
        if self.class_metrics:
            # precision: (iou thresholds, 101 recalls, classes, area ranges, max dets); -1 where undefined. COCO's
            # AP@0.5 for class k is the mean over recalls at IoU index 0, area "all", the largest max-dets.
            precision = result["precision"]
            classes = torch.cat([torch.cat([p["labels"] for p in preds]), torch.cat([t["labels"] for t in targets])])
            for k, label in enumerate(torch.unique(classes).tolist()):
                curve = precision[0, :, k, 0, -1]
                curve = curve[curve > -1]
                if len(curve) and 0 <= label < len(self.class_names):
                    out[f"det_ap50_{self.class_names[label]}"] = curve.mean().float()
        return out
