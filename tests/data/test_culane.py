"""CULane loader: round trip through the writer, official lists, lane selection, bad input, export action, metric."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from visionpilot.cli.data import run
from visionpilot.data.collate import collate_frames
from visionpilot.data.sources._common import FormatError
from visionpilot.data.sources.culane import CULaneSource
from visionpilot.data.sources.synthetic import SyntheticSource
from visionpilot.data.transforms import Resize, affine_camera
from visionpilot.data.vocab import lane_type_index
from visionpilot.data.writers import write_culane
from visionpilot.data.writers.culane import pick_lanes
from visionpilot.evaluation.lane_2d import CULaneF1
from visionpilot.geometry.polylines import interpolate_x_at_y
from visionpilot.paths import config_dir

SIZE = (59, 164)  # CULane's 590 x 1640, a tenth
SPLITS = {"syn-cn-0000": "train", "syn-cn-0001": "val", "syn-cn-0002": "test"}


@pytest.fixture(scope="module")
def culane_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    src = SyntheticSource("front1", regions=["cn"], scenes_per_region=3, frames_per_scene=2, image_size=(90, 160))
    frames = [src.load(i) for i in range(len(src))]
    root = tmp_path_factory.mktemp("culane")
    write_culane(frames, root, splits=SPLITS, image_size=SIZE, max_lanes=None)
    return root, frames


def _expected_camera(frame):  # noqa: ANN001, ANN202
    cam = frame.cameras[0]
    return affine_camera(cam, Resize(SIZE, keep_aspect=True).affine(cam.image_size), SIZE)


def test_round_trip_returns_the_lanes(culane_export: tuple[Path, list]) -> None:
    root, frames = culane_export
    src = CULaneSource(root, image_size=SIZE)
    assert len(src) == 6 and src.camera_names == ["CAM_FRONT"]
    for i, f in enumerate(frames):
        g = src.load(i)
        assert g.frame_id == f"driver_synthetic_cn/{f.scene_id}.MP4/{30 * (i % 2):05d}"
        assert g.scene_id == f"driver_synthetic_cn/{f.scene_id}.MP4" and g.timestamp == pytest.approx(i % 2)
        assert (g.region, g.driving_side, g.labels) == ("cn", "right", frozenset({"lanes_2d"}))
        assert g.meta["list"] == SPLITS[f.scene_id] and g.meta["lane_types"] == "unknown"
        cam, exp = g.cameras[0], _expected_camera(f)
        assert cam.image_size == SIZE and np.abs(cam.image.astype(int) - exp.image.astype(int)).mean() < 6
        painted = [ln for ln in exp.lanes_2d if ln.type != lane_type_index("road_edge")]
        assert 2 <= len(cam.lanes_2d) <= len(painted)
        used = set()
        for lane in cam.lanes_2d:  # every lane lies on its own synthetic lane (to the 3 decimals written)
            assert lane.type == lane_type_index("white_dashed") and (np.diff(lane.points[:, 1]) < 0).all()
            err = [np.nanmax(np.abs(interpolate_x_at_y(p.points, lane.points[:, 1]) - lane.points[:, 0]))
                   for p in painted]
            j = int(np.nanargmin(err))
            assert err[j] < 2e-3 and j not in used
            used.add(j)


def test_official_lists_and_uncalibrated_camera(culane_export: tuple[Path, list]) -> None:
    src = CULaneSource(culane_export[0], image_size=SIZE)
    assert {r.scene_id: src.official_split(r.scene_id) for r in src.index()} == {
        f"driver_synthetic_cn/{s}.MP4": split for s, split in SPLITS.items()}
    assert CULaneSource(culane_export[0], image_size=SIZE, official_splits=False).official_split(
        "driver_synthetic_cn/syn-cn-0001.MP4") is None
    cam = src.load(0).cameras[0]
    np.testing.assert_allclose(cam.intrinsics, [[1, 0, SIZE[1] / 2], [0, 1, SIZE[0] / 2], [0, 0, 1]])
    batch = collate_frames([src.load(0, with_images=True)])
    assert batch["has_lanes_2d"].all() and not batch["has_boxes_3d"].any() and batch["lanes_2d_valid"].any()


def test_four_lanes_nearest_the_ego_like_culane(culane_export: tuple[Path, list], tmp_path: Path) -> None:
    root = write_culane(culane_export[1], tmp_path, image_size=SIZE)  # max_lanes=4
    src = CULaneSource(root, image_size=SIZE)
    for i in range(len(src)):
        lanes = src.load(i, with_images=False).cameras[0].lanes_2d
        bottom = [ln.points[0, 0] for ln in lanes]
        assert len(lanes) <= 4 and bottom == sorted(bottom)
        assert sum(x < SIZE[1] / 2 for x in bottom) <= 2 and sum(x >= SIZE[1] / 2 for x in bottom) <= 2


def test_a_side_with_few_lanes_does_not_give_its_slots_to_the_other() -> None:
    # CULane's four slots are two left and two right of the ego (train_gt.txt's e1..e4); one lane on the left and
    # four on the right keep 1 + 2, not 1 + 3.
    lanes = [np.array([[x, 590.0], [x, 300.0]]) for x in (500.0, 900.0, 1100.0, 1300.0, 1500.0)]
    kept = pick_lanes(lanes, 1640, 4)
    assert [float(p[0, 0]) for p in kept] == [500.0, 900.0, 1100.0]


def test_test_split_scenarios_become_meta(culane_export: tuple[Path, list], tmp_path: Path) -> None:
    root = tmp_path / "c"
    write_culane(culane_export[1][:2], root, image_size=SIZE)
    (root / "list" / "test_split").mkdir()
    (root / "list" / "test_split" / "test8_night.txt").write_text("/driver_synthetic_cn/syn-cn-0000.MP4/00030.jpg\n")
    src = CULaneSource(root, image_size=SIZE)
    assert [src.load(i, with_images=False).meta.get("category") for i in range(2)] == [None, "night"]


def test_culane_f1_of_the_labels_against_themselves(culane_export: tuple[Path, list]) -> None:
    """What visionpilot-eval feeds CULaneF1 for a CULane frame: its lanes_2d, at the image size."""
    src = CULaneSource(culane_export[0], image_size=SIZE)
    metric = CULaneF1(image_size=SIZE)
    lanes = [[ln.points for ln in src.load(i, with_images=False).cameras[0].lanes_2d] for i in range(len(src))]
    metric.update(lanes, lanes)
    assert float(metric.compute()["lane_f1"]) == pytest.approx(1.0)


# -- bad input -------------------------------------------------------------------------------------------------


def _copy(culane_export: tuple[Path, list], tmp_path: Path) -> Path:
    root = tmp_path / "c"
    write_culane(culane_export[1], root, splits=SPLITS, image_size=SIZE)
    return root


def test_bad_input_names_file_line_and_field(culane_export: tuple[Path, list], tmp_path: Path) -> None:
    root = _copy(culane_export, tmp_path)
    with pytest.raises(FormatError, match=r"list/extra.txt not found"):
        CULaneSource(root, lists=["train", "extra"], image_size=SIZE).index()
    label = root / "driver_synthetic_cn/syn-cn-0000.MP4/00030.lines.txt"
    label.write_text("10.5 58 12.0 57 \n12.5 58 abc 57\n")
    with pytest.raises(FormatError, match=r"00030.lines.txt: line 2: field 'x y' pairs must be numbers, found 'abc'"):
        CULaneSource(root, image_size=SIZE).load(1)
    label.write_text("10.5 58 12.0 \n")
    with pytest.raises(FormatError, match=r"00030.lines.txt: line 1: field 'x y' pairs must hold an even count"):
        CULaneSource(root, image_size=SIZE).load(1)
    label.write_text("10.5 58 12.0 57 \n30.0 58 \n")  # a one-point line is not a lane (the official evaluator)
    assert len(CULaneSource(root, image_size=SIZE).load(1).cameras[0].lanes_2d) == 1
    (root / "driver_synthetic_cn/syn-cn-0001.MP4/00000.jpg").unlink()
    with pytest.raises(FormatError, match=r"list/val.txt: line 1: image file .*syn-cn-0001.MP4/00000.jpg not found"):
        CULaneSource(root, image_size=SIZE).index()
    with pytest.raises(FormatError, match=r"must be 1640x590 \(width x height\), found 164x59"):
        CULaneSource(root, lists=["train"]).load(0)
    # A path that climbs out of the root is refused, even where an image exists there.
    (root / "list" / "extra.txt").write_text("/driver_synthetic_cn/../driver_synthetic_cn/syn-cn-0000.MP4/00030.jpg\n")
    with pytest.raises(FormatError, match=r"list/extra.txt: line 1: field 'image' must be a path inside the dataset "
                                          r"root, without '\.\.', found 'driver_synthetic_cn/\.\./"):
        CULaneSource(root, lists=["extra"], image_size=SIZE).index()


def test_an_image_in_two_splits_lists_is_an_error_naming_both(culane_export: tuple[Path, list],
                                                                tmp_path: Path) -> None:
    root = _copy(culane_export, tmp_path)
    leaked = "/driver_synthetic_cn/syn-cn-0000.MP4/00030.jpg"  # train.txt line 2
    with open(root / "list" / "val.txt", "a") as f:
        f.write(f"{leaked}\n")
    for on_error in ("raise", "skip"):  # a conflict between lists, not a bad frame: skip mode cannot resolve it
        with pytest.raises(FormatError, match=r"list/val.txt: line 3: field 'image' 'driver_synthetic_cn/syn-cn-0000"
                                              r".MP4/00030.jpg' must be in the lists of one split only, found it in "
                                              r"val \(val.txt\) and in train \(.*list/train.txt line 2\)"):
            CULaneSource(root, image_size=SIZE, on_error=on_error).index()
    (root / "list" / "train_gt.txt").write_text((root / "list" / "train.txt").read_text())
    src = CULaneSource(root, lists=["train", "train_gt"], image_size=SIZE)  # one split twice: read once
    assert len(src.index()) == 2


def test_a_clip_spread_over_two_splits_warns(culane_export: tuple[Path, list], tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    root = _copy(culane_export, tmp_path)
    train = (root / "list" / "train.txt").read_text().split()
    (root / "list" / "train.txt").write_text(f"{train[0]}\n")
    with open(root / "list" / "val.txt", "a") as f:
        f.write(f"{train[1]}\n")  # the clip's second frame in val
    with caplog.at_level("WARNING", logger="visionpilot.data.sources.culane"):
        src = CULaneSource(root, image_size=SIZE)
        assert len(src.index()) == 6
    assert src.official_split("driver_synthetic_cn/syn-cn-0000.MP4") == "train"
    assert "1 clip(s) have images in the lists of different splits" in caplog.text
    assert "clip 'driver_synthetic_cn/syn-cn-0000.MP4'" in caplog.text and "val.txt" in caplog.text


def test_skip_mode_counts_and_reports(culane_export: tuple[Path, list], tmp_path: Path) -> None:
    root = _copy(culane_export, tmp_path)
    (root / "driver_synthetic_cn/syn-cn-0000.MP4/00030.lines.txt").write_text("1 2 3\n")
    (root / "driver_synthetic_cn/syn-cn-0002.MP4/00000.jpg").unlink()
    src = CULaneSource(root, image_size=SIZE, on_error="skip")
    assert len(src.index()) == 4
    report = src.skipped
    assert report["skipped"] == 2 and report["of"] == 6 and report["reasons"]["field 'x y'"] == 1
    assert {e["what"] for e in report["examples"]} == {"train.txt line 2", "test.txt line 1"}


def test_export_action_writes_culane(tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="data", overrides=[
            f"paths.output_dir={tmp_path}", "action=export", "format=culane", "rig=front1", "region=cn",
            "data.image_size=[90,160]", "data.source.scenes_per_region=3", "data.source.frames_per_scene=1",
            "data.num_workers=0", f"export.image_size=[{SIZE[0]},{SIZE[1]}]"])
    out = run(cfg)
    assert out["frames"] == 3 and out["regions"] == ["cn"]
    manifest = json.loads((tmp_path / "splits.json").read_text())["splits"]
    src = CULaneSource(tmp_path / "culane", image_size=SIZE)
    for ref in src.index():  # the lists hold the manifest's splits
        scene = ref.scene_id.split("/")[1][: -len(".MP4")]
        assert scene in manifest[src.official_split(ref.scene_id)]["cn"]
    with pytest.raises(ValueError, match=r"format=culane: the format holds regions \['cn'\].*\['gb'\]"):
        cfg.data.regions = ["gb"]
        run(cfg)
