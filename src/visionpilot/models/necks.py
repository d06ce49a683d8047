"""Necks: fuse a backbone's multi-scale features into maps of one width.

A neck is built from what the backbone reports (``in_channels``, ``strides``), never from numbers in a config,
and exposes ``out_channels`` (one int: every output level has that width), ``strides`` and ``names`` for the heads
and the BEV branch built after it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork


class FPN(nn.Module):
    """Feature Pyramid Network (torchvision's) over some of the backbone's levels.

    Input: ``{"s8": (B, C8, H/8, W/8), ...}`` as returned by the backbone. Output: ``{"s8": (B, out_channels,
    H/8, W/8), ...}`` for each selected level, fine to coarse.

    Attributes:
        out_channels: width of every output level.
        strides: output strides, fine to coarse.
        names: output keys (``"s8"``, ...).

    Args:
        in_channels: channels per backbone level, fine to coarse (``backbone.channels``).
        strides: strides per backbone level (``backbone.strides``).
        out_channels: FPN width.
        levels: strides to keep (default: all the backbone gives). Heads and the BEV branch may only use these.
        norm: put a BatchNorm after the FPN convs (torchvision's ``norm_layer``); off like the original FPN.
    """

    def __init__(self, in_channels: Sequence[int], strides: Sequence[int], out_channels: int = 64,
                 levels: Sequence[int] | None = None, norm: bool = False) -> None:
        super().__init__()
        if len(in_channels) != len(strides):
            raise ValueError(f"FPN: in_channels {list(in_channels)} and strides {list(strides)} differ in length")
        available = dict(zip(strides, in_channels))
        levels = sorted(levels) if levels is not None else sorted(available)
        if not levels:
            raise ValueError(f"FPN: levels is empty; give at least one of the backbone's strides "
                             f"{sorted(available)} (or leave it unset for all)")
        missing = [s for s in levels if s not in available]
        if missing:
            raise ValueError(f"FPN: levels {missing} are not produced by the backbone (it gives strides "
                             f"{sorted(available)}); add them to the backbone's out_strides")
        self.out_channels = int(out_channels)
        self.strides: list[int] = list(levels)
        self.names: list[str] = [f"s{s}" for s in levels]
        self.fpn = FeaturePyramidNetwork([available[s] for s in levels], self.out_channels,
                                         norm_layer=nn.BatchNorm2d if norm else None)

    def forward(self, feats: dict[str, Tensor]) -> dict[str, Tensor]:
        """Backbone features -> ``{"s8": (B, out_channels, H/8, W/8), ...}``."""
        out = self.fpn(OrderedDict((k, feats[k]) for k in self.names))
        return dict(out)
