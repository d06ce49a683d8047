"""Write frames as a nuScenes v1.0 dataset: the 12 JSON tables, key-frame JPEGs and map-expansion lane dividers.

Layout and conventions are those :mod:`visionpilot.data.sources.nuscenes` reads (the devkit's): quaternions
``[w, x, y, z]``, ``size = [width, length, height]``, calibrated_sensor sensor -> ego, ego_pose ego -> global,
annotations in the global frame. One scene per ``scene_id`` (its name, so a reader's hash split reproduces the
source's), one log per scene (``us`` -> boston-seaport, ``sg`` -> singapore-onenorth), one sample per frame with a
key-frame sample_data row for each camera and for ``LIDAR_TOP`` (the reference channel; no point cloud is written).

Ego poses. The frames of a synthetic drive are not placed in one consistent world (its road is a local cubic per
time step), so each frame gets its own patch of the map: frame ``k`` of scene ``j`` sits 1 km from every other
(x = 1000 (k + 1), y = 1000 (j + 1), yaw = 0.3 + 0.7 k rad). Its lane lines go into the map around that pose,
so a reader that cuts lanes within a few hundred metres of the ego finds exactly that frame's lanes. Box velocities
derived from neighbouring annotations (the devkit's ``box_velocity``) are therefore meaningless in such an export.

Lane lines are ``lane_divider`` records (one segment per node, ``segment_type`` from :data:`SEGMENT_OF`); road edges
have no line layer in the map expansion and are not written.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from visionpilot.data.frame import Frame
from visionpilot.data.sources.nuscenes import CAMERAS, TABLES
from visionpilot.data.vocab import LANE_TYPES, OBJECT_CLASSES
from visionpilot.data.writers._common import check_region, stable_token, write_bytes_atomic, write_image_atomic
from visionpilot.geometry.frames import make_transform, quaternion_to_rotation, rot_z, rotation_to_quaternion
from visionpilot.utils.io import write_json_atomic

LOCATIONS: dict[str, str] = {"us": "boston-seaport", "sg": "singapore-onenorth"}
#: Our class -> the nuScenes category written for it.
CATEGORY_OF: dict[str, str] = {"car": "vehicle.car", "truck": "vehicle.truck", "bus": "vehicle.bus.rigid",
                               "two_wheeler": "vehicle.motorcycle", "pedestrian": "human.pedestrian.adult",
                               "traffic_cone": "movable_object.trafficcone"}
#: Our lane type -> map segment_type (None: not written). DOUBLE_DASHED_WHITE is what the real maps use for the
#: ordinary broken divider.
SEGMENT_OF: dict[str, str | None] = {"white_dashed": "DOUBLE_DASHED_WHITE", "white_solid": "SINGLE_SOLID_WHITE",
                                     "yellow_dashed": "SINGLE_DASHED_YELLOW", "yellow_solid": "SINGLE_SOLID_YELLOW",
                                     "double_yellow": "DOUBLE_SOLID_YELLOW", "road_edge": None}
_ATTRIBUTES = ("vehicle.moving", "vehicle.stopped", "vehicle.parked", "cycle.with_rider", "cycle.without_rider",
               "pedestrian.sitting_lying_down", "pedestrian.standing", "pedestrian.moving")
_VISIBILITY = (("1", "v0-40"), ("2", "v40-60"), ("3", "v60-80"), ("4", "v80-100"))
_LIDAR_CALIBRATION = ([0.943713, 0.0, 1.84023], [0.7077955119163518, -0.006492242056004365, 0.010646214713995808,
                                                  -0.7063073142877817])
_T0 = 1_533_000_000_000_000  # microseconds, a date inside the nuScenes collection period


def _tok(*parts: Any) -> str:
    return stable_token("nuscenes", *parts)


def _visibility_token(fraction: float) -> str:
    return "1" if fraction < 0.4 else "2" if fraction < 0.6 else "3" if fraction < 0.8 else "4"


def _attribute(cls: str, speed: float) -> list[str]:
    if cls in ("car", "truck", "bus"):
        return [_tok("attribute", "vehicle.moving" if speed > 0.5 else "vehicle.stopped")]
    if cls == "two_wheeler":
        return [_tok("attribute", "cycle.with_rider")]
    if cls == "pedestrian":
        return [_tok("attribute", "pedestrian.moving" if speed > 0.3 else "pedestrian.standing")]
    return []


def frame_pose(scene_index: int, frame_index: int) -> np.ndarray:
    """The ego -> global pose given to frame ``frame_index`` of scene ``scene_index`` (see the module docstring)."""
    return make_transform(rot_z(0.3 + 0.7 * frame_index), [1000.0 * (frame_index + 1), 1000.0 * (scene_index + 1), 0])


class _Map:
    """Map-expansion layers of one location, filled frame by frame."""

    def __init__(self) -> None:
        self.node: list[dict[str, Any]] = []
        self.line: list[dict[str, Any]] = []
        self.lane_divider: list[dict[str, Any]] = []

    def add(self, key: str, points: np.ndarray, segment_type: str) -> None:
        nodes = [_tok("node", key, i) for i in range(len(points))]
        self.node += [{"token": t, "x": float(x), "y": float(y)} for t, (x, y) in zip(nodes, points)]
        self.line.append({"token": _tok("line", key), "node_tokens": nodes})
        self.lane_divider.append({"token": _tok("lane_divider", key), "line_token": _tok("line", key),
                                  "lane_divider_segments": [{"node_token": t, "segment_type": segment_type}
                                                            for t in nodes]})

    def as_json(self) -> dict[str, Any]:
        xy = np.array([[n["x"], n["y"]] for n in self.node]).reshape(-1, 2)
        edge = (xy.max(axis=0) + 100.0).tolist() if len(xy) else [100.0, 100.0]
        empty = ("polygon", "drivable_area", "road_segment", "road_block", "lane", "ped_crossing", "walkway",
                 "stop_line", "carpark_area", "road_divider", "traffic_light", "lane_connector")
        return {"version": "1.3", "canvas_edge": edge, "node": self.node, "line": self.line,
                "lane_divider": self.lane_divider, **{k: [] for k in empty}, "connectivity": {}, "arcline_path_3": {}}


def write_nuscenes(frames: Iterable[Frame], root: str | Path, version: str = "v1.0-mini",
                   locations: Mapping[str, str] | None = None, jpeg_quality: int = 95) -> Path:
    """Write ``frames`` (with images; cameras named as nuScenes channels) under ``root``; returns ``root``.

    Args:
        frames: frames in scene order (a scene's frames consecutive, by time); streamed, images written at once.
        root: the dataset folder to create (``<version>/``, ``samples/``, ``maps/expansion/``).
        version: the tables' folder name.
        locations: region -> ``log.location`` (default :data:`LOCATIONS`: us and sg only).
        jpeg_quality: JPEG quality of the images.
    """
    root = Path(root)
    locations = {**LOCATIONS, **dict(locations or {})}
    # The tables make a root readable and are written last; an earlier export's go first, so that a run killed
    # half-way leaves no root that reads as complete (new images under old labels).
    for name in TABLES:
        (root / version / f"{name}.json").unlink(missing_ok=True)
    # An earlier export's map of a location this one writes no lanes for would stay, and give its lanes to this
    # export's frames: poses depend only on the scene and frame index, so they lie on the old frames' lanes.
    for location in set(locations.values()):
        (root / "maps" / "expansion" / f"{location}.json").unlink(missing_ok=True)
    t: dict[str, list[dict[str, Any]]] = {name: [] for name in TABLES}
    t["category"] = [{"token": _tok("category", c), "name": c, "description": c} for c in CATEGORY_OF.values()]
    t["attribute"] = [{"token": _tok("attribute", a), "name": a, "description": a} for a in _ATTRIBUTES]
    t["visibility"] = [{"token": tok, "level": level, "description": f"visibility of whole object {level[1:]}%"}
                       for tok, level in _VISIBILITY]
    sensors = [*CAMERAS, "LIDAR_TOP"]
    t["sensor"] = [{"token": _tok("sensor", s), "channel": s, "modality": "lidar" if s == "LIDAR_TOP" else "camera"}
                   for s in sensors]
    maps: dict[str, _Map] = defaultdict(_Map)
    scenes: dict[str, dict[str, Any]] = {}
    instances: dict[str, dict[str, Any]] = {}
    last_ann: dict[str, dict[str, Any]] = {}  # instance token -> its latest annotation row
    prev_sample: dict[str, dict[str, Any]] = {}  # scene -> its latest sample row
    prev_data: dict[tuple[str, str], dict[str, Any]] = {}  # (scene, channel) -> latest sample_data row

    for frame in frames:
        check_region(frame, tuple(sorted(locations)), "nuScenes")
        if frame.scene_id not in scenes:
            scenes[frame.scene_id] = _new_scene(t, frame, len(scenes), locations[frame.region])
        scene = scenes[frame.scene_id]
        k = scene["nbr_samples"]
        scene["nbr_samples"] += 1
        pose = frame_pose(scene["_index"], k)
        stamp = _T0 + scene["_index"] * 100_000_000 + round(frame.timestamp * 1e6)
        sample = {"token": _tok("sample", frame.frame_id), "timestamp": stamp, "prev": "", "next": "",
                  "scene_token": scene["token"]}
        if frame.scene_id in prev_sample:
            sample["prev"] = prev_sample[frame.scene_id]["token"]
            prev_sample[frame.scene_id]["next"] = sample["token"]
        else:
            scene["first_sample_token"] = sample["token"]
        scene["last_sample_token"] = sample["token"]
        prev_sample[frame.scene_id] = sample
        t["sample"].append(sample)

        channels = [(cam.name, cam.extrinsics, cam) for cam in frame.cameras]
        lidar = make_transform(quaternion_to_rotation(_LIDAR_CALIBRATION[1]), _LIDAR_CALIBRATION[0])
        channels.append(("LIDAR_TOP", lidar, None))
        for channel, extrinsics, cam in channels:
            if channel not in sensors:
                raise ValueError(f"nuScenes writer: frame '{frame.frame_id}': camera '{channel}' is not a nuScenes "
                                 f"channel {list(CAMERAS)}; export a rig with nuScenes names (rig=nuscenes6)")
            cs_token = _calibrated_sensor(t, scene, channel, extrinsics, None if cam is None else cam.intrinsics)
            data_token = _tok("sample_data", frame.frame_id, channel)
            ego = {"token": _tok("ego_pose", frame.frame_id, channel), "timestamp": stamp,
                   "rotation": rotation_to_quaternion(pose[:3, :3]).tolist(), "translation": pose[:3, 3].tolist()}
            t["ego_pose"].append(ego)
            if cam is None:
                filename, fmt, (height, width) = f"samples/{channel}/{scene['_log']}__{channel}__{stamp}.pcd.bin", \
                    "pcd", (0, 0)
            else:
                filename, fmt, (height, width) = f"samples/{channel}/{scene['_log']}__{channel}__{stamp}.jpg", \
                    "jpg", cam.image_size
                if cam.image is None:
                    raise ValueError(f"nuScenes writer: frame '{frame.frame_id}', camera '{channel}': field 'image' "
                                     f"is None; load frames with images to export them")
                write_image_atomic(root / filename, cam.image, jpeg_quality)
            row = {"token": data_token, "sample_token": sample["token"], "ego_pose_token": ego["token"],
                   "calibrated_sensor_token": cs_token, "timestamp": stamp, "fileformat": fmt,
                   "is_key_frame": True, "height": int(height), "width": int(width), "filename": filename,
                   "prev": "", "next": ""}
            key = (frame.scene_id, channel)
            if key in prev_data:
                row["prev"] = prev_data[key]["token"]
                prev_data[key]["next"] = data_token
            prev_data[key] = row
            t["sample_data"].append(row)

        _annotations(t, frame, scene, sample, pose, instances, last_ann)
        for j, lane in enumerate(frame.lanes_3d):
            segment = SEGMENT_OF[LANE_TYPES[lane.type]]
            if segment is not None:
                g = lane.points[:, :2] @ pose[:2, :2].T + pose[:2, 3]
                maps[scene["_location"]].add(f"{frame.frame_id}/{j}", g, segment)

    t["instance"] = list(instances.values())
    t["scene"] = [{k: v for k, v in s.items() if not k.startswith("_")} for s in scenes.values()]
    t["map"] = [{"category": "semantic_prior", "token": _tok("map", loc), "filename": f"maps/{_tok('map', loc)}.png",
                 "log_tokens": [r["token"] for r in t["log"] if r["location"] == loc]}
                for loc in sorted({r["location"] for r in t["log"]})]
    for row in t["map"]:  # the semantic prior mask the devkit opens on load (NuScenes() asserts it exists): blank
        write_bytes_atomic(root / row["filename"], cv2.imencode(".png", np.zeros((10, 10), np.uint8))[1].tobytes())
    for location, m in maps.items():
        write_json_atomic(root / "maps" / "expansion" / f"{location}.json", m.as_json())
    for name, rows in t.items():  # last: the tables make the root readable
        write_json_atomic(root / version / f"{name}.json", rows)
    return root


def _new_scene(t: dict[str, list[dict[str, Any]]], frame: Frame, index: int, location: str) -> dict[str, Any]:
    logfile = f"n000-2018-08-01-00-00-00+0000-{frame.scene_id}"
    log_token = _tok("log", frame.scene_id)
    t["log"].append({"token": log_token, "logfile": logfile, "vehicle": "n000", "date_captured": "2018-08-01",
                     "location": location})
    return {"token": _tok("scene", frame.scene_id), "log_token": log_token, "nbr_samples": 0,
            "first_sample_token": "", "last_sample_token": "", "name": frame.scene_id,
            "description": f"exported from {frame.source} ({frame.region})", "_index": index, "_log": logfile,
            "_location": location, "_calibrations": {}}


def _calibrated_sensor(t: dict[str, list[dict[str, Any]]], scene: dict[str, Any], channel: str,
                       extrinsics: np.ndarray, intrinsics: np.ndarray | None) -> str:
    """The calibrated_sensor row of this scene, channel and calibration (a new row when the calibration changes)."""
    rotation = rotation_to_quaternion(np.asarray(extrinsics)[:3, :3]).tolist()
    translation = np.asarray(extrinsics)[:3, 3].tolist()
    k = [] if intrinsics is None else np.asarray(intrinsics, dtype=np.float64).tolist()
    key = (channel, tuple(np.round(rotation + translation, 9)), str(np.round(k, 9).tolist()))
    if key not in scene["_calibrations"]:
        token = _tok("calibrated_sensor", scene["name"], channel, len(scene["_calibrations"]))
        t["calibrated_sensor"].append({"token": token, "sensor_token": _tok("sensor", channel),
                                       "translation": translation, "rotation": rotation, "camera_intrinsic": k})
        scene["_calibrations"][key] = token
    return scene["_calibrations"][key]


def _annotations(t: dict[str, list[dict[str, Any]]], frame: Frame, scene: dict[str, Any], sample: dict[str, Any],
                 pose: np.ndarray, instances: dict[str, dict[str, Any]], last_ann: dict[str, dict[str, Any]]) -> None:
    b = frame.boxes_3d
    # Best 2D visibility of each box over the cameras; a box no camera reports on is unknown (written as visible),
    # one a camera reports as fully hidden keeps its 0 (nuScenes visibility level 1, 0-40 %).
    visible = np.full(len(b), -1.0)
    for cam in frame.cameras:
        if len(cam.box_ids_2d) and len(cam.visibility_2d) == len(cam.box_ids_2d):
            own = cam.box_ids_2d >= 0  # -1: a 2D box of no 3D box (as an index, it would be the last box's)
            np.maximum.at(visible, cam.box_ids_2d[own], cam.visibility_2d[own])
    visible[visible < 0] = 1.0
    for i in range(len(b)):
        cls = OBJECT_CLASSES[int(b.classes[i])]
        track = int(b.track_ids[i]) if len(b.track_ids) else i
        inst_token = _tok("instance", frame.scene_id, track if track >= 0 else f"{frame.frame_id}/{i}")
        box = pose @ make_transform(rot_z(float(b.yaws[i])), b.centers[i])
        velocity = b.velocities[i] if len(b.velocities) else np.full(2, np.nan)
        speed = float(np.hypot(*velocity)) if np.isfinite(velocity).all() else 0.0
        row = {"token": _tok("sample_annotation", frame.frame_id, i), "sample_token": sample["token"],
               "instance_token": inst_token, "visibility_token": _visibility_token(float(visible[i])),
               "attribute_tokens": _attribute(cls, speed), "translation": box[:3, 3].tolist(),
               "size": [float(b.sizes[i, 1]), float(b.sizes[i, 0]), float(b.sizes[i, 2])],  # [l, w, h] -> [w, l, h]
               "rotation": rotation_to_quaternion(box[:3, :3]).tolist(), "prev": "", "next": "",
               "num_lidar_pts": 10, "num_radar_pts": 0}
        if inst_token not in instances:
            instances[inst_token] = {"token": inst_token, "category_token": _tok("category", CATEGORY_OF[cls]),
                                     "nbr_annotations": 0, "first_annotation_token": row["token"],
                                     "last_annotation_token": ""}
        inst = instances[inst_token]
        inst["nbr_annotations"] += 1
        inst["last_annotation_token"] = row["token"]
        if inst_token in last_ann:
            row["prev"] = last_ann[inst_token]["token"]
            last_ann[inst_token]["next"] = row["token"]
        last_ann[inst_token] = row
        t["sample_annotation"].append(row)
