"""Image-space lane lines as row anchors (Ultra-Fast-Lane-Detection style), one prediction per camera image.

Representation. The image has ``R`` *row anchors* at fixed fractions of its height (``row_range``, e.g. from
just below the horizon to the bottom) and ``G`` *column bins* of equal width across ``u ∈ [0, W]`` (bin ``g``
covers ``[g W/G, (g+1) W/G)``, centre ``(g + 0.5) W/G``; pixel convention of :mod:`visionpilot.geometry.frames`).
There are ``S`` lane *slots*; per slot the head predicts an existence logit, a lane type (``data/vocab.LANE_TYPES``)
and, per row anchor, a classification over the ``G`` bins plus one "absent" class (index ``G``).

Slot rule (ego-relative, left to right). Each GT lane's *key* is the ``u`` where it meets the image bottom,
extrapolated along its two lowest row-anchor points (its ``u`` at the lowest anchor if only one is covered).
Lines converge towards the vanishing point, so these keys keep their left-to-right order even for lanes that
leave the image through a side. Lanes with ``key < cx`` (the principal point's column: where the ground straight
below a forward camera meets the image bottom) are *left* lanes and fill slots ``S/2 - 1, S/2 - 2, ...`` nearest
first; the others fill ``S/2, S/2 + 1, ...``. So for a forward camera with 4 slots, slot 1 and 2 are always the
ego lane's left and right lines, 0 and 3 the next ones out; lanes beyond are dropped. Crops and resizes move
``cx`` with the image, so the rule stays consistent under augmentation.

Two classifiers produce the same outputs (so targets, loss, decode and evaluation are shared):

- ``classifier="mlp"`` (UFLD): 3x3 conv + 1x1 reduction on one neck level, bilinear resampling to a fixed
  ``pool_size`` grid (so the parameters do not depend on the input size, unlike UFLD's flatten of the raw map),
  then an MLP — the global view is what lets the head tell slots apart. Every (row, bin, slot) has its own
  weights, so each position must be seen with a lane before it is predicted there: UFLD trains for many epochs
  from ImageNet weights.
- ``classifier="conv"`` (local): the neck level is sampled bilinearly at the row anchors and bin centres (fixed
  fractions of the image, so the same at any input size; two separable interpolation MatMuls, exportable), and
  convolutions shared across positions score every (row, bin) cell per slot — a lane marking looks the same
  wherever it is, so every labelled point teaches every position. Which slot a marking belongs to (the ego lane's
  left line, the next one out, ...) is not local: normalised (u, v) coordinate channels and convolutions dilated
  along the row (``context_dilations``) carry it, as in :class:`~visionpilot.models.heads.lanes_bev.LanesBEVHead`.
  Per (slot, row) the "absent" logit is pooled along the row; existence reads the map's mean and max; a slot's
  type is the per-cell type logits averaged along its predicted line. From random weights it reaches ~2.7x the
  MLP's lane F1 in the demo's 250 steps (docs/benchmarks.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionpilot.data.vocab import LANE_TYPES
from visionpilot.models.heads import conv_bn_relu, line_weights, masked_mean, require_sizes


class RowAnchorLaneHead(nn.Module):
    """Row-anchor lane head.

    Raw outputs of :meth:`forward` (``BN`` = cameras folded into the batch):
        ``exist``: (BN, S) existence logits; ``columns``: (BN, S, R, G + 1) column-bin logits, last = absent;
        ``types``: (BN, S, T) lane-type logits.

    Args:
        in_channels: neck width.
        strides: neck strides.
        stride: which neck level to read.
        num_slots: lane slots ``S`` (half left, half right of the principal point; see the module docstring).
        num_rows: row anchors ``R``.
        num_bins: column bins ``G``.
        row_range: first and last row anchor as fractions of the image height (inclusive, evenly spaced).
        num_types: lane types ``T``.
        classifier: ``"mlp"`` (UFLD) or ``"conv"`` (local); see the module docstring. The arguments of the other
            classifier are ignored, so a config can switch with this one key.
        mid_channels: (mlp) channels after the 1x1 reduction (UFLD uses 8).
        pool_size: (mlp) (rows, cols) of the grid the reduced map is resampled to before the MLP.
        hidden: (mlp) MLP width.
        dropout: (mlp) dropout before the last layer.
        head_channels: (conv) width of the convolutions on the sampled (R, G) map.
        context_dilations: (conv) dilations along the row of its (1, 3) context convolutions.
        decode_window: half-width in bins of the window around the arg-max used for the sub-bin expectation.
    """

    def __init__(self, in_channels: int, strides: Sequence[int], stride: int = 32, num_slots: int = 4,
                 num_rows: int = 18, num_bins: int = 100, row_range: Sequence[float] = (0.45, 0.98),
                 num_types: int = len(LANE_TYPES), classifier: str = "mlp", mid_channels: int = 8,
                 pool_size: Sequence[int] = (9, 25), hidden: int = 512, dropout: float = 0.0,
                 head_channels: int = 32, context_dilations: Sequence[int] = (1, 2, 4, 8),
                 decode_window: int = 2) -> None:
        super().__init__()
        if stride not in strides:
            raise ValueError(f"lanes_2d head: stride {stride} is not a neck level (neck strides {list(strides)})")
        if not 0.0 <= row_range[0] < row_range[1] <= 1.0:
            raise ValueError(f"lanes_2d head: row_range must satisfy 0 <= start < end <= 1, found {list(row_range)}")
        if classifier not in ("mlp", "conv"):
            raise ValueError(f"lanes_2d head: classifier must be 'mlp' or 'conv', found {classifier!r}")
        require_sizes("lanes_2d head", num_slots=num_slots, num_rows=num_rows, num_bins=num_bins, num_types=num_types)
        if decode_window < 0:  # an empty window: 0 / 0 in the decode's expectation, every point NaN
            raise ValueError(f"lanes_2d head: decode_window must be >= 0 bins, found {decode_window}")
        self.level = f"s{stride}"
        self.classifier = classifier
        self.num_slots, self.num_rows, self.num_bins, self.num_types = num_slots, num_rows, num_bins, num_types
        self.decode_window = decode_window
        self.register_buffer("row_fractions", torch.linspace(row_range[0], row_range[1], num_rows), persistent=False)
        if classifier == "mlp":
            self._build_mlp(in_channels, mid_channels, pool_size, hidden, dropout)
        else:
            self._build_conv(in_channels, head_channels, context_dilations)

    def _build_mlp(self, in_channels: int, mid_channels: int, pool_size: Sequence[int], hidden: int,
                   dropout: float) -> None:
        self.pool_size = (int(pool_size[0]), int(pool_size[1]))
        self.reduce = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, mid_channels, 1),
        )
        s, r, g, t = self.num_slots, self.num_rows, self.num_bins, self.num_types
        self._sizes = (s, s * r * (g + 1), s * t)
        self.mlp = nn.Sequential(
            nn.Flatten(),
            nn.Linear(mid_channels * self.pool_size[0] * self.pool_size[1], hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, sum(self._sizes)),
        )

    def _build_conv(self, in_channels: int, head_channels: int, context_dilations: Sequence[int]) -> None:
        r, g = self.num_rows, self.num_bins
        # grid_sample's normalised coordinates (align_corners=False: -1 and 1 are the outer pixel edges, so a
        # fraction f of the image maps to 2f - 1 at any resolution): rows at the anchors, columns at bin centres.
        v = 2 * self.row_fractions - 1
        u = 2 * (torch.arange(g) + 0.5) / g - 1
        grid = torch.stack([u[None, :].expand(r, -1), v[:, None].expand(-1, g)], dim=-1)
        self.register_buffer("coords", grid.permute(2, 0, 1)[None].clone(), persistent=False)  # (1, 2, R, G)
        self.register_buffer("col_fractions", (torch.arange(g) + 0.5) / g, persistent=False)  # (G,)
        self._interp_cache: dict[tuple[int, int, str], tuple[Tensor, Tensor]] = {}  # see _interp_matrices
        self.stem = conv_bn_relu(in_channels + 2, head_channels, (3, 3))
        self.context = nn.ModuleList(conv_bn_relu(head_channels, head_channels, (1, 3), (1, int(d)))
                                     for d in context_dilations)
        self.columns = nn.Conv2d(head_channels, self.num_slots, 1)
        self.absent = nn.Conv2d(head_channels, self.num_slots, 1)
        self.type_logits = nn.Conv2d(head_channels, self.num_types, 1)
        self.exist = nn.Linear(2 * head_channels, self.num_slots)
        # Most (slot, row) pairs are absent: start at P(absent) = 1/2, not 1 / (G + 1) (as LanesBEVHead does).
        nn.init.constant_(self.absent.bias, math.log(g))

    def forward(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        """Neck features ``{"s32": (BN, C, h, w), ...}`` -> raw outputs (see the class docstring)."""
        x = feats[self.level]
        return self._forward_mlp(x) if self.classifier == "mlp" else self._forward_conv(x)

    def _forward_mlp(self, x: Tensor) -> dict[str, Tensor]:
        x = self.reduce(x)  # (BN, mid, h, w)
        # Bilinear resampling (not adaptive pooling) because it exports to ONNX for any input size.
        x = F.interpolate(x, size=self.pool_size, mode="bilinear", align_corners=False)
        exist, columns, types = self.mlp(x).split(self._sizes, dim=1)
        s, r, g = self.num_slots, self.num_rows, self.num_bins
        return {
            "exist": exist,  # (BN, S)
            "columns": columns.reshape(-1, s, r, g + 1),  # (BN, S, R, G + 1)
            "types": types.reshape(-1, s, self.num_types),  # (BN, S, T)
        }

    def _forward_conv(self, x: Tensor) -> dict[str, Tensor]:
        bn = x.shape[0]
        x = self.sample(x)  # (BN, C, R, G)
        x = self.stem(torch.cat([x, self.coords.expand(bn, -1, -1, -1).to(x.dtype)], dim=1))
        for block in self.context:
            x = x + block(x)  # residual: context is added, the local evidence kept
        absent = self.absent(x).mean(dim=3, keepdim=True)  # (BN, S, R, 1)
        columns = torch.cat([self.columns(x), absent], dim=3)  # (BN, S, R, G + 1)
        exist = self.exist(torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1))  # (BN, S)
        # The slot's type: per-cell type logits averaged along its predicted line, so the type is learned where
        # the paint is and read out per slot.
        types = torch.einsum("bsrg,btrg->bst", line_weights(columns), self.type_logits(x))  # (BN, S, T)
        return {"exist": exist, "columns": columns, "types": types}

    #: Logit margin of "no lane" in :meth:`empty_outputs`: sigmoid(-30) ~ 1e-13, and "absent" wins every row.
    EMPTY_LOGIT = 30.0

    def empty_outputs(self, batch: int, cameras: int, like: Tensor) -> dict[str, Tensor]:
        """Raw outputs that decode to "no lane" for images the head is not run on (``HydraNet.set_head_cameras``).

        Returns (batch, cameras, ...) tensors of the shapes :meth:`forward` gives after unfolding, dtype and device
        of ``like``: existence logits at -EMPTY_LOGIT, every row's "absent" class ahead by EMPTY_LOGIT, type 0.
        """
        s, r, g, t = self.num_slots, self.num_rows, self.num_bins, self.num_types
        # Built from the batch dimension of ``like`` (a traced size in an ONNX export with a dynamic batch axis).
        base = like.new_zeros(()).expand(batch, cameras)
        absent = torch.cat([like.new_zeros(g), like.new_full((1,), self.EMPTY_LOGIT)])
        return {
            "exist": (base[..., None] - self.EMPTY_LOGIT).expand(batch, cameras, s),
            "columns": (base[..., None, None, None] + absent).expand(batch, cameras, s, r, g + 1),
            "types": base[..., None, None].expand(batch, cameras, s, t),
        }

    def sample(self, x: Tensor) -> Tensor:
        """(BN, C, h, w) -> (BN, C, R, G): bilinear samples at the row anchors and bin centres.

        What ``grid_sample`` (bilinear, ``padding_mode="border"``, ``align_corners=False``) gives on the product grid
        of the anchors' and bin centres' normalised coordinates (``coords``), written as its two separable 1D
        interpolations, (R, h) @ x @ (w, G): two small MatMuls with constant matrices instead of a GridSample, an op
        that onnxruntime quantises (a GridSample stays a float island of the int8 graph) and a cheap backward.
        """
        rows, cols = self._interp_matrices(int(x.shape[-2]), int(x.shape[-1]), x.device)
        return torch.matmul(torch.matmul(rows.to(x.dtype), x), cols.t().to(x.dtype))

    def _interp_matrices(self, h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """(R, h) and (G, w) interpolation weights, computed once per map size and device and kept outside the
        autograd and tracing graphs: an ONNX export (which runs the net once before tracing) stores them as
        constants, where computing them in the graph gave onnxruntime's quantisation pre-processing shapes that
        ONNX's strict shape inference then refused."""
        key = (h, w, str(device))
        if key not in self._interp_cache:
            with torch.no_grad():
                self._interp_cache[key] = (_interp_matrix(self.row_fractions.to(device), h),
                                           _interp_matrix(self.col_fractions.to(device), w))
        return self._interp_cache[key]

    def row_anchors(self, height: int) -> Tensor:
        """Row-anchor ``v`` in pixels, top to bottom: (R,)."""
        return self.row_fractions * height

    @torch.no_grad()
    def targets(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Slot targets from the batch's padded 2D lanes (see :func:`assign_slots` and the module docstring).

        Returns:
            ``image_mask`` (B, N) bool: images whose lanes are labelled (``has_lanes_2d``, a real camera, and
            ``lanes_2d_camera_mask`` when the batch has it). ``exist`` (B, N, S) bool; ``lane_index`` (B, N, S)
            index into the batch's L lanes, -1 if empty. ``bins`` (B, N, S, R) int64 in ``[0, G]`` (``G`` =
            absent); ``pos`` (B, N, S, R) continuous column in bin units (bin ``g`` centred at ``g``); ``types``
            (B, N, S) int64, -1 if empty.
        """
        height, width = batch["images"].shape[-2:]
        g = self.num_bins
        rows = self.row_anchors(height).to(batch["lanes_2d"])  # (R,)
        slots = assign_slots(batch, rows, self.num_slots)
        exist, take = slots["exist"], slots["lane_index"].clamp(min=0)
        u_slot = slots["u"].gather(2, take[..., None].expand(-1, -1, -1, self.num_rows))  # (B, N, S, R)
        cov_slot = slots["covered"].gather(2, take[..., None].expand(-1, -1, -1, self.num_rows)) & exist[..., None]
        pos = u_slot / width * g - 0.5
        bins = torch.where(cov_slot, (u_slot / width * g).floor().long().clamp(0, g - 1), g)
        slot_types = torch.where(exist, batch["lanes_2d_types"].gather(2, take), -1)
        return {"image_mask": slots["image_mask"], "exist": exist, "lane_index": slots["lane_index"], "bins": bins,
                "pos": torch.where(cov_slot, pos, 0.0), "types": slot_types}

    def loss(self, outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Masked loss terms.

        Args:
            outputs: raw outputs unfolded to (B, N, ...).
            batch: the batch (``images``, ``intrinsics``, ``camera_mask``, ``lanes_2d``, ``lanes_2d_valid``,
                ``lanes_2d_types``, ``has_lanes_2d``); lanes in pixels of the batched image.

        Returns:
            ``exist`` (BCE per slot), ``columns`` (cross-entropy over G bins + absent per slot and row),
            ``position`` (smooth-L1 in bins between the softmax expectation over bins and the GT column, on
            covered rows: sub-bin accuracy, UFLD v2 style), ``type`` (cross-entropy on existing slots). Each is a
            mean over its labelled elements, zero (and still in the graph) when there are none.
        """
        t = self.targets(batch)
        img = t["image_mask"].float()  # (B, N)
        g = self.num_bins

        exist_l = F.binary_cross_entropy_with_logits(outputs["exist"], t["exist"].float(), reduction="none")
        exist_m = img[..., None].expand_as(exist_l)

        columns = outputs["columns"]  # (B, N, S, R, G + 1)
        col_l = F.cross_entropy(columns.flatten(0, 3), t["bins"].flatten(), reduction="none").view_as(t["bins"])
        col_m = img[..., None, None].expand_as(col_l)

        prob = columns[..., :g].softmax(-1)
        expect = (prob * torch.arange(g, device=prob.device, dtype=prob.dtype)).sum(-1)  # (B, N, S, R)
        pos_l = F.smooth_l1_loss(expect, t["pos"], reduction="none")
        pos_m = (t["bins"] < g).float()  # covered rows of existing slots of labelled images

        # A lane of a type this head does not classify (num_types below the vocabulary) still is a lane: it counts
        # for existence and position, not for the type term (as the other heads ignore classes they do not predict).
        num_types = outputs["types"].shape[-1]
        type_l = F.cross_entropy(outputs["types"].flatten(0, 2), t["types"].clamp(0, num_types - 1).flatten(),
                                 reduction="none").view_as(t["types"])
        type_m = ((t["types"] >= 0) & (t["types"] < num_types)).float()
        return {
            "exist": masked_mean(exist_l, exist_m),
            "columns": masked_mean(col_l, col_m),
            "position": masked_mean(pos_l, pos_m),
            "type": masked_mean(type_l, type_m),
        }

    def decode(self, outputs: dict[str, Tensor], image_size: Sequence[int]) -> dict[str, Tensor]:
        """Fixed-size lanes in input-image pixels (ONNX-exportable: no data-dependent shapes).

        Args:
            outputs: raw outputs with any leading dims (``...`` = (B, N) from the net).
            image_size: (H, W) of the input images.

        Returns:
            ``exist`` (..., S) existence probability; ``types`` (..., S) int64 lane-type index; ``points``
            (..., S, R, 2) ``(u, v)`` pixels, ``u`` the softmax expectation over a ``decode_window`` around the
            arg-max bin (sub-bin accuracy), ``v`` the row anchors; ``points_valid`` (..., S, R) bool: the arg-max
            is a bin, not "absent". Thresholding ``exist`` is left to the consumer.
        """
        height, width = int(image_size[0]), int(image_size[1])
        g = self.num_bins
        columns = outputs["columns"]  # (..., S, R, G + 1)
        valid = columns.argmax(-1) != g  # (..., S, R)
        grid = columns[..., :g]
        bins = torch.arange(g, device=grid.device)
        window = (bins - grid.argmax(-1, keepdim=True)).abs() <= self.decode_window  # (..., S, R, G)
        # Softmax over the window, written out with a multiplicative mask instead of an -inf fill: the same
        # numbers (the window is centred on the maximum), and no infinite or constant-fill tensor in the graph,
        # on which onnxruntime's histogram INT8 calibrators (entropy, percentile) fail.
        weights = (grid - grid.amax(-1, keepdim=True)).exp() * window.to(grid.dtype)
        prob = weights / weights.sum(-1, keepdim=True)
        u = ((prob * bins.to(prob.dtype)).sum(-1) + 0.5) * (width / g)  # (..., S, R)
        v = self.row_anchors(height).to(u).expand_as(u)
        return {
            "exist": outputs["exist"].sigmoid(),
            "types": outputs["types"].argmax(-1),
            "points": torch.stack([u, v], dim=-1),
            "points_valid": valid,
        }


