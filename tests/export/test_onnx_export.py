"""Every model config exports to opset 17 (checker + shape inference), with a dynamic batch and fp32 parity."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from visionpilot.export.onnx_export import (
    RAW_PREFIX,
    check_onnx,
    export_onnx,
    graph_io,
    read_metadata,
    save_onnx_atomic,
    set_metadata,
    strip_raw_outputs,
)
from visionpilot.export.parity import ParityError, check_parity, failures, tolerance_for

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# configs/model/*.yaml, configs/model/bev/*.yaml and every backbone of configs/model/backbone/ at least once.
CONFIGS = [
    pytest.param("tiny", (), id="tiny"),
    pytest.param("small", (), id="small"),
    pytest.param("base", (), id="base", marks=pytest.mark.slow),
    pytest.param("tiny", ("model/bev=tiny",), id="tiny+bev_tiny"),
    pytest.param("tiny", ("model/bev=default",), id="tiny+bev_default", marks=pytest.mark.slow),
    pytest.param("tiny", ("model/backbone=resnet18",), id="tiny+resnet18"),
    pytest.param("tiny", ("model/backbone=resnet34",), id="tiny+resnet34", marks=pytest.mark.slow),
    pytest.param("tiny", ("model/backbone=efficientnet_b0",), id="tiny+efficientnet_b0"),
    pytest.param("tiny", ("model/backbone=mobilenet_v3_large",), id="tiny+mobilenet_v3_large"),
    # The demo's 2D box head: strides 4 and 8 in one top-K.
    pytest.param("tiny", ("model.net.backbone.out_strides=[4,8,16,32]", "model.net.heads.objects_2d.stride=[4,8]",
                          "model.net.heads.objects_2d.level_bounds=[24]"), id="tiny+objects_2d_two_levels"),
]


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(("model", "overrides"), CONFIGS)
def test_model_config_exports_with_parity(model: str, overrides: tuple[str, ...], build_net, make_batch, fp32_gate,
                                          hw) -> None:
    H, W = hw
    net = build_net(model, *overrides)
    full = export_onnx(net, (H, W), num_cameras=2)  # runs onnx.checker (full) and strict shape inference
    inputs = {i.name: i for i in full.graph.input}
    assert inputs["images"].type.tensor_type.elem_type == onnx.TensorProto.UINT8  # normalisation is inside
    assert [d.dim_param or d.dim_value for d in inputs["images"].type.tensor_type.shape.dim] == ["batch", 2, 3, H, W]
    has_bev = getattr(net, "bev", None) is not None
    assert list(inputs) == (["images", "intrinsics", "extrinsics"] if has_bev else ["images"])
    assert all(o.type.tensor_type.shape.dim[0].dim_param == "batch" for o in full.graph.output)
    # Traced with a batch of 2, run with 1 and 3: the batch axis is dynamic.
    session = _session(full)
    for b in (1, 3):
        batch = make_batch(2, batch=b)
        tol = tolerance_for("fp32", {"raw_max_abs": fp32_gate(net, batch)})  # 1e-4 unless at the noise floor
        report = check_parity(net, session, [batch], (H, W), tol, raw_session=session)
        assert report["passed"], failures(report)
        assert report["max_abs_diff_raw"] <= tol.raw_max_abs
    decoded = {o.name for o in full.graph.output if not o.name.startswith(RAW_PREFIX)}
    assert {"lanes_2d.points", "objects_2d.boxes"} <= decoded
    if has_bev:
        assert {"bev.objects_boxes", "bev.lanes_points", "bev.lanes_seg_prob"} <= decoded


def test_shipped_graph_has_decoded_outputs_metadata_and_stays_valid(bev_model, make_batch, fp32_gate, hw,
                                                                    tmp_path) -> None:
    H, W = hw
    net, full = bev_model
    shipped = strip_raw_outputs(full)
    assert not any(o.name.startswith(RAW_PREFIX) for o in shipped.graph.output)
    assert len(shipped.graph.node) <= len(full.graph.node)
    set_metadata(shipped, {"camera_names": ["CAM_A", "CAM_B"], "input_size": [H, W], "precision": "fp32"})
    check_onnx(shipped)
    path = save_onnx_atomic(shipped, tmp_path / "model.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary file left behind
    onnx.checker.check_model(str(path), full_check=True)
    assert read_metadata(path) == {"camera_names": ["CAM_A", "CAM_B"], "input_size": [H, W], "precision": "fp32"}
    io = graph_io(shipped)
    boxes = next(o for o in io["outputs"] if o["name"] == "bev.objects_boxes")
    assert boxes["shape"][0] == "batch" and boxes["shape"][2] == 7 and isinstance(boxes["shape"][1], int)
    # Stripping changes nothing the vehicle sees.
    batch = make_batch(2)
    tol = tolerance_for("fp32", {"raw_max_abs": fp32_gate(net, batch)})
    report = check_parity(net, _session(shipped), [batch], (H, W), tol)
    assert report["passed"] and not any(k.startswith(RAW_PREFIX) for k in report["max_abs_diff"])


def test_parity_detects_a_different_model(bev_model, build_net, make_batch, hw) -> None:
    H, W = hw
    net, full = bev_model
    other = build_net("tiny", "model/bev=tiny", seed=1)  # same architecture, other weights
    report = check_parity(other, _session(full), [make_batch(2)], (H, W), tolerance_for("fp32"),
                          raw_session=_session(full))
    assert not report["passed"] and not report["raw_within_tolerance"]
    assert any("raw/objects_2d.objectness: max abs diff" in line for line in failures(report))
    assert np.isfinite(report["max_abs_diff_raw"])


def test_metadata_of_a_file_that_is_no_onnx_model_names_the_file(tmp_path) -> None:
    # protobuf's DecodeError ("Error parsing message ...: Wire format was corrupt") did not say which file.
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"\x00\x01 a truncated download")
    with pytest.raises(ValueError, match=r"model\.onnx: not a readable ONNX model \(DecodeError"):
        read_metadata(bad)
    with pytest.raises(FileNotFoundError, match=r"ONNX model not found: .*missing\.onnx"):
        read_metadata(tmp_path / "missing.onnx")


def test_model_file_is_on_disk_before_it_is_renamed(bev_model, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    # export.json is written after model.onnx and fsynced (utils.io.write_text_atomic); an unsynced model renamed
    # into place can be empty after a power cut while the report that vouches for it survives.
    import os

    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_size)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = save_onnx_atomic(strip_raw_outputs(bev_model[1]), tmp_path / "model.onnx")
    assert path.stat().st_size in synced, "model.onnx was renamed into place without an fsync of its bytes"


def test_parity_refuses_a_graph_that_lacks_a_decoded_output(bev_model, make_batch, hw) -> None:
    # A graph without one of net.decode's outputs is not the model: parity must say so, not compare the rest.
    net, full = bev_model
    partial = onnx.ModelProto()
    partial.CopyFrom(full)
    keep = [o for o in partial.graph.output if o.name != "bev.lanes_seg_prob"]
    del partial.graph.output[:]
    partial.graph.output.extend(keep)
    partial = strip_raw_outputs(partial)
    with pytest.raises(ParityError, match=r"lacks outputs \['bev\.lanes_seg_prob'\]"):
        check_parity(net, _session(partial), [make_batch(2)], hw, tolerance_for("fp32"), raw_session=_session(full))
