"""Backbones: every supported torchvision model builds, reports true channels/strides, loads weights or says why not."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import get_model
from torchvision.models._api import WeightsEnum
from torchvision.ops.misc import FrozenBatchNorm2d

from visionpilot.models.backbones import BACKBONES, TorchvisionBackbone


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_reported_channels_and_strides_match_a_real_forward(name: str) -> None:
    bb = TorchvisionBackbone(name, out_strides=(4, 8, 16, 32)).eval()
    assert bb.names == ["s4", "s8", "s16", "s32"]
    assert [f["stride"] for f in bb.feature_info] == bb.strides == [4, 8, 16, 32]
    with torch.no_grad():
        out = bb(torch.randn(1, 3, 64, 96))
    assert list(out) == bb.names
    for f, channels, stride in zip(out.values(), bb.channels, bb.strides):
        assert f.shape == (1, channels, 64 // stride, 96 // stride)
    # The classifier is cut away: no parameter of it survives in the graph.
    assert not any(k.startswith(("fc.", "classifier.")) for k in bb.state_dict())


def test_out_strides_select_levels() -> None:
    bb = TorchvisionBackbone("resnet18", out_strides=[16, 8])
    assert bb.names == ["s8", "s16"] and bb.channels == [128, 256]
    assert not any("layer4" in k for k in bb.state_dict())  # truncated after the deepest requested stage


def test_bad_arguments_name_the_choices() -> None:
    with pytest.raises(ValueError, match="valid choices.*regnety_400mf"):
        TorchvisionBackbone("resnet19")
    with pytest.raises(ValueError, match="out_strides"):
        TorchvisionBackbone("resnet18", out_strides=[2, 8])


def test_missing_weights_file_says_what_to_do(tmp_path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=r"nope\.pth.*not found.*pretrained=false"):
        TorchvisionBackbone("regnety_400mf", pretrained=str(missing))


def test_offline_download_says_what_to_do(monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match=r"offline.*pretrained=false.*regnet_y_400mf"):
        TorchvisionBackbone("regnety_400mf", pretrained=True)


def test_local_weights_file_loads(tmp_path) -> None:
    model = get_model("resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save(model.state_dict(), path)
    bb = TorchvisionBackbone("resnet18", pretrained=str(path))
    torch.testing.assert_close(bb.body.get_submodule("layer2.0.conv1").weight, model.layer2[0].conv1.weight)
    # A state dict of another architecture is refused with the reason.
    wrong = tmp_path / "wrong.pth"
    torch.save({"state_dict": get_model("mobilenet_v3_large").state_dict()}, wrong)
    with pytest.raises(ValueError, match="not a state dict of torchvision's 'resnet18'"):
        TorchvisionBackbone("resnet18", pretrained=str(wrong))


def test_local_weights_with_another_classifier_load(tmp_path) -> None:
    # A torchvision model fine-tuned on 10 classes: the classifier is ignored, the backbone weights load.
    model = get_model("resnet18", num_classes=10)
    path = tmp_path / "resnet18_10cls.pth"
    torch.save(model.state_dict(), path)
    bb = TorchvisionBackbone("resnet18", pretrained=str(path))
    torch.testing.assert_close(bb.body.get_submodule("layer1.0.conv1").weight, model.layer1[0].conv1.weight)


def test_unreadable_weights_file_names_the_file(tmp_path) -> None:
    whole_model = tmp_path / "whole_model.pth"
    torch.save(get_model("resnet18"), whole_model)  # the pickled module, not its state dict
    with pytest.raises(ValueError, match=r"could not read '.*whole_model\.pth' as a state dict.*state_dict\(\)"):
        TorchvisionBackbone("resnet18", pretrained=str(whole_model))
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"could not read '.*garbage\.pth'"):
        TorchvisionBackbone("resnet18", pretrained=str(garbage))


def test_frozen_stages_freeze_params_and_norm_statistics() -> None:
    bb = TorchvisionBackbone("regnety_400mf", frozen_stages=2).train()
    for name, p in bb.body.named_parameters():
        assert p.requires_grad == (not name.startswith(("stem", "trunk_output.block1."))), name
    assert not bb.body.get_submodule("trunk_output.block1").training
    assert bb.body.get_submodule("trunk_output.block2").training


def test_frozen_stages_match_whole_module_names() -> None:
    # MobileNetV3's stem group is features.0-1: freezing it must not also freeze features.10 ... features.16.
    bb = TorchvisionBackbone("mobilenet_v3_large", frozen_stages=1).train()
    frozen = {name.split(".")[1] for name, p in bb.body.named_parameters() if not p.requires_grad}
    assert frozen == {"0", "1"}
    assert not bb.body.get_submodule("features.1").training
    assert bb.body.get_submodule("features.10").training and bb.body.get_submodule("features.16").training


def test_frozen_norm_replaces_batchnorm() -> None:
    with pytest.warns(UserWarning, match="random init"):
        bb = TorchvisionBackbone("mobilenet_v3_large", norm="frozen")
    mods = list(bb.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in mods)
    frozen = [m for m in mods if isinstance(m, FrozenBatchNorm2d)]
    assert frozen and frozen[0].eps == pytest.approx(1e-3)  # MobileNetV3's eps kept


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_exports_to_onnx_opset17(name: str, tmp_path) -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    bb = TorchvisionBackbone(name).eval()
    x = torch.randn(1, 3, 64, 96)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(bb, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                      output_names=bb.names)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    with torch.no_grad():
        ref = bb(x)
    for key, value in zip(bb.names, got):
        scale = max(1.0, float(ref[key].abs().max()))  # random-init activations can be large
        assert np.abs(value - ref[key].numpy()).max() <= 1e-4 * scale, key
