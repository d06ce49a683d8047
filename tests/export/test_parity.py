"""The parity comparison's decision rules on hand-made outputs: positions in their own units, boxes by IoU."""

from __future__ import annotations

import math

import numpy as np
import pytest

from visionpilot.export.parity import (
    RAW_PREFIX,
    ParityError,
    compare,
    decoded_agreement,
    failures,
    raise_on_failure,
    tolerance_for,
)
from visionpilot.export.pipeline import summary

INT8 = tolerance_for("int8")


def _image_detections(boxes: list[list[float]], classes: list[int] | None = None) -> dict[str, np.ndarray]:
    k = len(boxes)
    return {"objects_2d.boxes": np.array([[boxes]], np.float32),  # (B=1, N=1, K, 4)
            "objects_2d.scores": np.full((1, 1, k), 0.9, np.float32),
            "objects_2d.classes": np.array([[classes if classes is not None else [0] * k]], np.int64)}


def test_image_boxes_agree_by_iou_wherever_they_are_in_the_image() -> None:
    # The same 3 px shift of a 60 px box at the left edge and at the right edge: same object (IoU 0.9) both times.
    # A coordinate tolerance relative to the coordinate's value (0.1 + 0.1 * 5 px at the left edge) refused it.
    ref = _image_detections([[5, 20, 65, 80], [190, 20, 250, 80]])
    got = _image_detections([[8, 20, 68, 80], [187, 20, 247, 80]])
    agreement, compared = decoded_agreement(ref, got, INT8)
    assert compared["objects_2d.boxes"] == 2 and agreement["objects_2d.boxes"] == 1.0
    # A 4 px box moved by 3 px is a different box (IoU 1/7), whatever its position.
    small_ref, small_got = _image_detections([[200, 40, 204, 44]]), _image_detections([[203, 40, 207, 44]])
    assert decoded_agreement(small_ref, small_got, INT8)[0]["objects_2d.boxes"] == 0.0
    # The right box with the wrong class does not count; nor does a reference box ONNX dropped (padding -1).
    assert decoded_agreement(ref, _image_detections([[5, 20, 65, 80], [190, 20, 250, 80]], [0, 1]),
                             INT8)[0]["objects_2d.boxes"] == 0.5
    dropped = _image_detections([[5, 20, 65, 80], [0, 0, 0, 0]], [0, -1])
    assert decoded_agreement(ref, dropped, INT8)[0]["objects_2d.boxes"] == 0.5


def test_boxes_clipped_away_agree_with_empty_boxes_only() -> None:
    """An untrained head's box entirely outside the image is clipped to zero area in both runtimes: the same
    nothing, where IoU (0/0) called it a disagreement; an empty box still does not match a real one."""
    ref = _image_detections([[256, 10, 256, 50], [0, 96, 40, 96]])
    empty = _image_detections([[256, 12, 256, 49], [0, 96, 41, 96]])
    assert decoded_agreement(ref, empty, INT8)[0]["objects_2d.boxes"] == 1.0
    real = _image_detections([[250, 10, 256, 50], [0, 90, 40, 96]])
    assert decoded_agreement(ref, real, INT8)[0]["objects_2d.boxes"] == 0.0
    assert decoded_agreement(real, empty, INT8)[0]["objects_2d.boxes"] == 0.0


def test_order_of_detections_does_not_matter_and_low_scores_are_not_compared() -> None:
    ref = _image_detections([[10, 10, 50, 50], [100, 10, 140, 50]])
    ref["objects_2d.scores"][..., 1] = 0.1  # below score_threshold: not compared
    got = _image_detections([[300, 10, 340, 50], [10, 10, 50, 50]])  # the confident one, in another slot
    agreement, compared = decoded_agreement(ref, got, INT8)
    assert compared["objects_2d.boxes"] == 1 and agreement["objects_2d.boxes"] == 1.0


def test_detection_scores_are_compared_with_their_matched_detection_not_by_place_in_the_list() -> None:
    # Top-4 by score: a confident car and three low peaks. In ONNX a near-tie made one more low peak (0.095): the
    # sorted list shifts by one place after it, which a position-by-position comparison called 2 of 4 different.
    ref = _image_detections([[10, 10, 50, 50], [100, 10, 140, 50], [150, 10, 190, 50], [200, 10, 240, 50]])
    ref["objects_2d.scores"][...] = [0.8, 0.1, 0.09, 0.08]
    got = _image_detections([[10, 10, 50, 50], [100, 10, 140, 50], [60, 60, 90, 90], [150, 10, 190, 50]])
    got["objects_2d.scores"][...] = [0.8, 0.1, 0.095, 0.09]
    agreement, compared = decoded_agreement(ref, got, tolerance_for("fp32"))
    assert compared["objects_2d.scores"] == 1 and agreement["objects_2d.scores"] == 1.0
    assert agreement["objects_2d.boxes"] == 1.0
    # The confident detection's own score off by 0.01: a real difference for fp32 (1e-3), not for int8 (0.1).
    got["objects_2d.scores"][..., 0] = 0.81
    assert decoded_agreement(ref, got, tolerance_for("fp32"))[0]["objects_2d.scores"] == 0.0
    assert decoded_agreement(ref, got, INT8)[0]["objects_2d.scores"] == 1.0
    # ... and its score on another box of the list does not rescue it.
    got["objects_2d.scores"][..., 0], got["objects_2d.scores"][..., 1] = 0.3, 0.8
    assert decoded_agreement(ref, got, INT8)[0]["objects_2d.scores"] == 0.0


