"""Camera features -> bird's-eye-view grid ("vector space") by bilinear sampling, in the style of Simple-BEV.

Every voxel centre of a fixed ego-frame grid is projected into every camera with the *calibration inputs* (so one
model serves rigs with different camera placements), the camera's feature map is sampled bilinearly there, and
the samples are averaged over the cameras that see the voxel. The Z levels are then folded into channels and
reduced by a 1x1 convolution. Nothing is learned about depth: the BEV encoder and heads sort out which voxels
along a ray hold the object, which is what makes this lifting cheap, calibration-agnostic and exportable.

Grid layout (used by every BEV head): a BEV tensor is ``(B, C, X, Y)``; index ``[i, j]`` is the cell whose centre
is ``x = x_min + (i + 0.5) * cell_size`` (forward), ``y = y_min + (j + 0.5) * cell_size`` (left). So rows run
along ego +x, columns along ego +y; for a "forward is up, left is left" picture flip both axes.

Export: only ops of the default ONNX domain at opset 17 — one 4D ``GridSample`` per camera (Z folded into the
height dimension; the export fixes the camera count), elementwise projection, no matrix inverse (rigid inverse
written out), no data-dependent shapes. Voxels a camera does not see get a sampling coordinate far outside the
image, so ``grid_sample`` with zero padding returns exactly 0 for them and no separate masking pass over the
features is needed.

Cost (per frame, forward): ``N_cam * C_lift * Z * X * Y`` samples, accumulated camera by camera, so memory holds
one camera's share and the sum. On a CPU outside export each camera samples only the voxels it sees
(:meth:`ViewTransform._sample_visible`; a surround camera sees 13-27 % of them), the same lift with ~5x fewer
samples; the exported graph keeps the dense, static-shape loop. The default grid (200 x 200 cells of 0.5 m, 8 Z
levels) with 6 cameras and 64 channels is 123 M samples (20 M floats, 82 MB, per camera) — fine on a GPU, too
much for a CPU demo. ``configs/model/bev/tiny.yaml`` uses 1.0 m cells and 4 levels (16x fewer voxels) and 16 sampled channels (a 1x1
conv reduces the neck's width *before* sampling, which is where the cost is): 3.8 M samples, about 7 ms for this
whole module at 6 x 256 x 704 on 2 CPU threads (the tiny BEV branch: ~28 ms).
The price of the coarse grid is resolution: objects closer than ~1 m merge and far lane lines blur.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from visionpilot.geometry.camera import DEFAULT_NEAR

# A normalised sampling coordinate this far outside [-1, 1] has no bilinear tap inside any feature map (a tap
# reaches at most one pixel, i.e. 2 / width <= 2 normalised units, beyond the border).
_OUTSIDE = -8.0


@dataclass(frozen=True)
class BEVGrid:
    """A regular ego-frame voxel grid. Ranges are ``(min, max)`` metres; cells are square in x/y.

    Attributes:
        x_range: longitudinal extent (ego +x forward).
        y_range: lateral extent (ego +y left).
        z_range: vertical extent sampled by the view transform (ego +z up, 0 = ground).
        cell_size: x/y size of a cell in metres.
        z_levels: number of voxel layers in ``z_range`` (centres at the layer middles).
    """

    x_range: tuple[float, float] = (-50.0, 50.0)
    y_range: tuple[float, float] = (-50.0, 50.0)
    z_range: tuple[float, float] = (-1.0, 3.0)
    cell_size: float = 0.5
    z_levels: int = 8

    def __post_init__(self) -> None:
        for name in ("x_range", "y_range", "z_range"):
            lo, hi = getattr(self, name)
            object.__setattr__(self, name, (float(lo), float(hi)))
            if not hi > lo:
                raise ValueError(f"BEVGrid: field '{name}' must be (min, max) with max > min, found ({lo}, {hi})")
        if self.cell_size <= 0 or self.z_levels < 1 or self.z_levels != int(self.z_levels):
            raise ValueError(f"BEVGrid: cell_size must be > 0 and z_levels an integer >= 1, found {self.cell_size}, "
                             f"{self.z_levels}")
        object.__setattr__(self, "z_levels", int(self.z_levels))  # 4.0 from a command line still sizes a conv
        for name in ("x_range", "y_range"):
            lo, hi = getattr(self, name)
            cells = (hi - lo) / self.cell_size
            if abs(cells - round(cells)) > 1e-6:
                raise ValueError(f"BEVGrid: field '{name}' ({lo}, {hi}) must span a whole number of cells of "
                                 f"{self.cell_size} m, found {cells:.4f} cells")

    @classmethod
    def from_any(cls, grid: BEVGrid | Mapping | None) -> BEVGrid:
        """A grid from itself, a mapping of its fields (a Hydra DictConfig works) or None (the default)."""
        if grid is None:
            return cls()
        if isinstance(grid, BEVGrid):
            return grid
        return cls(**{k: tuple(v) if isinstance(v, Sequence) and not isinstance(v, str) else v
                      for k, v in dict(grid).items()})

    @property
    def nx(self) -> int:
        return round((self.x_range[1] - self.x_range[0]) / self.cell_size)

    @property
    def ny(self) -> int:
        return round((self.y_range[1] - self.y_range[0]) / self.cell_size)

    @property
    def shape(self) -> tuple[int, int]:
        """(X, Y) cells."""
        return self.nx, self.ny

    def x_centers(self) -> Tensor:
        """(X,) cell-centre x in metres."""
        return self.x_range[0] + (torch.arange(self.nx, dtype=torch.float32) + 0.5) * self.cell_size

    def y_centers(self) -> Tensor:
        """(Y,) cell-centre y in metres."""
        return self.y_range[0] + (torch.arange(self.ny, dtype=torch.float32) + 0.5) * self.cell_size

    def z_centers(self) -> Tensor:
        """(Z,) layer-centre z in metres."""
        dz = (self.z_range[1] - self.z_range[0]) / self.z_levels
        return self.z_range[0] + (torch.arange(self.z_levels, dtype=torch.float32) + 0.5) * dz


def rigid_inverse(transform: Tensor) -> Tensor:
    """Inverse of rigid 4x4 transforms (..., 4, 4), written out (ONNX has no matrix inverse op)."""
    rot_t = transform[..., :3, :3].transpose(-1, -2)  # (..., 3, 3)
    trans = -(rot_t * transform[..., None, :3, 3]).sum(-1)  # (..., 3) = -R^T t without a batched matmul
    top = torch.cat([rot_t, trans[..., None]], dim=-1)  # (..., 3, 4)
    bottom = transform.new_tensor([0.0, 0.0, 0.0, 1.0]).expand_as(transform[..., 3:, :])  # (..., 1, 4)
    return torch.cat([top, bottom], dim=-2)


def feature_projection(intrinsics: Tensor, extrinsics: Tensor, stride: float) -> Tensor:
    """3x4 ego -> feature-map pixel projections.

    Args:
        intrinsics: (B, N, 3, 3) K for input-image pixels.
        extrinsics: (B, N, 4, 4) camera -> ego.
        stride: the feature map's stride; with continuous pixel coordinates ``u_feat = u_img / stride``.

    Returns:
        (B, N, 3, 4) ``P = diag(1/s, 1/s, 1) K [R^T | -R^T t]``.
    """
    scale = intrinsics.new_tensor([1.0 / stride, 1.0 / stride, 1.0])[:, None]  # (3, 1)
    k_feat = intrinsics * scale  # (B, N, 3, 3)
    ego_to_cam = rigid_inverse(extrinsics)[..., :3, :]  # (B, N, 3, 4)
    # Elementwise products instead of matmul: exact under autocast (matmul would run in bf16 there).
    return (k_feat[..., :, :, None] * ego_to_cam[..., None, :, :]).sum(-2)  # (B, N, 3, 4)


class ViewTransform(nn.Module):
    """Lift per-camera feature maps into the BEV grid.

    Args:
        grid: the voxel grid.
        in_channels: channels of the image feature map.
        out_channels: channels of the BEV map.
        lift_channels: channels sampled per voxel (a 1x1 conv reduces ``in_channels`` to this *before*
            sampling, because sampling cost scales with it); None keeps ``in_channels``.
        near: voxels closer than this (metres along the optical axis) count as behind the camera.
    """

    def __init__(self, grid: BEVGrid, in_channels: int, out_channels: int, lift_channels: int | None = None,
                 near: float = DEFAULT_NEAR) -> None:
        super().__init__()
        if not near > 0:  # at or behind the camera centre a voxel would be projected mirrored into the image
            raise ValueError(f"ViewTransform: near must be > 0 metres, found {near}")
        self.grid = grid
        self.near = float(near)
        lift = lift_channels or in_channels
        self.pre = nn.Identity() if lift == in_channels else nn.Conv2d(in_channels, lift, 1)
        self.lift_channels = lift
        # Voxel centres as three 1D buffers: the grid is a product grid, so the projection separates per axis.
        self.register_buffer("xs", grid.x_centers(), persistent=False)  # (X,)
        self.register_buffer("ys", grid.y_centers(), persistent=False)  # (Y,)
        self.register_buffer("zs", grid.z_centers(), persistent=False)  # (Z,)
        self.reduce = nn.Sequential(
            nn.Conv2d(lift * grid.z_levels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def sampling_grid(self, intrinsics: Tensor, extrinsics: Tensor, stride: float, image_size: tuple[int, int],
                      feat_size: tuple[int, int], camera_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Where each voxel lands in each camera's feature map.

        Returns:
            grid: (B, N, Z * X, Y, 2) normalised ``grid_sample`` coordinates (align_corners=False), far outside
                [-1, 1] where the camera does not see the voxel.
            valid: (B, N, Z, X, Y) float, 1 where the voxel is in front of the camera and inside its image.
        """
        height, width = image_size
        fh, fw = feat_size
        proj = feature_projection(intrinsics.float(), extrinsics.float(), stride)  # (B, N, 3, 4)
        p = proj[..., None, None, None]  # (B, N, 3, 4, 1, 1, 1)
        xs = self.xs[None, :, None]  # (1, X, 1)
        ys = self.ys[None, None, :]  # (1, 1, Y)
        zs = self.zs[:, None, None]  # (Z, 1, 1)
        # Camera-frame homogeneous pixel coordinates of every voxel centre, (B, N, 3, Z, X, Y).
        # The (B, N, 3, Z, X, 1) part first: one full-size add instead of three.
        cam = (p[:, :, :, 0] * xs + p[:, :, :, 3] + p[:, :, :, 2] * zs) + p[:, :, :, 1] * ys
        depth = cam[:, :, 2]  # (B, N, Z, X, Y)
        in_front = depth > self.near
        z = depth.clamp(min=self.near)  # behind-camera voxels would otherwise be mirrored into the image
        u = cam[:, :, 0] / z  # feature-map pixels, continuous coordinates
        v = cam[:, :, 1] / z
        inside = (u >= 0) & (u <= width / stride) & (v >= 0) & (v <= height / stride)
        if camera_mask is None:
            # collate pads missing camera slots with identity intrinsics; no real camera has a 1-pixel focal.
            camera_mask = intrinsics[..., 0, 0] > 1.0  # (B, N)
        valid = in_front & inside & camera_mask[:, :, None, None, None].bool()
        # align_corners=False: normalised -1 / +1 are the outer edges of the border pixels.
        gu = torch.where(valid, u * (2.0 / fw) - 1.0, torch.full_like(u, _OUTSIDE))
        gv = torch.where(valid, v * (2.0 / fh) - 1.0, torch.full_like(v, _OUTSIDE))
        b, n, nz, nx, ny = u.shape
        grid = torch.stack([gu, gv], dim=-1).reshape(b, n, nz * nx, ny, 2)
        return grid, valid.float()

    def lift(self, feats: Tensor, intrinsics: Tensor, extrinsics: Tensor, stride: float,
             image_size: tuple[int, int], camera_mask: Tensor | None = None,
             visible_only: bool | None = None) -> Tensor:
        """Average of the bilinear samples over the cameras that see each voxel.

        Args:
            feats: (B, N, C, h, w) feature maps of stride ``stride`` (already reduced to ``lift_channels``).
            intrinsics: (B, N, 3, 3) for input-image pixels of ``image_size`` (height, width).
            extrinsics: (B, N, 4, 4) camera -> ego.
            camera_mask: (B, N) real camera slots; padded slots contribute nothing. None: every slot whose
                intrinsics are not the identity padding of ``data/collate.py`` (focal > 1 px).
            visible_only: sample each camera at the voxels it sees only (:meth:`_sample_visible`) instead of at
                every voxel; the same result (to the bit; its gradient to float rounding). None: on a CPU outside
                tracing, export and ``torch.compile`` (it needs data-dependent shapes and a host sync).

        Returns:
            (B, C, Z, X, Y) voxel features in the features' dtype; exactly 0 where no camera sees the voxel.
        """
        b, n, c, fh, fw = feats.shape
        for name, value, size in (("intrinsics", intrinsics, 3), ("extrinsics", extrinsics, 4)):
            # Fewer calibration slots than cameras would not fail in the per-camera loop: it would drop cameras.
            if tuple(value.shape) != (b, n, size, size):
                raise ValueError(f"ViewTransform: {name} must be (B, N, {size}, {size}) = {(b, n, size, size)} for "
                                 f"features of {b} frames x {n} cameras, found {tuple(value.shape)}")
        grid, valid = self.sampling_grid(intrinsics, extrinsics, stride, image_size, (fh, fw), camera_mask)
        nz, nx, ny = valid.shape[2:]
        # Sampled in float32 whatever the features' dtype: under bf16 autocast a bf16 grid (8 bits) moved samples by
        # up to ~0.1 feature pixel (at the demo's 12 x 32 features), a lift the float32 export does not reproduce.
        dtype = feats.dtype
        feats, grid = feats.float(), grid.float()
        if visible_only is None:
            visible_only = feats.device.type == "cpu" and not (
                torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling())
        if visible_only:
            summed = self._sample_visible(feats, grid, valid)
        else:
            # One grid_sample per camera, accumulated in place: the (B, N, C, Z, X, Y) volume of every camera's
            # samples is never materialised, and the sum's backward hands each camera the same gradient instead of
            # copying it into an N-times larger broadcast (66 ms of a 0.65 s demo step at batch 4 with one batched
            # call). grid_sample's backward does not need its output, so adding into it is safe for autograd.
            summed = None
            for cam_feats, cam_grid in zip(feats.unbind(1), grid.unbind(1)):
                sampled = F.grid_sample(cam_feats, cam_grid, mode="bilinear", padding_mode="zeros",
                                        align_corners=False)  # (B, C, Z*X, Y)
                summed = sampled if summed is None else summed.add_(sampled)
        count = valid.sum(1, keepdim=True).clamp_(min=1.0)  # (B, 1, Z, X, Y)
        return summed.reshape(b, c, nz, nx, ny).mul_(count.reciprocal_()).to(dtype)

    @staticmethod
    def _sample_visible(feats: Tensor, grid: Tensor, valid: Tensor) -> Tensor:
        """Each camera sampled at the voxels it sees only, scattered into the (B, C, V) sum.

        A camera of a surround rig sees 13-27 % of the voxels (the nuscenes6 demo: 1.1 cameras per voxel on
        average), so sampling every voxel in every camera does 5x the work, and its backward as much again. Per
        camera, the visible voxels' indices are packed to the front of a (B, k) table (k: the most any frame of
        the batch has; shorter rows padded with a point outside the image, which samples an exact 0 and adds it to
        voxel 0). The indices ascend and the cameras are added in order, so the sum equals the dense loop's to the
        bit; the gradient grid_sample's backward accumulates into the features agrees to float rounding (it groups
        the points into vectors differently).

        Args:
            feats: (B, N, C, h, w) float32; grid: (B, N, Z * X, Y, 2) from :meth:`sampling_grid`;
            valid: (B, N, Z, X, Y).

        Returns:
            (B, C, Z * X * Y) the per-voxel sums over the cameras.
        """
        b, n, c = feats.shape[:3]
        voxels = valid[0, 0].numel()
        seen = valid.reshape(b * n, voxels) > 0
        per_row = seen.sum(1)  # (B * N,) visible voxels per frame and camera
        ks = per_row.reshape(b, n).amax(0).tolist()  # one host sync for all cameras
        k_max = max(ks)
        summed = feats.new_zeros(b, c, voxels)
        if k_max == 0:
            return summed
        # Row r's j-th visible voxel goes to column j (nonzero lists them row by row, in ascending order).
        rows, cols = seen.nonzero(as_tuple=True)
        starts = per_row.cumsum(0) - per_row  # (B * N,) where each row's voxels begin in the nonzero list
        index = seen.new_zeros((b * n, k_max), dtype=torch.long)
        index[rows, torch.arange(rows.numel(), device=seen.device) - starts[rows]] = cols
        index = index.reshape(b, n, k_max)
        pad = (torch.arange(k_max, device=seen.device) >= per_row[:, None]).reshape(b, n, k_max)
        points = grid.reshape(b, n, voxels, 2)
        for cam, k in enumerate(ks):
            if k == 0:
                continue
            idx = index[:, cam, :k]  # (B, k); padding points at voxel 0
            where = points[:, cam].gather(1, idx[..., None].expand(b, k, 2))
            where = where.masked_fill(pad[:, cam, :k, None], _OUTSIDE)
            sampled = F.grid_sample(feats[:, cam], where[:, None], mode="bilinear", padding_mode="zeros",
                                    align_corners=False)  # (B, C, 1, k)
            summed.scatter_add_(2, idx[:, None].expand(b, c, k), sampled[:, :, 0])
        return summed

    def forward(self, feats: Tensor, intrinsics: Tensor, extrinsics: Tensor, stride: float,
                image_size: tuple[int, int], camera_mask: Tensor | None = None) -> Tensor:
        """(B, N, C_in, h, w) camera features -> (B, C_out, X, Y) BEV features. See :meth:`lift`."""
        b, n, c, fh, fw = feats.shape
        reduced = self.pre(feats.reshape(b * n, c, fh, fw))
        reduced = reduced.reshape(b, n, self.lift_channels, fh, fw)
        voxels = self.lift(reduced, intrinsics, extrinsics, stride, image_size, camera_mask)  # (B, C, Z, X, Y)
        # Fold Z into channels: height is a feature, the BEV map stays 2D.
        bev = voxels.flatten(1, 2)  # (B, C * Z, X, Y)
        return self.reduce(bev)


def parse_strides(strides: Mapping[str, int] | Sequence[int | str] | None) -> dict[str, int]:
    """Normalise the neck's available strides to ``{"s8": 8, ...}`` (from a dict, or a list of ints / keys)."""
    if strides is None:
        return {}
    if isinstance(strides, Mapping):
        return {str(k): int(v) for k, v in strides.items()}
    out = {}
    for s in strides:
        value = int(str(s).lstrip("s"))
        out[f"s{value}"] = value
    return out
