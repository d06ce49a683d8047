"""Image-space 2D objects, anchor-free in the style of CenterNet ("Objects as Points", Zhou et al. 2019).

On one neck level of stride ``s`` (or several, see below) the head predicts, per cell, a centre heatmap per class
(or one class-agnostic centre heatmap and a class softmax: ``class_head``), the box size and the sub-cell offset of
the centre.
Coordinates: boxes are ``x1, y1, x2, y2`` pixels of the batched image (continuous convention of
:mod:`visionpilot.geometry.frames`); a centre ``(cx, cy)`` px lies in cell
``(floor(cx / s), floor(cy / s))`` with offset ``cx / s - floor(cx / s)``, so decoding ``(cell + offset) * s``
returns it exactly. Sizes are regressed as ``log(w / s), log(h / s)`` (scale-invariant L1; CenterNet's raw-pixel
L1 needs a 0.1 weight to balance large boxes).

Several levels (``stride=[4, 8]``): one set of branches, shared by the levels as FCOS's head is (Tian et al.
2019), reads each level, and each box is a target on one level only, chosen by its larger side (``level_bounds``,
FCOS's scale ranges): small boxes on the fine level, where a 6 px car still owns a cell of its own, large ones on
the coarse level, whose cells see all of them. Decode picks peaks on every level and keeps the top K over all; a
level is trained to leave the other's boxes as background, but an object whose size is near a bound can still peak
on both, so decode drops the worse of two same-class boxes from different levels that overlap (``cross_level_iou``).
Why: on the demo a stride-4 head found boxes under 16 px far better than a stride-8 one and sized the larger ones
worse; the two levels together beat both (docs/benchmarks.md, "2D boxes on two levels").

Heatmap loss: CenterNet's penalty-reduced pixel-wise focal loss (alpha 2, beta 4), normalised by the number of
centres (:func:`~visionpilot.models.heads.centernet_focal_loss`, shared with the BEV boxes), written by hand because
:func:`torchvision.ops.sigmoid_focal_loss` takes binary targets — with the gaussian-splatted targets here it would push
cells next to a centre down as hard as background, while the ``(1 - y)^4`` factor forgives near misses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionpilot.data.vocab import OBJECT_CLASSES
from visionpilot.models.heads import centernet_focal_loss, centre_scores, objectness_targets, require_sizes


class CenterNetHead(nn.Module):
    """CenterNet-style 2D detector head.

    Raw outputs of :meth:`forward` (``BN`` = cameras folded into the batch, ``h, w`` = the level's size):
        ``heatmap``: (BN, C, h, w) centre logits; ``size``: (BN, 2, h, w) ``log(w / s), log(h / s)``;
        ``offset``: (BN, 2, h, w) centre offset within the cell, in cells. With several levels each output is
        there once per level, named with the level's suffix (``heatmap_s4``, ``heatmap_s8``, ...).

    Args:
        in_channels: neck width.
        strides: neck strides.
        stride: which neck level to read (4 or 8 usual; the backbone and neck must produce it), or a list of
            levels, finest first, that share the branches (see the module docstring).
        level_bounds: with several levels, the box sizes (the larger side, input pixels) where one level hands over
            to the next: a box whose larger side is below ``level_bounds[i]`` (and not below ``level_bounds[i-1]``)
            is a target on level ``i``. One fewer than the levels, increasing.
        cross_level_iou: with several levels, decode drops a detection that overlaps a better-scoring one of the same
            class *from another level* by more than this IoU (YOLACT's one-pass "fast NMS", between levels only:
            within a level the 3x3 peak picking already keeps one peak per object). An object whose size is near
            a bound can peak on both levels; 1.0 keeps both.
        num_classes: object classes ``C``.
        head_channels: width of each branch's 3x3 conv.
        top_k: detections kept per image by :meth:`decode`.
        min_overlap: IoU a box shifted by the gaussian radius still has with the GT (CenterNet's 0.7).
        prior: initial centre probability (heatmap bias ``-log((1 - prior) / prior)``, CenterNet's -2.19).
        regress_area: fraction of each box's width and height, around its centre cell, whose cells regress its
            size and offset: 0 the centre cell only (CenterNet), 0.54 TTFNet's. On the 250-step demo TTFNet's did
            not beat the centre cell over two seeds (docs/benchmarks.md), so 0 is the default.
        class_head: ``"per_class"``: CenterNet's heatmap per class, each its own focal loss. ``"objectness"``: one
            class-agnostic centre heatmap (the same focal loss on the classes' maximum) times a softmax over the
            classes, trained by cross-entropy on the cells near each centre; the score of class ``c`` is
            ``sigmoid(objectness) * softmax(classes)_c`` (YOLO's objectness x class, CenterNet2's class-agnostic
            centres). Why: per-class focal losses separate one class from the background, but a car from a truck
            only through the small loss of a wrong class's low score; the softmax learns that separation directly.
            Raw outputs then carry ``objectness`` (BN, 1, h, w) and ``classes`` (BN, C, h, w) logits instead of
            ``heatmap``; decode and boxes are the same.
    """

    def __init__(self, in_channels: int, strides: Sequence[int], stride: int | Sequence[int] = 8,
                 num_classes: int = len(OBJECT_CLASSES), head_channels: int = 64, top_k: int = 100,
                 min_overlap: float = 0.7, prior: float = 0.1, regress_area: float = 0.0,
                 class_head: str = "per_class", level_bounds: Sequence[float] = (),
                 cross_level_iou: float = 0.5) -> None:
        super().__init__()
        levels = [int(stride)] if isinstance(stride, int) else [int(v) for v in stride]
        if not levels or sorted(set(levels)) != levels:
            raise ValueError(f"objects_2d head: stride must be a level or a list of distinct levels, finest first, "
                             f"found {stride}")
        for level_stride in levels:
            if level_stride not in strides:
                raise ValueError(f"objects_2d head: stride {level_stride} is not a neck level (neck strides "
                                 f"{list(strides)}); add it to the backbone's out_strides and the neck's levels")
        bounds = [float(v) for v in level_bounds]
        if len(levels) == 1 and bounds:
            raise ValueError(f"objects_2d head: level_bounds {bounds} needs several levels (stride: [4, 8]), "
                             f"found stride {levels[0]}")
        if len(bounds) != len(levels) - 1 or any(b <= 0 for b in bounds) or sorted(set(bounds)) != bounds:
            raise ValueError(f"objects_2d head: level_bounds must be {len(levels) - 1} increasing positive box "
                             f"sizes in pixels for strides {levels}, found {list(level_bounds)}")
        if not 0.0 < cross_level_iou <= 1.0:
            raise ValueError(f"objects_2d head: cross_level_iou must be in (0, 1], found {cross_level_iou}")
        self.strides = tuple(levels)
        self.cross_level_iou = float(cross_level_iou)
        # Box size range [low, high) of each level: the larger side in input pixels.
        self.size_ranges = tuple(zip([0.0, *bounds], [*bounds, math.inf]))
        if not 0.0 <= regress_area <= 1.0:
            raise ValueError(f"objects_2d head: regress_area must be in [0, 1], found {regress_area}")
        require_sizes("objects_2d head", num_classes=num_classes, top_k=top_k)
        if not 0.0 < prior < 1.0:  # the heatmap bias is its logit
            raise ValueError(f"objects_2d head: prior must be in (0, 1), found {prior}")
        if not 0.0 < min_overlap < 1.0:  # 0, 1 and beyond give a gaussian radius of 0 to every box, silently
            raise ValueError(f"objects_2d head: min_overlap must be in (0, 1), found {min_overlap}")
        if class_head not in ("per_class", "objectness"):
            raise ValueError(f"objects_2d head: class_head must be 'per_class' or 'objectness', found {class_head!r}")
        self.num_classes, self.top_k, self.min_overlap = num_classes, top_k, min_overlap
        self.regress_area = float(regress_area)

        def branch(out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(in_channels, head_channels, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv2d(head_channels, out, 1))

        # `heatmap` is the centre branch: a map per class, or the one objectness map.
        centre_maps = num_classes if class_head == "per_class" else 1
        self.heatmap, self.size, self.offset = branch(centre_maps), branch(2), branch(2)
        nn.init.constant_(self.heatmap[-1].bias, -math.log((1 - prior) / prior))
        self.classes = branch(num_classes) if class_head == "objectness" else None

    def _suffix(self, level: int) -> str:
        """The raw outputs' name suffix of level ``level`` (none with one level: its names predate levels)."""
        return "" if len(self.strides) == 1 else f"_s{self.strides[level]}"

    def level_outputs(self, outputs: dict[str, Tensor], level: int) -> dict[str, Tensor]:
        """Level ``level``'s raw outputs under the one-level names (``heatmap``, ``size``, ...)."""
        suffix = self._suffix(level)
        names = ("heatmap", "size", "offset") if self.classes is None else ("objectness", "classes", "size", "offset")
        return {name: outputs[name + suffix] for name in names}

    def forward(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        """Neck features ``{"s8": (BN, C, h, w), ...}`` -> raw outputs (see the class docstring)."""
        out = {}
        for level, stride in enumerate(self.strides):
            x, suffix = feats[f"s{stride}"], self._suffix(level)
            centre = "heatmap" if self.classes is None else "objectness"
            out[centre + suffix] = self.heatmap(x)
            if self.classes is not None:
                out["classes" + suffix] = self.classes(x)
            out["size" + suffix], out["offset" + suffix] = self.size(x), self.offset(x)
        return out

    @torch.no_grad()
    def targets(self, batch: dict[str, Tensor], feature_size: Sequence[int], level: int = 0) -> dict[str, Tensor]:
        """CenterNet targets from the batch's padded 2D boxes, vectorised over (B, N, M).

        Args:
            batch: needs ``boxes_2d``, ``boxes_2d_classes``, ``boxes_2d_mask``, ``has_boxes_2d``, ``camera_mask``.
            feature_size: (h, w) of the level.
            level: which of the head's levels (an index into ``strides``); only boxes in its size range are
                targets there.

        Returns:
            ``image_mask`` (B, N) labelled images; ``heatmap`` (B, N, C, h, w) gaussian-splatted centres (1 at
            each centre cell); per box: ``box_mask`` (B, N, M) usable box, ``regress_mask`` (B, N, M) usable and
            owning at least one regression cell, ``index`` (B, N, M) flat centre cell ``y * w + x``, ``size``
            (B, N, M, 2) log size in cells, ``offset`` (B, N, M, 2) of the centre in its cell; per cell:
            ``regress_weight`` (B, N, h, w) (0 outside every regression area; each box's cells sum to 1),
            ``size_map`` and ``offset_map`` (B, N, 2, h, w) the owning box's log size and its centre minus the
            cell, in cells.
        """
        boxes, classes = batch["boxes_2d"], batch["boxes_2d_classes"]
        h, w = int(feature_size[0]), int(feature_size[1])
        s = self.strides[level]
        low, high = self.size_ranges[level]
        image_mask = batch["has_boxes_2d"].to(boxes.device)[:, None] & batch["camera_mask"]  # (B, N)

        cx, cy = (boxes[..., 0] + boxes[..., 2]) / (2 * s), (boxes[..., 1] + boxes[..., 3]) / (2 * s)  # (B, N, M)
        bw, bh = (boxes[..., 2] - boxes[..., 0]) / s, (boxes[..., 3] - boxes[..., 1]) / s
        box_mask = (batch["boxes_2d_mask"] & image_mask[..., None] & (classes >= 0) & (classes < self.num_classes)
                    & (bw > 0) & (bh > 0) & (cx >= 0) & (cx <= w) & (cy >= 0) & (cy <= h))
        if len(self.strides) > 1:
            side = torch.maximum(bw, bh) * s  # input pixels
            box_mask &= (side >= low) & (side < high)
        ix, iy = cx.floor().clamp(0, w - 1), cy.floor().clamp(0, h - 1)

        radius = gaussian_radius(bh, bw, self.min_overlap).floor().clamp(min=0)  # (B, N, M) cells
        sigma = (2 * radius + 1) / 6
        dx = torch.arange(w, device=boxes.device, dtype=boxes.dtype) - ix[..., None]  # (B, N, M, w)
        dy = torch.arange(h, device=boxes.device, dtype=boxes.dtype) - iy[..., None]  # (B, N, M, h)
        r, two_var = radius[..., None], 2 * sigma[..., None] ** 2
        gx = torch.exp(-dx**2 / two_var) * (dx.abs() <= r)
        gy = torch.exp(-dy**2 / two_var) * (dy.abs() <= r)
        splat = (gy[..., :, None] * gx[..., None, :]) * box_mask[..., None, None]  # (B, N, M, h, w), peak 1
        b, n, m = classes.shape
        heatmap = boxes.new_zeros(b, n, self.num_classes, h * w).scatter_reduce(
            2, classes.clamp(0, self.num_classes - 1)[..., None].expand(b, n, m, h * w), splat.flatten(-2),
            reduce="amax", include_self=True,
        ).view(b, n, self.num_classes, h, w)
        eps = torch.finfo(boxes.dtype).tiny
        index = (iy * w + ix).long()
        size = torch.stack([bw, bh], -1).clamp(min=eps).log() * box_mask[..., None]  # (B, N, M, 2)

        # Regression cells: the centre cell (CenterNet, regress_area=0) or, as in TTFNet (Liu et al. 2020), every
        # cell of the box's central `regress_area` fraction regresses its size and its offset to the centre,
        # weighted by an elliptical gaussian (peak 1 at the centre cell); each box's weights sum to 1, so a box
        # counts once whatever its size. TTFNet credits these extra samples with much of its faster training.
        a = self.regress_area
        sig_x, sig_y = (a * bw / 6).clamp(min=1e-2)[..., None], (a * bh / 6).clamp(min=1e-2)[..., None]
        rx = torch.exp(-dx**2 / (2 * sig_x**2)) * (dx.abs() <= (a * bw / 2)[..., None])  # (B, N, M, w)
        ry = torch.exp(-dy**2 / (2 * sig_y**2)) * (dy.abs() <= (a * bh / 2)[..., None])  # (B, N, M, h)
        area_w = (ry[..., :, None] * rx[..., None, :]) * box_mask[..., None, None]  # (B, N, M, h, w)
        # One box per cell, as decode returns one box per cell: where regression areas overlap (a far car straight
        # behind a near one, common at stride 8 on small images) the largest box owns the cell; two boxes pulling
        # one cell towards different targets would be an irreducible loss floor. Ties: the first box. A box's own
        # centre cell, where decode reads it, goes first to the boxes centred there: otherwise a small box inside a
        # larger one's regression area would decode as the larger box.
        area = torch.where(box_mask, bw * bh, -1.0)
        centre = (area_w > 0) & (dy == 0)[..., :, None] & (dx == 0)[..., None, :]  # (B, N, M, h, w)
        # One priority per (box, cell): a centre cell above any area, then the larger box; argmax returns the first
        # of equal maxima.
        priority = area[..., None, None] + centre * (area.amax().clamp(min=0) + 1)
        owner = torch.where(area_w > 0, priority, -1.0).argmax(dim=2, keepdim=True)  # (B, N, 1, h, w)
        owned = (torch.arange(m, device=boxes.device)[:, None, None] == owner) & (area_w > 0)  # (B, N, M, h, w)
        mass = (area_w * owned).sum(dim=(-2, -1))  # (B, N, M)
        regress_mask = box_mask & (mass > 0)
        weight = ((area_w * owned) / mass.clamp(min=eps)[..., None, None]).sum(dim=2)  # (B, N, h, w)
        take = owner[:, :, 0].flatten(-2)  # (B, N, h*w)
        size_map = size.gather(2, take[..., None].expand(-1, -1, -1, 2)).transpose(-1, -2).view(b, n, 2, h, w)
        cell_x = torch.arange(w, device=boxes.device, dtype=boxes.dtype)
        cell_y = torch.arange(h, device=boxes.device, dtype=boxes.dtype)
        offset_map = torch.stack([cx.gather(2, take).view(b, n, h, w) - cell_x,
                                  cy.gather(2, take).view(b, n, h, w) - cell_y[:, None]], dim=2)  # (B, N, 2, h, w)
        return {
            "image_mask": image_mask,
            "heatmap": heatmap,
            "box_mask": box_mask,
            "regress_mask": regress_mask,
            "index": index,
            "size": size,
            "offset": torch.stack([cx - ix, cy - iy], -1) * box_mask[..., None],
            "regress_weight": weight,
            "size_map": size_map * (weight > 0)[:, :, None],
            "offset_map": offset_map * (weight > 0)[:, :, None],
        }

    def loss(self, outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Masked loss terms.

        Args:
            outputs: raw outputs unfolded to (B, N, ...).
            batch: the batch; boxes in pixels of the batched image.

        Returns:
            ``heatmap`` (penalty-reduced focal loss summed over labelled images, divided by the number of
            centres; of the objectness map with ``class_head="objectness"``), ``classes`` (that head's
            cross-entropy, weighted per cell, see ``class_head``), ``size`` and ``offset`` (L1 over each box's
            regression cells, gaussian-weighted, summed over x and y and averaged over boxes and the two
            coordinates). With several levels each term sums over the levels before it is divided (by all the
            levels' centres, boxes or cell weights), so a box weighs the same on whichever level it is a target.
            Zero and still in the graph when nothing is labelled.
        """
        focal = num_pos = n_boxes = size_l = offset_l = ce = ce_weight = 0.0
        for level in range(len(self.strides)):
            out = self.level_outputs(outputs, level)
            logits = out["heatmap"] if "heatmap" in out else out["objectness"]  # (B, N, C or 1, h, w)
            t = self.targets(batch, logits.shape[-2:], level)
            img = t["image_mask"].float()[..., None, None, None]
            heat = t["heatmap"]
            if "classes" in out:  # class_head="objectness": heat becomes the classes' maximum, (B, N, 1, h, w)
                heat, level_ce, level_weight = objectness_targets(heat, out["classes"], img, dim=2)
                ce, ce_weight = ce + (level_ce * level_weight).sum(), ce_weight + level_weight.sum()
            level_focal, level_pos = centernet_focal_loss(logits, heat, img)
            focal, num_pos = focal + level_focal, num_pos + level_pos

            weight = t["regress_weight"][:, :, None]  # (B, N, 1, h, w), each box's weights summing to 1
            n_boxes = n_boxes + t["regress_mask"].sum()
            size_l = size_l + (F.l1_loss(out["size"], t["size_map"], reduction="none") * weight).sum()
            offset_l = offset_l + (F.l1_loss(out["offset"], t["offset_map"], reduction="none") * weight).sum()
        n_boxes = n_boxes.clamp(min=1)
        # masked_mean's division, over all levels' cells.
        terms = {"classes": ce / ce_weight.clamp(min=1.0)} if self.classes is not None else {}
        return {
            "heatmap": focal / num_pos.clamp(min=1.0),
            **terms,
            # A mean over boxes and their two coordinates (each box's cell weights sum to 1).
            "size": size_l / (2 * n_boxes),
            "offset": offset_l / (2 * n_boxes),
        }

    def decode(self, outputs: dict[str, Tensor], image_size: Sequence[int] | None = None) -> dict[str, Tensor]:
        """Top-K detections per image, fixed size, no NMS (3x3 max-pool peak picking instead; ONNX-exportable).

        Args:
            outputs: raw outputs with any leading dims (``...`` = (B, N) from the net).
            image_size: (H, W) of the input; boxes are clipped to it, as the labels are (None: the finest level's
                extent times its stride).

        Returns:
            ``scores`` (..., K) centre probabilities, best first, over all levels; ``classes`` (..., K) int64;
            ``boxes`` (..., K, 4) ``x1, y1, x2, y2`` input pixels. When there are fewer than K cells x classes the
            tail is padded with score 0, class -1.
        """
        peaks, offsets, sizes, cell_x, cell_y, cell_stride = [], [], [], [], [], []
        for level, stride in enumerate(self.strides):
            out = self.level_outputs(outputs, level)
            scores_map = centre_scores(out, dim=-3)  # (..., C, h, w)
            lead, (c, h, w) = scores_map.shape[:-3], scores_map.shape[-3:]
            heat = scores_map.reshape(-1, c, h, w)  # (X, C, h, w)
            # Peaks within a level: 3x3 max-pool; across levels, see _drop_cross_level_duplicates.
            peaks.append((heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)).flatten(2))  # (X, C, h*w)
            offsets.append(out["offset"].reshape(-1, 2, h * w))
            # Clamp before exp: an untrained head must not overflow to inf boxes.
            sizes.append(out["size"].reshape(-1, 2, h * w).clamp(max=12.0).exp() * stride)
            cells = torch.arange(h * w, device=heat.device)
            cell_x.append(cells % w)
            cell_y.append(torch.div(cells, w, rounding_mode="floor"))
            cell_stride.append(torch.full((h * w,), float(stride), device=heat.device, dtype=heat.dtype))
            if level == 0:
                lead0, extent = lead, (h * stride, w * stride)
        peak = torch.cat(peaks, dim=-1)  # (X, C, cells of all levels)
        c, n_cells = peak.shape[-2:]
        k = min(self.top_k, c * n_cells)
        scores, idx = peak.flatten(1).topk(k, dim=1)  # (X, k)
        classes = torch.div(idx, n_cells, rounding_mode="floor")
        cell = idx - classes * n_cells

        gather = cell[:, None, :].expand(-1, 2, -1)  # (X, 2, k)
        offset = torch.cat(offsets, dim=-1).gather(-1, gather)
        size = torch.cat(sizes, dim=-1).gather(-1, gather)
        stride_k = torch.cat(cell_stride)[cell]
        cx = (torch.cat(cell_x)[cell].to(offset.dtype) + offset[:, 0]) * stride_k
        cy = (torch.cat(cell_y)[cell].to(offset.dtype) + offset[:, 1]) * stride_k
        boxes = torch.stack([cx - size[:, 0] / 2, cy - size[:, 1] / 2, cx + size[:, 0] / 2, cy + size[:, 1] / 2], -1)
        # Labels are the visible part of an object clipped to the image (torchvision's detectors clip alike): a
        # box reaching past the border cannot match a truncated object's label as well as its clipped self does.
        height, width = (float(v) for v in image_size) if image_size is not None else extent
        limit = boxes.new_tensor([width, height, width, height])
        boxes = torch.minimum(boxes.clamp(min=0.0), limit)
        if len(self.strides) > 1 and self.cross_level_iou < 1.0:
            scores, classes, boxes = self._drop_cross_level_duplicates(scores, classes, boxes, stride_k)
        if k < self.top_k:
            pad = self.top_k - k
            scores, boxes = F.pad(scores, (0, pad)), F.pad(boxes, (0, 0, 0, pad))
            classes = F.pad(classes, (0, pad), value=-1)
        return {
            "scores": scores.reshape(*lead0, self.top_k),
            "classes": classes.reshape(*lead0, self.top_k),
            "boxes": boxes.reshape(*lead0, self.top_k, 4),
        }

    def _drop_cross_level_duplicates(self, scores: Tensor, classes: Tensor, boxes: Tensor,
                                     level: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Fast NMS between levels on (X, k) detections sorted by score: a detection whose box overlaps an earlier
        (better) one of the same class and another level by more than ``cross_level_iou`` becomes padding (score 0,
        class -1) and moves to the tail. One pass of static-shape tensor ops (a k x k IoU), so it exports.

        Why: each box is a target on one level by its size, but a box near a level bound can peak on both (on the
        demo 28-34 % of the found objects with a larger side of 16-32 px were found twice).
        """
        # The k x k IoU of every image at once (torchvision.ops.box_iou takes one image's boxes).
        x1, y1, x2, y2 = boxes.unbind(-1)  # (X, k)
        iw = (torch.minimum(x2[:, :, None], x2[:, None]) - torch.maximum(x1[:, :, None], x1[:, None])).clamp(min=0)
        ih = (torch.minimum(y2[:, :, None], y2[:, None]) - torch.maximum(y1[:, :, None], y1[:, None])).clamp(min=0)
        inter = iw * ih  # (X, k, k): [i, j]
        area = (x2 - x1) * (y2 - y1)
        iou = inter / (area[:, :, None] + area[:, None] - inter).clamp(min=1e-6)
        k = scores.shape[-1]
        earlier = torch.ones(k, k, dtype=torch.bool, device=scores.device).triu(1)  # [i, j]: i ranks above j
        dup = ((iou > self.cross_level_iou) & earlier & (classes[:, :, None] == classes[:, None])
               & (level[:, :, None] != level[:, None]))
        drop = dup.to(scores.dtype).amax(dim=1) > 0  # (X, k): some better box of another level covers it
        scores = torch.where(drop, torch.zeros_like(scores), scores)
        classes = torch.where(drop, torch.full_like(classes, -1), classes)
        scores, order = scores.topk(k, dim=1)  # kept ones first, still best first
        return scores, classes.gather(1, order), boxes.gather(1, order[..., None].expand(-1, -1, 4))


def gaussian_radius(height: Tensor, width: Tensor, min_overlap: float = 0.7) -> Tensor:
    """CenterNet's gaussian radius for boxes of ``height`` x ``width`` (any units, elementwise).

    The smallest of three radii (both corners moved in, both out, one in one out) for which a box with corners
    shifted that far keeps IoU >= ``min_overlap``. Reproduces the reference implementation exactly, including its
    ``/ 2`` where the quadratic formula has ``/ (2a)`` (CornerNet's known quirk): the radii every CenterNet model
    was tuned with.
    """
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt((b1**2 - 4 * c1).clamp(min=0))) / 2
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + torch.sqrt((b2**2 - 16 * c2).clamp(min=0))) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + torch.sqrt((b3**2 - 4 * a3 * c3).clamp(min=0))) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)
