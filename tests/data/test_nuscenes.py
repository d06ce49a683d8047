"""nuScenes loader: round trip through the writer, a hand-checked real calibration, splits, bad input, CLI, training.

Two fixtures in the exact format: the synthetic world exported by ``write_nuscenes`` (round trip), and a tiny
dataset written row by row here, independently of the writer, around nuScenes' published CAM_FRONT calibration.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from visionpilot.cli.data import run
from visionpilot.data.collate import collate_frames
from visionpilot.data.sources._common import FormatError
from visionpilot.data.sources.nuscenes import NuScenesSource
from visionpilot.data.sources.synthetic import SyntheticSource
from visionpilot.data.vocab import class_index, lane_type_index
from visionpilot.data.writers import write_nuscenes
from visionpilot.geometry.boxes import project_box_2d
from visionpilot.geometry.camera import project_points
from visionpilot.geometry.frames import quaternion_to_rotation
from visionpilot.paths import config_dir

SIZE = (90, 160)


@pytest.fixture(scope="module")
def synthetic_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """3 scenes x 2 frames in US and SG from the synthetic world, written as nuScenes; the frames kept."""
    src = SyntheticSource("nuscenes6", regions=["us", "sg"], scenes_per_region=3, frames_per_scene=2,
                          image_size=SIZE)
    frames = [src.load(i) for i in range(len(src))]
    root = tmp_path_factory.mktemp("nuscenes")
    write_nuscenes(frames, root)
    return root, frames


def _match_lane(points: np.ndarray, candidates: list, lane_type: int) -> float:
    """Largest distance from ``points`` to the nearest same-type candidate polyline's vertices (inf if none)."""
    best = np.inf
    for c in candidates:
        if c.type == lane_type and len(c.points) == len(points):
            best = min(best, float(np.abs(c.points - points).max()))
    return best


def test_round_trip_returns_the_synthetic_labels(synthetic_export: tuple[Path, list]) -> None:
    root, frames = synthetic_export
    src = NuScenesSource(root)
    assert src.version == "v1.0-mini" and src.camera_names == [c.name for c in frames[0].cameras]
    loaded = {(f.scene_id, round(f.timestamp, 3)): f for f in (src.load(i) for i in range(len(src)))}
    assert len(loaded) == len(frames) == 12
    for f in frames:
        g = loaded[(f.scene_id, round(f.timestamp, 3))]
        assert (g.region, g.driving_side, g.source) == (f.region, f.driving_side, "nuscenes")
        assert g.labels == {"boxes_3d", "lanes_3d", "boxes_2d", "lanes_2d"}
        b, c = f.boxes_3d, g.boxes_3d
        assert len(b) == len(c) > 0
        np.testing.assert_allclose(c.centers, b.centers, atol=1e-9)
        np.testing.assert_allclose(c.sizes, b.sizes, atol=1e-9)  # [l, w, h] -> nuScenes [w, l, h] -> [l, w, h]
        np.testing.assert_allclose(np.angle(np.exp(1j * (c.yaws - b.yaws))), 0.0, atol=1e-9)
        np.testing.assert_array_equal(c.classes, b.classes)
        # One instance per synthetic track, stable over the scene.
        assert len(set(c.track_ids.tolist())) == len(set(b.track_ids.tolist()))
        for cam_f, cam_g in zip(f.cameras, g.cameras):
            assert cam_g.name == cam_f.name and cam_g.image_size == SIZE
            np.testing.assert_allclose(cam_g.intrinsics, cam_f.intrinsics, atol=1e-9)
            np.testing.assert_allclose(cam_g.extrinsics, cam_f.extrinsics, atol=1e-9)
            assert np.abs(cam_g.image.astype(int) - cam_f.image.astype(int)).mean() < 4.0  # JPEG q95
            # Derived 2D boxes are the projections of the 3D boxes, rows pointing at them.
            exp, vis = project_box_2d(b.centers, b.sizes, b.yaws, cam_f.intrinsics, cam_f.extrinsics, SIZE)
            np.testing.assert_allclose(cam_g.boxes_2d, exp[cam_g.box_ids_2d], atol=1e-3)
            assert vis[cam_g.box_ids_2d].all()
        # Every painted lane line comes back with its type, point for point; road edges are not in the map.
        painted = [ln for ln in f.lanes_3d if ln.type != lane_type_index("road_edge")]
        assert len(g.lanes_3d) == len(painted)
        for ln in painted:
            assert _match_lane(ln.points, g.lanes_3d, ln.type) < 1e-6


