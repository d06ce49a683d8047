"""HydraNet: documented output keys, masked losses, decode, BEV hook, configs, and ONNX opset-17 parity."""

from __future__ import annotations

import subprocess
import sys

import hydra
import numpy as np
import onnxruntime as ort
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import Tensor, nn

import visionpilot.paths
from visionpilot.models.net import HydraNet

B, N, H, W = 2, 3, 64, 160

RAW_KEYS = {
    "lanes_2d.exist": (B, N, 4),
    "lanes_2d.columns": (B, N, 4, 12, 41),
    "lanes_2d.types": (B, N, 4, 6),
    "objects_2d.objectness": (B, N, 1, H // 8, W // 8),
    "objects_2d.classes": (B, N, 6, H // 8, W // 8),
    "objects_2d.size": (B, N, 2, H // 8, W // 8),
    "objects_2d.offset": (B, N, 2, H // 8, W // 8),
}
DECODED_KEYS = {
    "lanes_2d.exist": (B, N, 4),
    "lanes_2d.types": (B, N, 4),
    "lanes_2d.points": (B, N, 4, 12, 2),
    "lanes_2d.points_valid": (B, N, 4, 12),
    "objects_2d.scores": (B, N, 50),
    "objects_2d.classes": (B, N, 50),
    "objects_2d.boxes": (B, N, 50, 4),
}


def _model_cfg(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(visionpilot.paths.config_dir()), version_base="1.3"):
        return compose(config_name=None, overrides=[f"+model={name}", *overrides]).model


def _tiny(**kw) -> HydraNet:
    torch.manual_seed(0)
    return hydra.utils.instantiate(_model_cfg("tiny").net, **kw)


def _batch(b: int = B, n: int = N) -> dict:
    """A full batch as data/collate.py documents it, with a few labels and some presence flags off."""
    g = torch.Generator().manual_seed(0)
    k = torch.tensor([[80.0, 0, W / 2], [0, 80.0, H * 0.35], [0, 0, 1]])
    v = torch.linspace(30, H, 6)
    lanes = torch.zeros(b, n, 2, 6, 2)
    lanes[..., 0, :, 0], lanes[..., 1, :, 0] = 80 - (v - 22) * 1.2, 80 + (v - 22) * 1.4
    lanes[..., 1] = v
    boxes = torch.tensor([[10.0, 20.0, 50.0, 50.0], [90.0, 25.0, 120.0, 45.0]]).expand(b, n, 2, 4).clone()
    return {
        "images": torch.randint(0, 256, (b, n, 3, H, W), dtype=torch.uint8, generator=g),
        "intrinsics": k.expand(b, n, 3, 3).clone(),
        "extrinsics": torch.eye(4).expand(b, n, 4, 4).clone(),
        "camera_mask": torch.ones(b, n, dtype=torch.bool).index_fill(1, torch.tensor([n - 1]), b < 2),
        "boxes_3d": torch.zeros(b, 1, 7),
        "boxes_3d_classes": torch.full((b, 1), -1),
        "boxes_3d_mask": torch.zeros(b, 1, dtype=torch.bool),
        "boxes_2d": boxes,
        "boxes_2d_classes": torch.tensor([0, 4]).expand(b, n, 2).clone(),
        "boxes_2d_mask": torch.ones(b, n, 2, dtype=torch.bool),
        "lanes_3d": torch.zeros(b, 1, 1, 3),
        "lanes_3d_valid": torch.zeros(b, 1, 1, dtype=torch.bool),
        "lanes_3d_types": torch.full((b, 1), -1),
        "lanes_2d": lanes,
        "lanes_2d_valid": torch.ones(b, n, 2, 6, dtype=torch.bool),
        "lanes_2d_types": torch.tensor([1, 0]).expand(b, n, 2).clone(),
        "has_boxes_3d": torch.zeros(b, dtype=torch.bool),
        "has_boxes_2d": torch.ones(b, dtype=torch.bool),
        "has_lanes_3d": torch.zeros(b, dtype=torch.bool),
        "has_lanes_2d": torch.tensor([True] + [False] * (b - 1)),
        "region": ["de"] * b,
        "driving_side": ["right"] * b,
        "frame_id": [str(i) for i in range(b)],
        "scene_id": ["s"] * b,
        "source": ["test"] * b,
    }


def test_forward_loss_decode_keys_and_shapes() -> None:
    net = _tiny()
    batch = _batch()
    out = net(batch["images"], batch["intrinsics"], batch["extrinsics"])
    assert {k: tuple(v.shape) for k, v in out.items()} == RAW_KEYS
    losses = net.loss(out, batch)
    assert set(losses) == {"lanes_2d.exist", "lanes_2d.columns", "lanes_2d.position", "lanes_2d.type",
                           "objects_2d.heatmap", "objects_2d.classes", "objects_2d.size", "objects_2d.offset"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in net.heads.parameters())
    net.eval()
    with torch.no_grad():
        dec = net.decode(net(batch["images"], batch["intrinsics"], batch["extrinsics"]), (H, W))
    assert {k: tuple(v.shape) for k, v in dec.items()} == DECODED_KEYS
    assert dec["objects_2d.classes"].dtype == torch.int64 and dec["lanes_2d.points_valid"].dtype == torch.bool


def test_bev_branch_is_built_from_the_neck_and_called() -> None:
    calls = {}

    class FakeBEV(nn.Module):
        def __init__(self, in_channels: int, strides: list[int]) -> None:
            super().__init__()
            calls["init"] = (in_channels, strides)
            self.conv = nn.Conv2d(in_channels, 1, 1)

        def forward(self, feats, intrinsics, extrinsics, image_size) -> dict[str, Tensor]:
            calls["forward"] = ({k: tuple(v.shape) for k, v in feats.items()}, tuple(intrinsics.shape), image_size)
            return {"heatmap": self.conv(feats["s32"].mean(1))}

        def loss(self, outputs, batch) -> dict[str, Tensor]:
            return {"heatmap": outputs["heatmap"].mean()}

        def decode(self, outputs) -> dict[str, Tensor]:
            return {"scores": outputs["heatmap"].sigmoid()}

    net = _tiny(bev=FakeBEV)
    assert calls["init"] == (32, [8, 16, 32])
    batch = _batch()
    out = net(batch["images"], batch["intrinsics"], batch["extrinsics"])
    assert calls["forward"] == ({"s8": (B, N, 32, 8, 20), "s16": (B, N, 32, 4, 10), "s32": (B, N, 32, 2, 5)},
                                (B, N, 3, 3), (H, W))
    assert out["bev.heatmap"].shape == (B, 1, 2, 5)
    assert "bev.heatmap" in net.loss(out, batch)
    assert "bev.scores" in net.decode(out, (H, W))


def test_channels_last_gives_the_same_outputs() -> None:
    batch = _batch(1, 1)
    ref, cl = _tiny().eval(), _tiny(channels_last=True).eval()
    with torch.no_grad():
        a = ref(batch["images"], batch["intrinsics"], batch["extrinsics"])
        b = cl(batch["images"], batch["intrinsics"], batch["extrinsics"])
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-4)


def test_head_names_are_checked() -> None:
    cfg = _model_cfg("tiny").net
    with pytest.raises(hydra.errors.InstantiationException, match="must not contain"):
        hydra.utils.instantiate(cfg, heads={"lanes.2d": cfg.heads.lanes_2d})

    with pytest.raises(hydra.errors.InstantiationException, match=r"model.net.bev is not a module config.*feature_stride"):
        hydra.utils.instantiate(cfg, bev={"feature_stride": 8})  # what `experiment=demo ~model/bev` leaves behind


@pytest.mark.parametrize("name", ["tiny", "small", "base"])
def test_model_configs_instantiate_and_run(name: str) -> None:
    net = hydra.utils.instantiate(_model_cfg(name).net).eval()
    assert "channels" not in str(_model_cfg(name).net.backbone)  # widths are discovered, never configured
    images = torch.randint(0, 256, (1, 2, 3, 64, 96), dtype=torch.uint8)
    with torch.no_grad():
        out = net(images, torch.eye(3).expand(1, 2, 3, 3), torch.eye(4).expand(1, 2, 4, 4))
        dec = net.decode(out, (64, 96))
    assert {k.split(".")[0] for k in out} == {"lanes_2d", "objects_2d"}
    assert dec["objects_2d.boxes"].shape[:2] == (1, 2) and dec["lanes_2d.points"].shape[:2] == (1, 2)


@pytest.mark.slow  # a fresh interpreter importing torch
def test_net_imports_without_lightning() -> None:
    code = "import sys, visionpilot.models.net; assert 'lightning' not in sys.modules, 'lightning imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


class _ForwardAndDecode(nn.Module):
    """What an exported model computes: raw outputs, then the fixed-size decode."""

    def __init__(self, net: HydraNet, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.net, self.image_size = net, image_size

    def forward(self, images: Tensor, intrinsics: Tensor, extrinsics: Tensor) -> tuple[Tensor, ...]:
        out = self.net(images, intrinsics, extrinsics)
        return tuple(out.values()) + tuple(self.net.decode(out, self.image_size).values())


def test_tiny_net_exports_to_onnx_opset17_with_decode(tmp_path) -> None:
    net = _tiny().eval()
    batch = _batch()
    inputs = (batch["images"], batch["intrinsics"], batch["extrinsics"])
    with torch.no_grad():
        raw = net(*inputs)
        names = list(raw) + list(net.decode(raw, (H, W)))
        expected = _ForwardAndDecode(net, (H, W))(*inputs)
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(_ForwardAndDecode(net, (H, W)), inputs, str(path), dynamo=False, opset_version=17,
                      input_names=["images", "intrinsics", "extrinsics"], output_names=names)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == "tensor(uint8)"  # normalisation is inside the graph
    # Without a BEV branch the calibration is unused, and the exporter drops unused inputs from the graph.
    assert [i.name for i in sess.get_inputs()] == ["images"]
    got = dict(zip(names, sess.run(None, {"images": inputs[0].numpy()})))
    ref = dict(zip(names, (t.numpy() for t in expected)))
    diffs = {k: float(np.abs(got[k] - ref[k]).max()) for k in RAW_KEYS}
    print("onnx parity max_abs_diff:", diffs)
    assert max(diffs.values()) <= 1e-4, diffs
    # Decoded results: shapes fixed, and the same detections and lanes.
    assert {k: got[k].shape for k in DECODED_KEYS} == DECODED_KEYS
    np.testing.assert_allclose(got["objects_2d.scores"], ref["objects_2d.scores"], atol=1e-4)
    same = got["objects_2d.classes"] == ref["objects_2d.classes"]
    assert same.mean() > 0.95  # near-equal scores may swap places in the top-k
    np.testing.assert_allclose(got["objects_2d.boxes"][same], ref["objects_2d.boxes"][same], atol=1e-3)
    np.testing.assert_allclose(got["lanes_2d.points"], ref["lanes_2d.points"], atol=1e-3)
    np.testing.assert_array_equal(got["lanes_2d.points_valid"], ref["lanes_2d.points_valid"])


def test_a_head_on_some_cameras_matches_the_full_run_there_and_reads_no_lane_elsewhere(tmp_path) -> None:
    """The 2D lane head on camera slots [0, 2] of 3: the same raw outputs there as run on every camera (eval mode),
    "no lane" on slot 1 (decoded existence ~0, no valid point), shapes unchanged; the ONNX graph agrees."""
    net = _tiny().eval()
    batch = _batch()
    inputs = (batch["images"], batch["intrinsics"], batch["extrinsics"])
    with torch.no_grad():
        full = net(*inputs)
        net.set_head_cameras("lanes_2d", [2, 0])
        some = net(*inputs)
        dec = net.decode(some, (H, W))
    assert net.head_cameras == {"lanes_2d": [0, 2]}
    assert {k: tuple(v.shape) for k, v in some.items()} == RAW_KEYS
    for key in ("lanes_2d.exist", "lanes_2d.columns", "lanes_2d.types"):
        torch.testing.assert_close(some[key][:, [0, 2]], full[key][:, [0, 2]])
        assert not torch.equal(some[key][:, 1], full[key][:, 1])
    torch.testing.assert_close(some["objects_2d.classes"], full["objects_2d.classes"])  # other heads: every camera
    assert (dec["lanes_2d.exist"][:, 1] < 1e-12).all() and not dec["lanes_2d.points_valid"][:, 1].any()
    assert (dec["lanes_2d.exist"][:, [0, 2]] > 1e-6).all()
    # Slots past a call's camera count are ignored (a latency sweep over smaller rigs): 2 cameras, head on slot 0;
    # none left: every slot reads "no lane".
    with torch.no_grad():
        two = net(*(t[:, :2] for t in inputs))
        net.set_head_cameras("lanes_2d", [2])
        none = net.decode(net(*(t[:, :2] for t in inputs)), (H, W))
    torch.testing.assert_close(two["lanes_2d.exist"][:, 0], full["lanes_2d.exist"][:, 0])
    assert two["lanes_2d.exist"].shape == (B, 2, 4) and (none["lanes_2d.exist"] < 1e-12).all()
    # Exported with a dynamic batch axis: the gathered slots and the filled ones at another batch size.
    from visionpilot.export.onnx_export import example_inputs, export_onnx
    net.set_head_cameras("lanes_2d", [0, 2])
    model = export_onnx(net, (H, W), N)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    images, intrinsics, extrinsics = example_inputs(N, (H, W), batch=3, seed=1)
    with torch.no_grad():
        ref = net(images, intrinsics, extrinsics)
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": images.numpy()})))
    for key in ("lanes_2d.exist", "lanes_2d.columns", "lanes_2d.types"):
        np.testing.assert_allclose(got[f"raw/{key}"], ref[key].numpy(), atol=1e-4)


def test_head_cameras_are_checked() -> None:
    from visionpilot.models.net import camera_slots
    net = _tiny()
    with pytest.raises(ValueError, match=r"no image head 'lanes'; heads: \['lanes_2d', 'objects_2d'\]"):
        net.set_head_cameras("lanes", [0])
    with pytest.raises(ValueError, match=r"head 'lanes_2d' needs camera slots >= 0, found \[-1, 0\]"):
        net.set_head_cameras("lanes_2d", [0, -1])
    with pytest.raises(TypeError, match=r"head 'objects_2d' \(CenterNetHead\) has no empty_outputs"):
        net.set_head_cameras("objects_2d", [0])
    assert camera_slots(["CAM_BACK", "CAM_FRONT"], ["CAM_FRONT_LEFT", "CAM_FRONT", "CAM_BACK"], "f") == [1, 2]
    assert camera_slots(None, ["CAM_FRONT"], "f") is None
    with pytest.raises(ValueError, match=r"field 'model.lane_cameras': \['CAM_REAR'\] are not cameras of the data; "
                                         r"valid choices: \['CAM_FRONT'\]"):
        camera_slots(["CAM_REAR"], ["CAM_FRONT"], "model.lane_cameras")


def test_images_without_a_camera_axis_are_refused_by_shape() -> None:
    net = _tiny()
    batch = _batch()
    with pytest.raises(ValueError, match=r"images must be \(B, N, 3, H, W\) .* found shape \(2, 3, 64, 160\)"):
        net(batch["images"][:, 0], batch["intrinsics"][:, 0], batch["extrinsics"][:, 0])
