"""Model FLOPs of a training step: the counter behind training throughput and MFU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from visionpilot.training.flops import count_flops


def _flops(layer: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(forward, backward) FLOPs of one layer on ``x``."""
    out = {}
    forward = count_flops(lambda: out.setdefault("y", layer(x)))
    backward = count_flops(lambda: out["y"].sum().backward())
    return forward, backward


@pytest.mark.parametrize("groups", [1, 8, 64])
def test_a_convolution_backward_costs_two_forwards_whatever_its_groups(groups):
    conv = nn.Conv2d(64, 64, 3, padding=1, groups=groups)
    x = torch.randn(2, 64, 16, 16, requires_grad=True)
    forward, backward = _flops(conv, x)
    # 2 FLOPs per multiply-add: batch x positions x C_out x (C_in / groups) x kernel
    assert forward == 2 * 2 * 16 * 16 * 64 * (64 // groups) * 9
    assert backward == 2 * forward  # the input gradient and the weight gradient


def test_the_input_gradient_is_not_counted_where_nothing_asks_for_it():
    conv = nn.Conv2d(16, 32, 3, padding=1, groups=4)
    forward, backward = _flops(conv, torch.randn(1, 16, 8, 8))  # an image: no gradient wanted
    assert backward == forward


def test_a_transposed_convolution_backward_costs_two_forwards():
    conv = nn.ConvTranspose2d(32, 16, 2, stride=2, groups=4)
    x = torch.randn(2, 32, 8, 8, requires_grad=True)
    forward, backward = _flops(conv, x)
    assert forward == 2 * 2 * 8 * 8 * 32 * (16 // 4) * 4
    assert backward == 2 * forward


def test_matmuls_are_counted_too():
    layer = nn.Linear(32, 8, bias=False)
    x = torch.randn(4, 32, requires_grad=True)
    forward, backward = _flops(layer, x)
    assert forward == 2 * 4 * 32 * 8
    assert backward == 2 * forward