def test_export_has_what_the_devkit_opens_and_keeps_hidden_boxes_hidden(tmp_path: Path) -> None:
    src = SyntheticSource("nuscenes6", regions=["us"], scenes_per_region=2, frames_per_scene=1, image_size=SIZE)
    hidden, unknown = src.load(0), src.load(1)
    for cam in hidden.cameras:  # every camera reports every box it sees as fully hidden
        cam.visibility_2d = np.zeros(len(cam.box_ids_2d), np.float32)
    for cam in unknown.cameras:  # no camera reports visibilities
        cam.visibility_2d = np.zeros(0, np.float32)
    root = write_nuscenes([hidden, unknown], tmp_path)
    # nuscenes-devkit's NuScenes() asserts that every map row's semantic prior mask exists (MapMask.__init__)
    for row in json.loads((root / "v1.0-mini" / "map.json").read_text()):
        assert cv2.imread(str(root / row["filename"]), cv2.IMREAD_UNCHANGED) is not None
    rows = json.loads((root / "v1.0-mini" / "sample_annotation.json").read_text())  # frame by frame, box by box
    seen = set().union(*(set(cam.box_ids_2d.tolist()) for cam in hidden.cameras))
    n = len(hidden.boxes_3d)
    assert len(rows) == n + len(unknown.boxes_3d) and seen
    # hidden (0 %) -> level 1, 0-40 % (it was written as 80-100 %); no camera reporting: unknown -> level 4
    assert [r["visibility_token"] for r in rows[:n]] == ["1" if i in seen else "4" for i in range(n)]
    assert {r["visibility_token"] for r in rows[n:]} == {"4"}


def test_frames_batch_with_all_cameras(synthetic_export: tuple[Path, list]) -> None:
    src = NuScenesSource(synthetic_export[0])
    batch = collate_frames([src.load(0), src.load(1)])
    assert batch["images"].shape == (2, 6, 3, *SIZE) and batch["camera_mask"].all()
    assert batch["has_boxes_3d"].all() and batch["has_lanes_3d"].all() and batch["boxes_3d_mask"].any()


# -- a dataset written by hand around nuScenes' published CAM_FRONT calibration ---------------------------------

# scene-0061 (v1.0-mini), vehicle n015: calibrated_sensor of CAM_FRONT as published.
CAM_FRONT = {"translation": [1.70079118954, 0.0159456324149, 1.51095763913],
             "rotation": [0.4998015430569128, -0.5030316162024876, 0.4997798114386805, -0.49737083824542755],
             "camera_intrinsic": [[1266.417203046554, 0.0, 816.2670197447984],
                                  [0.0, 1266.417203046554, 491.50706579294757], [0.0, 0.0, 1.0]]}
EGO_T = np.array([411.3, 1180.9, 0.0])
EGO_YAW = 1.2


def _q_yaw(yaw: float) -> list[float]:
    return [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))]


def _to_global(x: float, y: float, z: float, dx: float = 0.0) -> list[float]:
    c, s = np.cos(EGO_YAW), np.sin(EGO_YAW)
    return (EGO_T + [c * (x + dx) - s * y, s * (x + dx) + c * y, z]).tolist()