def _interp_matrix(fractions: Tensor, size: int) -> Tensor:
    """(K, size) weights of 1D linear interpolation at ``fractions`` of an axis of ``size`` pixels, as ``grid_sample``
    with ``align_corners=False`` and ``padding_mode="border"`` reads them: fraction f sits at pixel ``f * size - 0.5``
    (pixel centres at integers), clamped to ``[0, size - 1]``; the tent ``max(0, 1 - |pos - j|)`` puts ``1 - t`` and
    ``t`` on the two pixels around it and exactly 1 on a pixel it hits."""
    pos = (fractions.float() * size - 0.5).clamp(0.0, size - 1.0)
    return (1.0 - (pos[:, None] - torch.arange(size, device=fractions.device)[None]).abs()).clamp(min=0.0)


@torch.no_grad()
def assign_slots(batch: dict[str, Tensor], rows: Tensor, num_slots: int) -> dict[str, Tensor]:
    """The slot rule: which labelled 2D lanes of each image fill which of ``num_slots`` ego-relative slots.

    Shared by the head's targets and by evaluation (``evaluation/evaluator.py`` selects the CULane-style ground
    truth, the 4 lines of the ego and adjacent lanes, with it). See the module docstring for the rule.

    Args:
        batch: ``lanes_2d`` (B, N, L, P, 2), ``lanes_2d_valid``, ``lanes_2d_types``, ``has_lanes_2d``,
            ``camera_mask``, ``intrinsics``, ``images`` (for the size), optional ``lanes_2d_camera_mask`` (B, N).
        rows: (R,) row-anchor ``v`` in pixels.
        num_slots: ``S``.

    Returns:
        ``image_mask`` (B, N); ``exist`` (B, N, S); ``lane_index`` (B, N, S) (-1 if empty); ``u`` and
        ``covered`` (B, N, L, R): each lane's column at each row anchor.
    """
    lanes, valid, types = batch["lanes_2d"], batch["lanes_2d_valid"], batch["lanes_2d_types"]
    height, width = batch["images"].shape[-2:]
    b, n, num_lanes = types.shape
    s = num_slots
    image_mask = batch["has_lanes_2d"].to(lanes.device)[:, None] & batch["camera_mask"]  # (B, N)
    if "lanes_2d_camera_mask" in batch:
        image_mask = image_mask & batch["lanes_2d_camera_mask"].to(image_mask.device)
    u, covered = u_at_rows(lanes, valid, rows)  # (B, N, L, R)
    covered = covered & (u >= 0) & (u <= width)
    lane_ok = (types >= 0) & covered.any(-1) & image_mask[..., None]  # (B, N, L)

    # Key: u at the image bottom, extrapolated from the two lowest covered anchors.
    r_idx = torch.arange(rows.shape[0], device=lanes.device)
    last = torch.where(covered, r_idx, -1).amax(-1)  # (B, N, L)
    prev = torch.where(covered & (r_idx < last[..., None]), r_idx, -1).amax(-1)
    u_last = u.gather(-1, last.clamp(min=0)[..., None])[..., 0]
    u_prev = u.gather(-1, prev.clamp(min=0)[..., None])[..., 0]
    v_last, v_prev = rows[last.clamp(min=0)], rows[prev.clamp(min=0)]
    slope = torch.where(prev >= 0, (u_last - u_prev) / (v_last - v_prev).clamp(min=1e-6), 0.0)
    key = u_last + slope * (height - v_last)  # (B, N, L)

    # Rank lanes on each side, nearest to the principal point first; ties broken by lane index.
    cx = batch["intrinsics"][..., 0, 2].to(key)[..., None]  # (B, N, 1)
    left, right = lane_ok & (key < cx), lane_ok & (key >= cx)
    ki, kj = key[..., :, None], key[..., None, :]  # (B, N, L, 1), (B, N, 1, L)
    idx = torch.arange(num_lanes, device=lanes.device)
    earlier = idx[None, :] < idx[:, None]  # (L_i, L_j): j before i
    rank_left = (left[..., None, :] & ((kj > ki) | ((kj == ki) & earlier))).sum(-1)  # (B, N, L)
    rank_right = (right[..., None, :] & ((kj < ki) | ((kj == ki) & earlier))).sum(-1)
    n_left = s // 2
    slot = torch.where(left & (rank_left < n_left), n_left - 1 - rank_left,
                       torch.where(right & (rank_right < s - n_left), n_left + rank_right, -1))  # (B, N, L)
    assign = slot[..., None] == torch.arange(s, device=lanes.device)  # (B, N, L, S)
    exist = assign.any(-2)  # (B, N, S)
    lane_index = torch.where(exist, (assign.long() * idx[:, None]).sum(-2), -1)  # (B, N, S)
    return {"image_mask": image_mask, "exist": exist, "lane_index": lane_index, "u": u, "covered": covered}


