"""Image-space 2D objects, anchor-free in the style of CenterNet ("Objects as Points", Zhou et al. 2019).

On one neck level of stride ``s`` the head predicts, per cell, a centre heatmap per class, the box size and the
sub-cell offset of the centre. Coordinates: boxes are ``x1, y1, x2, y2`` pixels of the batched image (continuous
convention of :mod:`visionpilot.geometry.frames`); a centre ``(cx, cy)`` px lies in cell
``(floor(cx / s), floor(cy / s))`` with offset ``cx / s - floor(cx / s)``, so decoding ``(cell + offset) * s``
returns it exactly. Sizes are regressed as ``log(w / s), log(h / s)`` (scale-invariant L1; CenterNet's raw-pixel
L1 needs a 0.1 weight to balance large boxes).

Heatmap loss: CenterNet's penalty-reduced pixel-wise focal loss (alpha 2, beta 4), normalised by the number of
centres, written by hand because :func:`torchvision.ops.sigmoid_focal_loss` takes binary targets — with the
gaussian-splatted targets here it would push cells next to a centre down as hard as background, while the
``(1 - y)^4`` factor forgives near misses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionpilot.data.vocab import OBJECT_CLASSES
from visionpilot.models.heads import masked_mean


class CenterNetHead(nn.Module):
    """CenterNet-style 2D detector head.

    Raw outputs of :meth:`forward` (``BN`` = cameras folded into the batch, ``h, w`` = the level's size):
        ``heatmap``: (BN, C, h, w) centre logits; ``size``: (BN, 2, h, w) ``log(w / s), log(h / s)``;
        ``offset``: (BN, 2, h, w) centre offset within the cell, in cells.

    Args:
        in_channels: neck width.
        strides: neck strides.
        stride: which neck level to read (4 or 8 usual; the backbone and neck must produce it).
        num_classes: object classes ``C``.
        head_channels: width of each branch's 3x3 conv.
        top_k: detections kept per image by :meth:`decode`.
        min_overlap: IoU a box shifted by the gaussian radius still has with the GT (CenterNet's 0.7).
        prior: initial centre probability (heatmap bias ``-log((1 - prior) / prior)``, CenterNet's -2.19).
    """

    def __init__(self, in_channels: int, strides: Sequence[int], stride: int = 8,
                 num_classes: int = len(OBJECT_CLASSES), head_channels: int = 64, top_k: int = 100,
                 min_overlap: float = 0.7, prior: float = 0.1) -> None:
        super().__init__()
        if stride not in strides:
            raise ValueError(f"objects_2d head: stride {stride} is not a neck level (neck strides {list(strides)}); "
                             f"add it to the backbone's out_strides and the neck's levels")
        self.stride, self.level = int(stride), f"s{stride}"
        self.num_classes, self.top_k, self.min_overlap = num_classes, top_k, min_overlap

        def branch(out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(in_channels, head_channels, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv2d(head_channels, out, 1))

        self.heatmap, self.size, self.offset = branch(num_classes), branch(2), branch(2)
        nn.init.constant_(self.heatmap[-1].bias, -math.log((1 - prior) / prior))

    def forward(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        """Neck features ``{"s8": (BN, C, h, w), ...}`` -> raw outputs (see the class docstring)."""
        x = feats[self.level]
        return {"heatmap": self.heatmap(x), "size": self.size(x), "offset": self.offset(x)}

    @torch.no_grad()
    def targets(self, batch: dict[str, Tensor], feature_size: Sequence[int]) -> dict[str, Tensor]:
        """CenterNet targets from the batch's padded 2D boxes, vectorised over (B, N, M).

        Args:
            batch: needs ``boxes_2d``, ``boxes_2d_classes``, ``boxes_2d_mask``, ``has_boxes_2d``, ``camera_mask``.
            feature_size: (h, w) of the head's level.

        Returns:
            ``image_mask`` (B, N) labelled images; ``heatmap`` (B, N, C, h, w) gaussian-splatted centres (1 at
            each centre cell); per box: ``box_mask`` (B, N, M) usable box, ``regress_mask`` (B, N, M) usable and
            the largest box of its centre cell, ``index`` (B, N, M) flat cell
            ``y * w + x``, ``size`` (B, N, M, 2) log size in cells, ``offset`` (B, N, M, 2).
        """
        boxes, classes = batch["boxes_2d"], batch["boxes_2d_classes"]
        h, w = int(feature_size[0]), int(feature_size[1])
        s = self.stride
        image_mask = batch["has_boxes_2d"].to(boxes.device)[:, None] & batch["camera_mask"]  # (B, N)

        cx, cy = (boxes[..., 0] + boxes[..., 2]) / (2 * s), (boxes[..., 1] + boxes[..., 3]) / (2 * s)  # (B, N, M)
        bw, bh = (boxes[..., 2] - boxes[..., 0]) / s, (boxes[..., 3] - boxes[..., 1]) / s
        box_mask = (batch["boxes_2d_mask"] & image_mask[..., None] & (classes >= 0) & (classes < self.num_classes)
                    & (bw > 0) & (bh > 0) & (cx >= 0) & (cx <= w) & (cy >= 0) & (cy <= h))
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
        # Size and offset maps hold one box per cell: when centres collide (a far car straight behind a near one,
        # common at stride 8 on small images) regress only the largest box, as decode can only return one box
        # there; two boxes pulling one cell towards different targets would be an irreducible loss floor.
        area = torch.where(box_mask, bw * bh, -1.0)
        order = torch.arange(m, device=boxes.device)
        same = (index[..., :, None] == index[..., None, :]) & box_mask[..., None, :]  # (B, N, M, M')
        beaten = (area[..., None, :] > area[..., :, None]) | (
            (area[..., None, :] == area[..., :, None]) & (order[None, :] < order[:, None]))
        regress_mask = box_mask & ~(same & beaten).any(-1)
        return {
            "image_mask": image_mask,
            "heatmap": heatmap,
            "box_mask": box_mask,
            "regress_mask": regress_mask,
            "index": index,
            "size": torch.stack([bw, bh], -1).clamp(min=eps).log() * box_mask[..., None],
            "offset": torch.stack([cx - ix, cy - iy], -1) * box_mask[..., None],
        }

    def loss(self, outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Masked loss terms.

        Args:
            outputs: raw outputs unfolded to (B, N, ...).
            batch: the batch; boxes in pixels of the batched image.

        Returns:
            ``heatmap`` (penalty-reduced focal loss summed over labelled images, divided by the number of
            centres), ``size`` and ``offset`` (L1 at each box's centre cell, mean over the boxes that own their cell). Zero and still in the
            graph when nothing is labelled.
        """
        logits = outputs["heatmap"]  # (B, N, C, h, w)
        t = self.targets(batch, logits.shape[-2:])
        img = t["image_mask"].float()[..., None, None, None]
        heat = t["heatmap"]
        pos = (heat == 1).float()
        prob = logits.sigmoid()
        # logsigmoid rather than log(clamped sigmoid): exact and finite for any logit.
        pos_l = -F.logsigmoid(logits) * (1 - prob) ** 2 * pos
        neg_l = -F.logsigmoid(-logits) * prob**2 * (1 - heat) ** 4 * (1 - pos)
        heat_loss = ((pos_l + neg_l) * img).sum() / (pos * img).sum().clamp(min=1.0)

        index = t["index"][..., None, :].expand(-1, -1, 2, -1)  # (B, N, 2, M)
        size = outputs["size"].flatten(-2).gather(-1, index).transpose(-1, -2)  # (B, N, M, 2)
        offset = outputs["offset"].flatten(-2).gather(-1, index).transpose(-1, -2)
        box_m = t["regress_mask"].float()[..., None].expand_as(size)
        return {
            "heatmap": heat_loss,
            "size": masked_mean(F.l1_loss(size, t["size"], reduction="none"), box_m),
            "offset": masked_mean(F.l1_loss(offset, t["offset"], reduction="none"), box_m),
        }

    def decode(self, outputs: dict[str, Tensor], image_size: Sequence[int] | None = None) -> dict[str, Tensor]:
        """Top-K detections per image, fixed size, no NMS (3x3 max-pool peak picking instead; ONNX-exportable).

        Args:
            outputs: raw outputs with any leading dims (``...`` = (B, N) from the net).
            image_size: unused (boxes come from the stride); accepted so every head decodes alike.

        Returns:
            ``scores`` (..., K) centre probabilities, best first; ``classes`` (..., K) int64; ``boxes`` (..., K, 4)
            ``x1, y1, x2, y2`` input pixels. When ``C * h * w < K`` the tail is padded with score 0, class -1.
        """
        heatmap = outputs["heatmap"]
        lead, (c, h, w) = heatmap.shape[:-3], heatmap.shape[-3:]
        heat = heatmap.reshape(-1, c, h, w).sigmoid()  # (X, C, h, w)
        peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
        k = min(self.top_k, c * h * w)
        scores, idx = peaks.flatten(1).topk(k, dim=1)  # (X, k)
        classes = torch.div(idx, h * w, rounding_mode="floor")
        cell = idx - classes * (h * w)
        y, x = torch.div(cell, w, rounding_mode="floor"), cell % w

        gather = cell[:, None, :].expand(-1, 2, -1)  # (X, 2, k)
        offset = outputs["offset"].reshape(-1, 2, h * w).gather(-1, gather)
        # Clamp before exp: an untrained head must not overflow to inf boxes.
        size = outputs["size"].reshape(-1, 2, h * w).gather(-1, gather).clamp(max=12.0).exp() * self.stride
        cx = (x.to(offset.dtype) + offset[:, 0]) * self.stride
        cy = (y.to(offset.dtype) + offset[:, 1]) * self.stride
        boxes = torch.stack([cx - size[:, 0] / 2, cy - size[:, 1] / 2, cx + size[:, 0] / 2, cy + size[:, 1] / 2], -1)
        if k < self.top_k:
            pad = self.top_k - k
            scores, boxes = F.pad(scores, (0, pad)), F.pad(boxes, (0, 0, 0, pad))
            classes = F.pad(classes, (0, pad), value=-1)
        return {
            "scores": scores.reshape(*lead, self.top_k),
            "classes": classes.reshape(*lead, self.top_k),
            "boxes": boxes.reshape(*lead, self.top_k, 4),
        }


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
