"""HydraNet: one shared backbone over every camera, a neck, image-space heads, and optionally a BEV branch.

The network is a plain ``nn.Module`` (no Lightning) with the contract of ``docs/architecture.md``:

- ``forward(images, intrinsics, extrinsics)`` -> flat dict ``"<head>.<output>"`` of raw outputs, each (B, N, ...)
  for image heads (cameras unfolded again after the shared trunk) and whatever the BEV branch returns under
  ``"bev.<output>"``. An image head may run on some camera slots only (:meth:`HydraNet.set_head_cameras`: the 2D
  lane head on the forward/rearward cameras); the other slots get the head's ``empty_outputs`` ("nothing there"),
  so every image output keeps its (B, N, ...) shape;
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
        # Image heads that run on some camera slots only: not weights, so not in the state dict. Set from the camera
        # names by whoever knows them (the training module, the checkpoint loader): see set_head_cameras.
        self.head_cameras: dict[str, list[int]] = {}

    def set_head_cameras(self, name: str, slots: Sequence[int] | None) -> None:
        """Run image head ``name`` on the camera slots ``slots`` only (None: on every camera).

        The 2D lane head is trained and evaluated on the forward/rearward cameras (``model.lane_cameras``); run on
        all six nuScenes cameras, two thirds of its work would be thrown away, in training and in the vehicle. The
        other slots get the head's ``empty_outputs`` (for lanes: no lane exists), and outputs keep their (B, N, ...)
        shape, so losses, metrics and the ONNX outputs need no camera bookkeeping. Slots past the camera count of a
        call are ignored (a latency sweep over smaller rigs).
        """
        if name not in self.heads:
            raise ValueError(f"HydraNet.set_head_cameras: no image head '{name}'; heads: {list(self.heads)}")
        if slots is None:
            self.head_cameras.pop(name, None)
            return
        slots = sorted({int(s) for s in slots})
        if not slots or slots[0] < 0:
            raise ValueError(f"HydraNet.set_head_cameras: head '{name}' needs camera slots >= 0, found {slots}")
        if not hasattr(self.heads[name], "empty_outputs"):
            raise TypeError(f"HydraNet.set_head_cameras: head '{name}' ({type(self.heads[name]).__name__}) has no "
                            f"empty_outputs, so it cannot skip cameras")
        self.head_cameras[name] = slots

    def forward(self, images: Tensor, intrinsics: Tensor, extrinsics: Tensor) -> dict[str, Tensor]:
        """Raw outputs of every head.

        Args:
            images: (B, N, 3, H, W) uint8 RGB (float 0..255 also accepted).
            intrinsics: (B, N, 3, 3) for the images as given.
            extrinsics: (B, N, 4, 4) camera -> ego.

        Returns:
            ``"<head>.<output>"`` -> (B, N, ...) for image heads; ``"bev.<output>"`` as the BEV branch returns.
        """
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"HydraNet: images must be (B, N, 3, H, W) (cameras on their own axis, even for one "
                             f"camera), found shape {tuple(images.shape)}")
        b, n, _, height, width = images.shape
        x = (images.flatten(0, 1).float() - self.mean) / self.std  # (B*N, 3, H, W): cameras folded into the batch
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats = self.neck(self.backbone(x))  # {"s8": (B*N, C, H/8, W/8), ...}
        out: dict[str, Tensor] = {}
        for name, head in self.heads.items():
            slots = [s for s in self.head_cameras.get(name, range(n)) if s < n]
            if len(slots) == n:
                for key, value in head(feats).items():
                    out[f"{name}.{key}"] = _unfold_cameras(value, b, n)  # (B, N, ...)
                continue
            for key, value in self._run_on_slots(head, feats, slots, b, n).items():
                out[f"{name}.{key}"] = value
        if self.bev is not None:
            cam_feats = {k: _unfold_cameras(v, b, n) for k, v in feats.items()}  # (B, N, C, h, w)
            for key, value in self.bev(cam_feats, intrinsics, extrinsics, (height, width)).items():
                out[f"{BEV}.{key}"] = value
        return out

    @staticmethod
    def _run_on_slots(head: nn.Module, feats: dict[str, Tensor], slots: list[int], b: int,
                      n: int) -> dict[str, Tensor]:
        """``head`` on the camera ``slots`` only, its ``empty_outputs`` elsewhere: (B, N, ...) per output."""
        ref = next(iter(feats.values()))
        empty = head.empty_outputs(b, 1, like=ref)  # (B, 1, ...) per output
        if not slots:
            return {k: v.expand(-1, n, *v.shape[2:]) for k, v in empty.items()}
        # The slot list is a constant of the graph: one Gather per level, then a Concat per output.
        picked = {k: _unfold_cameras(v, b, n)[:, slots].flatten(0, 1) for k, v in feats.items()}
        raw = {k: _unfold_cameras(v, b, len(slots)) for k, v in head(picked).items()}  # (B, len(slots), ...)
        where = {s: i for i, s in enumerate(slots)}
        return {k: torch.cat([v[:, where[c]:where[c] + 1] if c in where else empty[k].to(v.dtype)
                              for c in range(n)], dim=1)
                for k, v in raw.items()}

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


def camera_slots(selected: Sequence[str] | None, camera_names: Sequence[str], field: str) -> list[int] | None:
    """The slots of the ``selected`` camera names in ``camera_names`` (None: all), or an error naming ``field``."""
    if selected is None:
        return None
    unknown = sorted(set(selected) - set(camera_names))
    if unknown:
        raise ValueError(f"field '{field}': {unknown} are not cameras of the data; valid choices: "
                         f"{list(camera_names)}")
    return [i for i, c in enumerate(camera_names) if c in set(selected)]


def run_lanes_on(net: nn.Module, lane_cameras: Sequence[str] | None, camera_names: Sequence[str],
                 field: str) -> None:
    """Run ``net``'s 2D lane head on the ``lane_cameras`` slots only (None: every camera), if it has one: the other
    cameras' lane outputs are masked out of the loss and the metrics. For the training module and the checkpoint
    loader alike, so a loaded model runs as it was trained."""
    net = getattr(net, "_orig_mod", net)  # a torch.compile wrapper
    if "lanes_2d" in getattr(net, "heads", {}):
        net.set_head_cameras("lanes_2d", camera_slots(list(lane_cameras) if lane_cameras else None, camera_names,
                                                      field))


def slots_mask(camera_mask: Tensor, slots: Sequence[int] | None) -> Tensor:
    """(B, N) bool: ``camera_mask`` where the slot is one of ``slots`` (None: every slot). Collate pads camera slots
    up to the widest frame of a batch, so N may differ from the rig's camera count: slots past it stay False."""
    if slots is None:
        return camera_mask
    keep = torch.zeros(camera_mask.shape[1], dtype=torch.bool, device=camera_mask.device)
    keep[[s for s in slots if s < camera_mask.shape[1]]] = True
    return camera_mask & keep[None]


def _unfold_cameras(x: Tensor, b: int, n: int) -> Tensor:
    """(B*N, ...) -> (B, N, ...). A reshape, not ``unflatten``: the TorchScript ONNX exporter gives ``unflatten``'s
    output a static shape, so every later ``.shape`` read is folded to the traced batch size and a graph exported
    with a dynamic batch axis fails at any other batch size."""
    return x.reshape(b, n, *x.shape[1:])


def _select(outputs: Mapping[str, Tensor], name: str) -> dict[str, Tensor]:
    """The outputs of one head, prefix stripped."""
    prefix = f"{name}."
    return {k[len(prefix):]: v for k, v in outputs.items() if k.startswith(prefix)}
