"""benchmarks/conv_roofline.py: how near the machine's fp32 rate a model's convolutions run, and the floors."""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from hydra import compose, initialize_config_dir

from tests.benchmark import load_script
from visionpilot.paths import config_dir


def _script():
    return load_script("conv_roofline")


def test_eager_counts_the_convolutions_and_times_their_kernels(tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={tmp_path}", "rig=front1", "model/bev=tiny"])
    torch.manual_seed(0)
    net = hydra.utils.instantiate(cfg.model.net)
    script = _script()
    e = script.eager(net, 1, (64, 160), threads=1, iters=2)
    # Every multiply-add of this net is in a convolution but the lane head's two sampling matmuls.
    assert 0.9 * e["flops"] < e["conv_flops"] <= e["flops"]
    assert 0 < e["conv_ms"] < e["wall_ms"] * 1.5  # profiled over other calls than the timed ones
    refs = script.reference_gflops(1, calls=2)
    assert set(refs) == {"oneDNN conv 3x3", "MLAS MatMul"} and all(v > 1 for v in refs.values())


def test_report_states_the_floors_from_the_measured_figures() -> None:
    e = {"cameras": 6, "size": [96, 256], "flops": 12.7e9, "conv_flops": 12.6e9, "wall_ms": 45.0, "conv_ms": 33.6}
    onnx = {"fp32": {"wall_ms": 42.0, "by_op": {"Conv": 30.0, "FusedConv": 1.5, "GridSample": 4.0}},
            "int8": {"wall_ms": 24.0, "by_op": {"QLinearConv": 10.0, "Conv": 1.0, "GridSample": 4.0}}}
    text = _script().report({"oneDNN conv 3x3": 420.0, "MLAS MatMul": 400.0}, e, onnx, threads=2)
    assert "| torch-eager fp32 | 45.0 | 33.6 | 375 | 89% | 11.4 | 1.00 |" in text
    assert "| onnxruntime fp32 | 42.0 | 31.5 | 400 | 95% | 10.5 | 0.93 |" in text
    # 12.6 GFLOP at 420 GFLOP/s = 30 ms = 0.67 x 45 ms; int8: 12.6 / 1680 = 7.5 ms + 13 ms of the rest = 20.5 ms
    assert "fp32 floor (convolutions at the reference rate, nothing else): 30.0 ms = 0.67 x eager" in text
    assert "20.5 ms = 0.49 x onnxruntime fp32" in text
    assert "int8 floor" not in _script().report({"r": 420.0}, e, {"fp32": onnx["fp32"]}, threads=2)
