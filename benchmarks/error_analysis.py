"""Where a trained model's 2D lanes and 2D boxes go wrong: the error analysis behind docs/benchmarks.md.

    python benchmarks/error_analysis.py runs/demo/checkpoints/last.ckpt [--regions cn de gb in sg us] [--split val]

Runs the checkpoint over the split of the regions (its own data config, as ``visionpilot-eval`` does) and prints:

- 2D lanes, from the evaluator's own per-image lists (``PerceptionEvaluator.lane_images``: slot assignment;
  then CULane IoU of lanes drawn 30 px wide at 1640 x 590 scaled to the image, Hungarian matching at IoU 0.5):
  F1 at existence thresholds 0.3-0.7 (flat: existence is not the problem; rising or falling: it is), the IoU of
  the matched pairs, the best IoU every ground-truth line gets from any slot whatever its existence (a line found
  but 1-2 px off scores 0.3-0.5), the type given to each matched line against its true type, F1 per camera and
  recall per slot (slots are ordered left to right);
- 2D boxes (``PerceptionEvaluator.box_images``; COCO through torchmetrics, as the evaluator): AP@0.5 and recall
  per class, AP@0.5 by ground-truth height, and for boxes at least 16 px tall how far the prediction that overlaps
  each most is off (centre error / size, log size ratio, right class, score); and AP@0.5 with every class merged
  into one (how much of the gap is the class, not the box);
- BEV boxes (models with the bird's-eye-view box head; ``PerceptionEvaluator.bev_box_frames``, nuScenes' class
  ranges applied as the evaluator does): mAP at each centre distance, the same detections with every class merged
  into one, and per class AP at each distance, recall at 4 m of all the top-K predictions, and what the confident
  false positives are (on another class's object: the class; near one of their own already found: a duplicate
  peak; elsewhere);
- BEV lanes (models with the bird's-eye-view branch): per lane type the ground truth's and the prediction's cells,
  the IoU at probability thresholds 0.3 and 0.5 (the metric's), and what the model predicts on each type's cells
  (the most probable type where one reaches 0.5, or none); then at 0.5 by distance from the ego (cell centres in
  10 m rings): the mean IoU over types, and the IoU with the types merged into one "lane" mask (how much of the
  gap is the type, not the place).

Labels and predictions are the evaluator's: a model scoring ``val/lane_f1`` 0.556 in training prints F1 0.556 at
threshold 0.5 here on the same frames.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torchmetrics.detection import MeanAveragePrecision
from torchvision.ops import box_iou

from visionpilot.data.vocab import LANE_TYPES, OBJECT_CLASSES
from visionpilot.evaluation.cross_region import build_eval_datamodule, build_evaluator, torch_decoder
from visionpilot.evaluation.detection_bev import NUSCENES_CLASS_RANGES, BevDetectionMetric, greedy_center_match
from visionpilot.evaluation.lane_2d import lane_iou_matrix, match_lanes
from visionpilot.evaluation.lanes_bev import BevGrid, rasterize_lane_batch
from visionpilot.training.checkpoints import load_checkpoint


def quantiles(values: np.ndarray, qs: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)) -> str:
    return " / ".join(f"{v:.2f}" for v in np.quantile(values, qs)) + "  (10/25/50/75/90 %)"


BEV_THRESHOLDS = (0.3, 0.5)
#: Per class index, the ego distance (m) the evaluator scores BEV boxes within (nuScenes' class ranges).
RANGES = np.array([NUSCENES_CLASS_RANGES[name] for name in OBJECT_CLASSES])


class BevLaneCounts:
    """Cell counts per lane type over the frames seen: ground truth, prediction and overlap at each threshold, for
    each type's ground-truth cells the most probable type where one reaches 0.5 (last column: none does), and at 0.5
    the overlap per ring of ``ring_m`` metres around the ego, per type and with the types merged."""

    def __init__(self, grid: BevGrid, line_width: float, ring_m: float = 10.0) -> None:
        self.grid, self.line_width, t, n = grid, line_width, len(LANE_TYPES), len(BEV_THRESHOLDS)
        self.gt, self.confusion = np.zeros(t), np.zeros((t, t + 1))
        self.pred, self.inter, self.union = np.zeros((n, t)), np.zeros((n, t)), np.zeros((n, t))
        # Each cell's ring (ring_m metres wide) by its centre's distance from the ego, as many as fit inside the grid;
        # the last one takes the rest (the corners).
        self.ring_m = float(ring_m)
        x = grid.x_min + (np.arange(grid.shape[0]) + 0.5) * grid.resolution
        y = grid.y_min + (np.arange(grid.shape[1]) + 0.5) * grid.resolution
        dist = np.hypot(x[:, None], y[None, :])
        self.num_rings = max(1, int(min(-grid.x_min, grid.x_max, -grid.y_min, grid.y_max) // self.ring_m))
        self.ring = torch.from_numpy(np.minimum(dist // self.ring_m, self.num_rings - 1).astype(np.int64))  # (X, Y)
        r = self.num_rings
        # At probability 0.5, per ring: per type (r, t), and the types merged into one lane mask (r,).
        self.ring_inter, self.ring_union = np.zeros((r, t)), np.zeros((r, t))
        self.any_inter, self.any_union, self.any_gt = np.zeros(r), np.zeros(r), np.zeros(r)

    def update(self, batch: dict, prob: torch.Tensor) -> None:
        t = len(LANE_TYPES)
        frames = batch["has_lanes_3d"].bool()
        # The evaluator's ground truth: the head's own rasteriser (evaluation/lanes_bev.py).
        gt = rasterize_lane_batch(batch["lanes_3d"], batch["lanes_3d_valid"], batch["lanes_3d_types"], self.grid, t,
                                  self.line_width)[frames]
        prob = prob.float()[frames]
        self.gt += gt.sum(dim=(0, 2, 3)).numpy()
        for i, th in enumerate(BEV_THRESHOLDS):
            pred = prob >= th
            self.pred[i] += pred.sum(dim=(0, 2, 3)).numpy()
            self.inter[i] += (pred & gt).sum(dim=(0, 2, 3)).numpy()
            self.union[i] += (pred | gt).sum(dim=(0, 2, 3)).numpy()
        best, top = prob.max(dim=1)  # (F, X, Y)
        top = torch.where(best >= 0.5, top, torch.full_like(top, t))
        for k in range(t):
            self.confusion[k] += np.bincount(top[gt[:, k]].numpy(), minlength=t + 1)
        pred = prob >= 0.5
        r, ring = self.num_rings, self.ring.flatten()

        def per_ring(mask: torch.Tensor) -> np.ndarray:  # (F, X, Y) -> cells per ring
            return np.bincount(ring[None].expand(mask.shape[0], -1)[mask.flatten(1)].numpy(), minlength=r)

        for k in range(t):
            self.ring_inter[:, k] += per_ring(pred[:, k] & gt[:, k])
            self.ring_union[:, k] += per_ring(pred[:, k] | gt[:, k])
        pred_any, gt_any = pred.any(dim=1), gt.any(dim=1)
        self.any_inter += per_ring(pred_any & gt_any)
        self.any_union += per_ring(pred_any | gt_any)
        self.any_gt += per_ring(gt_any)


def collect(ckpt: str, regions: list[str], split: str) -> tuple[list, list, list, list, BevLaneCounts | None, list]:
    """The evaluator's lane images (plus their camera name), box predictions and box ground truth; the image size;
    BEV lane cell counts (None without the BEV lane head); the BEV box frames (empty without the BEV box head)."""
    loaded = load_checkpoint(ckpt)
    dm = build_eval_datamodule(loaded, regions)
    dm.setup("validate")  # both splits, as visionpilot-eval sets them up
    loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
    ev = build_evaluator(loaded, regions, loaded.image_size, loaded.camera_names)  # training's lane settings
    decode = torch_decoder(loaded.net)
    lane_images, box_preds, box_gts, bev_frames = [], [], [], []
    bev = getattr(loaded.net, "bev", None)
    has_lanes = bev is not None and "lanes" in bev.heads and ev.bev_grid is not None
    bev_lanes = BevLaneCounts(ev.bev_grid, ev.bev_line_width) if has_lanes else None
    for batch in loader:
        d = decode(batch)
        if bev_lanes is not None and "bev.lanes_seg_prob" in d:
            bev_lanes.update(batch, d["bev.lanes_seg_prob"])
        if "lanes_2d.points" in d:
            lane_images += [{**img, "camera": loaded.camera_names[img["n"]]} for img in ev.lane_images(batch, d)]
        if "objects_2d.boxes" in d:
            for img in ev.box_images(batch, d):
                box_preds.append({"boxes": img["boxes"], "scores": img["scores"], "labels": img["labels"].long()})
                box_gts.append({"boxes": img["gt_boxes"], "labels": img["gt_labels"].long()})
        if "bev.objects_boxes" in d:
            bev_frames += ev.bev_box_frames(batch, d)
    return lane_images, box_preds, box_gts, [loaded.image_size], bev_lanes, bev_frames


def lanes_report(images: list[dict], image_size: tuple[int, int]) -> dict[str, float]:
    """Print the lane analysis; return the F1 at each existence threshold (``f1@0.5`` is the evaluator's lane F1)."""
    out = {}
    for img in images:
        img["iou"] = lane_iou_matrix(img["preds"], img["gts"], image_size)  # (preds, gts)
    n_gt = sum(len(img["gts"]) for img in images)
    print(f"\n2D lanes: {len(images)} lane-camera images, {n_gt} ground-truth lines")

    def f1(images: list[dict], threshold: float) -> tuple[int, int, int]:
        tp = fp = fn = 0
        for img in images:
            t, f, n = match_lanes(img["iou"][img["exist"] >= threshold], 0.5)
            tp, fp, fn = tp + t, fp + f, fn + n
        return tp, fp, fn

    for th in (0.3, 0.4, 0.5, 0.6, 0.7):
        tp, fp, fn = f1(images, th)
        out[f"f1@{th}"] = 2 * tp / max(2 * tp + fp + fn, 1)
        print(f"  existence >= {th}: precision {tp / max(tp + fp, 1):.3f} recall {tp / max(tp + fn, 1):.3f} "
              f"F1 {2 * tp / max(2 * tp + fp + fn, 1):.3f}")
    matched, best, type_pairs = [], [], []  # type_pairs: (true, given) of the pairs the F1 counts (IoU > 0.5)
    for img in images:
        keep = img["exist"] >= 0.5
        iou = img["iou"][keep]
        if iou.size:
            r, c = linear_sum_assignment(iou, maximize=True)
            matched += iou[r, c].tolist()
            if img.get("types") is not None and img.get("gt_types") is not None:
                hit = iou[r, c] > 0.5
                type_pairs += zip(img["gt_types"][c[hit]].tolist(), img["types"][keep][r[hit]].tolist())
        best += img["iou"].max(0).tolist() if img["iou"].shape[0] else [0.0] * len(img["gts"])
    matched, best = np.asarray(matched), np.asarray(best)
    print(f"  Hungarian-matched pairs (existence >= 0.5): {len(matched)}, IoU <= 0.5: {(matched <= 0.5).sum()}")
    out.update(lane_types_report(type_pairs))
    if not len(best):
        return out
    print(f"  best IoU of each GT line over all slots: > 0.5 {np.mean(best > 0.5):.3f}, 0.3-0.5 "
          f"{np.mean((best > 0.3) & (best <= 0.5)):.3f}, <= 0.3 {np.mean(best <= 0.3):.3f}")
    per_camera: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    per_slot: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for img in images:
        keep = img["exist"] >= 0.5
        counts = per_camera[img["camera"]]
        for k, v in enumerate(match_lanes(img["iou"][keep], 0.5)):
            counts[k] += v
        for j, slot in enumerate(img["gt_slots"]):
            col = img["iou"][keep][:, j] if keep.any() else np.zeros(0)
            per_slot[slot][0] += int(col.size > 0 and col.max() > 0.5)
            per_slot[slot][1] += 1
    for cam, (tp, fp, fn) in per_camera.items():
        print(f"  {cam}: F1 {2 * tp / max(2 * tp + fp + fn, 1):.3f} ({tp} TP, {fp} FP, {fn} FN)")
    print("  recall per GT slot (left to right): "
          + ", ".join(f"{s}: {a / b:.2f} of {b}" for s, (a, b) in sorted(per_slot.items())))
    return out


def boxes_report(preds: list[dict], gts: list[dict]) -> dict[str, float]:
    """Print the box analysis; return ``map50`` and ``map`` (the evaluator's ``det_map50`` and ``det_map``)."""
    boxes = torch.cat([t["boxes"] for t in gts])
    labels = torch.cat([t["labels"] for t in gts])
    h = boxes[:, 3] - boxes[:, 1]
    print(f"\n2D boxes: {len(preds)} camera images, {len(boxes)} ground-truth boxes; height px {quantiles(h.numpy())}")
    coco = MeanAveragePrecision(box_format="xyxy", class_metrics=True, extended_summary=True,
                                backend="faster_coco_eval")
    coco.update(preds, gts)
    r = coco.compute()
    agnostic = MeanAveragePrecision(box_format="xyxy", iou_thresholds=[0.5], backend="faster_coco_eval")
    agnostic.update([{**p, "labels": torch.zeros_like(p["labels"])} for p in preds],
                    [{**t, "labels": torch.zeros_like(t["labels"])} for t in gts])
    map50_agnostic = float(agnostic.compute()["map"])
    print(f"  mAP@0.5 {float(r['map_50']):.3f}  mAP {float(r['map']):.3f}  AR@100 {float(r['mar_100']):.3f}  "
          f"AP@0.5 class-agnostic {map50_agnostic:.3f}")
    for i, c in enumerate(r["classes"].tolist()):
        curve = r["precision"][0, :, i, 0, -1]
        curve = curve[curve > -1]
        n = int((labels == c).sum())
        print(f"  {OBJECT_CLASSES[c]:13s} {n:5d} boxes (median height {h[labels == c].median():.0f} px): AP@0.5 "
              f"{float(curve.mean()) if len(curve) else -1:.3f}, recall@0.5 {float(r['recall'][0, i, 0, -1]):.3f}")
    for lo, hi in ((0, 8), (8, 16), (16, 32), (32, 10_000)):
        # Ground truth of one height band; predictions outside a generous band around it are left out, so a
        # band's AP is not charged with the other bands' boxes (an approximation of COCO's area ranges, by height).
        band = MeanAveragePrecision(box_format="xyxy", iou_thresholds=[0.5], backend="faster_coco_eval")
        pp, tt = [], []
        for p, t in zip(preds, gts):
            th, ph = t["boxes"][:, 3] - t["boxes"][:, 1], p["boxes"][:, 3] - p["boxes"][:, 1]
            tt.append({k: v[(th >= lo) & (th < hi)] for k, v in t.items()})
            pp.append({k: v[(ph >= 0.7 * lo) & (ph < 1.4 * hi)] for k, v in p.items()})
        band.update(pp, tt)
        rb = band.compute()
        print(f"  GT height {lo}-{hi if hi < 10_000 else 'inf'} px: {sum(len(t['labels']) for t in tt)} boxes, "
              f"AP@0.5 {float(rb['map']):.3f}, recall {float(rb['mar_100']):.3f}")
    errors = []
    for p, t in zip(preds, gts):
        if not len(t["labels"]) or not len(p["labels"]):
            continue
        iou = box_iou(t["boxes"], p["boxes"])  # (G, P)
        for j in torch.nonzero(t["boxes"][:, 3] - t["boxes"][:, 1] >= 16).flatten().tolist():
            k = int(iou[j].argmax())
            g, q = t["boxes"][j], p["boxes"][k]
            size_g, size_q = g[2:] - g[:2], (q[2:] - q[:2]).clamp(min=1e-3)
            centre = ((q[:2] + q[2:]) / 2 - (g[:2] + g[2:]) / 2) / size_g
            errors.append((float(iou[j, k]), float(centre.abs().max()), float(torch.log(size_q / size_g).abs().max()),
                           float(p["labels"][k] == t["labels"][j]), float(p["scores"][k])))
    e = np.asarray(errors)
    out = {"map50": float(r["map_50"]), "map": float(r["map"]), "map50_agnostic": map50_agnostic}
    if not len(e):
        return out
    print(f"  boxes >= 16 px tall ({len(e)}), the prediction overlapping each most:")
    print(f"    IoU {quantiles(e[:, 0])}\n    centre error / size {quantiles(e[:, 1])}")
    print(f"    |log size ratio| {quantiles(e[:, 2])}\n    score {quantiles(e[:, 4])}")
    print(f"    right class {e[:, 3].mean():.3f}")
    return out


def _in_range(boxes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Boxes closer to the ego origin than their class's nuScenes range (the evaluator's filter)."""
    return np.hypot(boxes[:, 0], boxes[:, 1]) < RANGES[labels]


def _bev_map(frames: list[dict], label_of: dict[int, int] | None = None, names: Sequence[str] = OBJECT_CLASSES
             ) -> dict[str, float]:
    """nuScenes mAP of the frames (the evaluator's :class:`BevDetectionMetric`, its class ranges applied first);
    ``label_of`` maps class indices to the labels ``names`` scores (classes it leaves out are dropped; all to 0
    merges them into one class, each box range-filtered by its own class)."""
    lists: tuple[list, ...] = ([], [], [], [], [])
    for f in frames:
        for boxes, scores, labels, (bl, sl, ll) in ((f["boxes"], f["scores"], f["labels"], lists[:3]),
                                                    (f["gt_boxes"], None, f["gt_labels"], (lists[3], None, lists[4]))):
            b, lab = boxes.numpy().reshape(-1, 7), labels.numpy().astype(np.int64)
            keep = _in_range(b, lab)
            mapped = lab if label_of is None else np.array([label_of.get(int(c), -1) for c in lab], dtype=np.int64)
            keep &= mapped >= 0
            bl.append(b[keep])
            ll.append(mapped[keep])
            if sl is not None:
                sl.append(scores.numpy()[keep])
    metric = BevDetectionMetric(names)
    metric.update(*lists)
    return {k: float(v) for k, v in metric.compute().items()}


def bev_boxes_report(frames: list[dict], score: float = 0.3) -> dict[str, float]:
    """Print the BEV box analysis; return ``bev_map`` (the evaluator's) and ``bev_map_agnostic`` (every class
    merged into one: how much of the gap is the class, not the box)."""
    gt_labels = np.concatenate([f["gt_labels"].numpy() for f in frames]).astype(np.int64)
    gt_boxes = np.concatenate([f["gt_boxes"].numpy().reshape(-1, 7) for f in frames])
    in_range = _in_range(gt_boxes, gt_labels)
    scored = _bev_map(frames)
    agnostic = _bev_map(frames, {c: 0 for c in range(len(OBJECT_CLASSES))}, ["object"])
    thresholds = [k for k in scored if k.startswith("bev_map@")]
    print(f"\nBEV boxes: {len(frames)} frames, {int(in_range.sum())} ground-truth boxes in their class's range; "
          f"mAP {scored['bev_map']:.3f} (" + " / ".join(f"{scored[k]:.3f}" for k in thresholds)
          + f" at {' / '.join(k[8:] for k in thresholds)}), class-agnostic {agnostic['bev_map']:.3f} ("
          + " / ".join(f"{agnostic[k]:.3f}" for k in thresholds) + ")")
    print(f"  per class: AP at each distance, ATE; recall at 4 m of all predictions; predictions scoring >= {score}: "
          "true positives at 4 m, and the false ones near (< 2 m) another class's object, near a found one of "
          "their own (a duplicate) or elsewhere")
    for c, name in enumerate(OBJECT_CLASSES):
        n_gt = int((in_range & (gt_labels == c)).sum())
        if n_gt == 0:
            continue
        one = _bev_map(frames, {c: 0}, [name])
        found = tp = confused = duplicate = background = 0
        for f in frames:
            gb, gl = f["gt_boxes"].numpy().reshape(-1, 7), f["gt_labels"].numpy().astype(np.int64)
            pb, pl, ps = f["boxes"].numpy().reshape(-1, 7), f["labels"].numpy().astype(np.int64), f["scores"].numpy()
            own, other = gb[(gl == c) & _in_range(gb, gl)], gb[gl != c]
            mine = (pl == c) & _in_range(pb, pl)
            order = np.argsort(-ps[mine], kind="stable")
            p, s = pb[mine][order], ps[mine][order]
            dist = np.hypot(p[:, None, 0] - own[None, :, 0], p[:, None, 1] - own[None, :, 1])
            match = greedy_center_match(dist, 4.0)
            found += int((match >= 0).sum())
            sure = s >= score
            tp += int((sure & (match >= 0)).sum())
            false = sure & (match < 0)
            near_other = (np.hypot(p[:, None, 0] - other[None, :, 0], p[:, None, 1] - other[None, :, 1]).min(1) < 2.0
                          if len(other) else np.zeros(len(p), dtype=bool))
            near_own = dist.min(1) < 4.0 if len(own) else np.zeros(len(p), dtype=bool)
            confused += int((false & near_other).sum())
            duplicate += int((false & ~near_other & near_own).sum())
            background += int((false & ~near_other & ~near_own).sum())
        print(f"  {name:13s} {n_gt:5d} boxes: AP " + " / ".join(f"{one[k]:.3f}" for k in thresholds)
              + f", ATE {one['bev_ate']:.2f} m; recall@4m {found / n_gt:.2f}; >= {score}: {tp} true, false "
              f"{confused} near another class / {duplicate} duplicate / {background} elsewhere")
    return {"bev_map": scored["bev_map"], "bev_map_agnostic": agnostic["bev_map"]}


def lane_types_report(pairs: list[tuple[int, int]]) -> dict[str, float]:
    """The 2D lanes' type confusion over the true positives (``pairs``: the true and the given type of each line the
    F1 matches, existence >= 0.5 and Hungarian IoU > 0.5): per true type, the fraction given each type. Returns the
    pairs' accuracy."""
    t = len(LANE_TYPES)
    confusion = np.zeros((t, t))
    pairs_arr = np.asarray(pairs, np.int64).reshape(-1, 2)
    pairs_arr = pairs_arr[((pairs_arr >= 0) & (pairs_arr < t)).all(1)]  # padding (-1) left out
    np.add.at(confusion, (pairs_arr[:, 0], pairs_arr[:, 1]), 1)
    if not confusion.sum():
        return {}
    print(f"  types of the matched lines (IoU > 0.5; rows: the true type, columns: the type given, fractions): "
          f"right {np.trace(confusion) / confusion.sum():.3f} of {int(confusion.sum())}")
    print("  " + " " * 14 + "".join(f"{n[:12]:>13s}" for n in (*LANE_TYPES, "lines")))
    for k, name in enumerate(LANE_TYPES):
        row = confusion[k] / max(confusion[k].sum(), 1)
        print(f"  {name:14s}" + "".join(f"{v:13.3f}" for v in row) + f"{int(confusion[k].sum()):13d}")
    return {"type_accuracy": float(np.trace(confusion) / confusion.sum())}


def bev_lanes_report(c: BevLaneCounts) -> dict[str, float]:
    """Print the BEV lane analysis; return the mean IoU over types at each threshold (``bev_iou@0.5`` is the
    evaluator's ``bev_lane_iou``: types with an empty union left out), the IoU with the types merged
    (``bev_iou_merged@0.5``), and both per ring (``..._ring<i>``; a ring without lane cells scores 0)."""
    print(f"\nBEV lanes: cells per type, IoU at thresholds {' / '.join(map(str, BEV_THRESHOLDS))}")
    out = {}
    for i, th in enumerate(BEV_THRESHOLDS):
        seen = c.union[i] > 0
        out[f"bev_iou@{th}"] = float((c.inter[i][seen] / c.union[i][seen]).mean()) if seen.any() else 0.0
    print("  " + " ".join(f"mean IoU @{th} {out[f'bev_iou@{th}']:.3f}" for th in BEV_THRESHOLDS))
    for k, name in enumerate(LANE_TYPES):
        ious = " / ".join(f"{c.inter[i, k] / max(c.union[i, k], 1):.3f}" for i in range(len(BEV_THRESHOLDS)))
        preds = " / ".join(f"{int(c.pred[i, k])}" for i in range(len(BEV_THRESHOLDS)))
        print(f"  {name:14s} {int(c.gt[k]):7d} cells, predicted {preds}, IoU {ious}")
    print("  on each type's cells, the most probable type where one reaches 0.5 (fractions; 'none': none does):")
    print("  " + " " * 14 + "".join(f"{n[:12]:>13s}" for n in (*LANE_TYPES, "none")))
    for k, name in enumerate(LANE_TYPES):
        row = c.confusion[k] / max(c.gt[k], 1)
        print(f"  {name:14s}" + "".join(f"{v:13.3f}" for v in row))
    out["bev_iou_merged@0.5"] = float(c.any_inter.sum() / max(c.any_union.sum(), 1))
    print(f"  at 0.5 by distance from the ego (all distances, the types merged: IoU {out['bev_iou_merged@0.5']:.3f}): "
          f"IoU per type, their mean (as the metric: types with a union), IoU with the types merged, and the ring's "
          f"share of the ground-truth lane cells")
    print("  " + " " * 10 + "".join(f"{n[:12]:>13s}" for n in (*LANE_TYPES, "mean", "merged", "share")))
    for i in range(c.num_rings):
        lo = i * c.ring_m
        band = f"{lo:.0f}-{lo + c.ring_m:.0f} m" if i < c.num_rings - 1 else f">= {lo:.0f} m"
        seen = c.ring_union[i] > 0
        mean = float((c.ring_inter[i][seen] / c.ring_union[i][seen]).mean()) if seen.any() else 0.0
        merged = float(c.any_inter[i] / max(c.any_union[i], 1))
        share = c.any_gt[i] / max(c.any_gt.sum(), 1)
        per_type = c.ring_inter[i] / np.maximum(c.ring_union[i], 1)
        print(f"  {band:10s}" + "".join(f"{v:13.3f}" for v in (*per_type, mean, merged, share)))
        out[f"bev_iou@0.5_ring{i}"], out[f"bev_iou_merged@0.5_ring{i}"] = mean, merged
    return out


def analyse(ckpt: str, regions: list[str], split: str = "val") -> dict[str, float]:
    """Print the analyses; return their headline figures (for checking them against ``visionpilot-eval``)."""
    lane_images, box_preds, box_gts, (image_size,), bev_lanes, bev_frames = collect(ckpt, regions, split)
    out = {}
    if lane_images:
        out.update(lanes_report(lane_images, tuple(image_size)))
    if box_preds:
        out.update(boxes_report(box_preds, box_gts))
    if bev_frames:
        out.update(bev_boxes_report(bev_frames))
    if bev_lanes is not None and bev_lanes.gt.sum() > 0:
        out.update(bev_lanes_report(bev_lanes))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ckpt", help="a visionpilot checkpoint (.ckpt)")
    parser.add_argument("--regions", nargs="+", default=["cn", "de", "gb", "in", "sg", "us"])
    parser.add_argument("--split", default="val", choices=["val", "test"])
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    analyse(args.ckpt, args.regions, args.split)


if __name__ == "__main__":
    main()