def _hand_tables() -> dict[str, list[dict[str, Any]]]:
    """Two key frames of one scene: the ego pose, a car 10 m ahead (moving 2 m forward by the second), a pedestrian,
    a barrier (not one of our classes) and a pedestrian without lidar points."""
    ego = {"rotation": _q_yaw(EGO_YAW)}
    anns, samples, data, poses = [], [], [], []
    for k in range(2):
        stamp = 1533151603547590 + 500_000 * k
        samples.append({"token": f"sa{k}", "timestamp": stamp, "prev": f"sa{k - 1}" if k else "",
                        "next": "sa1" if k == 0 else "", "scene_token": "sc0"})
        for ch in ("CAM_FRONT", "LIDAR_TOP"):
            poses.append({"token": f"ep-{ch}-{k}", "timestamp": stamp, "translation": EGO_T.tolist(), **ego})
            data.append({"token": f"sd-{ch}-{k}", "sample_token": f"sa{k}", "ego_pose_token": f"ep-{ch}-{k}",
                         "calibrated_sensor_token": f"cs-{ch}", "timestamp": stamp, "is_key_frame": True,
                         "fileformat": "jpg" if ch == "CAM_FRONT" else "pcd",
                         "height": 900 if ch == "CAM_FRONT" else 0, "width": 1600 if ch == "CAM_FRONT" else 0,
                         "filename": f"samples/{ch}/n015-2018-07-24-11-22-45+0800__{ch}__{stamp}."
                                     + ("jpg" if ch == "CAM_FRONT" else "pcd.bin"), "prev": "", "next": ""})
        anns += [
            {"token": f"ann-car-{k}", "sample_token": f"sa{k}", "instance_token": "inst-car", "visibility_token": "4",
             "attribute_tokens": ["attr-moving"], "translation": _to_global(10.0, 0.0, 0.8, dx=2.0 * k),
             "size": [1.9, 4.5, 1.6], "rotation": _q_yaw(EGO_YAW + 0.3), "prev": "ann-car-0" if k else "",
             "next": "" if k else "ann-car-1", "num_lidar_pts": 25, "num_radar_pts": 2},
            {"token": f"ann-ped-{k}", "sample_token": f"sa{k}", "instance_token": "inst-ped", "visibility_token": "2",
             "attribute_tokens": [], "translation": _to_global(6.0, -3.0, 0.9), "size": [0.6, 0.7, 1.8],
             "rotation": _q_yaw(EGO_YAW), "prev": "", "next": "", "num_lidar_pts": 3, "num_radar_pts": 0},
            {"token": f"ann-bar-{k}", "sample_token": f"sa{k}", "instance_token": "inst-bar", "visibility_token": "3",
             "attribute_tokens": [], "translation": _to_global(8.0, 4.0, 0.5), "size": [0.5, 2.0, 1.0],
             "rotation": _q_yaw(EGO_YAW), "prev": "", "next": "", "num_lidar_pts": 9, "num_radar_pts": 0},
            {"token": f"ann-far-{k}", "sample_token": f"sa{k}", "instance_token": "inst-far", "visibility_token": "1",
             "attribute_tokens": [], "translation": _to_global(40.0, 9.0, 0.9), "size": [0.6, 0.7, 1.8],
             "rotation": _q_yaw(EGO_YAW), "prev": "", "next": "", "num_lidar_pts": 0, "num_radar_pts": 0},
        ]
    inst = [{"token": f"inst-{n}", "category_token": f"cat-{c}", "nbr_annotations": 2,
             "first_annotation_token": f"ann-{n}-0", "last_annotation_token": f"ann-{n}-1"}
            for n, c in (("car", "car"), ("ped", "ped"), ("bar", "bar"), ("far", "ped"))]
    return {
        "scene": [{"token": "sc0", "log_token": "log0", "nbr_samples": 2, "first_sample_token": "sa0",
                   "last_sample_token": "sa1", "name": "scene-0103", "description": "hand-written"}],
        "sample": samples, "sample_data": data, "ego_pose": poses, "sample_annotation": anns, "instance": inst,
        "calibrated_sensor": [{"token": "cs-CAM_FRONT", "sensor_token": "sen-cam", **CAM_FRONT},
                              {"token": "cs-LIDAR_TOP", "sensor_token": "sen-lidar", "translation": [0.94, 0.0, 1.84],
                               "rotation": [0.70779551, -0.00649224, 0.01064621, -0.70630731],
                               "camera_intrinsic": []}],
        "sensor": [{"token": "sen-cam", "channel": "CAM_FRONT", "modality": "camera"},
                   {"token": "sen-lidar", "channel": "LIDAR_TOP", "modality": "lidar"}],
        "log": [{"token": "log0", "logfile": "n015-2018-07-24-11-22-45+0800", "vehicle": "n015",
                 "date_captured": "2018-07-24", "location": "boston-seaport"}],
        "category": [{"token": "cat-car", "name": "vehicle.car", "description": "cars"},
                     {"token": "cat-ped", "name": "human.pedestrian.adult", "description": "adults"},
                     {"token": "cat-bar", "name": "movable_object.barrier", "description": "barriers"}],
        "attribute": [{"token": "attr-moving", "name": "vehicle.moving", "description": "moving"}],
        "visibility": [{"token": str(i), "level": lv, "description": lv}
                       for i, lv in enumerate(("v0-40", "v40-60", "v60-80", "v80-100"), start=1)],
    }