def u_at_rows(points: Tensor, valid: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Torch, batched twin of :func:`visionpilot.geometry.polylines.interpolate_x_at_y`.

    Args:
        points: (..., P, 2) pixel polylines ``(u, v)``.
        valid: (..., P) real points; a segment counts when both its ends are real.
        rows: (R,) ``v`` of the rows.

    Returns:
        ``u`` (..., R) at each row (0 where not covered) and ``covered`` (..., R). Where a polyline crosses a row
        more than once, the first crossing along it wins (as in the numpy version).
    """
    if points.shape[-2] < 2:
        shape = (*points.shape[:-2], rows.shape[0])
        return points.new_zeros(shape), torch.zeros(shape, dtype=torch.bool, device=points.device)
    a, b = points[..., :-1, :], points[..., 1:, :]  # (..., P-1, 2)
    seg_ok = valid[..., :-1] & valid[..., 1:]
    lo, hi = torch.minimum(a[..., 1], b[..., 1]), torch.maximum(a[..., 1], b[..., 1])
    v = rows[:, None]  # (R, 1)
    cover = (v >= lo[..., None, :]) & (v <= hi[..., None, :]) & ((hi > lo) & seg_ok)[..., None, :]  # (..., R, P-1)
    covered = cover.any(-1)
    first = cover.to(torch.uint8).argmax(-1)  # (..., R): first covering segment
    index = first[..., None].expand(*first.shape, 2)
    sa, sb = a.gather(-2, index), b.gather(-2, index)  # (..., R, 2)
    dv = sb[..., 1] - sa[..., 1]
    t = (rows - sa[..., 1]) / torch.where(dv == 0, torch.ones_like(dv), dv)
    u = sa[..., 0] + t * (sb[..., 0] - sa[..., 0])
    return torch.where(covered, u, 0.0), covered