def _bev_detections(box: list[float]) -> dict[str, np.ndarray]:
    return {"bev.objects_boxes": np.array([[box]], np.float32), "bev.objects_scores": np.array([[0.8]], np.float32),
            "bev.objects_classes": np.array([[0]], np.int64)}


@pytest.mark.parametrize(("shift", "agrees"), [((0.3, 0.2, 0.0), True), ((0.0, 0.6, 0.0), False),
                                                ((0.0, 0.0, 0.7), False)])
def test_bev_boxes_agree_by_centre_distance_in_metres(shift: tuple[float, float, float], agrees: bool) -> None:
    # 40 m ahead: a tolerance relative to the coordinate (0.1 * 40 m) would have accepted metres of error.
    ref = [40.0, -3.0, 0.8, 4.5, 1.9, 1.6, math.pi - 0.02]
    got = [ref[0] + shift[0], ref[1] + shift[1], ref[2] + shift[2], 4.6, 1.85, 1.6, -math.pi + 0.03]  # yaw wraps
    agreement, _ = decoded_agreement(_bev_detections(ref), _bev_detections(got), INT8)
    assert agreement["bev.objects_boxes"] == (1.0 if agrees else 0.0)


def test_bev_box_size_and_yaw_are_compared_too() -> None:
    ref = [10.0, 2.0, 0.8, 4.5, 1.9, 1.6, 0.5]
    assert decoded_agreement(_bev_detections(ref), _bev_detections([*ref[:3], 6.0, 1.9, 1.6, 0.5]),
                             INT8)[0]["bev.objects_boxes"] == 0.0  # length 4.5 -> 6 m
    assert decoded_agreement(_bev_detections(ref), _bev_detections([*ref[:6], 0.9]),
                             INT8)[0]["bev.objects_boxes"] == 0.0  # yaw off by 0.4 rad


def _lanes(points: np.ndarray, stem: str) -> dict[str, np.ndarray]:
    s, r = points.shape[:2]
    exist = "exist" if stem == "lanes_2d." else "scores"
    valid = "points_valid" if stem == "lanes_2d." else "valid"
    return {stem + "points": points[None].astype(np.float32), stem + exist: np.array([[0.9] * s], np.float32),
            stem + valid: np.ones((1, s, r), bool)}


def test_lane_points_agree_within_a_distance_in_their_own_unit() -> None:
    rows = np.linspace(50, 90, 5)
    image_ref = np.stack([np.full(5, 230.0), rows], -1)[None]  # one lane near the right edge, 5 rows
    image_got = image_ref.copy()
    image_got[0, :3, 0] += 1.5   # within 2 px
    image_got[0, 3:, 0] += 4.0   # not (a relative tolerance gave 0.1 + 0.1 * 230 = 23 px)
    agreement, compared = decoded_agreement(_lanes(image_ref, "lanes_2d."), _lanes(image_got, "lanes_2d."), INT8)
    assert compared["lanes_2d.points"] == 5 and agreement["lanes_2d.points"] == pytest.approx(0.6)

    bev_ref = np.stack([np.linspace(5, 45, 5), np.full(5, 1.8), np.zeros(5)], -1)[None]  # (S=1, X=5, 3) metres
    bev_got = bev_ref.copy()
    bev_got[0, -1, 1] += 1.0  # 45 m ahead, 1 m sideways: another lane position, not rounding
    agreement, _ = decoded_agreement(_lanes(bev_ref, "bev.lanes_"), _lanes(bev_got, "bev.lanes_"), INT8)
    assert agreement["bev.lanes_points"] == pytest.approx(0.8)


def test_points_of_absent_lanes_and_invalid_rows_are_not_compared() -> None:
    ref = _lanes(np.zeros((2, 3, 2)), "lanes_2d.")
    ref["lanes_2d.exist"][0, 1] = 0.2          # slot 1 does not exist
    ref["lanes_2d.points_valid"][0, 0, 2] = False  # slot 0, row 2 is not part of the lane
    got = {k: v.copy() for k, v in ref.items()}
    got["lanes_2d.points"][0, 1] += 50.0       # anything in the absent slot
    got["lanes_2d.points"][0, 0, 2] += 50.0    # anything on the invalid row
    agreement, compared = decoded_agreement(ref, got, INT8)
    assert compared["lanes_2d.points"] == 2 and agreement["lanes_2d.points"] == 1.0