def _hand_map() -> dict[str, Any]:
    """A lane divider 1.85 m left of the ego (dashed, unpainted, solid), a road divider 5.5 m left, one far away."""
    nodes, lines = [], []
    for name, pts in (("ld", [(-20, 1.85), (0, 1.85), (20, 1.85), (40, 1.85), (60, 1.85)]),
                      ("rd", [(-30, 5.5), (100, 5.5)]), ("far", [(5000, 0), (5050, 0)])):
        toks = [f"n-{name}-{i}" for i in range(len(pts))]
        nodes += [{"token": t, "x": _to_global(x, y, 0)[0], "y": _to_global(x, y, 0)[1]}
                  for t, (x, y) in zip(toks, pts)]
        lines.append({"token": f"line-{name}", "node_tokens": toks})
    segments = [{"node_token": "n-ld-0", "segment_type": "DOUBLE_DASHED_WHITE"},
                {"node_token": "n-ld-2", "segment_type": "NIL"},
                {"node_token": "n-ld-3", "segment_type": "SINGLE_SOLID_WHITE"}]
    return {"version": "1.3", "canvas_edge": [3000.0, 3000.0], "node": nodes, "line": lines, "polygon": [],
            "lane_divider": [{"token": "ld0", "line_token": "line-ld", "lane_divider_segments": segments},
                             {"token": "ld-far", "line_token": "line-far", "lane_divider_segments": []}],
            "road_divider": [{"token": "rd0", "line_token": "line-rd", "road_segment_token": ""}]}


def _write_hand(root: Path, tables: dict[str, list[dict[str, Any]]] | None = None,
                lane_map: dict[str, Any] | None = None) -> Path:
    tables = _hand_tables() if tables is None else tables
    for name, rows in tables.items():
        (root / "v1.0-mini").mkdir(parents=True, exist_ok=True)
        (root / "v1.0-mini" / f"{name}.json").write_text(json.dumps(rows, indent=1))
    (root / "maps" / "expansion").mkdir(parents=True, exist_ok=True)
    (root / "maps" / "expansion" / "boston-seaport.json").write_text(json.dumps(_hand_map() if lane_map is None
                                                                                else lane_map))
    for row in tables["sample_data"]:
        if row["fileformat"] == "jpg":
            (root / row["filename"]).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / row["filename"]), np.zeros((900, 1600, 3), np.uint8))
    return root


def _hand_source(root: Path, **kwargs: Any) -> NuScenesSource:
    return NuScenesSource(root, cameras=["CAM_FRONT"], **kwargs)


