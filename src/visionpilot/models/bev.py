"""The vector-space branch: camera features -> BEV grid -> BEV encoder -> BEV heads (3D objects, lanes).

The net builds it from a Hydra partial (``configs/model/bev/*.yaml``) once it knows its neck::

    bev = bev_factory(in_channels=neck.out_channels, strides={"s8": 8, "s16": 16, "s32": 32})
    out = bev(feats, intrinsics, extrinsics, image_size)   # feats["s16"]: (B, N, C, H/16, W/16)

Output, loss and decode keys are ``<head>_<name>`` without the ``bev.`` prefix (the net adds it):
``objects_heatmap``, ``lanes_seg``, ... See :mod:`visionpilot.models.heads.objects_3d` and
:mod:`visionpilot.models.heads.lanes_bev` for each head's keys, shapes and target formats, and
:mod:`visionpilot.models.view_transform` for the grid layout.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from visionpilot.models.heads.lanes_bev import LanesBEVHead
from visionpilot.models.heads.objects_3d import Objects3DHead
from visionpilot.models.view_transform import BEVGrid, ViewTransform, parse_strides

HeadFactory = Callable[..., nn.Module]


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs and an identity shortcut)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.body(x))


class BEVEncoder(nn.Module):
    """A small U-shaped residual encoder: blocks at full resolution, one stride-2 level, upsample and add.

    The stride-2 level doubles the receptive field cheaply (a car spans ~5 cells at 1 m); the skip keeps the
    full-resolution detail that centre offsets and thin lane lines need. Output has ``channels`` at (X, Y).

    Args:
        channels: width at full resolution (twice that at the stride-2 level).
        blocks: residual blocks at full resolution.
        down_blocks: residual blocks at the stride-2 level (0 disables the level).
    """

    def __init__(self, channels: int, blocks: int = 1, down_blocks: int = 2) -> None:
        super().__init__()
        self.full = nn.Sequential(*[BasicBlock(channels) for _ in range(blocks)])
        self.down = None
        if down_blocks > 0:
            wide = 2 * channels
            self.down = nn.Sequential(
                nn.Conv2d(channels, wide, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(wide),
                nn.ReLU(inplace=True), *[BasicBlock(wide) for _ in range(down_blocks)],
            )
            self.up = nn.Sequential(nn.Conv2d(wide, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, X, Y) -> (B, C, X, Y)."""
        x = self.full(x)
        if self.down is None:
            return x
        low = self.up(self.down(x))  # (B, C, X/2, Y/2), channels reduced before upsampling (cheaper)
        return F.relu(x + F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False))


