"""HydraNet: one shared backbone over every camera, a neck, image-space heads, and optionally a BEV branch.

The network is a plain ``nn.Module`` (no Lightning) with the contract of ``docs/architecture.md``:

- ``forward(images, intrinsics, extrinsics)`` -> flat dict ``"<head>.<output>"`` of raw outputs, each (B, N, ...)
  for image heads (cameras unfolded again after the shared trunk) and whatever the BEV branch returns under
  ``"bev.<output>"``;
- ``loss(outputs, batch)`` -> ``"<head>.<term>"``;
- ``decode(outputs, image_size)`` -> ``"<head>.<result>"``, fixed shapes, exportable inside the ONNX graph.

Components are injected (Hydra ``_target_`` + ``_partial_``): the backbone as a module, the neck and heads as
factories called with what the previous stage reports (channels and strides), so no width is ever written twice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

#: ImageNet statistics of torchvision's pretrained weights, RGB, on the 0..1 scale.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Output prefix of the BEV branch.
BEV = "bev"


class HydraNet(nn.Module):
    """Multi-camera perception network.

    Args:
        backbone: a module mapping ``(B, 3, H, W)`` normalised images to ``{"s8": ..., ...}``, exposing
            ``channels`` and ``strides`` (see :class:`~visionpilot.models.backbones.TorchvisionBackbone`).
        neck: factory ``neck(in_channels=backbone.channels, strides=backbone.strides)`` returning a module that
            exposes ``out_channels`` (int) and ``strides``.
        heads: image-space heads by name, each a factory ``head(in_channels=neck.out_channels,
            strides=neck.strides)``; names must not contain ``.``.
        bev: optional factory ``bev(in_channels=neck.out_channels, strides=neck.strides)`` of a module called as
            ``bev(feats, intrinsics, extrinsics, image_size)`` with ``feats`` (B, N, C, h, w) per level, and with
            ``loss(outputs, batch)`` and ``decode(outputs)``; its outputs are prefixed ``"bev."``.
        mean: per-channel mean (RGB, 0..1 scale) subtracted inside the network.
        std: per-channel std.
        channels_last: run the convolutions in channels-last memory format (faster on GPUs with tensor cores).
    """

    def __init__(self, backbone: nn.Module, neck: Callable[..., nn.Module],
                 heads: Mapping[str, Callable[..., nn.Module]] | None = None,
                 bev: Callable[..., nn.Module] | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, channels_last: bool = False) -> None:
        super().__init__()
        heads = dict(heads or {})
        bad = [name for name in heads if "." in name or name == BEV]
        if bad:
            raise ValueError(f"HydraNet: head names must not contain '.' nor be '{BEV}', found {bad}")
        if not heads and bev is None:
            raise ValueError("HydraNet: give at least one head or a bev branch")
        branches = {**{f"heads.{k}": v for k, v in heads.items()}, **({BEV: bev} if bev is not None else {})}
        for path, factory in branches.items():
            if not callable(factory):
                # What a half-removed config group leaves behind, e.g. `experiment=demo ~model/bev` keeps the
                # demo's `model.net.bev.feature_stride` as a bare mapping without `_target_`.
                raise TypeError(f"HydraNet: model.net.{path} is not a module config (no '_target_'), found "
                                f"{factory!r}; to drop a branch remove its leftover keys too "
                                f"(e.g. '~model/bev ~model.net.bev')")
        self.backbone = backbone
        self.neck = neck(in_channels=list(backbone.channels), strides=list(backbone.strides))
        self.heads = nn.ModuleDict({name: factory(in_channels=self.neck.out_channels, strides=list(self.neck.strides))
                                    for name, factory in heads.items()})
        self.bev = bev(in_channels=self.neck.out_channels, strides=list(self.neck.strides)) if bev else None
        # Stored on the 0..255 scale so the uint8 input needs one subtract and one divide. Not persistent: they
        # come from the config, and checkpoints stay loadable if the defaults ever change.
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, images: Tensor, intrinsics: Tensor, extrinsics: Tensor) -> dict[str, Tensor]:
        """Raw outputs of every head.

        Args:
            images: (B, N, 3, H, W) uint8 RGB (float 0..255 also accepted).
            intrinsics: (B, N, 3, 3) for the images as given.
            extrinsics: (B, N, 4, 4) camera -> ego.

        Returns:
            ``"<head>.<output>"`` -> (B, N, ...) for image heads; ``"bev.<output>"`` as the BEV branch returns.
        """
        b, n, _, height, width = images.shape
        x = (images.flatten(0, 1).float() - self.mean) / self.std  # (B*N, 3, H, W): cameras folded into the batch
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats = self.neck(self.backbone(x))  # {"s8": (B*N, C, H/8, W/8), ...}
        out: dict[str, Tensor] = {}
        for name, head in self.heads.items():
            for key, value in head(feats).items():
                out[f"{name}.{key}"] = _unfold_cameras(value, b, n)  # (B, N, ...)
        if self.bev is not None:
            cam_feats = {k: _unfold_cameras(v, b, n) for k, v in feats.items()}  # (B, N, C, h, w)
            for key, value in self.bev(cam_feats, intrinsics, extrinsics, (height, width)).items():
                out[f"{BEV}.{key}"] = value
        return out

    def loss(self, outputs: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Every head's masked loss terms, ``"<head>.<term>"`` (unweighted; weighting is the trainer's job)."""
        losses: dict[str, Tensor] = {}
        for name, module in self._branches():
            for key, value in module.loss(_select(outputs, name), batch).items():
                losses[f"{name}.{key}"] = value
        return losses

    def decode(self, outputs: dict[str, Tensor], image_size: Sequence[int]) -> dict[str, Tensor]:
        """Every head's fixed-size results, ``"<head>.<result>"``.

        Args:
            outputs: as returned by :meth:`forward`.
            image_size: (H, W) of the input images (image heads return pixels of the input).
        """
        results: dict[str, Tensor] = {}
        for name, module in self._branches():
            sub = _select(outputs, name)
            decoded = module.decode(sub) if name == BEV else module.decode(sub, image_size)
            for key, value in decoded.items():
                results[f"{name}.{key}"] = value
        return results

    def _branches(self) -> list[tuple[str, nn.Module]]:
        branches = list(self.heads.items())
        if self.bev is not None:
            branches.append((BEV, self.bev))
        return branches


def _unfold_cameras(x: Tensor, b: int, n: int) -> Tensor:
    """(B*N, ...) -> (B, N, ...). A reshape, not ``unflatten``: the TorchScript ONNX exporter gives ``unflatten``'s
    output a static shape, so every later ``.shape`` read is folded to the traced batch size and a graph exported
    with a dynamic batch axis fails at any other batch size."""
    return x.reshape(b, n, *x.shape[1:])


def _select(outputs: Mapping[str, Tensor], name: str) -> dict[str, Tensor]:
    """The outputs of one head, prefix stripped."""
    prefix = f"{name}."
    return {k[len(prefix):]: v for k, v in outputs.items() if k.startswith(prefix)}