def test_box_ten_metres_ahead_projects_where_the_devkit_puts_it(tmp_path: Path) -> None:
    """By hand, from the published CAM_FRONT calibration (devkit order: box global -> ego -> sensor -> view_points).

    The quaternion [0.49980, -0.50303, 0.49978, -0.49737] gives R (camera -> ego) with rows
    [0.005685, -0.005637, 0.999968], [-0.999984, -0.000837, 0.005680], [0.000805, -0.999984, -0.005641].
    The box centre 10 m ahead, 0.8 m up in the ego frame, minus the camera position [1.70079, 0.01595, 1.51096],
    rotated by R^T: p_cam = (0.062552, 0.664180, 8.302863). view_points (normalize=True): u = 1266.4172 * 0.062552 /
    8.302863 + 816.2670 = 825.8080, v = 1266.4172 * 0.664180 / 8.302863 + 491.5071 = 592.8129.
    """
    src = _hand_source(_write_hand(tmp_path))
    frame = src.load(0)
    cam = frame.cameras[0]
    assert frame.region == "us" and frame.driving_side == "right" and cam.image_size == (900, 1600)
    car = int(np.flatnonzero(frame.boxes_3d.classes == class_index("car"))[0])
    np.testing.assert_allclose(frame.boxes_3d.centers[car], [10.0, 0.0, 0.8], atol=1e-9)
    np.testing.assert_allclose(frame.boxes_3d.sizes[car], [4.5, 1.9, 1.6], atol=1e-12)  # [w, l, h] -> [l, w, h]
    assert frame.boxes_3d.yaws[car] == pytest.approx(0.3, abs=1e-9)
    uv, depth, valid = project_points(frame.boxes_3d.centers[car], cam.intrinsics, cam.extrinsics)
    assert valid and depth == pytest.approx(8.302863, abs=1e-5)
    np.testing.assert_allclose(uv, [825.8080, 592.8129], atol=1e-3)
    # The same through the devkit's own chain (global -> ego pose -> calibrated_sensor -> K), written out here.
    ann = next(a for a in _hand_tables()["sample_annotation"] if a["token"] == "ann-car-0")
    ego_r = quaternion_to_rotation(_q_yaw(EGO_YAW))
    p = ego_r.T @ (np.array(ann["translation"]) - EGO_T)
    p = quaternion_to_rotation(CAM_FRONT["rotation"]).T @ (p - np.array(CAM_FRONT["translation"]))
    view = np.array(CAM_FRONT["camera_intrinsic"]) @ p
    np.testing.assert_allclose(uv, view[:2] / view[2], atol=1e-9)


def test_hand_fixture_classes_velocity_and_map_lanes(tmp_path: Path) -> None:
    src = _hand_source(_write_hand(tmp_path))
    f0, f1 = src.load(0), src.load(1)
    # The barrier is not one of our classes; the pedestrian without lidar/radar points is not a valid box.
    assert sorted(f0.boxes_3d.classes.tolist()) == sorted([class_index("car"), class_index("pedestrian")])
    assert len(NuScenesSource(tmp_path, cameras=["CAM_FRONT"], min_points=0).load(0).boxes_3d) == 3
    car = int(np.flatnonzero(f1.boxes_3d.classes == class_index("car"))[0])
    np.testing.assert_allclose(f1.boxes_3d.velocities[car], [4.0, 0.0], atol=1e-6)  # 2 m in 0.5 s, ego +x
    assert f1.timestamp == pytest.approx(0.5)
    lanes = sorted((ln.type, ln.points[0, 0], ln.points[-1, 0], ln.points[0, 1]) for ln in f0.lanes_3d)
    # Dashed from -20 to 20 m, unpainted (NIL) from 20 to 40 m dropped, solid from 40 to 60 m; the road divider is
    # a US centre line (double yellow) cut to the lane range [-60, 120]; the line 5 km away is not near.
    assert [t for t, *_ in lanes] == sorted([lane_type_index("white_dashed"), lane_type_index("white_solid"),
                                             lane_type_index("double_yellow")])
    for t, x0, x1, y in lanes:
        exp = {lane_type_index("white_dashed"): (-20, 20, 1.85), lane_type_index("white_solid"): (40, 60, 1.85),
               lane_type_index("double_yellow"): (-30, 100, 5.5)}[t]
        np.testing.assert_allclose([x0, x1, y], exp, atol=1e-9)
    assert all(np.abs(ln.points[:, 2]).max() < 1e-9 for ln in f0.lanes_3d)
    assert "lanes_2d" in f0.labels and f0.cameras[0].lanes_2d  # projected into CAM_FRONT