class BEVBranch(nn.Module):
    """View transform + BEV encoder + BEV heads, with the net's factory signature.

    Args:
        in_channels: channels of the neck's feature maps (FPN width).
        strides: the neck's available strides, ``{"s8": 8, ...}`` or ``[8, 16]`` / ``["s8", "s16"]``.
        grid: :class:`BEVGrid` or a mapping of its fields (``x_range``, ``y_range``, ``z_range``, ``cell_size``,
            ``z_levels``).
        feature_stride: the level that is lifted (4 or 8 for detail: the demo lifts 4; 16 for speed).
        lift_channels: channels sampled per voxel (reduced by a 1x1 conv before sampling; None = in_channels).
        bev_channels: width of the BEV map and encoder.
        encoder_blocks, encoder_down_blocks: see :class:`BEVEncoder`.
        near: view-transform near plane in metres.
        objects, lanes: head factories called as ``factory(in_channels=bev_channels, grid=grid)`` (a Hydra
            ``_partial_`` or the class); None disables the head.
    """

    def __init__(self, in_channels: int, strides: Mapping[str, int] | Sequence[int | str] | None = None,
                 grid: BEVGrid | Mapping | None = None, feature_stride: int = 8, lift_channels: int | None = 64,
                 bev_channels: int = 128, encoder_blocks: int = 1, encoder_down_blocks: int = 2,
                 near: float = 0.1, objects: HeadFactory | None = Objects3DHead,
                 lanes: HeadFactory | None = LanesBEVHead) -> None:
        super().__init__()
        self.grid = BEVGrid.from_any(grid)
        available = parse_strides(strides)
        self.feature_key = f"s{int(feature_stride)}"
        if available and self.feature_key not in available:
            raise ValueError(f"BEVBranch: feature_stride={feature_stride} is not among the neck's strides "
                             f"{sorted(available)}; set model.net.bev.feature_stride to one of "
                             f"{sorted(available.values())}")
        self.feature_stride = int(feature_stride)
        self.view_transform = ViewTransform(self.grid, in_channels, bev_channels, lift_channels, near)
        self.encoder = BEVEncoder(bev_channels, encoder_blocks, encoder_down_blocks)
        heads = {"objects": objects, "lanes": lanes}
        self.heads = nn.ModuleDict({name: factory(in_channels=bev_channels, grid=self.grid)
                                    for name, factory in heads.items() if factory is not None})
        if not self.heads:
            raise ValueError("BEVBranch: both heads are disabled (objects: null, lanes: null); enable at least one "
                             "or drop the bev branch from the model config")

    def bev_features(self, feats: Mapping[str, Tensor], intrinsics: Tensor, extrinsics: Tensor,
                     image_size: tuple[int, int], camera_mask: Tensor | None = None) -> Tensor:
        """Encoded BEV features (B, bev_channels, X, Y)."""
        if self.feature_key not in feats:
            raise KeyError(f"BEVBranch: needs the '{self.feature_key}' feature map, the neck gave {sorted(feats)}")
        x = self.view_transform(feats[self.feature_key], intrinsics, extrinsics, self.feature_stride,
                                tuple(image_size), camera_mask)
        return self.encoder(x)

    def forward(self, feats: Mapping[str, Tensor], intrinsics: Tensor, extrinsics: Tensor,
                image_size: tuple[int, int], camera_mask: Tensor | None = None) -> dict[str, Tensor]:
        """Raw outputs of every head.

        Args:
            feats: neck features per stride key, each (B, N, C, H/s, W/s) (cameras not folded).
            intrinsics: (B, N, 3, 3) for input-image pixels; extrinsics: (B, N, 4, 4) camera -> ego.
            image_size: (H, W) of the input images.
            camera_mask: (B, N) real camera slots (padded slots are ignored); None: slots whose intrinsics
                are not the identity padding of the collate.

        Returns:
            ``{"<head>_<output>": tensor}``, e.g. ``objects_heatmap`` (B, classes, X, Y), ``lanes_pos``.
        """
        bev = self.bev_features(feats, intrinsics, extrinsics, image_size, camera_mask)
        out: dict[str, Tensor] = {}
        for name, head in self.heads.items():
            out.update({f"{name}_{k}": v for k, v in head(bev).items()})
        return out

    def _split(self, outputs: Mapping[str, Tensor], name: str) -> dict[str, Tensor]:
        prefix = f"{name}_"
        return {k[len(prefix):]: v for k, v in outputs.items() if k.startswith(prefix)}

    def loss(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Named loss terms ``<head>_<term>`` (already weighted; the total is their sum)."""
        losses: dict[str, Tensor] = {}
        for name, head in self.heads.items():
            losses.update({f"{name}_{k}": v for k, v in head.loss(self._split(outputs, name), batch).items()})
        return losses

    def decode(self, outputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Fixed-size results ``<head>_<result>``: ``objects_boxes`` (B, K, 7), ``objects_scores`` (B, K),
        ``objects_classes`` (B, K), ``lanes_points`` (B, S, X, 3), ``lanes_valid`` (B, S, X), ``lanes_scores``
        (B, S), ``lanes_types`` (B, S), ``lanes_seg_prob`` (B, T, X, Y)."""
        decoded: dict[str, Tensor] = {}
        for name, head in self.heads.items():
            decoded.update({f"{name}_{k}": v for k, v in head.decode(self._split(outputs, name)).items()})
        return decoded
