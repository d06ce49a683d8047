"""benchmarks/onnx_profile.py: onnxruntime's profile of an export, summed per part of the network."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.benchmark import load_script
from visionpilot.export.onnx_export import export_onnx, save_onnx_atomic, set_metadata
from visionpilot.paths import config_dir

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

def _script():
    return load_script("onnx_profile")


def test_parts_follow_the_exporters_scope_names() -> None:
    part_of = _script().part_of
    assert part_of("/net/backbone/body/layer1/layer1.0/conv1/Conv", "QLinearConv") == "backbone"
    assert part_of("/net/bev/view_transform/GridSample_3", "GridSample") == "bev/view_transform"
    assert part_of("/net/bev/encoder/conv/Conv", "Conv") == "bev/encoder"
    assert part_of("/net/lanes_2d/GridSample", "GridSample") == "lanes_2d"
    assert part_of("/net/Div", "Div") == "net"  # the net's own ops
    assert part_of("/TopK_2", "TopK") == "decode"
    assert part_of("/net/backbone/body/stem/Conv_output_0_QuantizeLinear", "QuantizeLinear") == "quantize"


def test_profile_of_an_export_sums_every_kernel_to_its_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture) -> None:
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={tmp_path}", "rig=front1", "data.image_size=[64,176]",
                                          "model/bev=tiny"])
    torch.manual_seed(0)
    net = hydra.utils.instantiate(cfg.model.net).eval()
    graph = set_metadata(export_onnx(net, (64, 176), 1, raw_outputs=False),
                         {"camera_names": ["CAM_FRONT"], "input_size": [64, 176], "precision": "fp32"})
    path = save_onnx_atomic(graph, tmp_path / "fp32" / "model.onnx")
    out = tmp_path / "profile.json"
    monkeypatch.setattr(sys, "argv", ["onnx_profile.py", str(path), "--threads", "1", "--warmup", "1",
                                      "--iters", "3", "--json", str(out)])
    _script().main()
    (result,) = json.loads(out.read_text())
    parts = result["by_part"]
    assert {"backbone", "neck", "bev/view_transform", "bev/encoder", "decode"} <= set(parts)
    assert result["kernel_ms"] == pytest.approx(sum(parts.values()))
    assert sum(result["by_op"].values()) == pytest.approx(result["kernel_ms"])
    assert 0 < result["kernel_ms"] <= result["wall_ms"] * 1.05  # the kernels run inside the calls
    # The lift's sampling is the view transform's, and it is there whatever onnxruntime fused around it
    assert result["by_part_op"]["bev/view_transform"].get("GridSample", 0) > 0
    printed = capsys.readouterr().out
    assert "| backbone |" in printed and "| **sum of kernels** (per call) |" in printed


def test_a_missing_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(sys, "argv", ["onnx_profile.py", str(tmp_path / "nope.onnx")])
    with pytest.raises(SystemExit):
        _script().main()
    assert "nope.onnx: no such ONNX file" in capsys.readouterr().err


def test_a_graph_without_visionpilots_metadata_is_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    conv = torch.nn.Conv2d(3, 4, 3).eval()
    path = tmp_path / "detector.onnx"
    torch.onnx.export(conv, (torch.rand(1, 3, 16, 16),), str(path), dynamo=False, input_names=["pixels"])
    monkeypatch.setattr(sys, "argv", ["onnx_profile.py", str(path)])
    with pytest.raises(SystemExit):
        _script().main()
    err = capsys.readouterr().err
    assert "detector.onnx: metadata 'input_size' and 'camera_names' expected" in err
    assert "not a visionpilot-export file" in err