def test_camera_extrinsics_compensate_ego_motion(tmp_path: Path) -> None:
    """A camera exposed 0.25 m later than the lidar: global points still project as the devkit projects them."""
    tables = _hand_tables()
    for row in tables["ego_pose"]:
        if row["token"] == "ep-CAM_FRONT-0":
            row["translation"] = _to_global(0.25, 0.0, 0.0)
    src = _hand_source(_write_hand(tmp_path, tables))
    frame = src.load(0)
    cam = frame.cameras[0]
    car = int(np.flatnonzero(frame.boxes_3d.classes == class_index("car"))[0])
    uv, _, _ = project_points(frame.boxes_3d.centers[car], cam.intrinsics, cam.extrinsics)
    ann = np.array(_to_global(10.0, 0.0, 0.8))
    p = quaternion_to_rotation(_q_yaw(EGO_YAW)).T @ (ann - np.array(_to_global(0.25, 0.0, 0.0)))  # camera's ego
    p = quaternion_to_rotation(CAM_FRONT["rotation"]).T @ (p - np.array(CAM_FRONT["translation"]))
    view = np.array(CAM_FRONT["camera_intrinsic"]) @ p
    np.testing.assert_allclose(uv, view[:2] / view[2], atol=1e-6)
    assert uv[1] > 592.8129 + 1  # nearer than in the lidar's pose: lower in the image


def test_official_splits(tmp_path: Path) -> None:
    src = _hand_source(_write_hand(tmp_path))
    assert src.official_split("scene-0103") == "val" and src.official_split("scene-0061") == "train"
    assert src.official_split("syn-us-0000") is None
    assert _hand_source(tmp_path, official_splits=False).official_split("scene-0103") is None
    src.version = "v1.0-trainval"
    assert src.official_split("scene-0003") == "val" and src.official_split("scene-0001") == "train"
    assert src.official_split("scene-1073") == "val" and src.official_split("scene-1074") == "train"


def test_ego_pose_gives_latitude_longitude_from_the_map_origin(tmp_path: Path) -> None:
    """Map x is metres east and y metres north of the location's published origin (the devkit's export_poses.py)."""
    src = _hand_source(_write_hand(tmp_path / "boston"))
    lat, lon = src.load(0, with_images=False).latlon
    assert src.latlon(0) == (lat, lon)
    # 1180.9 m north and 411.3 m east of (42.336849, -71.057854): 111.32 km per degree of latitude, times cos(lat)
    # per degree of longitude (to 1e-6 degrees, ~0.1 m, over 1.25 km).
    assert lat == pytest.approx(42.336849169438615 + 1180.9 / 111_319.5, abs=1e-6)
    assert lon == pytest.approx(-71.05785369873047 + 411.3 / (111_319.5 * np.cos(np.radians(42.3422))), abs=1e-6)
    # A location without a published origin has no position, unless the source is given one.
    root = _mutated(tmp_path / "new", "log", "log0", "location", "singapore-newtown")
    regions = {"singapore-newtown": "sg"}
    assert _hand_source(root, location_regions=regions).load(0, with_images=False).latlon is None
    moved = _hand_source(root, location_regions=regions, map_origins={"singapore-newtown": [1.3, 103.8]})
    assert moved.latlon(0) == pytest.approx((1.3 + 1180.9 / 111_319.5, 103.8 + 411.3 / 111_290), abs=1e-5)
    with pytest.raises(ValueError, match=r"field 'map_origins.x' must be \[lat, lon\] in degrees, found \[91, 0\]"):
        _hand_source(root, map_origins={"x": [91, 0]})


# -- bad input -------------------------------------------------------------------------------------------------


def _mutated(tmp_path: Path, table: str, token: str, field: str, value: Any) -> Path:
    tables = _hand_tables()
    row = next(r for r in tables[table] if r["token"] == token)
    row[field] = value
    return _write_hand(tmp_path, tables)


