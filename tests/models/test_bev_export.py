"""The BEV branch exports to ONNX opset 17 with standard ops only, calibration as graph inputs, decode inside."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import Tensor, nn

from visionpilot.geometry.frames import camera_extrinsics, intrinsics_from_fov
from visionpilot.models.bev import BEVBranch
from visionpilot.models.heads.lanes_bev import LanesBEVHead
from visionpilot.models.heads.objects_3d import Objects3DHead

H, W, STRIDE, CHANNELS = 64, 160, 16, 8

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter is deprecated


class _Exported(nn.Module):
    """The branch as the vehicle runs it: one feature level + calibration in, raw outputs + decoded results out."""

    def __init__(self, branch: BEVBranch) -> None:
        super().__init__()
        self.branch = branch
        self.raw_keys: list[str] = []
        self.decoded_keys: list[str] = []

    def forward(self, feats: Tensor, intrinsics: Tensor, extrinsics: Tensor) -> tuple[Tensor, ...]:
        out = self.branch({f"s{STRIDE}": feats}, intrinsics, extrinsics, (H, W))
        dec = self.branch.decode(out)
        self.raw_keys, self.decoded_keys = sorted(out), sorted(dec)
        return tuple(out[k] for k in self.raw_keys) + tuple(dec[k] for k in self.decoded_keys)


def _calibration(yaws: list[float], shift: float = 0.0) -> tuple[Tensor, Tensor]:
    k = np.stack([intrinsics_from_fov(90.0, W, H, (0.5, 0.4)) for _ in yaws])
    e = np.stack([camera_extrinsics([1.0 + shift, 0.1 * i, 1.5], yaw, 3.0) for i, yaw in enumerate(yaws)])
    return torch.tensor(k, dtype=torch.float32)[None], torch.tensor(e, dtype=torch.float32)[None]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[_Exported, Path]:
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    branch = BEVBranch(
        in_channels=CHANNELS, strides=[8, 16, 32],
        grid={"x_range": [-12, 12], "y_range": [-8, 8], "z_range": [-1, 3], "cell_size": 1.0, "z_levels": 2},
        feature_stride=STRIDE, lift_channels=4, bev_channels=8, encoder_blocks=1, encoder_down_blocks=1,
        objects=partial(Objects3DHead, head_channels=8, max_objects=12),
        lanes=partial(LanesBEVHead, head_channels=8, num_slots=4, context_dilations=(1, 2), score_threshold=0.0),
    )
    # Non-trivial BatchNorm statistics, so the exported (folded) normalisation is really exercised.
    for m in branch.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    model = _Exported(branch).eval()
    k, e = _calibration([0.0, 120.0, -120.0])
    feats = torch.randn(1, 3, CHANNELS, H // STRIDE, W // STRIDE)
    path = tmp_path_factory.mktemp("onnx") / "bev.onnx"
    with torch.no_grad():
        model(feats, k, e)  # fills the key lists
        torch.onnx.export(model, (feats, k, e), str(path), opset_version=17, dynamo=False,
                          input_names=["feats", "intrinsics", "extrinsics"],
                          output_names=model.raw_keys + model.decoded_keys,
                          dynamic_axes={name: {0: "batch"} for name in ["feats", "intrinsics", "extrinsics",
                                                                        *model.raw_keys, *model.decoded_keys]})
    return model, path


def test_graph_is_standard_opset17(exported: tuple[_Exported, Path]) -> None:
    _, path = exported
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    assert {op.domain for op in graph.opset_import} <= {"", "ai.onnx"}
    assert max(op.version for op in graph.opset_import if op.domain in ("", "ai.onnx")) == 17
    ops = {node.op_type for node in graph.graph.node}
    assert all(node.domain in ("", "ai.onnx") for node in graph.graph.node)
    assert "GridSample" in ops and "TopK" in ops
    assert not ops & {"Inverse", "ATen", "ScatterND", "NonZero"}  # no custom / data-dependent ops
    assert [i.name for i in graph.graph.input] == ["feats", "intrinsics", "extrinsics"]


def test_onnxruntime_matches_pytorch_with_new_calibration(exported: tuple[_Exported, Path]) -> None:
    model, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # A different rig than the one traced: calibration must be a graph input, not a baked constant.
    k1, e1 = _calibration([10.0, 90.0, 200.0], shift=0.7)
    k2, e2 = _calibration([-30.0, 60.0, 175.0], shift=-0.4)
    k, e = torch.cat([k1, k2]), torch.cat([e1, e2])  # batch of 2 through a graph traced with 1 (dynamic batch)
    feats = torch.randn(2, 3, CHANNELS, H // STRIDE, W // STRIDE)
    with torch.no_grad():
        want = model(feats, k, e)
    got = session.run(None, {"feats": feats.numpy(), "intrinsics": k.numpy(), "extrinsics": e.numpy()})
    names = model.raw_keys + model.decoded_keys
    assert len(got) == len(names)
    diffs = {}
    for name, w, g in zip(names, want, got):
        assert g.shape == tuple(w.shape), name
        if w.dtype in (torch.bool, torch.int64):
            assert np.array_equal(g, w.numpy()), name
        else:
            diffs[name] = float(np.abs(g - w.numpy()).max())
    assert max(diffs.values()) <= 1e-4, diffs
    # The traced rig and the new rig give different BEV outputs (the calibration input is live).
    with torch.no_grad():
        k0, e0 = _calibration([0.0, 120.0, -120.0])
        other = model(feats, k0.expand(2, -1, -1, -1), e0.expand(2, -1, -1, -1))
    assert not torch.allclose(other[names.index("objects_heatmap")], want[names.index("objects_heatmap")])


@pytest.mark.parametrize("name", ["default", "tiny"])
def test_hydra_configs_build_the_branch(name: str) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from visionpilot.paths import config_dir

    cfg = OmegaConf.load(config_dir() / "model" / "bev" / f"{name}.yaml")
    factory = instantiate(cfg)
    branch = factory(in_channels=32, strides=[8, 16, 32])  # what HydraNet passes: the neck's width and strides
    assert isinstance(branch, BEVBranch) and set(branch.heads) == {"objects", "lanes"}
    assert branch.grid.shape == ((200, 200) if name == "default" else (100, 100))
    if name == "tiny":  # one cheap forward through the real-size grid, 2 cameras at 256 x 704
        k, e = _calibration([0.0, 180.0])
        k = k * torch.tensor([704 / W, 256 / H, 1.0])[:, None]
        s = branch.feature_stride
        with torch.no_grad():
            out = branch.eval()({f"s{s}": torch.randn(1, 2, 32, 256 // s, 704 // s)}, k, e, (256, 704))
        assert out["objects_heatmap"].shape == (1, 6, 100, 100) and out["lanes_pos"].shape == (1, 8, 100, 101)
    with pytest.raises(ValueError, match="feature_stride"):
        factory(in_channels=32, strides=[32])
