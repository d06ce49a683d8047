"""BEV lane lines: segmentation by lane type, plus a row-anchor slot representation with a fixed-size decode.

Why two outputs: segmentation is the easiest thing to learn from lifted features and gives the BEV lane IoU, but
turning masks into polylines needs connected components and curve fitting — data-dependent, not exportable. So
the head also predicts lanes the way row-anchor detectors (UFLD) do, turned to BEV: every grid row (fixed x,
longitudinal) is an anchor, and each of S *slots* classifies, per row, which lateral (y) column its line crosses,
or "absent". Slots are ordered by lateral offset next to the ego — slot ``S/2 - 1`` is the first line to the left
(y > 0), ``S/2 - 2`` the next one out, slot ``S/2`` the first to the right, and so on — an ego-relative order that
a convnet can learn locally (the nearest line left of the car is always near y = +half a lane). Decoding is then
softmax/argmax along fixed axes: fixed shapes, standard ops. Limitation: a line is one y per row, so lines that run
across the road (at junctions) are only in the segmentation.

Targets (built in :meth:`LanesBEVHead.loss`, vectorised in torch): ``lanes_3d`` (B, L, P, 3) ego-frame polylines,
``lanes_3d_valid`` (B, L, P), ``lanes_3d_types`` (B, L) (-1 padding), ``has_lanes_3d`` (B,). The segmentation
target draws each line ``line_width`` cells wide by densely resampling its segments (points every half cell,
spread across the line's width) and scatter-max into the grid, in torch on the batch's device. Measured for
8 frames x 12 lines x 50 points on the 200 x 200 grid (2 CPU threads): 8 ms, against 3 ms for ``cv2.polylines``
on CPU copies — which would add a device-to-host copy and a Python loop per line on GPU. Both are noise next to
a training step, so the torch version wins on simplicity. Row targets interpolate each polyline at every row
centre (first crossing).

Raw outputs, T = lane types, S = slots, X, Y = grid cells (layout in :mod:`visionpilot.models.view_transform`):
    ``seg`` (B, T, X, Y) logits; ``z`` (B, 1, X, Y) line height in metres; ``pos`` (B, S, X, Y + 1) logits over
    the Y columns plus "absent" (last); ``exist`` (B, S) logits; ``type`` (B, S, T) logits (the segmentation
    logits pooled along the slot's predicted line, so type is learned per cell and read out per slot).

Decoded (fixed size): ``points`` (B, S, X, 3) ego-frame (x = row centre, y = local expectation around the best
column, z), ``valid`` (B, S, X) row crossed and slot score >= ``score_threshold``, ``scores`` (B, S),
``types`` (B, S) int64, ``seg_prob`` (B, T, X, Y).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from visionpilot.data.vocab import LANE_TYPES
from visionpilot.models.heads import conv_bn_relu, line_weights, masked_mean, require_sizes, weights_per_term
from visionpilot.models.view_transform import BEVGrid

_LOSS_TERMS = ("seg", "dice", "pos", "exist", "type", "z")


class LanesBEVHead(nn.Module):
    """Lane-line segmentation by type and row-anchor lane slots on a BEV feature map.

    Args:
        in_channels: channels of the BEV features.
        grid: the BEV grid the features live on.
        num_types: lane types (the vocabulary's by default).
        num_slots: S, the most lines the decode returns (half left of the ego, half right).
        head_channels: width of the head's convs.
        context_dilations: dilations of the (3, 1) convs along x that carry "which line is this" from near the
            ego to far rows.
        line_width: drawn width of a line in the segmentation target, in cells.
        score_threshold: slot score below which the decode marks every row invalid.
        window: half-width in columns of the local expectation that refines the lateral position.
        loss_weights: multipliers per term (``seg``, ``dice``, ``pos``, ``exist``, ``type``, ``z``); ``dice`` 0
            trains the segmentation with the focal loss alone.
    """

    def __init__(self, in_channels: int, grid: BEVGrid, num_types: int = len(LANE_TYPES), num_slots: int = 8,
                 head_channels: int = 64, context_dilations: tuple[int, ...] = (1, 2, 4, 8),
                 line_width: float = 1.5, score_threshold: float = 0.5, window: int = 2,
                 loss_weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        require_sizes("LanesBEVHead", num_types=num_types, num_slots=num_slots)
        if window < 0:  # an empty window: every decoded point at y = 0, still valid
            raise ValueError(f"LanesBEVHead: window must be >= 0 columns, found {window}")
        self.grid = grid
        self.num_types = num_types
        self.num_slots = num_slots
        self.line_width = line_width
        self.score_threshold = score_threshold
        self.window = window
        self.loss_weights = weights_per_term("LanesBEVHead", _LOSS_TERMS, loss_weights)
        # Normalised (x, y) coordinate channels: slot order is ego-relative, so the head must know where it is.
        xs = grid.x_centers() / max(abs(grid.x_range[0]), abs(grid.x_range[1]))
        ys = grid.y_centers() / max(abs(grid.y_range[0]), abs(grid.y_range[1]))
        coords = torch.stack([xs[:, None].expand(-1, grid.ny), ys[None, :].expand(grid.nx, -1)])  # (2, X, Y)
        self.register_buffer("coords", coords[None], persistent=False)  # (1, 2, X, Y)
        self.register_buffer("y_centers", grid.y_centers(), persistent=False)  # (Y,)
        self.register_buffer("x_centers", grid.x_centers(), persistent=False)  # (X,)
        self.stem = conv_bn_relu(in_channels + 2, head_channels, (3, 3))
        self.context = nn.ModuleList(
            conv_bn_relu(head_channels, head_channels, (3, 1), (d, 1)) for d in context_dilations
        )
        self.seg = nn.Conv2d(head_channels, num_types, 1)
        self.z = nn.Conv2d(head_channels, 1, 1)
        self.pos = nn.Conv2d(head_channels, num_slots, 1)
        self.absent = nn.Conv2d(head_channels, num_slots, 1)
        self.exist = nn.Linear(2 * head_channels, num_slots)
        nn.init.constant_(self.seg.bias, -2.19)  # sparse lines: start at p = 0.1
        # Most (slot, row) pairs are empty: start at P(absent) = 1/2 instead of 1/(Y + 1), so the first steps
        # are not spent learning that prior (the row CE starts at ln 2 instead of ln(Y + 1)).
        nn.init.constant_(self.absent.bias, math.log(grid.ny))

    def forward(self, bev: Tensor) -> dict[str, Tensor]:
        """(B, C_in, X, Y) BEV features -> raw outputs (see the module docstring)."""
        b = bev.shape[0]
        x = self.stem(torch.cat([bev, self.coords.expand(b, -1, -1, -1).to(bev.dtype)], dim=1))
        for block in self.context:
            x = x + block(x)  # residual: context is added, local evidence kept
        seg = self.seg(x)  # (B, T, X, Y)
        # Per (slot, row): Y column logits plus one "absent" logit pooled over the row.
        col = self.pos(x)  # (B, S, X, Y)
        absent = self.absent(x).mean(dim=3, keepdim=True)  # (B, S, X, 1)
        pos = torch.cat([col, absent], dim=3)  # (B, S, X, Y + 1)
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)  # (B, 2 * C)
        exist = self.exist(pooled)  # (B, S)
        weights = line_weights(pos)  # (B, S, X, Y), summing to 1 per slot
        lane_type = torch.einsum("bsxy,btxy->bst", weights, seg)  # (B, S, T) seg logits along the slot's line
        return {"seg": seg, "z": self.z(x), "pos": pos, "exist": exist, "type": lane_type}

    @torch.no_grad()
    def build_targets(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Segmentation raster and slot targets.

        Returns:
            seg: (B, T, X, Y) {0, 1}; pos: (B, S, X) column index, Y = absent; exist: (B, S) {0, 1};
            type: (B, S) lane type, -1 for empty slots; z: (B, S, X) metres (meaningful where pos < Y).
        """
        pts, seg_ok, types = lane_segments(batch["lanes_3d"], batch["lanes_3d_valid"], batch["lanes_3d_types"],
                                           self.num_types, batch["has_lanes_3d"])
        seg = rasterize_lines(pts, seg_ok, types, self.grid, self.num_types, self.line_width)
        y_row, z_row, col, present = row_crossings(pts, seg_ok, self.grid)
        slot = assign_slots(y_row, present, self.x_centers, self.num_slots)  # (B, L), -1 = no slot

        ny = self.grid.ny
        onehot = (slot[..., None] == torch.arange(self.num_slots, device=pts.device)).float()  # (B, L, S)
        exist = onehot.sum(dim=1) > 0  # (B, S); at most one lane per slot (ranks are distinct)
        # Float einsums (integer matmul does not exist on CUDA); column indices are exact in float32.
        pos = torch.einsum("bls,blx->bsx", onehot, col.float()).round().long()
        pos = torch.where(exist[..., None], pos, torch.full_like(pos, ny))
        lane_type = torch.einsum("bls,bl->bs", onehot, types.float()).round().long()
        lane_type = torch.where(exist, lane_type, torch.full_like(lane_type, -1))
        z = torch.einsum("bls,blx->bsx", onehot, torch.where(present, z_row, torch.zeros_like(z_row)))
        return {"seg": seg, "pos": pos, "exist": exist.float(), "type": lane_type, "z": z}

    def loss(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Named loss terms, masked by ``has_lanes_3d`` (a batch without 3D lanes gives connected zeros).

        ``seg``: sigmoid focal loss / number of line cells; ``dice``: ``-ln`` of the soft Dice coefficient per lane
        type over the batch, averaged over the types the batch draws; ``pos``: cross-entropy over columns + absent,
        mean over (slot, row); ``exist``: BCE per slot; ``type``: cross-entropy per filled slot; ``z``: L1 at the
        true crossing cells. Each is multiplied by its ``loss_weights`` entry.
        """
        t = self.build_targets(batch)
        seg_logits = outputs["seg"].float()
        b, _, nx, ny = seg_logits.shape
        frame = batch["has_lanes_3d"].float().to(seg_logits.device)  # (B,)
        n_frames = frame.sum().clamp(min=1.0)
        # Focal loss normalised by line cells, as RetinaNet normalises by foreground anchors.
        focal = sigmoid_focal_loss(seg_logits, t["seg"], alpha=0.25, gamma=2.0, reduction="none")
        num_pos = (t["seg"] * frame[:, None, None, None]).sum().clamp(min=1.0)
        seg_loss = (focal * frame[:, None, None, None]).sum() / num_pos
        # Soft Dice per lane type over the batch (V-Net; nnU-Net's "batch Dice" beside its cross-entropy), as -ln of
        # the coefficient (Wong et al. 2018's logarithmic Dice with gamma 1; segmentation_models_pytorch's
        # DiceLoss(log_loss=True)). Why, on top of the focal loss: the BEV lane IoU thresholds the probabilities at
        # 0.5, and the focal loss (alpha 0.25) leaves line cells under-confident — the demo model's IoU peaked at a
        # threshold of 0.3, 5 points above its 0.5 figure — while Dice scores the mask's overlap itself. Per type,
        # so a rare type (yellow lines: a tenth of the white ones' cells) weighs what a common one does; only types
        # the batch draws, since a type absent from four frames says little about the next four (the focal term
        # still pushes its cells down). The logarithm: 1 - Dice is bounded, and where part of a mask cannot be
        # fitted (lines behind a front-only rig) it stalls near its floor; -ln keeps the gradient on the types
        # fitted worst (debug=overfit: 1 - Dice fell 5x in 300 steps, -ln Dice more than 10x).
        if self.loss_weights["dice"] > 0:
            prob = seg_logits.sigmoid() * frame[:, None, None, None]
            target = t["seg"] * frame[:, None, None, None]
            inter = (prob * target).sum(dim=(0, 2, 3))  # (T,)
            total = prob.sum(dim=(0, 2, 3)) + target.sum(dim=(0, 2, 3))
            drawn = (target.sum(dim=(0, 2, 3)) > 0).float()
            dice = -torch.log((2.0 * inter + 1.0) / (total + 1.0))
            dice_loss = masked_mean(dice, drawn)
        else:
            dice_loss = seg_logits.sum() * 0.0  # in the graph, as every term

        pos_logits = outputs["pos"].float()  # (B, S, X, Y + 1)
        ce = F.cross_entropy(pos_logits.flatten(0, 2), t["pos"].flatten(), reduction="none").view(b, -1)
        pos_loss = (ce * frame[:, None]).sum() / (n_frames * ce.shape[1])

        exist_bce = F.binary_cross_entropy_with_logits(outputs["exist"].float(), t["exist"], reduction="none")
        exist_loss = (exist_bce * frame[:, None]).sum() / (n_frames * self.num_slots)

        type_mask = (t["type"] >= 0).float() * frame[:, None]  # (B, S)
        type_ce = F.cross_entropy(outputs["type"].float().flatten(0, 1), t["type"].clamp(min=0).flatten(),
                                  reduction="none").view(b, -1)
        type_loss = (type_ce * type_mask).sum() / type_mask.sum().clamp(min=1.0)

        row_mask = (t["pos"] < ny).float() * frame[:, None, None]  # (B, S, X)
        zmap = outputs["z"].float()[:, 0]  # (B, X, Y)
        z_at = zmap[:, None].expand(-1, self.num_slots, -1, -1).gather(3, t["pos"].clamp(max=ny - 1)[..., None])
        z_loss = (F.l1_loss(z_at[..., 0], t["z"], reduction="none") * row_mask).sum() / row_mask.sum().clamp(min=1.0)

        losses = {"seg": seg_loss, "dice": dice_loss, "pos": pos_loss, "exist": exist_loss, "type": type_loss,
                  "z": z_loss}
        return {name: value * self.loss_weights[name] for name, value in losses.items()}

    def decode(self, outputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Fixed-size polylines: ``points`` (B, S, X, 3), ``valid`` (B, S, X), ``scores`` (B, S), ``types`` (B, S),
        ``seg_prob`` (B, T, X, Y). Export-friendly (softmax / argmax / masked sums only)."""
        prob = outputs["pos"].softmax(dim=3)  # (B, S, X, Y + 1)
        cols = prob[..., :-1]  # (B, S, X, Y)
        ny = cols.shape[-1]
        best = cols.argmax(dim=3, keepdim=True)  # (B, S, X, 1)
        j = torch.arange(ny, device=cols.device)
        # Expectation in a window around the best column: sub-cell position, robust to a second mode far away.
        near = ((j - best).abs() <= self.window).to(cols.dtype)
        w = cols * near
        w = w / w.sum(dim=3, keepdim=True).clamp(min=1e-6)
        y = (w * self.y_centers.to(w.dtype)).sum(dim=3)  # (B, S, X)
        z = (w * outputs["z"][:, :1]).sum(dim=3)  # (B, S, X); z map (B, 1, X, Y) broadcasts over slots
        x = self.x_centers.to(y.dtype).expand_as(y)
        scores = torch.sigmoid(outputs["exist"])  # (B, S)
        valid = (prob[..., -1] < 0.5) & (scores >= self.score_threshold)[..., None]
        return {
            "points": torch.stack([x, y, z], dim=-1),
            "valid": valid,
            "scores": scores,
            "types": outputs["type"].argmax(dim=-1),
            "seg_prob": torch.sigmoid(outputs["seg"]),
        }


def lane_segments(lanes: Tensor, valid: Tensor, types: Tensor, num_types: int, has: Tensor | None = None
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """The batch contract's padded 3D lanes as drawable segments (for :func:`rasterize_lines`, :func:`row_crossings`).

    Args:
        lanes: (B, L, P, >=2) ego-frame polylines; valid: (B, L, P) real points; types: (B, L) (-1 padding);
        has: optional (B,) frames whose lanes are labelled.

    Returns:
        ``pts`` (B, L, P', D) float, ``seg_ok`` (B, L, P' - 1) segments between two real points of a labelled lane
        of a known type, ``types`` (B, L) int64. A batch without lanes is padded to P = 1; P' adds an invalid point
        so that the segment dimension exists.
    """
    pts, pvalid, types = lanes.float(), valid.bool(), types.long()
    if pts.shape[2] < 2:
        pts = F.pad(pts, (0, 0, 0, 1))
        pvalid = F.pad(pvalid, (0, 1))
    lane_ok = (types >= 0) & (types < num_types)  # (B, L)
    if has is not None:
        lane_ok = lane_ok & has.bool().to(lane_ok.device)[:, None]
    return pts, pvalid[:, :, :-1] & pvalid[:, :, 1:] & lane_ok[..., None], types


def rasterize_lines(pts: Tensor, seg_ok: Tensor, types: Tensor, grid: BEVGrid, num_types: int,
                    line_width: float) -> Tensor:
    """Draw polylines into per-type BEV masks: the head's segmentation target, and the ground truth of the BEV lane
    IoU (``evaluation/lanes_bev.rasterize_polylines``), so that the metric scores what the head is asked to draw.

    Every real segment is sampled every half cell along its length and across ``line_width`` cells, and the
    samples are scatter-maxed into the grid: every cell the band touches is marked, its closed edges included
    (about ``line_width + 1`` cells across for a line at an arbitrary offset; a band whose edges fall exactly on
    cell borders also marks the cells beyond them). Only real segments are sampled, each in proportion to its length, so
    a long two-point line costs what its length costs.

    Args:
        pts: (B, L, P, >=2) ego-frame polylines (x, y used).
        grid: the BEV grid (anything with ``shape``, ``cell_size``, ``x_range``, ``y_range``).
        seg_ok: (B, L, P - 1) segments to draw.
        types: (B, L) lane type index (used where ``seg_ok``).

    Returns:
        (B, T, X, Y) float {0, 1}.
    """
    b = pts.shape[0]
    nx, ny = grid.shape
    cell = grid.cell_size
    bi, li, ki = seg_ok.nonzero(as_tuple=True)  # (M,) each
    pa, pb = pts[bi, li, ki, :2], pts[bi, li, ki + 1, :2]  # (M, 2)
    d = pb - pa
    length = d.norm(dim=-1)  # (M,)
    step = 0.5 * cell
    n_along = (length / step).ceil().long().clamp(min=1) + 1  # (M,) samples incl. both ends
    seg_id = torch.repeat_interleave(torch.arange(len(n_along), device=pts.device), n_along)  # (Q,)
    start = torch.cumsum(n_along, 0) - n_along
    t = (torch.arange(len(seg_id), device=pts.device) - start[seg_id]) / (n_along[seg_id] - 1)
    half = 0.5 * line_width * cell
    n_across = max(int(math.ceil(2 * half / step)) + 1, 1)
    s = torch.linspace(-half, half, n_across, device=pts.device) if n_across > 1 else pts.new_zeros(1)
    normal = torch.stack([-d[:, 1], d[:, 0]], dim=-1) / length[:, None].clamp(min=1e-6)  # (M, 2)
    samples = (pa[seg_id, None] + t[:, None, None] * d[seg_id, None]
               + s[None, :, None] * normal[seg_id, None])  # (Q, n_across, 2)
    si = ((samples[..., 0] - grid.x_range[0]) / cell).floor().long()
    sj = ((samples[..., 1] - grid.y_range[0]) / cell).floor().long()
    ok = (si >= 0) & (si < nx) & (sj >= 0) & (sj < ny)  # (Q, n_across)
    flat = (bi * num_types + types[bi, li])[seg_id, None] * (nx * ny) + si.clamp(0, nx - 1) * ny + sj.clamp(0, ny - 1)
    seg = torch.zeros(b * num_types * nx * ny, device=pts.device)
    # amax, not scatter_ (which is nondeterministic for duplicate indices); masked samples write a harmless 0.
    seg.scatter_reduce_(0, flat.reshape(-1), ok.reshape(-1).float(), reduce="amax")
    return seg.reshape(b, num_types, nx, ny)


def row_crossings(pts: Tensor, seg_ok: Tensor, grid: BEVGrid) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Where each polyline crosses each grid row (x = row centre); the first crossing along the line wins.

    Returns:
        y, z: (B, L, X) metres; col: (B, L, X) column index, Y where not crossed; present: (B, L, X).
    """
    nx, ny = grid.shape
    rows = grid.x_centers().to(pts.device)  # (X,)
    a, b = pts[:, :, :-1], pts[:, :, 1:]  # (B, L, K, 3) segment ends
    xa, xb = a[..., 0, None], b[..., 0, None]  # (B, L, K, 1)
    cover = seg_ok[..., None] & (torch.minimum(xa, xb) <= rows) & (rows <= torch.maximum(xa, xb)) & (xa != xb)
    first = cover.float().argmax(dim=2, keepdim=True)  # (B, L, 1, X): first covering segment along K

    def pick(v: Tensor) -> Tensor:  # (B, L, K) per-segment value -> (B, L, X) at each row's first segment
        return v[..., None].expand(-1, -1, -1, nx).gather(2, first)[:, :, 0]

    x0, x1 = pick(a[..., 0]), pick(b[..., 0])
    frac = (rows - x0) / torch.where(x1 == x0, torch.ones_like(x1), x1 - x0)
    y = pick(a[..., 1]) + frac * (pick(b[..., 1]) - pick(a[..., 1]))
    z = pick(a[..., 2]) + frac * (pick(b[..., 2]) - pick(a[..., 2]))
    col = ((y - grid.y_range[0]) / grid.cell_size).floor()
    present = cover.any(dim=2) & (col >= 0) & (col < ny)  # (B, L, X)
    col = torch.where(present, col.long(), torch.full_like(col, ny, dtype=torch.long))
    return y, z, col, present


def assign_slots(y_row: Tensor, present: Tensor, rows: Tensor, num_slots: int) -> Tensor:
    """Ego-relative slot of each lane line: ranked outwards by lateral offset at its row nearest the ego.

    Slot ``S/2 - 1`` is the first line on the left (y > 0), ``S/2 - 2`` the next one out, ``S/2`` the first on
    the right, ... Lines beyond the slots, or crossing no row, get -1.

    Args:
        y_row, present: (B, L, X) from :func:`row_crossings`; rows: (X,) row centres.

    Returns:
        (B, L) slot index or -1.
    """
    nl = y_row.shape[1]
    dist = torch.where(present, rows.abs().expand_as(y_row), torch.full_like(y_row, math.inf))
    y_ref = y_row.gather(2, dist.argmin(dim=2, keepdim=True))[..., 0]  # (B, L)
    has_rows = present.any(dim=2)
    left = y_ref > 0
    mag = y_ref.abs()
    idx = torch.arange(nl, device=y_row.device)
    same_side = (left[:, :, None] == left[:, None, :]) & has_rows[:, None, :]  # (B, L, L'): l' competes with l
    closer = (mag[:, None, :] < mag[:, :, None]) | ((mag[:, None, :] == mag[:, :, None])
                                                     & (idx[None, :] < idx[:, None])[None])
    rank = (same_side & closer).sum(dim=2)  # (B, L)
    half = num_slots // 2
    slot = torch.where(left, half - 1 - rank, half + rank)
    assigned = has_rows & (slot >= 0) & (slot < num_slots)
    return torch.where(assigned, slot, torch.full_like(slot, -1))
