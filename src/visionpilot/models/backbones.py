"""Image backbones: torchvision classifiers cut into multi-scale feature extractors.

A backbone maps a normalised float image batch ``(B, 3, H, W)`` to a dict of feature maps keyed by stride name
(``"s4"``, ``"s8"``, ``"s16"``, ``"s32"``). Channels and strides are *discovered* at construction by a dummy
forward (like timm's ``feature_info``), so nothing downstream — necks, heads, configs — writes them down.

The cut is made with :func:`torchvision.models.feature_extraction.create_feature_extractor`: the returned graph
keeps the torchvision parameter names (so torchvision state dicts load unchanged) and drops everything after the
deepest requested stage (the classifier is never built into the graph). It exports to ONNX opset 17.

Supported models (``name``): see :data:`BACKBONES`. Each is described by its *stage groups* — the stem at stride 2
and one group of torchvision modules per stride 4, 8, 16, 32 — whose last module is the tapped node.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.models import get_model, get_model_weights
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.ops.misc import FrozenBatchNorm2d


@dataclass(frozen=True)
class BackboneSpec:
    """How to cut one torchvision model.

    Attributes:
        tv_name: the torchvision builder name (``torchvision.models.get_model``).
        groups: module-name prefixes per stage, in order: stem (stride 2, or 4 for ResNet's conv+maxpool), then the
            stages that end at strides 4, 8, 16, 32. A stage's tapped node is its last entry.
    """

    tv_name: str
    groups: tuple[tuple[str, ...], ...]


def _features(*indices: int) -> tuple[str, ...]:
    return tuple(f"features.{i}" for i in indices)


_REGNET_GROUPS = (("stem",), ("trunk_output.block1",), ("trunk_output.block2",), ("trunk_output.block3",),
                  ("trunk_output.block4",))
_RESNET_GROUPS = (("conv1", "bn1", "relu", "maxpool"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))

#: Supported backbones by config name. Taps follow timm's ``features_only`` choices (block outputs; for
#: MobileNetV3 the final 960-channel 1x1 conv, for EfficientNet the last block, not the 1280-channel head conv).
BACKBONES: dict[str, BackboneSpec] = {
    "regnety_400mf": BackboneSpec("regnet_y_400mf", _REGNET_GROUPS),
    "regnety_800mf": BackboneSpec("regnet_y_800mf", _REGNET_GROUPS),
    "resnet18": BackboneSpec("resnet18", _RESNET_GROUPS),
    "resnet34": BackboneSpec("resnet34", _RESNET_GROUPS),
    "resnet50": BackboneSpec("resnet50", _RESNET_GROUPS),
    "efficientnet_b0": BackboneSpec(
        "efficientnet_b0", (_features(0, 1), _features(2), _features(3), _features(4, 5), _features(6, 7))
    ),
    "mobilenet_v3_large": BackboneSpec(
        "mobilenet_v3_large",
        (_features(0, 1), _features(2, 3), _features(4, 5, 6), _features(*range(7, 13)), _features(*range(13, 17))),
    ),
}

#: The strides of the tappable stages (groups 1..4).
_GROUP_STRIDES: tuple[int, ...] = (4, 8, 16, 32)

# Side of the square dummy image used to discover channels and strides (a multiple of 32; run on the meta device,
# so its size costs nothing).
_PROBE_SIZE = 128


class TorchvisionBackbone(nn.Module):
    """A torchvision classifier as a multi-scale feature extractor.

    Input: ``(B, 3, H, W)`` float, already normalised (ImageNet mean/std; :class:`~visionpilot.models.net.HydraNet`
    does it). Output: ``{"s8": (B, C8, H/8, W/8), ...}`` for each requested stride, ordered fine to coarse.

    Attributes:
        feature_info: per output level ``{"name", "node", "channels", "stride"}``, fine to coarse.
        names: output keys (``["s8", "s16", "s32"]``).
        channels: channels per output level.
        strides: stride per output level, measured on a dummy forward.

    Args:
        name: a key of :data:`BACKBONES` (``regnety_400mf``, ``resnet50``, ...).
        pretrained: ``False`` (random init), ``True`` (torchvision's default ImageNet weights, downloaded to the
            torch hub cache or read from it), or a local path to a state dict (``.pth``/``.pt``/``.safetensors``) of
            the full torchvision model (classifier keys are ignored; any other mismatch is an error).
        out_strides: which strides to return, from 4, 8, 16, 32.
        frozen_stages: freeze the first ``k`` stage groups (1 = stem, 2 = stem + stride-4 stage, ... 5 = all):
            their parameters get ``requires_grad=False`` and their norm layers stay in eval mode.
        norm: ``"batch"`` (trainable BatchNorm) or ``"frozen"`` (every BatchNorm replaced by
            :class:`torchvision.ops.misc.FrozenBatchNorm2d` holding the loaded statistics — the usual choice when
            fine-tuning pretrained weights with small per-device batches; pointless with random init).
    """

    def __init__(self, name: str = "regnety_400mf", pretrained: bool | str = False,
                 out_strides: Sequence[int] = (8, 16, 32), frozen_stages: int = 0,
                 norm: Literal["batch", "frozen"] = "batch") -> None:
        super().__init__()
        if name not in BACKBONES:
            raise ValueError(f"unknown backbone '{name}'; valid choices: {sorted(BACKBONES)}")
        out_strides = sorted(int(s) for s in out_strides)
        if not out_strides or any(s not in _GROUP_STRIDES for s in out_strides):
            raise ValueError(f"backbone '{name}': out_strides must be a non-empty subset of {list(_GROUP_STRIDES)}, "
                             f"found {out_strides}")
        spec = BACKBONES[name]
        if not 0 <= frozen_stages <= len(spec.groups):
            raise ValueError(f"backbone '{name}': frozen_stages must be in [0, {len(spec.groups)}], "
                             f"found {frozen_stages}")
        if norm not in ("batch", "frozen"):
            raise ValueError(f"backbone '{name}': norm must be 'batch' or 'frozen', found '{norm}'")
        self.name = name
        self.frozen_stages = frozen_stages

        model = get_model(spec.tv_name, weights=None)
        if pretrained is not False and pretrained is not None:
            model.load_state_dict(_load_weights(name, spec, pretrained, model))
        elif norm == "frozen":
            warnings.warn(f"backbone '{name}': norm='frozen' with random init freezes identity statistics; "
                          "use it with pretrained weights", stacklevel=2)
        if norm == "frozen":
            _freeze_batchnorm(model)

        nodes = {spec.groups[_GROUP_STRIDES.index(s) + 1][-1]: f"s{s}" for s in out_strides}
        self.body = create_feature_extractor(model, return_nodes=nodes)
        # With the trailing dot, so that "features.1" does not also catch "features.10" ... "features.16".
        self._frozen_prefixes = tuple(f"{p}." for group in spec.groups[:frozen_stages] for p in group)
        for pname, param in self.body.named_parameters():
            if pname.startswith(self._frozen_prefixes):
                param.requires_grad_(False)

        self.feature_info = self._discover(nodes)
        self.names: list[str] = [f["name"] for f in self.feature_info]
        self.channels: list[int] = [f["channels"] for f in self.feature_info]
        self.strides: list[int] = [f["stride"] for f in self.feature_info]
        self.train()  # puts the frozen stages' norm layers in eval mode

    @torch.no_grad()
    def _discover(self, nodes: dict[str, str]) -> list[dict]:
        """Channels and strides by a dummy forward on the meta device: shapes only, no compute, no state change."""
        meta = {k: torch.empty_like(v, device="meta")
                for k, v in itertools.chain(self.body.named_parameters(), self.body.named_buffers())}
        was_training = self.body.training
        self.body.eval()
        probe = torch.empty(1, 3, _PROBE_SIZE, _PROBE_SIZE, device="meta")
        out = torch.func.functional_call(self.body, meta, (probe,))
        self.body.train(was_training)
        info = []
        for node, key in nodes.items():
            f = out[key]
            stride = _PROBE_SIZE // f.shape[-1]
            if f"s{stride}" != key:  # the stage table above is wrong for this torchvision version
                raise RuntimeError(f"backbone '{self.name}': node '{node}' has stride {stride}, expected {key}")
            info.append({"name": key, "node": node, "channels": int(f.shape[1]), "stride": stride})
        return sorted(info, key=lambda f: f["stride"])

    def train(self, mode: bool = True) -> TorchvisionBackbone:
        """Switch mode, keeping frozen stages in eval so their BatchNorm statistics do not drift."""
        super().train(mode)
        if mode and self._frozen_prefixes:
            for mname, module in self.body.named_modules():
                if f"{mname}.".startswith(self._frozen_prefixes):
                    module.eval()
        return self

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``(B, 3, H, W)`` normalised images -> ``{"s8": (B, C, H/8, W/8), ...}``, fine to coarse."""
        out = self.body(x)
        return {k: out[k] for k in self.names}


def _load_weights(name: str, spec: BackboneSpec, pretrained: bool | str, model: nn.Module) -> dict[str, Tensor]:
    """The state dict for ``model``: torchvision's default weights (``True``) or a local file."""
    if pretrained is True:
        weights = get_model_weights(spec.tv_name).DEFAULT
        try:
            return weights.get_state_dict(progress=False, check_hash=True)
        except Exception as e:  # URLError, socket timeouts, hash mismatch: all mean "could not get the file"
            hub = Path(torch.hub.get_dir()) / "checkpoints"
            raise RuntimeError(
                f"backbone '{name}': could not load torchvision weights {weights} from {weights.url} "
                f"({type(e).__name__}: {e}). This machine may be offline. Either train from scratch with "
                f"model.net.backbone.pretrained=false, or download that file on a machine with internet and "
                f"put it in {hub}/ (the torch hub cache) or pass its path: model.net.backbone.pretrained=/path/to/"
                f"{Path(weights.url).name}"
            ) from e
    if not isinstance(pretrained, (str, Path)):
        raise TypeError(f"backbone '{name}': pretrained must be false, true or a file path, found {pretrained!r}")
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone '{name}': pretrained weights file '{path}' not found. Give the path of a state dict of "
            f"torchvision's '{spec.tv_name}' (e.g. {get_model_weights(spec.tv_name).DEFAULT.url}), "
            f"pretrained=true to use torchvision's download, or pretrained=false for random init"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise
    except Exception as e:  # a pickled module instead of its state dict, a truncated or foreign file
        raise ValueError(f"backbone '{name}': could not read '{path}' as a state dict of torchvision's "
                         f"'{spec.tv_name}' (save `model.state_dict()`, not the model): {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from e
    for wrapper in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ValueError(f"backbone '{name}': '{path}' does not hold a state dict, found {type(state).__name__}")
    expected = model.state_dict()
    head = ("fc.", "classifier.")  # classifier weights are dropped by the feature extractor anyway
    missing = [k for k in expected if k not in state and not k.startswith(head)]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(f"backbone '{name}': '{path}' is not a state dict of torchvision's '{spec.tv_name}': "
                         f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected keys "
                         f"(e.g. {unexpected[:3]})")
    # The model's own classifier: the file's may have another number of classes (a fine-tuned model).
    return {k: v if k.startswith(head) else state[k] for k, v in expected.items()}


def _freeze_batchnorm(module: nn.Module) -> None:
    """Replace every BatchNorm2d below ``module`` by a FrozenBatchNorm2d with its statistics (in place).

    Written by hand: torchvision builds FrozenBatchNorm2d only through ``norm_layer=`` at construction, which
    would lose the eps of models that use a non-default one (MobileNetV3) and the loaded statistics.
    """
    for cname, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, cname, frozen)
        else:
            _freeze_batchnorm(child)