def test_compare_gates_on_the_lowest_agreement() -> None:
    ref = _image_detections([[5, 20, 65, 80], [190, 20, 250, 80]])
    got = _image_detections([[5, 20, 65, 80], [120, 20, 180, 80]])
    report = compare([ref], [got], INT8)
    assert report["agreement"]["objects_2d.boxes"] == 0.5 and not report["decoded_agree"] and not report["passed"]
    assert report["tolerance"]["box_iou"] == 0.5
    assert compare([ref], [ref], tolerance_for("fp32"))["passed"]


def test_fp32_raw_gate_is_absolute_up_to_unit_scale_and_relative_beyond() -> None:
    fp32 = tolerance_for("fp32")
    ref = {f"{RAW_PREFIX}probs": np.full((1, 4), 0.5, np.float32), f"{RAW_PREFIX}logits": np.full((1, 4), 8.0, np.float32)}
    # 3e-4 off on logits of 8 is 4e-5 relative (under the 8e-4 gate); the same on values of 0.5 is not.
    got = {f"{RAW_PREFIX}probs": ref[f"{RAW_PREFIX}probs"] + 3e-4, f"{RAW_PREFIX}logits": ref[f"{RAW_PREFIX}logits"] + 3e-4}
    report = compare([ref], [got], fp32)
    assert report["raw_gate"][f"{RAW_PREFIX}logits"] == pytest.approx(8e-4)
    assert report["raw_gate"][f"{RAW_PREFIX}probs"] == pytest.approx(1e-4)
    assert not report["raw_within_tolerance"]
    assert failures(report) == [f"{RAW_PREFIX}probs: max abs diff 0.0003 > 0.0001 (0.0001 x max(1, max |output|))"]
    got[f"{RAW_PREFIX}probs"] = ref[f"{RAW_PREFIX}probs"] + 5e-5
    report = compare([ref], [got], fp32)
    assert report["passed"]
    # The console line names the output closest to its own gate, not the unscaled base gate.
    result = {"precision": "fp32", "model": "model.onnx", "size_mb": 1.0, "opset": 17, "inputs": [], "outputs": [],
              "seconds": 1.0, "parity": {**report, "frames": 1, "regions": ["us"]}}
    line = summary(result).splitlines()[1]
    assert f"closest to its gate: {RAW_PREFIX}probs 5.00e-05 <= 1.00e-04" in line, line
    report = compare([ref], [got], tolerance_for("int8"))
    line = summary({**result, "precision": "int8", "parity": {**report, "frames": 1, "regions": ["us"]}})
    assert "(not gated at int8)" in line.splitlines()[1]
    # A NaN output (parity.fail=false lets such an export through) is named beyond its gate, not hidden behind
    # the output closest to its own (NaN ratios never win a max)
    got[f"{RAW_PREFIX}logits"] = np.full((1, 4), np.nan, np.float32)
    report = compare([ref], [got], fp32)
    line = summary({**result, "parity": {**report, "frames": 1, "regions": ["us"]}}).splitlines()[1]
    assert f"beyond its gate: {RAW_PREFIX}logits nan" in line, line


def test_unknown_box_layout_is_a_clear_error() -> None:
    ref = {"x.boxes": np.zeros((1, 1, 5)), "x.scores": np.ones((1, 1)), "x.classes": np.zeros((1, 1), np.int64)}
    with pytest.raises(ValueError, match=r"'x\.boxes' has 5 values per box; expected 4"):
        decoded_agreement(ref, ref, INT8)


def test_a_nan_raw_output_fails_the_gate_loudly() -> None:
    # NaN compares False with everything: the gate failed (passed: false) but no reason was given, so
    # raise_on_failure did not raise and the export ended quietly with model.failed.onnx and no model.onnx.
    ref = {f"{RAW_PREFIX}logits": np.full((1, 4), 2.0, np.float32)}
    got = {f"{RAW_PREFIX}logits": np.array([[2.0, np.nan, 2.0, 2.0]], np.float32)}
    report = compare([ref], [got], tolerance_for("fp32"))
    assert not report["passed"]
    assert [line.split(":")[0] for line in failures(report)] == [f"{RAW_PREFIX}logits"]
    with pytest.raises(ParityError, match=r"raw/logits: max abs diff nan"):
        raise_on_failure(report, "test")


@pytest.mark.parametrize(("field", "value"), [("atol", "loose"), ("min_agreement", math.nan), ("box_iou", None),
                                              ("position_px", True)])
def test_tolerance_overrides_must_be_numbers(field: str, value: object) -> None:
    # +parity.tolerance.atol=loose reached the comparison after the export and failed in a numpy ufunc; a NaN
    # min_agreement failed the gate naming no output (NaN compares False), so the export ended without an error.
    with pytest.raises(ValueError, match=rf"parity tolerance: field '{field}' must be a number, found "):
        tolerance_for("fp32", {field: value})
    assert tolerance_for("int8", {"raw_max_abs": None, "min_agreement": 1.1, "position_px": 3}).position_px == 3