def test_bad_input_names_file_token_and_field(tmp_path: Path) -> None:
    root = _write_hand(tmp_path / "missing")
    (root / "v1.0-mini" / "attribute.json").unlink()
    with pytest.raises(FormatError, match=r"attribute.json not found"):
        _hand_source(root).index()

    root = _write_hand(tmp_path / "json")
    (root / "v1.0-mini" / "sample.json").write_text('[\n{"token": "sa0",\n "timestamp": }\n]')
    with pytest.raises(FormatError, match=r"sample.json: line 3, column"):
        _hand_source(root).index()

    root = _mutated(tmp_path / "row", "sample_annotation", "ann-car-0", "size", [1.9, "wide", 1.6])
    with pytest.raises(FormatError, match=r"sample_annotation.json \(token 'ann-car-0'\): field 'size' must be 3 "
                                          r"positive numbers.*found \[1.9, 'wide', 1.6\]"):
        _hand_source(root).index()

    root = _write_hand(tmp_path / "image")
    (root / _hand_tables()["sample_data"][0]["filename"]).unlink()
    with pytest.raises(FormatError, match=r"sample_data.json \(token 'sd-CAM_FRONT-0'\): field 'filename': image "
                                          r"file .*CAM_FRONT.*\.jpg not found"):
        _hand_source(root).index()

    root = _mutated(tmp_path / "category", "category", "cat-ped", "name", "human.pedestrian.spaceman")
    with pytest.raises(FormatError, match=r"category.json \(token 'cat-ped'\): field 'name' must be a nuScenes "
                                          r"category.*found 'human.pedestrian.spaceman'.*'ann-ped-0'"):
        _hand_source(root).index()

    root = _mutated(tmp_path / "location", "log", "log0", "location", "las-vegas-strip")
    with pytest.raises(FormatError, match=r"log.json \(token 'log0'\): field 'location' must be one of"):
        _hand_source(root).index()

    tables = _hand_tables()
    tables["instance"].append(3)
    root = _write_hand(tmp_path / "not-a-row", tables)
    with pytest.raises(FormatError, match=r"instance.json: row \d+: expected a JSON object \(a record with a "
                                          r"'token'\), found int '3'"):
        _hand_source(root).index()

    lane_map = _hand_map()
    del lane_map["line"]
    root = _write_hand(tmp_path / "no-layer", lane_map=lane_map)
    with pytest.raises(FormatError, match=r"boston-seaport.json: layer 'line' is missing \(a map expansion v1.3 "
                                          r"file has layers node, line, lane_divider and road_divider\); found "
                                          r"layers \['canvas_edge', 'lane_divider', 'node'"):
        _hand_source(root).load(0, with_images=False)

    lane_map = _hand_map()
    del lane_map["lane_divider"][0]["lane_divider_segments"][1]["segment_type"]
    root = _write_hand(tmp_path / "no-segment-type", lane_map=lane_map)
    with pytest.raises(FormatError, match=r"field 'lane_divider_segments\[1\].segment_type' is missing"):
        _hand_source(root).load(0, with_images=False)


def test_visibility_is_read_from_the_band_not_the_token(tmp_path: Path) -> None:
    tables = _hand_tables()
    for row in tables["visibility"]:  # an export with its own tokens: the band ('level') carries the meaning
        row["token"] = f"vis-{row['level']}"
    names = {str(i): f"vis-{lv}" for i, lv in enumerate(("v0-40", "v40-60", "v60-80", "v80-100"), start=1)}
    for row in tables["sample_annotation"]:
        row["visibility_token"] = names[row["visibility_token"]]
    frame = _hand_source(_write_hand(tmp_path / "tokens", tables)).load(0, with_images=False)
    seen = {round(float(v), 3) for cam in frame.cameras for v in cam.visibility_2d}
    assert seen and seen <= {0.5, 0.9} and 0.9 in seen  # car v80-100, pedestrian v40-60 (was 1.0 for any token)
    tables["visibility"][3]["level"] = "mostly"  # the car's
    with pytest.raises(FormatError, match=r"visibility.json \(token 'vis-v80-100'\): field 'level' must be a "
                                          r"visibility band like 'v0-40' or 'v80-100', found 'mostly'"):
        _hand_source(_write_hand(tmp_path / "bad", tables)).load(0, with_images=False)


