"""Heads: one per file, each an ``nn.Module`` with ``forward(feats) -> raw outputs``, ``loss(outputs, batch)``
and an ONNX-exportable ``decode(outputs, image_size)`` with fixed output shapes.

Image-space heads (per camera, cameras folded into the batch by the net):

- :mod:`~visionpilot.models.heads.lanes_2d` — row-anchor lane lines (:class:`RowAnchorLaneHead`).
- :mod:`~visionpilot.models.heads.objects_2d` — CenterNet-style 2D boxes (:class:`CenterNetHead`).

Shared helpers live here (not in a head file) so every head masks its losses the same way.
"""

from __future__ import annotations

from torch import Tensor


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask`` (0/1, broadcastable); exactly zero when the mask is empty.

    The zero is ``sum(values * 0)``, so it stays attached to the graph: a batch without labels of a head's kind
    back-propagates zeros instead of breaking ``backward()`` or producing NaN.
    """
    return (values * mask).sum() / mask.sum().clamp(min=1.0)
