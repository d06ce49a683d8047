"""The inference API: clear input errors before onnxruntime, typed results, and onnx_decode == net.decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from visionpilot.export.onnx_export import export_onnx, save_onnx_atomic, set_metadata, strip_raw_outputs
from visionpilot.export.runtime import InputError, VisionPilotRuntime, load_runtime, onnx_decode

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SIX = ["CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"]
H, W = 64, 96  # the conftest's image size (fixture hw); needed at collection time by parametrize


def _ship(net, cameras: list[str], path: Path) -> Path:
    model = strip_raw_outputs(export_onnx(net, (H, W), num_cameras=len(cameras)))
    set_metadata(model, {"camera_names": cameras, "input_size": [H, W], "object_classes": ["car"], "lane_types": []})
    return save_onnx_atomic(model, path)


@pytest.fixture(scope="module")
def six_camera_model(tmp_path_factory: pytest.TempPathFactory, build_net, hw) -> VisionPilotRuntime:
    """The tiny image-only model for a 6-camera rig (its graph takes images only)."""
    assert hw == (H, W)
    return VisionPilotRuntime(_ship(build_net("tiny"), SIX, tmp_path_factory.mktemp("six") / "model.onnx"))


@pytest.fixture(scope="module")
def bev_runtime(bev_model, tmp_path_factory: pytest.TempPathFactory) -> VisionPilotRuntime:
    net, _ = bev_model
    return load_runtime(_ship(net, ["CAM_A", "CAM_B"], tmp_path_factory.mktemp("bev") / "model.onnx"))


def _images(b: int = 1, n: int = 6, h: int = H, w: int = W, dtype=np.uint8) -> np.ndarray:
    return np.zeros((b, n, 3, h, w), dtype=dtype)


@pytest.mark.parametrize(("images", "expected", "found"), [
    (_images(n=5), "expected 6 cameras in dim 1 (CAM_FRONT_LEFT, CAM_FRONT", "found 5"),
    (_images(dtype=np.float32), "expected dtype uint8", "found float32"),
    (_images(h=96, w=256), f"expected H x W = {H} x {W}", "found 96 x 256"),
    (np.zeros((6, 3, H, W), np.uint8), "expected 5 dims (B, N, 3, H, W) = (B, 6, 3, 64, 96)", "found 4 dims"),
], ids=["five-cameras", "float-images", "wrong-resolution", "no-batch-axis"])
def test_wrong_images_name_expected_and_found(six_camera_model, images, expected, found) -> None:
    with pytest.raises(InputError) as err:
        six_camera_model(images)
    message = str(err.value)
    assert expected in message and found in message and "model.onnx" in message


def test_calibration_is_checked_before_onnxruntime(bev_runtime, make_batch) -> None:
    images = _images(b=2, n=2)
    k, e = make_batch(2)["intrinsics"].numpy(), make_batch(2)["extrinsics"].numpy()
    assert bev_runtime.needs_calibration
    with pytest.raises(InputError, match=r"intrinsics: this model has a BEV branch and needs calibration"):
        bev_runtime(images)
    with pytest.raises(InputError, match=r"extrinsics: expected shape \(2, 2, 4, 4\), found \(2, 2, 3, 4\)"):
        bev_runtime(images, k, e[..., :3, :])
    with pytest.raises(InputError, match=r"intrinsics: expected shape \(2, 2, 3, 3\), found \(1, 2, 3, 3\)"):
        bev_runtime(images, k[:1], e)  # batch differs from the images'
    bad = k.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="intrinsics: expected finite values"):
        bev_runtime(images, bad, e)
    with pytest.raises(InputError, match="expected a float dtype"):
        bev_runtime(images, k.astype(np.int64), e)
    # Finite but no calibration: each ran and gave finite, wrong bird's-eye-view output (up to 0.4 in lane
    # probabilities), so they are named with the first camera that has them.
    with pytest.raises(InputError, match=r"intrinsics\[0, 0\]: expected a last row \[0, 0, 1\] \(a pinhole K; is it "
                                         r"transposed\?\), found \[.+\]"):
        bev_runtime(images, np.swapaxes(k, -1, -2).copy(), e)
    negative = k.copy()
    negative[1, 1, 1, 1] *= -1
    with pytest.raises(InputError, match=r"intrinsics\[1, 1\]: expected focal lengths fx, fy > 0"):
        bev_runtime(images, negative, e)
    with pytest.raises(InputError, match=r"(?s)extrinsics\[0, 0\]: expected a last row \[0, 0, 0, 1\].*"
                                         r"extrinsics\[0, 0\]: expected a rotation \(orthonormal, determinant \+1\)"):
        bev_runtime(images, k, np.zeros_like(e))
    mirrored = e.copy()
    mirrored[0, 1, :3, 0] *= -1  # a reflection, not a rotation
    with pytest.raises(InputError, match=r"extrinsics\[0, 1\]: expected a rotation .* det -1"):
        bev_runtime(images, k, mirrored)
    with pytest.raises(InputError, match=r"expected at least one frame in dim 0 \(B >= 1\), found B = 0"):
        bev_runtime(images[:0], k[:0], e[:0])
    assert bev_runtime(images, k, e).objects_3d.boxes.shape[0] == 2  # the real calibration passes


def test_intrinsics_of_another_image_size_are_refused(bev_runtime, make_batch) -> None:
    # The commonest calibration mistake: K of the camera's full resolution (nuScenes: 1600 x 900) with frames
    # resized to the model's input. It is a valid pinhole K, so it ran, and every voxel projected outside the
    # image: the bird's-eye-view output was finite and empty.
    images = _images(b=2, n=2)
    batch = make_batch(2)
    k, e = batch["intrinsics"].numpy(), batch["extrinsics"].numpy()
    full_res = np.tile(np.array([[1266.4, 0.0, 816.3], [0.0, 1266.4, 491.5], [0.0, 0.0, 1.0]], np.float32),
                       (2, 2, 1, 1))
    with pytest.raises(InputError, match=rf"intrinsics\[0, 0\]: expected the principal point inside the input "
                                         rf"image, 0 <= cx <= {W} and 0 <= cy <= {H} .*found \(cx, cy\) = "
                                         rf"\(816\.3, 491\.5\)") as err:
        bev_runtime(images, full_res, e)
    assert "model.onnx" in str(err.value)
    # Slots the BEV lifting skips (focal <= 1 px: collate's identity padding, uncalibrated lane datasets) and a K
    # for the input pixels pass.
    padded = k.copy()
    padded[:, 1] = np.eye(3)
    uncalibrated = k.copy()
    uncalibrated[:, 1] = [[1.0, 0.0, -5.0], [0.0, 1.0, -3.0], [0.0, 0.0, 1.0]]
    for ok in (k, padded, uncalibrated):
        assert bev_runtime(images, ok, e).objects_3d.boxes.shape[0] == 2


def test_typed_results_and_onnx_decode_match_net_decode(bev_model, bev_runtime, make_batch) -> None:
    net, _ = bev_model
    batch = make_batch(2, batch=3)
    with torch.no_grad():
        want = net.decode(net(batch["images"], batch["intrinsics"], batch["extrinsics"]), (H, W))
    pred = bev_runtime(batch["images"], batch["intrinsics"], batch["extrinsics"])  # torch tensors accepted
    # bf16 calibration (from a model run under autocast) too: numpy has no bf16, it used to be a TypeError
    bf16 = bev_runtime(batch["images"], batch["intrinsics"].bfloat16(), batch["extrinsics"].bfloat16())
    assert bf16.objects_3d.boxes.shape == pred.objects_3d.boxes.shape
    assert pred.lanes_2d.points.shape == (3, 2, 4, 12, 2) and pred.objects_2d.boxes.shape[:2] == (3, 2)
    assert pred.objects_3d.boxes.shape[-1] == 7 and pred.lanes_bev.seg_prob.shape[:2] == (3, 6)
    assert pred.objects_3d.classes.dtype == np.int64 and pred.lanes_bev.valid.dtype == np.bool_
    session = ort.InferenceSession(str(bev_runtime.name), providers=["CPUExecutionProvider"])
    for model in (bev_runtime, session):  # a runtime or a bare onnxruntime session
        got = onnx_decode(model, batch)
        assert list(got) == list(want)
        for key, value in want.items():
            assert got[key].shape == value.shape and got[key].dtype == value.dtype, key
        torch.testing.assert_close(got["lanes_2d.exist"], want["lanes_2d.exist"], atol=1e-4, rtol=0)
        # 1e-3: the random BEV branch's fp32 noise floor (tests/export/conftest.py: fp32_gate)
        torch.testing.assert_close(got["bev.lanes_seg_prob"], want["bev.lanes_seg_prob"], atol=1e-3, rtol=0)


def test_image_only_model_takes_no_calibration_but_checks_it(six_camera_model) -> None:
    assert not six_camera_model.needs_calibration and six_camera_model.camera_names == SIX
    pred = six_camera_model(_images(b=2))
    assert pred.objects_3d is None and pred.lanes_bev is None and pred.objects_2d.scores.shape[:2] == (2, 6)
    with pytest.raises(InputError, match=r"intrinsics: expected shape \(2, 6, 3, 3\)"):
        six_camera_model(_images(b=2), np.zeros((2, 6, 3, 4), np.float32), None)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ONNX model not found"):
        VisionPilotRuntime(tmp_path / "nope.onnx")


@pytest.mark.parametrize(("dtype", "shape"), [(onnx.TensorProto.FLOAT, ["batch", 3, 64, 64]),
                                            (onnx.TensorProto.FLOAT, ["batch", 2, 3, 64, 64]),
                                            (onnx.TensorProto.UINT8, ["batch", 2, 3, "h", "w"])],
                         ids=["yolo", "float-frames", "dynamic-size"])
def test_another_networks_images_input_is_not_taken_for_an_export(tmp_path: Path, dtype: int, shape: list) -> None:
    # YOLOv8's graph input is called 'images' too, float (batch, 3, 640, 640), and has no metadata: an IndexError;
    # a float or dynamically sized 5-D one failed in onnxruntime or int() instead.
    images = onnx.helper.make_tensor_value_info("images", dtype, shape)
    out = onnx.helper.make_tensor_value_info("out", dtype, shape)
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["images"], ["out"])], "det", [images], [out])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), tmp_path / "det.onnx")
    with pytest.raises(ValueError, match=r"det\.onnx: expected graph input 'images' uint8 \(batch, N, 3, H, W\) with "
                                         r"fixed N, H and W, found tensor\(.+\) \['batch', .+\]; not a visionpilot"):
        VisionPilotRuntime(tmp_path / "det.onnx")


def test_metadata_that_disagrees_with_the_graph_is_refused(six_camera_model, tmp_path: Path) -> None:
    # Inputs are checked against the metadata: metadata of another rig let 5-camera 96 x 256 frames through the
    # checks, and onnxruntime failed on them with a shape error deep in the graph.
    model = onnx.load(six_camera_model.name)
    set_metadata(model, {"camera_names": SIX[:5], "input_size": [96, 256]})
    path = save_onnx_atomic(model, tmp_path / "edited.onnx")
    with pytest.raises(ValueError, match=rf"edited\.onnx: the metadata disagrees with the graph \(input 'images' "
                                         rf"\['batch', 6, 3, {H}, {W}\]\): field 'camera_names': expected 6 cameras, "
                                         rf"found 5 \(CAM_FRONT_LEFT.*; field 'input_size': expected \[{H}, {W}\], "
                                         rf"found \[96, 256\]"):
        VisionPilotRuntime(path)
