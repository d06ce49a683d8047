"""FPN neck: widths and strides come from the backbone's report; outputs keyed by stride name."""

from __future__ import annotations

import pytest
import torch

from visionpilot.models.necks import FPN


def _feats(channels: list[int], strides: list[int], h: int = 64, w: int = 160) -> dict[str, torch.Tensor]:
    return {f"s{s}": torch.randn(2, c, h // s, w // s) for c, s in zip(channels, strides)}


def test_fpn_outputs_one_width_per_level() -> None:
    neck = FPN(in_channels=[24, 40, 112], strides=[8, 16, 32], out_channels=16)
    assert neck.out_channels == 16 and neck.strides == [8, 16, 32] and neck.names == ["s8", "s16", "s32"]
    out = neck(_feats([24, 40, 112], [8, 16, 32]))
    assert list(out) == ["s8", "s16", "s32"]
    for (key, f), s in zip(out.items(), neck.strides):
        assert key == f"s{s}" and f.shape == (2, 16, 64 // s, 160 // s)


def test_fpn_level_subset_and_norm() -> None:
    neck = FPN(in_channels=[48, 104, 208, 440], strides=[4, 8, 16, 32], out_channels=8, levels=[32, 8], norm=True)
    assert neck.strides == [8, 32]
    out = neck(_feats([48, 104, 208, 440], [4, 8, 16, 32]))
    assert [tuple(f.shape) for f in out.values()] == [(2, 8, 8, 20), (2, 8, 2, 5)]


def test_fpn_refuses_levels_the_backbone_lacks() -> None:
    with pytest.raises(ValueError, match=r"levels \[4\].*out_strides"):
        FPN(in_channels=[24, 40], strides=[8, 16], levels=[4, 8])
    # An empty selection used to reach torchvision's FPN and fail there without naming the field.
    with pytest.raises(ValueError, match=r"FPN: levels is empty; give at least one of the backbone's strides \[8, 16\]"):
        FPN(in_channels=[24, 40], strides=[8, 16], levels=[])
