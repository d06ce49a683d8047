"""3D objects on the BEV grid, CenterPoint-style: a centre heatmap per class plus box regression at the centre cell
(or, with ``class_head="objectness"``, one centre heatmap times a class softmax).

Targets (built in :meth:`Objects3DHead.loss` from the batch, vectorised in torch):
    ``boxes_3d`` (B, K, 7) ``x, y, z, length, width, height, yaw`` in the ego frame (box centre, yaw about +z),
    ``boxes_3d_classes`` (B, K) class index (-1 padding), ``boxes_3d_mask`` (B, K), ``has_boxes_3d`` (B,).
    A box lands in the cell ``i = floor((x - x_min) / cell)``, ``j = floor((y - y_min) / cell)`` (grid layout in
    :mod:`visionpilot.models.view_transform`); boxes outside the grid are ignored.

Raw outputs (identical in train and eval), X, Y = grid cells:
    ``heatmap`` (B, C, X, Y) logits; ``offset`` (B, 2, X, Y) position of the centre inside its cell in cells,
    ``[0, 1)`` from the cell's low corner; ``z`` (B, 1, X, Y) metres; ``size`` (B, 3, X, Y) log of length, width,
    height in metres; ``rot`` (B, 2, X, Y) ``sin(yaw), cos(yaw)`` (continuous, unlike the angle).

Decoded (fixed size K = ``max_objects``): ``boxes`` (B, K, 7) ego frame as above, ``scores`` (B, K) in [0, 1],
``classes`` (B, K) int64. Peaks are found by a 3x3 max-pool (the CenterNet "NMS") and top-K over all classes;
low-score rows are padding, threshold downstream.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionpilot.data.vocab import OBJECT_CLASSES
from visionpilot.models.heads import (
    centernet_focal_loss,
    centre_scores,
    masked_mean,
    objectness_targets,
    require_sizes,
    weights_per_term,
)
from visionpilot.models.view_transform import BEVGrid

_LOSS_TERMS = ("heatmap", "classes", "offset", "z", "size", "rot")


def gaussian_radius(length: Tensor, width: Tensor, min_overlap: float = 0.1) -> Tensor:
    """CornerNet / CenterPoint radius (in cells) such that boxes shifted by it still reach ``min_overlap`` IoU.

    ``length``, ``width``: box footprint in cells, any shape. Written out because torchvision has no equivalent.
    """
    h, w, o = length, width, min_overlap
    b1 = h + w
    c1 = w * h * (1 - o) / (1 + o)
    r1 = (b1 + torch.sqrt((b1 * b1 - 4 * c1).clamp(min=0))) / 2
    b2 = 2 * (h + w)
    c2 = (1 - o) * w * h
    r2 = (b2 + torch.sqrt((b2 * b2 - 16 * c2).clamp(min=0))) / 2
    a3 = 4 * o
    b3 = -2 * o * (h + w)
    c3 = (o - 1) * w * h
    r3 = (b3 + torch.sqrt((b3 * b3 - 4 * a3 * c3).clamp(min=0))) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


class Objects3DHead(nn.Module):
    """CenterPoint-style 3D detection head on a BEV feature map.

    Args:
        in_channels: channels of the BEV features.
        grid: the BEV grid the features live on.
        num_classes: object classes (the vocabulary's by default).
        head_channels: width of the shared 3x3 conv before the per-output 1x1 convs.
        max_objects: K of the fixed-size decode.
        min_radius: smallest Gaussian radius in cells (CenterPoint uses 2).
        min_overlap: IoU the Gaussian radius preserves.
        loss_weights: multipliers per loss term (``heatmap``, ``classes``, ``offset``, ``z``, ``size``, ``rot``).
        class_head: ``"per_class"`` (CenterPoint: a heatmap per class) or ``"objectness"``: one class-agnostic centre
            heatmap times a softmax over the classes, as the 2D head's option of that name
            (:class:`~visionpilot.models.heads.objects_2d.CenterNetHead`); raw outputs then carry ``objectness``
            (B, 1, X, Y) and ``classes`` (B, C, X, Y) instead of ``heatmap``.
        heatmap_norm: ``"joint"`` (CenterNet): the heatmap loss of every class summed and divided by the number of
            centres of all classes, so a class weighs as much as it has boxes. ``"per_class"``: each class's loss
            divided by its own centres, and these summed (CenterPoint normalises each task head by its own
            positives and sums the tasks; here one class per task), so a rare class weighs as much as cars — and
            the term is several times larger than the joint one, which its ``loss_weights`` entry can offset
            (docs/benchmarks.md, session 37). Only with ``class_head="per_class"``.
    """

    def __init__(self, in_channels: int, grid: BEVGrid, num_classes: int = len(OBJECT_CLASSES),
                 head_channels: int = 64, max_objects: int = 100, min_radius: int = 2, min_overlap: float = 0.1,
                 loss_weights: Mapping[str, float] | None = None, class_head: str = "per_class",
                 heatmap_norm: str = "joint") -> None:
        super().__init__()
        if class_head not in ("per_class", "objectness"):
            raise ValueError(f"Objects3DHead: class_head must be 'per_class' or 'objectness', found {class_head!r}")
        if heatmap_norm not in ("joint", "per_class"):
            raise ValueError(f"Objects3DHead: heatmap_norm must be 'joint' or 'per_class', found {heatmap_norm!r}")
        if heatmap_norm == "per_class" and class_head != "per_class":  # one objectness map has no classes to split
            raise ValueError(f"Objects3DHead: heatmap_norm='per_class' needs class_head='per_class', found "
                             f"class_head={class_head!r}")
        self.heatmap_norm = heatmap_norm
        require_sizes("Objects3DHead", num_classes=num_classes, max_objects=max_objects)
        if not 0.0 < min_overlap < 1.0:  # 0, 1 and beyond give a gaussian radius of 0 to every box, silently
            raise ValueError(f"Objects3DHead: min_overlap must be in (0, 1), found {min_overlap}")
        self.grid = grid
        self.num_classes = num_classes
        self.max_objects = min(max_objects, num_classes * grid.nx * grid.ny)
        self.min_radius = min_radius
        self.min_overlap = min_overlap
        self.loss_weights = weights_per_term("Objects3DHead", _LOSS_TERMS, loss_weights)
        self.shared = nn.Sequential(
            nn.Conv2d(in_channels, head_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(head_channels),
            nn.ReLU(inplace=True),
        )
        centre = ({"heatmap": nn.Conv2d(head_channels, num_classes, 1)} if class_head == "per_class" else
                  {"objectness": nn.Conv2d(head_channels, 1, 1), "classes": nn.Conv2d(head_channels, num_classes, 1)})
        self.centre_key = "heatmap" if class_head == "per_class" else "objectness"
        self.outs = nn.ModuleDict({
            **centre,
            "offset": nn.Conv2d(head_channels, 2, 1),
            "z": nn.Conv2d(head_channels, 1, 1),
            "size": nn.Conv2d(head_channels, 3, 1),
            "rot": nn.Conv2d(head_channels, 2, 1),
        })
        # Focal-loss prior: start every cell at p = 0.1 so the many negatives do not swamp the first steps.
        nn.init.constant_(self.outs[self.centre_key].bias, -2.19)

    def forward(self, bev: Tensor) -> dict[str, Tensor]:
        """(B, C_in, X, Y) BEV features -> raw outputs (see the module docstring)."""
        x = self.shared(bev)
        return {name: conv(x) for name, conv in self.outs.items()}

    @torch.no_grad()
    def build_targets(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Heatmaps and per-box regression targets for the grid.

        Returns:
            heatmap: (B, C, X, Y) in [0, 1], exactly 1 at centre cells; cell: (B, K) flat index ``i * Y + j``;
            valid: (B, K) box used; offset (B, K, 2); z (B, K); size (B, K, 3) log metres; rot (B, K, 2).
        """
        boxes = batch["boxes_3d"].float()  # (B, K, 7)
        classes = batch["boxes_3d_classes"].long()  # (B, K)
        b, k = classes.shape
        g = self.grid
        nx, ny = g.shape
        cell = g.cell_size
        gx = (boxes[..., 0] - g.x_range[0]) / cell  # (B, K) continuous cell coordinates
        gy = (boxes[..., 1] - g.y_range[0]) / cell
        ci, cj = gx.floor(), gy.floor()
        valid = (batch["boxes_3d_mask"].bool() & batch["has_boxes_3d"].bool()[:, None]
                 & (classes >= 0) & (classes < self.num_classes)
                 & (ci >= 0) & (ci < nx) & (cj >= 0) & (cj < ny))
        ci_l = ci.long().clamp(0, nx - 1)
        cj_l = cj.long().clamp(0, ny - 1)

        # Gaussians rendered in local windows and merged by scatter-max (overlapping objects keep the max).
        radius = gaussian_radius(boxes[..., 3] / cell, boxes[..., 4] / cell, self.min_overlap)
        radius = radius.floor().clamp(min=self.min_radius)  # (B, K)
        radius = torch.where(valid, radius, torch.full_like(radius, self.min_radius))
        r_max = int(radius.max().item()) if k else self.min_radius
        offs = torch.arange(-r_max, r_max + 1, device=boxes.device)
        di, dj = offs[:, None].expand(-1, len(offs)).reshape(-1), offs[None, :].expand(len(offs), -1).reshape(-1)
        sigma = (2 * radius + 1) / 6  # (B, K)
        d2 = (di * di + dj * dj).float()  # (W,)
        gauss = torch.exp(-d2 / (2 * sigma[..., None] ** 2))  # (B, K, W)
        wi = ci_l[..., None] + di  # (B, K, W)
        wj = cj_l[..., None] + dj
        inside = ((di.abs() <= radius[..., None]) & (dj.abs() <= radius[..., None]) & valid[..., None]
                  & (wi >= 0) & (wi < nx) & (wj >= 0) & (wj < ny))
        flat = (classes.clamp(0, self.num_classes - 1)[..., None] * (nx * ny)
                + wi.clamp(0, nx - 1) * ny + wj.clamp(0, ny - 1))
        heat = torch.zeros(b, self.num_classes * nx * ny, device=boxes.device)
        # Masked entries (padding, classes the head does not predict, outside the grid) write 0 somewhere valid:
        # harmless under amax because every value is >= 0.
        heat.scatter_reduce_(1, flat.reshape(b, -1), (gauss * inside).reshape(b, -1), reduce="amax")

        return {
            "heatmap": heat.reshape(b, self.num_classes, nx, ny),
            "cell": ci_l * ny + cj_l,
            "valid": valid,
            "offset": torch.stack([gx - ci, gy - cj], dim=-1),
            "z": boxes[..., 2],
            "size": boxes[..., 3:6].clamp(min=1e-3).log(),
            "rot": torch.stack([boxes[..., 6].sin(), boxes[..., 6].cos()], dim=-1),
        }

    def loss(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Named loss terms, masked by ``has_boxes_3d`` (a batch without 3D boxes gives connected zeros).

        ``heatmap``: CenterNet focal loss over the grid / number of centres (of the objectness map with
        ``class_head="objectness"``, whose ``classes`` term is the class cross-entropy near the centres);
        ``offset``, ``z``, ``size``, ``rot``: L1 at the centre cells / number of boxes. Each is multiplied by its
        ``loss_weights`` entry.
        """
        t = self.build_targets(batch)
        heat_logits = outputs[self.centre_key]
        b = heat_logits.shape[0]
        frame_w = batch["has_boxes_3d"].to(heat_logits.dtype).reshape(b, 1, 1, 1)
        heat = t["heatmap"]
        losses = {}
        if "classes" in outputs:  # class_head="objectness": heat becomes the classes' maximum, (B, 1, X, Y)
            heat, ce, ce_weight = objectness_targets(heat, outputs["classes"], frame_w.float(), dim=1)
            losses["classes"] = masked_mean(ce, ce_weight)
        per_class = self.heatmap_norm == "per_class"
        focal, num_pos = centernet_focal_loss(heat_logits.float(), heat, frame_w.float(), per_class=per_class)
        # per_class: each class's loss over its own centres, summed over the classes (CenterPoint's per-task
        # normalisation with one class per task); joint: over all the centres (CenterNet).
        losses["heatmap"] = (focal / num_pos.clamp(min=1.0)).sum()

        valid = t["valid"].float()[..., None]  # (B, K, 1)
        num_boxes = valid.sum().clamp(min=1.0)
        for name in ("offset", "z", "size", "rot"):
            pred = outputs[name].float().flatten(2)  # (B, D, X*Y)
            idx = t["cell"][:, None, :].expand(-1, pred.shape[1], -1)  # (B, D, K)
            picked = pred.gather(2, idx).transpose(1, 2)  # (B, K, D)
            target = t[name] if t[name].dim() == 3 else t[name][..., None]
            losses[name] = (F.l1_loss(picked, target, reduction="none") * valid).sum() / num_boxes
        return {name: value * self.loss_weights[name] for name, value in losses.items()}

    def decode(self, outputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Top-K peaks -> ``boxes`` (B, K, 7), ``scores`` (B, K), ``classes`` (B, K) int64. Export-friendly."""
        heat = centre_scores(outputs, dim=1)  # (B, C, X, Y)
        b, c, nx, ny = heat.shape
        peaks = F.max_pool2d(heat, 3, stride=1, padding=1)
        heat = heat * (peaks == heat).to(heat.dtype)  # keep local maxima only
        scores, idx = heat.reshape(b, c * nx * ny).topk(self.max_objects, dim=1)  # (B, K)
        classes = torch.div(idx, nx * ny, rounding_mode="floor")
        cell = idx - classes * (nx * ny)
        ci = torch.div(cell, ny, rounding_mode="floor")
        cj = cell - ci * ny
        reg = torch.cat([outputs["offset"], outputs["z"], outputs["size"], outputs["rot"]], dim=1)  # (B, 8, X, Y)
        reg = reg.reshape(b, 8, nx * ny).gather(2, cell[:, None, :].expand(-1, 8, -1)).transpose(1, 2)  # (B, K, 8)
        g = self.grid
        x = g.x_range[0] + (ci.to(reg.dtype) + reg[..., 0]) * g.cell_size
        y = g.y_range[0] + (cj.to(reg.dtype) + reg[..., 1]) * g.cell_size
        size = reg[..., 3:6].clamp(max=6.0).exp()  # clamp: an untrained head must not overflow exp
        yaw = torch.atan2(reg[..., 6], reg[..., 7])
        boxes = torch.cat([x[..., None], y[..., None], reg[..., 2:3], size, yaw[..., None]], dim=-1)
        return {"boxes": boxes, "scores": scores, "classes": classes}
