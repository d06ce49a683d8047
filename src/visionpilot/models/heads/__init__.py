"""Heads: one per file, each an ``nn.Module`` with ``forward(feats) -> raw outputs``, ``loss(outputs, batch)``
and an ONNX-exportable ``decode(outputs, image_size)`` with fixed output shapes.

Image-space heads (per camera, cameras folded into the batch by the net):

- :mod:`~visionpilot.models.heads.lanes_2d` — row-anchor lane lines (:class:`RowAnchorLaneHead`).
- :mod:`~visionpilot.models.heads.objects_2d` — CenterNet-style 2D boxes (:class:`CenterNetHead`).

Shared helpers live here (not in a head file) so every head masks its losses the same way, and the two row-anchor
lane heads (image and BEV) build their convolutions and read lines out the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask`` (0/1, broadcastable); exactly zero when the mask is empty.

    The zero is ``sum(values * 0)``, so it stays attached to the graph: a batch without labels of a head's kind
    back-propagates zeros instead of breaking ``backward()`` or producing NaN.
    """
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def centre_scores(outputs: Mapping[str, Tensor], dim: int) -> Tensor:
    """The score of each class and cell of the centre-heatmap heads (2D and BEV boxes), classes along ``dim``: from
    ``class_head="per_class"``'s ``heatmap`` its sigmoid; from ``class_head="objectness"``'s outputs
    ``sigmoid(objectness) * softmax(classes)`` over the classes (objectness has size 1 there)."""
    if "heatmap" in outputs:
        return outputs["heatmap"].sigmoid()
    return outputs["objectness"].sigmoid() * outputs["classes"].softmax(dim=dim)


def centernet_focal_loss(logits: Tensor, target: Tensor, weight: Tensor, alpha: float = 2.0,
                         beta: float = 4.0, per_class: bool = False) -> tuple[Tensor, Tensor]:
    """Penalty-reduced focal loss of CenterNet on Gaussian heatmaps, the 2D and BEV box heads' (torchvision has
    only the binary-target one, which would push the cells next to a centre down as hard as background).

    Args:
        logits, target: (..., C, h, w) heatmaps, classes third from last; positives are the cells where
            ``target == 1``.
        weight: broadcastable per-image weight (0 for images without labels of this kind).
        per_class: sums per class (two (C,) tensors) instead of over everything.

    Returns:
        The summed loss and the number of positives it should be divided by.
    """
    pos = (target >= 1.0).to(logits.dtype)
    # logsigmoid rather than log(clamped sigmoid): exact and finite for any logit.
    log_p = F.logsigmoid(logits)
    log_not_p = F.logsigmoid(-logits)
    p = torch.sigmoid(logits)
    pos_loss = log_p * (1 - p).pow(alpha) * pos
    neg_loss = log_not_p * p.pow(alpha) * (1 - target).pow(beta) * (1 - pos)
    class_dim = logits.dim() - 3
    dims = tuple(d for d in range(logits.dim()) if d != class_dim) if per_class else tuple(range(logits.dim()))
    return -((pos_loss + neg_loss) * weight).sum(dims), (pos * weight).sum(dims)


def objectness_targets(heatmap: Tensor, class_logits: Tensor, mask: Tensor,
                       dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """The objectness head's targets from the per-class gaussian centre targets ``heatmap`` (classes along ``dim``).

    Returns the class-agnostic centre target (the classes' maximum, size 1 along ``dim``) for the focal loss, and the
    class cross-entropy of ``class_logits`` per cell with its weight (both without ``dim``): weighted on every cell
    whose centre target reaches 0.5 (the centre cell and, on larger objects, its nearest neighbours, where a peak one
    cell off still decodes) by that target, as the class the cell's target peaks in; ``mask`` (broadcastable to the
    agnostic target) leaves unlabelled images out. The loss is ``masked_mean(ce, weight)``; a head reading several
    levels sums ``ce * weight`` and ``weight`` over them first.
    """
    heat, cls = heatmap.max(dim=dim, keepdim=True)
    weight = (heat * (heat >= 0.5) * mask).squeeze(dim)
    ce = F.cross_entropy(class_logits.float().movedim(dim, 1), cls.squeeze(dim), reduction="none")
    return heat, ce, weight


def weights_per_term(owner: str, terms: Sequence[str], given: Mapping[str, float] | None) -> dict[str, float]:
    """A head's multiplier per loss term: 1 unless ``given``; a term the head does not have is refused by name (a
    misspelt one would otherwise weigh nothing, silently)."""
    unknown = sorted(set(given or {}) - set(terms))
    if unknown:
        raise ValueError(f"{owner}: loss_weights has no term {unknown}; the terms are {list(terms)}")
    return {**dict.fromkeys(terms, 1.0), **(given or {})}


def require_sizes(owner: str, **sizes: int) -> None:
    """Refuse head sizes (slots, rows, bins, classes, top-k) below 1, naming the field: otherwise a 0 or a negative
    fails deep in a conv, a reshape or a top-k with an error that names none of them, or (a top-k of 0) decodes to
    nothing without a word."""
    for field, value in sizes.items():
        if value < 1:
            raise ValueError(f"{owner}: {field} must be >= 1, found {value}")


def conv_bn_relu(cin: int, cout: int, kernel: tuple[int, int], dilation: tuple[int, int] = (1, 1)) -> nn.Sequential:
    """Conv (no bias, "same" padding for any kernel and dilation) + BatchNorm + ReLU."""
    padding = tuple(d * (k // 2) for k, d in zip(kernel, dilation))
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def line_weights(logits: Tensor) -> Tensor:
    """(..., S, R, G + 1) row-anchor logits (G columns + "absent" last) -> (..., S, R, G) weights along each slot's
    line: per row the probability of each column, normalised to sum to 1 over the slot (a soft read-out of what
    lies under the predicted line, e.g. its lane type)."""
    cols = logits.softmax(dim=-1)[..., :-1]
    return cols / cols.sum(dim=(-2, -1), keepdim=True).clamp(min=1e-6)
