"""Model FLOPs of a training step, for throughput and model FLOP utilisation (MFU).

Counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions, 2 FLOPs per multiply-add;
element-wise work and the optimiser are not counted, as is usual for MFU), with one formula replaced: torch's
``convolution_backward`` formula (torch 2.15 and earlier) counts the weight gradient of a *grouped* convolution
as if the convolution were dense, ``groups`` times too many FLOPs (64x for a 64-channel depthwise convolution). On
the demo model, whose RegNetY trunk is grouped convolutions, that inflated the forward + backward count from 13.5
to 20.6 GFLOP per frame (the forward is 4.5), and would have inflated a GPU MFU by the same 1.5x. The replacement
counts each gradient of a convolution as one convolution of the forward's size (groups included), which is what
it computes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

aten = torch.ops.aten


def _conv_backward_flop(grad_out_shape: list[int], x_shape: list[int], w_shape: list[int], _bias: Any,
                        _stride: Any, _padding: Any, _dilation: Any, transposed: bool, _output_padding: Any,
                        _groups: int, output_mask: list[bool], out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs of ``aten.convolution_backward``: each requested gradient costs one forward-sized convolution.

    The input gradient is a transposed convolution of the output gradient with the same weights, the weight
    gradient a convolution of the input with the output gradient summed per group: both multiply every weight
    with every position it touched in the forward pass, exactly the forward's multiply-adds. ``w_shape`` is
    (C_out, C_in / groups, *kernel), so ``conv_flop_count`` already counts a grouped forward correctly.
    """
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed=transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def flop_counter() -> FlopCounterMode:
    """A ``FlopCounterMode`` (no display) with the grouped-convolution backward counted correctly."""
    return FlopCounterMode(display=False, custom_mapping={aten.convolution_backward: _conv_backward_flop})


def count_flops(step: Callable[[], Any]) -> int:
    """Matmul and convolution FLOPs of running ``step()`` (forward and, if it calls it, backward)."""
    counter = flop_counter()
    with counter:
        step()
    return int(counter.get_total_flops())


def training_flops_per_frame(net: torch.nn.Module, batch: dict[str, Any]) -> float:
    """Forward + backward FLOPs of one frame of ``batch`` through a HydraNet and its multi-task loss.

    ``batch`` is a collated training batch on the net's device; gradients are cleared afterwards.
    """
    net.train()

    def step() -> None:
        outputs = net(batch["images"], batch["intrinsics"], batch["extrinsics"])
        losses = net.loss(outputs, batch)
        sum(v for v in losses.values()).backward()

    flops = count_flops(step)
    net.zero_grad(set_to_none=True)
    return flops / int(batch["images"].shape[0])