def test_skip_mode_counts_and_reports_skipped_frames(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tables = _hand_tables()
    next(r for r in tables["sample_annotation"] if r["token"] == "ann-ped-1")["rotation"] = "north"
    root = _write_hand(tmp_path, tables)
    with caplog.at_level("WARNING"):
        src = _hand_source(root, on_error="skip")
        refs = src.index()
    assert [r.frame_id for r in refs] == ["sa0"]
    report = src.skipped
    assert report["skipped"] == 1 and report["of"] == 2 and report["reasons"] == {"field 'rotation'": 1}
    assert "ann-ped-1" in report["examples"][0]["error"] and "sample 'sa1'" in report["examples"][0]["what"]
    assert "dropped 1 of 2" in caplog.text
    assert len(src.load(0).boxes_3d) == 2


def test_skip_mode_reads_frames_of_an_unreadable_map_without_lanes(tmp_path: Path) -> None:
    lane_map = _hand_map()
    del lane_map["line"]
    root = _write_hand(tmp_path, lane_map=lane_map)
    src = _hand_source(root, on_error="skip")
    frames = [src.load(i, with_images=False) for i in range(len(src.index()))]
    assert len(frames) == 2 and all("lanes_3d" not in f.labels and not f.lanes_3d for f in frames)
    assert all(len(f.boxes_3d) for f in frames)
    assert [w for w, _ in src.skips.items] == [f"map expansion {root / 'maps' / 'expansion' / 'boston-seaport.json'}"]


# -- entry points -----------------------------------------------------------------------------------------------


def _compose(config: str, tmp_path: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name=config, overrides=[f"paths.output_dir={tmp_path}", *overrides])


def test_stats_reports_frames_per_region(synthetic_export: tuple[Path, list], tmp_path: Path) -> None:
    run(_compose("data", tmp_path, ["action=stats", "data=nuscenes", f"data.root={synthetic_export[0]}",
                                    "split=all", "data.num_workers=0"]))
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert {r: s["frames"] for r, s in stats["regions"].items()} == {"sg": 6, "us": 6}
    assert {r: s["scenes"] for r, s in stats["regions"].items()} == {"sg": 3, "us": 3}
    assert stats["source"] == "nuscenes" and stats["skipped"]["skipped"] == 0
    assert stats["regions"]["us"]["label_kinds"] == {"boxes_2d": 6, "boxes_3d": 6, "lanes_2d": 6, "lanes_3d": 6}


@pytest.mark.slow
def test_train_a_few_steps_on_the_export(synthetic_export: tuple[Path, list], tmp_path: Path) -> None:
    from visionpilot.training.train import train

    root = tmp_path / "data"
    shutil.copytree(synthetic_export[0], root)
    cfg = _compose("train", tmp_path, ["data=nuscenes", f"data.root={root}", "model/bev=tiny", "debug=fdr",
                                       "data.image_size=[64,176]", "data.batch_size=2", "logger=csv"])
    metrics, _ = train(cfg)
    assert metrics["train/steps"] == 1 and np.isfinite(metrics["train/loss"])
    assert any(k.startswith("train/bev.objects") for k in metrics)


def test_frames_cached_from_the_files_batch_as_read_and_a_bad_image_names_its_file(
        synthetic_export: tuple[Path, list], tmp_path: Path) -> None:
    """``data.cache=ram`` on a dataset on disk: the fill's processes decode the JPEGs as a loader would, and an image
    that cannot be decoded stops the fill with the source's own message (raised in a fill process)."""
    from visionpilot.data.sources.mixed import SourceDataModule

    def datamodule(root: Path, cache: str | None) -> SourceDataModule:
        dm = SourceDataModule(NuScenesSource(root), image_size=(64, 176), batch_size=2, cache=cache,
                              cache_workers=2, train_transform={"flip_p": 0.5, "photometric_p": 0.5})
        dm.setup("fit")
        return dm

    cached, plain = datamodule(synthetic_export[0], "ram"), datamodule(synthetic_export[0], None)
    assert len(cached.frame_cache) == len(cached.datasets["train"]) + len(cached.datasets["val"]) > 0
    for a, b in zip(cached.train_dataloader(), plain.train_dataloader(), strict=True):
        assert all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)
    root = tmp_path / "data"
    shutil.copytree(synthetic_export[0], root)
    # A camera image of the last frame the fill reads (one a fill process loads, not the first, read here to size
    # the cache).
    last = max((r for s in ("train", "val") for r in cached.datasets[s].refs), key=lambda r: r.index)
    rows = json.loads((root / "v1.0-mini" / "sample_data.json").read_text())
    image = root / next(r["filename"] for r in rows if r["sample_token"] == last.frame_id and "CAM_BACK/" in
                        r["filename"])
    image.write_bytes(b"not a jpeg")
    with pytest.raises(FormatError, match=rf"\(CAM_BACK of sample '{last.frame_id}'\): image file "
                                          rf"{re.escape(str(image))} not a readable image"):
        datamodule(root, "ram")
